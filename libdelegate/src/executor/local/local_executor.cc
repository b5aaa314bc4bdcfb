// "local": Harness's local infrastructure, where a step with an image runs
// in a container and one without runs on the host, within one stage. It
// composes the executors registered as "host" and "docker" (whatever a host
// program registered under those names), one instance of each per stage; the
// Docker side is set up at the first container step, so that a delegate
// without an engine still runs host steps.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "delegate/host_executor.h"
#include "delegate/policy.h"

namespace delegate {
namespace {

class LocalExecutor final : public Executor {
 public:
  LocalExecutor(const ExecutorRegistry& registry, std::string host_platform,
                std::string docker_platform)
      : registry_(registry),
        host_platform_(std::move(host_platform)),
        docker_platform_(std::move(docker_platform)) {}

  absl::Status Validate(const Stage& stage) override {
    std::vector<std::string> problems;
    for (bool containers : {false, true}) {
      Stage part = Part(stage, containers);
      if (part.steps.empty()) continue;
      const std::string& platform = part.platform;
      // The platform's own profile, then its executor's checks. The rules
      // common to every platform and the operator's were applied to the
      // whole stage already; the indexes here are the part's.
      for (const PolicyViolation& v :
           CheckStagePolicy(part, {}, registry_.Profile(platform))) {
        if (v.platform == platform) problems.push_back(v.ToString());
      }
      std::unique_ptr<Executor> e = registry_.Create(platform);
      if (!e) {
        problems.push_back(absl::StrCat(
            "platform local: no executor is registered as '", platform,
            "' for steps ", containers ? "with" : "without", " an image"));
        continue;
      }
      if (absl::Status s = e->Validate(part); !s.ok()) {
        problems.push_back(std::string(s.message()));
      }
    }
    if (problems.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrJoin(problems, "\n"));
  }

  // Each part's platform's notes (its profile's, then its executor's): host
  // and docker enforce different things.
  std::vector<std::string> Notes(const Stage& stage) override {
    std::vector<std::string> notes;
    for (bool containers : {false, true}) {
      Stage part = Part(stage, containers);
      if (part.steps.empty()) continue;
      for (std::string& note :
           StageNotes(part, registry_.Profile(part.platform))) {
        notes.push_back(std::move(note));
      }
      if (std::unique_ptr<Executor> e = registry_.Create(part.platform)) {
        for (std::string& note : e->Notes(part)) {
          notes.push_back(std::move(note));
        }
      }
    }
    return notes;
  }

  absl::Status Initialize(const StageContext& ctx) override {
    host_ = registry_.Create(host_platform_);
    if (!host_) {
      return absl::FailedPreconditionError(
          absl::StrCat("no executor is registered as '", host_platform_, "'"));
    }
    return host_->Initialize(ctx);
  }

  // The host side adopts its stage directory now; the container side is
  // resumed at the first container step, as it is set up then otherwise
  // (and made afresh when the earlier process never got that far).
  absl::Status Resume(const StageContext& ctx) override {
    host_ = registry_.Create(host_platform_);
    if (!host_) {
      return absl::FailedPreconditionError(
          absl::StrCat("no executor is registered as '", host_platform_, "'"));
    }
    resumed_ = true;
    return host_->Resume(ctx);
  }

  // A step the earlier process was running (StepContext::reattach) goes to
  // the side that ran it, by its image as always.
  StepResult Execute(const StepContext& ctx) override {
    if (ctx.step.image.empty()) return host_->Execute(ctx);
    if (!docker_init_) {
      docker_ = registry_.Create(docker_platform_);
      docker_init_ =
          !docker_
              ? absl::FailedPreconditionError(absl::StrCat(
                    "no executor is registered as '", docker_platform_, "'"))
          : resumed_ ? docker_->Resume(ctx.stage)
                     : docker_->Initialize(ctx.stage);
      // Nothing of it there: the earlier process ran no container step of
      // the stage (or died before it made anything), nothing is lost.
      if (docker_ && resumed_ && absl::IsNotFound(*docker_init_)) {
        ctx.stage.output.SystemLine(
            "the stage's first container step after the delegate restarted: "
            "setting up its network and volumes");
        docker_init_ = docker_->Initialize(ctx.stage);
      }
    }
    if (!docker_init_->ok()) {
      StepResult r;
      r.status = StepStatus::kFailure;
      r.error = absl::StrCat(resumed_ ? "the stage's containers cannot resume: "
                                      : "container steps cannot run on this "
                                        "delegate: ",
                             docker_init_->message());
      return r;
    }
    return docker_->Execute(ctx);
  }

  absl::Status Cleanup(const StageContext& ctx) override {
    std::vector<std::string> problems;
    // A resumed stage may have containers of the earlier process's making
    // although none ran since: they are found by the stage's label.
    if (!docker_ && resumed_) docker_ = registry_.Create(docker_platform_);
    if (docker_) {
      if (absl::Status s = docker_->Cleanup(ctx); !s.ok()) {
        problems.push_back(absl::StrCat("docker: ", s.message()));
      }
    }
    if (host_) {
      if (absl::Status s = host_->Cleanup(ctx); !s.ok()) {
        problems.push_back(absl::StrCat("host: ", s.message()));
      }
    }
    if (problems.empty()) return absl::OkStatus();
    return absl::InternalError(absl::StrJoin(problems, "; "));
  }

 private:
  // The steps with (or without) an image, as a stage of that platform.
  Stage Part(const Stage& stage, bool containers) const {
    Stage part;
    part.name = stage.name;
    part.platform = containers ? docker_platform_ : host_platform_;
    part.env = stage.env;
    part.secrets = stage.secrets;
    part.volumes = stage.volumes;
    part.timeout = stage.timeout;
    part.reuse_containers = stage.reuse_containers;
    for (const Step& step : stage.steps) {
      if (step.image.empty() != containers) part.steps.push_back(step);
    }
    return part;
  }

  const ExecutorRegistry& registry_;
  const std::string host_platform_;
  const std::string docker_platform_;
  std::unique_ptr<Executor> host_;
  std::unique_ptr<Executor> docker_;
  std::optional<absl::Status> docker_init_;
  bool resumed_ = false;  // Resume instead of Initialize
};

}  // namespace

absl::Status RegisterLocalExecutor(ExecutorRegistry& registry,
                                   std::string host_platform,
                                   std::string docker_platform) {
  return registry.Register("local",
                           [&registry, host_platform, docker_platform] {
                             return std::make_unique<LocalExecutor>(
                                 registry, host_platform, docker_platform);
                           });
}

}  // namespace delegate

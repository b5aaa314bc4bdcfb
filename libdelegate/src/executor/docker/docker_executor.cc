// The Docker executor: a stage becomes a bridge network, named volumes and
// one container per step on a Docker Engine, all labelled so that cleanup,
// and the reaper after a crash, find them again.
#include "delegate/docker_executor.h"

#include <stdlib.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "delegate/instance.h"
#include "executor/docker/docker_client.h"
#include "executor/names.h"
#include "executor/outputs.h"
#include "executor/shell.h"
#include "util/strings.h"

namespace delegate {
namespace {

using docker::ContainerSpec;
using docker::DockerClient;
using docker::Listed;
using docker::Mount;
using docker::ObjectKind;

constexpr const char* kLabelDelegate = "io.libdelegate.delegate";
constexpr const char* kLabelInstance = "io.libdelegate.instance";
constexpr const char* kLabelTask = "io.libdelegate.task";
// "<delegate name>/<task id>": what cleanup looks for, so that two delegates
// on one engine never take each other's objects for their own.
constexpr const char* kLabelTransaction = "io.libdelegate.transaction";
constexpr const char* kLabelStage = "io.libdelegate.stage";
// On a step's own container only: shared containers and the one that opens
// the volumes to other users have none.
constexpr const char* kLabelStep = "io.libdelegate.step";
// Where every step of a stage finds the shared workspace and its output file.
constexpr const char* kWorkspacePath = "/harness";
constexpr const char* kEnginePath = "/tmp/engine";
constexpr size_t kMaxOutputFileBytes = 1 << 20;

// A Docker object name: [a-zA-Z0-9][a-zA-Z0-9_.-]*, with a hash of the whole
// id so that two ids that sanitize alike stay apart.
std::string ObjectName(std::string_view task_id, std::string_view suffix) {
  const std::string clean = SanitizeName(task_id, '-', 40);
  uint32_t hash = 2166136261u;  // FNV-1a
  for (char c : task_id) hash = (hash ^ static_cast<uint8_t>(c)) * 16777619u;
  std::string name = absl::StrFormat("delegate-%s-%08x", clean, hash);
  if (!suffix.empty()) absl::StrAppend(&name, "-", AbslView(suffix));
  return name;
}

std::string Transaction(const StageContext& ctx) {
  return ctx.delegate_name + "/" + ctx.task_id;
}

// Whether a container that exited with 137 (SIGKILL) was killed for memory
// although its State.OOMKilled says no: Docker 20.10 on cgroup v2 can set
// that flag too late when the kernel's OOM notice reaches it after the exit,
// but it still logs the container's "oom" event, a moment later at most.
// Asked only for exits the delegate did not cause; an error counts as no.
bool OomEventSeen(DockerClient& client, const std::string& id,
                  absl::Time since) {
  for (int attempt = 0; attempt < 3; ++attempt) {
    if (attempt > 0) absl::SleepFor(absl::Milliseconds(100));
    absl::StatusOr<bool> seen = client.HadOomEvent(id, since);
    if (!seen.ok()) return false;
    if (*seen) return true;
  }
  return false;
}

// How long a look at whether the Engine still answers may take.
constexpr absl::Duration kPingTimeout = absl::Seconds(2);

// A failed step's error, with the reason when its Engine has stopped
// answering: an Engine that shuts down (a dockerd restart) stops its
// containers first, so their steps fail with 137 or 143, or lose their wait.
std::string FailureWithEngine(DockerClient& client, std::string error) {
  absl::Status engine = client.Ping(kPingTimeout);
  if (engine.ok()) return error;
  return absl::StrCat(
      AbslView(error),
      ": the Docker Engine stopped during the step, and its containers "
      "stopped with it (",
      engine.message(), ")");
}

// "step timed out; stopping WHAT (SIGKILL after 10s)".
std::string StopLine(StepStatus why, std::string_view what,
                     absl::Duration grace) {
  return absl::StrCat(
      why == StepStatus::kTimeout ? "step timed out" : "step cancelled",
      "; stopping ", AbslView(what), " (SIGKILL after ",
      absl::FormatDuration(grace), ")");
}

// Output of a container or exec, into the step's log.
OutputCallback ToOutput(const StepContext& ctx) {
  return [&ctx](LogStream stream, std::string_view bytes) {
    ctx.output.Write(stream, bytes);
  };
}

std::string SafeSuffix(std::string_view s) { return SanitizeName(s, '-', 60); }

// Removes the containers, networks and volumes that carry `label`
// ("key=value"), except those `keep` (when given) says to keep, noting each
// removed one in `removed` when given. What is already gone is not an
// error.
absl::Status RemoveLabelled(
    DockerClient& client, const std::string& label,
    std::vector<std::string>* removed,
    const std::function<bool(const Listed&)>& keep = nullptr) {
  std::vector<std::string> problems;
  // Containers first: a network or volume in use cannot go.
  for (const auto& [kind, noun] :
       {std::pair{ObjectKind::kContainer, "container"},
        std::pair{ObjectKind::kNetwork, "network"},
        std::pair{ObjectKind::kVolume, "volume"}}) {
    absl::StatusOr<std::vector<Listed>> listed =
        client.ListLabelled(kind, label);
    if (!listed.ok()) {
      problems.push_back(
          absl::StrCat("listing ", noun, "s: ", listed.status().message()));
      continue;
    }
    for (const Listed& object : *listed) {
      if (keep && keep(object)) continue;
      absl::Status s;
      switch (kind) {
        case ObjectKind::kContainer:
          s = client.RemoveContainer(object.id, true);
          break;
        case ObjectKind::kNetwork:
          s = client.RemoveNetwork(object.id);
          break;
        case ObjectKind::kVolume:
          s = client.RemoveVolume(object.id);
          break;
      }
      const std::string what = absl::StrCat(
          noun, " ",
          kind == ObjectKind::kVolume ? object.id : object.id.substr(0, 12));
      if (s.ok()) {
        if (removed) removed->push_back(what);
      } else if (!absl::IsNotFound(s)) {
        problems.push_back(absl::StrCat(what, ": ", s.message()));
      }
    }
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::UnavailableError(absl::StrJoin(problems, "; "));
}

// What a Docker executor of one registration shares: the options and one
// client (thread-safe), connected on first use so that registering never
// fails because the daemon is down.
class DockerShared {
 public:
  explicit DockerShared(DockerExecutorOptions options)
      : options_(std::move(options)) {}

  const DockerExecutorOptions& options() const { return options_; }

  absl::StatusOr<DockerClient*> Client() {
    absl::MutexLock lock(&mu_);
    if (client_) return client_.get();
    std::string host = options_.docker_host;
    if (host.empty()) {
      const char* env = getenv("DOCKER_HOST");
      host = env ? env : "";
    }
    absl::StatusOr<docker::Endpoint> endpoint = docker::ParseDockerHost(host);
    if (!endpoint.ok()) return endpoint.status();
    absl::StatusOr<std::unique_ptr<DockerClient>> client =
        DockerClient::Connect(*endpoint);
    if (!client.ok()) return client.status();
    client_ = *std::move(client);
    return client_.get();
  }

 private:
  const DockerExecutorOptions options_;
  absl::Mutex mu_;
  std::unique_ptr<DockerClient> client_ ABSL_GUARDED_BY(mu_);
};

class DockerExecutor final : public Executor {
 public:
  explicit DockerExecutor(std::shared_ptr<DockerShared> shared)
      : shared_(std::move(shared)) {}

  absl::Status Validate(const Stage& stage) override;
  absl::Status Initialize(const StageContext& ctx) override;
  absl::Status Resume(const StageContext& ctx) override;
  StepResult Execute(const StepContext& ctx) override;
  absl::Status Cleanup(const StageContext& ctx) override;

 private:
  std::map<std::string, std::string> Labels(const StageContext& ctx) const;
  // Sets the names of the stage's network and volumes: the same in every
  // process of the delegate, which is how Resume finds them.
  void NameObjects(const StageContext& ctx);
  absl::Status RemoveSharedContainers(const StageContext& ctx);
  StepResult Reattach(const StepContext& ctx);
  // Follows the started container `id` of the step to its end: its log to
  // the step's output, its exit, outputs and out-of-memory kill read, the
  // container removed. `started` bounds the search for its "oom" event.
  StepResult FollowToEnd(const StepContext& ctx, const std::string& id,
                         absl::Time started);
  StepResult ExecuteInSharedContainer(const StepContext& ctx,
                                      ContainerSpec spec);
  static void CollectOutputs(const StepContext& ctx, std::string_view text,
                             StepResult& result);
  static std::string OutputFile(const Step& step);
  static std::string ContainerKey(const ContainerSpec& spec);
  absl::Status OpenVolumesToOtherUsers(const StageContext& ctx);
  absl::Status EnsureImage(const StepContext& ctx, const Step& step);
  absl::StatusOr<ContainerSpec> BuildSpec(const StepContext& ctx);

  std::shared_ptr<DockerShared> shared_;
  DockerClient* client_ = nullptr;  // set by a successful Initialize
  std::string network_;
  std::string workspace_volume_;
  std::string engine_volume_;
  std::map<std::string, std::string> volumes_;  // stage volume -> docker name
  // reuse_containers: ContainerKey -> the running container steps share.
  std::map<std::string, std::string> shared_containers_;
  size_t retired_containers_ = 0;  // stopped ones, for unique names
};

absl::Status DockerExecutor::Validate(const Stage& stage) {
  std::vector<std::string> problems;
  for (size_t i = 0; i < stage.volumes.size(); ++i) {
    if (std::holds_alternative<EfsVolume>(stage.volumes[i].source)) {
      problems.push_back(absl::StrCat(
          "volumes[", i,
          "].efs: the docker executor cannot mount EFS (it needs the "
          "amazon-efs-utils volume driver); use platform ecs-ec2 or "
          "ecs-fargate"));
    }
  }
  for (size_t i = 0; i < stage.steps.size(); ++i) {
    if (stage.steps[i].image.empty()) {
      problems.push_back(absl::StrCat(
          "steps[", i,
          "].image: platform docker runs every step in a container; give "
          "the step an image"));
    }
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(problems, "\n"));
}

std::map<std::string, std::string> DockerExecutor::Labels(
    const StageContext& ctx) const {
  std::map<std::string, std::string> labels = {
      {kLabelDelegate, ctx.delegate_name},
      {kLabelTask, ctx.task_id},
      {kLabelTransaction, Transaction(ctx)},
      {kLabelStage, ctx.stage.name}};
  const std::string& instance = shared_->options().instance;
  if (!instance.empty()) labels[kLabelInstance] = instance;
  return labels;
}

absl::Status DockerExecutor::Initialize(const StageContext& ctx) {
  absl::StatusOr<DockerClient*> client = shared_->Client();
  if (!client.ok()) return client.status();
  client_ = *client;
  const auto labels = Labels(ctx);
  NameObjects(ctx);
  if (absl::Status s = client_->CreateNetwork(network_, labels); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("creating network ", network_,
                                               ": ", s.message()));
  }
  for (const std::string& name : {workspace_volume_, engine_volume_}) {
    if (absl::Status s = client_->CreateVolume(name, labels); !s.ok()) {
      return absl::Status(
          s.code(), absl::StrCat("creating volume ", name, ": ", s.message()));
    }
  }
  for (const auto& [volume, name] : volumes_) {
    if (absl::Status s = client_->CreateVolume(name, labels); !s.ok()) {
      return absl::Status(s.code(),
                          absl::StrCat("volume ", volume, ": ", s.message()));
    }
  }
  ctx.output.SystemLine(absl::StrCat("network ", network_, " on Docker API ",
                                     client_->api_version()));
  return OpenVolumesToOtherUsers(ctx);
}

void DockerExecutor::NameObjects(const StageContext& ctx) {
  network_ = ObjectName(Transaction(ctx), "");
  workspace_volume_ = ObjectName(Transaction(ctx), "workspace");
  engine_volume_ = ObjectName(Transaction(ctx), "engine");
  volumes_.clear();
  for (const Volume& volume : ctx.stage.volumes) {
    if (!std::holds_alternative<EmptyDirVolume>(volume.source)) continue;
    volumes_[volume.name] =
        ObjectName(Transaction(ctx), "vol-" + SafeSuffix(volume.name));
  }
}

absl::Status DockerExecutor::Resume(const StageContext& ctx) {
  absl::StatusOr<DockerClient*> client = shared_->Client();
  if (!client.ok()) return client.status();
  client_ = *client;
  NameObjects(ctx);
  const std::string label =
      absl::StrCat(kLabelTransaction, "=", Transaction(ctx));
  absl::flat_hash_set<std::string> existing;
  for (ObjectKind kind : {ObjectKind::kNetwork, ObjectKind::kVolume}) {
    absl::StatusOr<std::vector<Listed>> listed =
        client_->ListLabelled(kind, label);
    if (!listed.ok()) return listed.status();
    for (const Listed& object : *listed) existing.insert(object.name);
  }
  std::vector<std::string> names = {network_, workspace_volume_,
                                    engine_volume_};
  for (const auto& [volume, name] : volumes_) names.push_back(name);
  const bool any = std::any_of(names.begin(), names.end(), [&](const auto& n) {
    return existing.contains(n);
  });
  if (!any) {
    // A docker stage's initialize made them all: they were removed while
    // the delegate was down. (The local executor, which sets Docker up at
    // a stage's first container step, initializes it on NotFound.)
    return absl::NotFoundError(absl::StrCat(
        "nothing of the stage is on the Docker Engine (its network ", network_,
        " and workspace volume ", workspace_volume_,
        " are gone: removed while the delegate was down?), so the stage "
        "cannot go on: run it again"));
  }
  if (!existing.contains(workspace_volume_)) {
    // Made right after the network: it was there, and what the earlier
    // steps left in it is lost.
    return absl::FailedPreconditionError(absl::StrCat(
        "the stage's workspace volume ", workspace_volume_,
        " is gone; what the stage's earlier steps wrote to ", kWorkspacePath,
        " went with it (was it removed while the delegate was down?), so the "
        "stage cannot go on: run it again"));
  }
  if (absl::Status s = RemoveSharedContainers(ctx); !s.ok()) return s;
  const auto labels = Labels(ctx);
  std::vector<std::string> adopted;
  std::vector<std::string> made;
  auto ensure = [&](const std::string& name, bool network) -> absl::Status {
    if (existing.contains(name)) {
      adopted.push_back(name);
      return absl::OkStatus();
    }
    absl::Status s = network ? client_->CreateNetwork(name, labels)
                             : client_->CreateVolume(name, labels);
    if (absl::IsAlreadyExists(s)) {
      adopted.push_back(name);
      return absl::OkStatus();
    }
    if (!s.ok()) {
      return absl::Status(
          s.code(), absl::StrCat("creating ", network ? "network " : "volume ",
                                 name, ": ", s.message()));
    }
    made.push_back(name);
    return absl::OkStatus();
  };
  for (const std::string& name : names) {
    if (absl::Status s = ensure(name, name == network_); !s.ok()) return s;
  }
  ctx.output.SystemLine(absl::StrCat("network ", network_, " on Docker API ",
                                     client_->api_version()));
  if (!adopted.empty()) {
    ctx.output.SystemLine(absl::StrCat(
        "after the delegate restarted, the stage goes on with ",
        absl::StrJoin(adopted, ", "),
        made.empty()
            ? ""
            : absl::StrCat("; made afresh: ", absl::StrJoin(made, ", "))));
  }
  const bool opened_before =
      std::find(made.begin(), made.end(), workspace_volume_) == made.end() &&
      std::find(made.begin(), made.end(), engine_volume_) == made.end();
  if (opened_before) return absl::OkStatus();
  return OpenVolumesToOtherUsers(ctx);
}

absl::Status DockerExecutor::RemoveSharedContainers(const StageContext& ctx) {
  // The earlier process's shared containers (reuse_containers) cannot be
  // re-attached: the exec of its step died with it. They go, so that the
  // next steps make fresh ones under the same names. So does a container
  // that was opening the volumes (OpenVolumesToOtherUsers).
  absl::StatusOr<std::vector<Listed>> containers = client_->ListLabelled(
      ObjectKind::kContainer,
      absl::StrCat(kLabelTransaction, "=", Transaction(ctx)));
  if (!containers.ok()) return containers.status();
  for (const Listed& container : *containers) {
    if (container.labels.contains(kLabelStep)) continue;
    absl::Status s = client_->RemoveContainer(container.id, true);
    if (!s.ok() && !absl::IsNotFound(s)) {
      return absl::Status(
          s.code(),
          absl::StrCat("removing container ", container.name,
                       " of the delegate's earlier process: ", s.message()));
    }
    if (container.name != ObjectName(Transaction(ctx), "init")) {
      ctx.output.SystemLine(absl::StrCat(
          "removed the shared container ", container.name,
          " of the delegate's earlier process; the next steps that share "
          "a container get a fresh one"));
    }
  }
  return absl::OkStatus();
}

absl::Status DockerExecutor::OpenVolumesToOtherUsers(const StageContext& ctx) {
  // New volumes belong to root; a step that runs as another user must still
  // write the shared workspace and its output file. One short root container
  // of that step's image opens them up (it needs a shell and chmod).
  const Step* user_step = nullptr;
  for (const Step& step : ctx.stage.steps) {
    if (step.security_context.run_as_user.value_or(0) != 0 ||
        step.security_context.run_as_group.value_or(0) != 0) {
      user_step = &step;
      break;
    }
  }
  if (user_step == nullptr) return absl::OkStatus();
  ContainerSpec spec;
  spec.name = ObjectName(Transaction(ctx), "init");
  spec.image = user_step->image;
  spec.entrypoint = {"/bin/sh", "-c"};
  spec.cmd = {absl::StrCat("chmod 1777 ", kWorkspacePath, " ", kEnginePath)};
  spec.user = "0:0";
  spec.labels = Labels(ctx);
  spec.mounts = {
      {Mount::Type::kVolume, workspace_volume_, kWorkspacePath, false},
      {Mount::Type::kVolume, engine_volume_, kEnginePath, false}};
  spec.network = network_;
  std::vector<std::string> env;
  absl::Status prepared = [&]() -> absl::Status {
    const StepContext step_ctx{ctx,        *user_step,   0,
                               ctx.output, ctx.deadline, ctx.stop};
    if (absl::Status s = EnsureImage(step_ctx, *user_step); !s.ok()) return s;
    absl::StatusOr<std::string> id = client_->CreateContainer(spec);
    if (!id.ok()) return id.status();
    absl::Status s = client_->StartContainer(*id);
    absl::StatusOr<int> code =
        s.ok() ? client_->WaitContainer(
                     *id, [&] { return ctx.stop.stop_requested(); })
               : absl::StatusOr<int>(s);
    (void)client_->RemoveContainer(*id, true);
    if (!code.ok()) return code.status();
    if (*code != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("chmod exited with status ", *code));
    }
    return absl::OkStatus();
  }();
  if (!prepared.ok()) {
    ctx.output.SystemLine(absl::StrCat(
        "could not open the workspace to uid ",
        user_step->security_context.run_as_user.value_or(0), " (",
        prepared.message(), "); steps running as that user may not write it"));
  }
  return absl::OkStatus();
}

absl::Status DockerExecutor::EnsureImage(const StepContext& ctx,
                                         const Step& step) {
  PullPolicy pull =
      step.pull == PullPolicy::kDefault ? PullPolicy::kIfNotPresent : step.pull;
  if (pull != PullPolicy::kAlways) {
    absl::StatusOr<bool> exists = client_->ImageExists(step.image);
    if (!exists.ok()) return exists.status();
    if (*exists) return absl::OkStatus();
    if (pull == PullPolicy::kNever) {
      return absl::FailedPreconditionError(absl::StrCat(
          "image ", step.image,
          " is not on this Docker Engine and the step says pull: never"));
    }
  }
  ctx.output.SystemLine(absl::StrCat("pulling ", step.image));
  docker::RegistryAuth auth;
  if (step.registry) {
    auth.server = step.registry->server;
    auth.username = step.registry->username;
    auth.password = step.registry->password;
  }
  absl::Status pulled =
      client_->PullImage(step.image, step.registry ? &auth : nullptr,
                         [&ctx](std::string_view line) {
                           ctx.output.Write(LogStream::kSystem, line);
                           ctx.output.Write(LogStream::kSystem, "\n");
                         });
  if (!pulled.ok()) {
    return absl::Status(pulled.code(), absl::StrCat("pulling ", step.image,
                                                    ": ", pulled.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<ContainerSpec> DockerExecutor::BuildSpec(
    const StepContext& ctx) {
  const Step& step = ctx.step;
  ContainerSpec spec;
  spec.name = ObjectName(Transaction(ctx.stage), SafeSuffix(step.id));
  spec.image = step.image;
  const std::string working_dir =
      step.working_dir.empty() ? kWorkspacePath
      : absl::StartsWith(step.working_dir, "/")
          ? step.working_dir
          : absl::StrCat(kWorkspacePath, "/", step.working_dir);
  if (!step.commands.empty()) {
    // The script changes directory itself: Docker resets the mode of a
    // WorkingDir to 0755, which would lock other users out of the shared
    // workspace.
    spec.entrypoint = {"/bin/sh", "-c"};
    spec.cmd = {absl::StrCat("mkdir -p ", ShellQuote(working_dir), " && cd ",
                             ShellQuote(working_dir), " || exit 1\n",
                             CommandScript(step.commands))};
  } else {
    spec.entrypoint = step.entrypoint;
    spec.cmd = step.args;
    spec.working_dir = working_dir;
  }
  const std::string output_file = OutputFile(step);
  for (const auto& [key, value] : step.envs) {
    spec.env.push_back(key + "=" + value);
  }
  spec.env.push_back("HARNESS_OUTPUT_FILE=" + output_file);
  spec.env.push_back("DRONE_OUTPUT=" + output_file);
  spec.env.push_back(absl::StrCat("HARNESS_WORKSPACE=", kWorkspacePath));
  spec.env.push_back("HARNESS_STAGE_ID=" + ctx.stage.task_id);
  spec.env.push_back("HARNESS_STEP_ID=" + step.id);
  const SecurityContext& sc = step.security_context;
  if (sc.run_as_user) {
    spec.user = absl::StrCat(*sc.run_as_user);
    if (sc.run_as_group) absl::StrAppend(&spec.user, ":", *sc.run_as_group);
  } else if (sc.run_as_group) {
    spec.user = absl::StrCat("0:", *sc.run_as_group);
  }
  spec.labels = Labels(ctx.stage);
  spec.labels[kLabelStep] = step.id;
  spec.mounts.push_back(
      {Mount::Type::kVolume, workspace_volume_, kWorkspacePath, false});
  // Per container, so that a read-only root still lets the step write its
  // output file; read back through the archive API after the step.
  spec.mounts.push_back(
      {Mount::Type::kVolume, engine_volume_, kEnginePath, false});
  for (const VolumeMount& vm : step.volume_mounts) {
    const Volume* volume = ctx.stage.stage.FindVolume(vm.name);
    if (!volume) {
      return absl::InvalidArgumentError(
          absl::StrCat("volume_mounts: no volume named ", vm.name));
    }
    if (const auto* host = std::get_if<HostPathVolume>(&volume->source)) {
      spec.mounts.push_back(
          {Mount::Type::kBind, host->path, vm.path, host->read_only});
    } else {
      spec.mounts.push_back(
          {Mount::Type::kVolume, volumes_.at(vm.name), vm.path, false});
    }
  }
  spec.network = network_;
  spec.aliases = {step.id};
  spec.privileged = sc.privileged.value_or(false);
  spec.read_only_rootfs = sc.read_only_root_filesystem.value_or(false);
  spec.cap_add = sc.add_capability;
  spec.cap_drop = sc.drop_capability;
  if (step.resources.cpus) {
    spec.nano_cpus = static_cast<int64_t>(*step.resources.cpus * 1e9);
  }
  if (step.resources.memory_mib) {
    spec.memory_bytes = *step.resources.memory_mib * 1024 * 1024;
  }
  return spec;
}

StepResult DockerExecutor::Execute(const StepContext& ctx) {
  StepResult result;
  auto fail = [&](const absl::Status& status) {
    result.status = StepStatus::kFailure;
    result.error = std::string(status.message());
    return result;
  };
  if (client_ == nullptr) {
    return fail(absl::FailedPreconditionError("the stage was not initialized"));
  }
  if (ctx.reattach) return Reattach(ctx);
  if (absl::Status s = EnsureImage(ctx, ctx.step); !s.ok()) return fail(s);
  absl::StatusOr<ContainerSpec> spec = BuildSpec(ctx);
  if (!spec.ok()) return fail(spec.status());
  if (ctx.stage.stage.reuse_containers && !ctx.step.commands.empty()) {
    return ExecuteInSharedContainer(ctx, *std::move(spec));
  }
  absl::StatusOr<std::string> id = client_->CreateContainer(*spec);
  if (!id.ok()) {
    return fail(absl::Status(
        id.status().code(),
        absl::StrCat("creating the container: ", id.status().message())));
  }
  // From a minute before, in case the Engine's clock is behind ours.
  const absl::Time started = absl::Now() - absl::Minutes(1);
  if (absl::Status s = client_->StartContainer(*id); !s.ok()) {
    (void)client_->RemoveContainer(*id, true);
    return fail(absl::Status(
        s.code(), absl::StrCat("starting the container: ", s.message())));
  }
  return FollowToEnd(ctx, *id, started);
}

StepResult DockerExecutor::Reattach(const StepContext& ctx) {
  StepResult result;
  result.status = StepStatus::kFailure;
  const std::string& step = ctx.step.id;
  if (ctx.stage.stage.reuse_containers && !ctx.step.commands.empty()) {
    result.error = absl::StrCat(
        "the delegate restarted during step ", step,
        "; a step of a shared container (reuse_containers) cannot be "
        "re-attached, and its result is unknown");
    return result;
  }
  const std::string name =
      ObjectName(Transaction(ctx.stage), SafeSuffix(ctx.step.id));
  absl::StatusOr<docker::ContainerState> state =
      client_->InspectContainer(name);
  if (!state.ok() && !absl::IsNotFound(state.status())) {
    result.error = absl::StrCat("re-attaching to container ", name, ": ",
                                state.status().message());
    return result;
  }
  if (!state.ok() || state->status == "created") {
    // Created but never started: it must not start now, after the step's
    // time has begun anew.
    if (state.ok()) (void)client_->RemoveContainer(name, true);
    result.error = absl::StrCat(
        "the delegate restarted during step ", step,
        " before its container started (or after the container was "
        "removed): there is nothing to re-attach to, and the step's result "
        "is unknown");
    return result;
  }
  ctx.output.SystemLine(absl::StrCat(
      "re-attached to container ", name,
      " after the delegate restarted; its log from the start follows"));
  // When it started is unknown here; its own events are few.
  return FollowToEnd(ctx, state->id.empty() ? name : state->id,
                     absl::UnixEpoch());
}

StepResult DockerExecutor::FollowToEnd(const StepContext& ctx,
                                       const std::string& id,
                                       absl::Time started) {
  StepResult result;
  // On timeout or cancel the container is stopped from another thread while
  // this one keeps reading its logs, so that nothing it printed before it
  // died is lost; the stream ends when the container does.
  const absl::Duration grace = shared_->options().grace_period;
  std::optional<StepStatus> stopped;
  std::thread stopper;
  auto watch = [&]() {
    if (stopped || !(stopped = StopReason(ctx))) return false;
    ctx.output.SystemLine(StopLine(*stopped, "the container", grace));
    stopper = std::thread([client = client_, container = id, grace] {
      (void)client->StopContainer(container, grace);
    });
    return false;
  };
  absl::Status followed = client_->FollowLogs(id, ToOutput(ctx), watch);
  if (!followed.ok()) {
    ctx.output.SystemLine(
        absl::StrCat("log stream ended early: ", followed.message()));
  }
  absl::StatusOr<int> code = client_->WaitContainer(id, watch);
  if (stopper.joinable()) stopper.join();
  absl::StatusOr<docker::ContainerState> state = client_->InspectContainer(id);
  std::string outputs_text;
  if (!ctx.step.outputs.empty() && !stopped) {
    const std::string file = OutputFile(ctx.step);
    if (absl::StatusOr<std::string> text =
            client_->ReadFile(id, file, kMaxOutputFileBytes);
        text.ok()) {
      outputs_text = *std::move(text);
    }
  }
  (void)client_->RemoveContainer(id, true);

  if (stopped) {
    result.status = *stopped;
    result.error = *stopped == StepStatus::kTimeout ? "timed out" : "cancelled";
    return result;
  }
  if (!code.ok()) {
    result.status = StepStatus::kFailure;
    result.error =
        FailureWithEngine(*client_, std::string(code.status().message()));
    return result;
  }
  result.exit_code = *code;
  if (state.ok() && (state->oom_killed ||
                     (*code == 137 && OomEventSeen(*client_, id, started)))) {
    result.status = StepStatus::kFailure;
    result.error =
        absl::StrCat("killed: out of memory",
                     ctx.step.resources.memory_mib
                         ? absl::StrCat(" (the step's limit is ",
                                        *ctx.step.resources.memory_mib, " MiB)")
                         : "");
    return result;
  }
  if (*code != 0) {
    result.status = StepStatus::kFailure;
    result.error =
        FailureWithEngine(*client_, absl::StrCat("exit status ", *code));
  }
  CollectOutputs(ctx, outputs_text, result);
  return result;
}

void DockerExecutor::CollectOutputs(const StepContext& ctx,
                                    std::string_view text, StepResult& result) {
  std::map<std::string, std::string> written = ParseOutputs(text);
  for (const std::string& name : ctx.step.outputs) {
    auto it = written.find(name);
    if (it != written.end()) {
      result.outputs[name] = it->second;
    } else if (result.status == StepStatus::kSuccess) {
      ctx.output.SystemLine(absl::StrCat("output ", name,
                                         " was declared but not written to "
                                         "$HARNESS_OUTPUT_FILE"));
    }
  }
}

std::string DockerExecutor::OutputFile(const Step& step) {
  return absl::StrCat(kEnginePath, "/", SafeSuffix(step.id), "-output.env");
}

// What makes two steps able to share one container: everything that is fixed
// when a container is created.
std::string DockerExecutor::ContainerKey(const ContainerSpec& spec) {
  std::string key = absl::StrCat(
      spec.image, "|", spec.privileged, "|", spec.read_only_rootfs, "|",
      spec.nano_cpus.value_or(0), "|", spec.memory_bytes.value_or(0), "|");
  absl::StrAppend(&key, absl::StrJoin(spec.cap_add, ","), "|",
                  absl::StrJoin(spec.cap_drop, ","), "|");
  for (const Mount& m : spec.mounts) {
    absl::StrAppend(&key, static_cast<int>(m.type), ":", m.source, ":",
                    m.target, ":", m.read_only, ";");
  }
  return key;
}

StepResult DockerExecutor::ExecuteInSharedContainer(const StepContext& ctx,
                                                    ContainerSpec spec) {
  StepResult result;
  auto fail = [&](const absl::Status& status) {
    result.status = StepStatus::kFailure;
    result.error = std::string(status.message());
    return result;
  };
  // The step's own settings go to the exec; the container only idles.
  docker::DockerClient::ExecSpec exec;
  exec.cmd = {"/bin/sh", "-c", spec.cmd.at(0)};
  exec.env = std::move(spec.env);
  exec.user = spec.user;
  const std::string key = ContainerKey(spec);
  auto found = shared_containers_.find(key);
  if (found == shared_containers_.end()) {
    spec.name = ObjectName(Transaction(ctx.stage),
                           absl::StrCat("shared-", shared_containers_.size() +
                                                       retired_containers_));
    spec.entrypoint = {"/bin/sh", "-c"};
    // Idles until stopped; SIGTERM ends it at once.
    spec.cmd = {"trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"};
    spec.env.clear();
    spec.labels.erase(kLabelStep);
    spec.user = "";
    absl::StatusOr<std::string> id = client_->CreateContainer(spec);
    if (!id.ok()) {
      return fail(absl::Status(id.status().code(),
                               absl::StrCat("creating the shared container: ",
                                            id.status().message())));
    }
    if (absl::Status s = client_->StartContainer(*id); !s.ok()) {
      (void)client_->RemoveContainer(*id, true);
      return fail(absl::Status(
          s.code(),
          absl::StrCat("starting the shared container: ", s.message())));
    }
    ctx.output.SystemLine(
        absl::StrCat("container ", id->substr(0, 12), " of ", spec.image,
                     " is shared by the steps like this one"));
    found = shared_containers_.emplace(key, *id).first;
  }
  const std::string id = found->second;

  std::optional<StepStatus> stopped;
  auto should_stop = [&]() {
    if (!stopped) stopped = StopReason(ctx);
    return stopped.has_value();
  };
  absl::StatusOr<int> code =
      client_->Exec(id, exec, ToOutput(ctx), should_stop);
  if (stopped) {
    // An exec cannot be signalled on its own: the container goes, with
    // everything the step started, and the next step like it gets a new one.
    const absl::Duration grace = shared_->options().grace_period;
    ctx.output.SystemLine(StopLine(*stopped, "its shared container", grace));
    (void)client_->StopContainer(id, grace);
    (void)client_->RemoveContainer(id, true);
    shared_containers_.erase(found);
    ++retired_containers_;
    result.status = *stopped;
    result.error = *stopped == StepStatus::kTimeout ? "timed out" : "cancelled";
    return result;
  }
  if (!code.ok()) {
    // The container may have died under the step (out of memory, say).
    absl::StatusOr<docker::ContainerState> state =
        client_->InspectContainer(id);
    if (state.ok() && !state->running) {
      (void)client_->RemoveContainer(id, true);
      shared_containers_.erase(found);
      ++retired_containers_;
      if (state->oom_killed) {
        return fail(absl::ResourceExhaustedError(
            "killed: out of memory (the shared container hit its limit)"));
      }
    }
    result.status = StepStatus::kFailure;
    result.error =
        FailureWithEngine(*client_, std::string(code.status().message()));
    return result;
  }
  result.exit_code = *code;
  if (*code != 0) {
    result.status = StepStatus::kFailure;
    result.error =
        FailureWithEngine(*client_, absl::StrCat("exit status ", *code));
  }
  std::string outputs_text;
  if (!ctx.step.outputs.empty()) {
    if (absl::StatusOr<std::string> text =
            client_->ReadFile(id, OutputFile(ctx.step), kMaxOutputFileBytes);
        text.ok()) {
      outputs_text = *std::move(text);
    }
  }
  CollectOutputs(ctx, outputs_text, result);
  return result;
}

absl::Status DockerExecutor::Cleanup(const StageContext& ctx) {
  if (client_ == nullptr) {
    // Initialize may have failed half way, or never connected: find what
    // carries this task's label, if the daemon can be reached at all.
    absl::StatusOr<DockerClient*> client = shared_->Client();
    if (!client.ok()) return absl::OkStatus();
    client_ = *client;
  }
  const std::string label =
      absl::StrCat(kLabelTransaction, "=", Transaction(ctx));
  absl::Status removed = RemoveLabelled(*client_, label, nullptr);
  // An Engine that stopped answering (a dockerd restart) is waited for:
  // what the stage made is still on it when it comes back. One that answers
  // gets two more tries, for the errors of an Engine just started.
  const absl::Duration wait = shared_->options().engine_wait;
  const absl::Time give_up = absl::Now() + wait;
  bool announced = false;
  for (int tries = 1; !removed.ok() && tries < 3; ++tries) {
    absl::Status engine = client_->Ping(kPingTimeout);
    for (absl::Duration pause = absl::Milliseconds(250);
         !engine.ok() && absl::Now() < give_up;
         pause = std::min(pause * 2, absl::Seconds(2))) {
      if (!announced) {
        ctx.output.SystemLine(
            absl::StrCat("cleanup: ", engine.message(), "; waiting up to ",
                         absl::FormatDuration(wait), " for it to come back"));
        announced = true;
      }
      absl::SleepFor(std::min(pause, give_up - absl::Now()));
      engine = client_->Ping(kPingTimeout);
    }
    if (!engine.ok()) {
      return absl::UnavailableError(absl::StrCat(
          removed.message(), "; ", engine.message(), " after ",
          absl::FormatDuration(wait), ": what is left carries the label ",
          label,
          " and goes at the delegate's next start or with `delegate "
          "cleanup`"));
    }
    if (announced && tries == 1) {
      ctx.output.SystemLine("cleanup: the Docker Engine answers again");
    }
    if (tries > 1) absl::SleepFor(absl::Milliseconds(500));
    removed = RemoveLabelled(*client_, label, nullptr);
  }
  return removed;
}

}  // namespace

absl::Status RegisterDockerExecutor(ExecutorRegistry& registry,
                                    DockerExecutorOptions options) {
  auto shared = std::make_shared<DockerShared>(options);
  ExecutorTraits traits;
  traits.profile = &DockerPlatformProfile();
  // What a crashed earlier run of this instance, and what gone instances
  // recorded in the same state directory left on the engine goes before the
  // first stage, but what this instance's stages to be resumed need; a live
  // instance of the same name keeps its containers. No engine is no error:
  // the delegate may run host steps only.
  traits.on_start = [options](const ExecutorStartup& startup) {
    if (options.state_dir.empty()) return;
    // Gone instances stay recorded (`delegate cleanup` forgets them): the
    // host executor looks for their stage directories too.
    std::vector<std::string> instances = FindGoneInstances(options.state_dir);
    if (!options.instance.empty()) instances.push_back(options.instance);
    if (instances.empty()) return;
    absl::StatusOr<std::vector<std::string>> reaped =
        ReapDockerInstances(options, instances, startup.resuming);
    if (reaped.ok()) {
      for (const std::string& what : *reaped) {
        startup.log->Info("removed a leftover of an earlier run",
                          {{"what", what}});
      }
    } else if (!absl::IsUnavailable(reaped.status())) {
      startup.log->Warn("could not look for leftovers on Docker",
                        {{"error", reaped.status().message()}});
    }
  };
  return registry.Register(
      "docker",
      [shared]() -> std::unique_ptr<Executor> {
        return std::make_unique<DockerExecutor>(shared);
      },
      std::move(traits));
}

const PlatformProfile& DockerPlatformProfile() {
  static constexpr PlatformProfile kProfile = {
      .name = "docker",
      .title = "Docker",
      .instead = "",
      .empty_dir_size_unenforced = "Docker's local volumes have no size limit",
  };
  return kProfile;
}

absl::StatusOr<std::vector<std::string>> ReapDockerInstances(
    const DockerExecutorOptions& options,
    const std::vector<std::string>& instances,
    const std::vector<std::string>& resuming) {
  DockerShared shared(options);
  absl::StatusOr<docker::DockerClient*> client = shared.Client();
  if (!client.ok()) return client.status();
  const absl::flat_hash_set<std::string> kept(resuming.begin(), resuming.end());
  auto resumed = [&kept](const Listed& object) {
    auto task = object.labels.find(kLabelTask);
    return task != object.labels.end() && kept.contains(task->second);
  };
  std::vector<std::string> removed;
  for (const std::string& instance : instances) {
    if (instance.empty()) continue;
    // Only this process's own instance resumes stages.
    std::function<bool(const Listed&)> keep;
    if (instance == options.instance && !kept.empty()) keep = resumed;
    absl::Status s = RemoveLabelled(
        **client, absl::StrCat(kLabelInstance, "=", instance), &removed, keep);
    if (!s.ok()) return s;
  }
  return removed;
}

absl::StatusOr<std::vector<std::string>> ReapDockerLeftovers(
    const DockerExecutorOptions& options, const std::string& delegate_name) {
  DockerShared shared(options);
  absl::StatusOr<docker::DockerClient*> client = shared.Client();
  if (!client.ok()) return client.status();
  std::vector<std::string> removed;
  absl::Status s = RemoveLabelled(
      **client, absl::StrCat(kLabelDelegate, "=", delegate_name), &removed);
  if (!s.ok()) return s;
  return removed;
}

}  // namespace delegate

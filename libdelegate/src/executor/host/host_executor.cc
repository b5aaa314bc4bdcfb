// The host executor: each step is a process group started by /bin/sh (or the
// step's entrypoint) in a workspace that belongs to the stage.
#include "delegate/host_executor.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "delegate/env.h"
#include "delegate/instance.h"
#include "executor/names.h"
#include "executor/outputs.h"
#include "executor/shell.h"

namespace delegate {
namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxOutputFileBytes = 1 << 20;
// Scripts up to this size go to the shell as `sh -c SCRIPT`, which saves a
// file write and read per step; Linux caps one argument at 128 KiB.
constexpr size_t kMaxInlineScriptBytes = 64 * 1024;
constexpr const char* kDefaultPath =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// Variables that carry the delegate's own credentials; steps never see them.
constexpr std::string_view kHiddenVariables[] = {
    "HARNESS_TOKEN", "TOKEN", "DELEGATE_TOKEN", "HARNESS_DELEGATE_TOKEN"};

std::string Describe(const ExitInfo& exit) {
  if (exit.term_signal != 0) {
    const char* name = sigabbrev_np(exit.term_signal);
    return absl::StrCat("killed by signal ", exit.term_signal, " (SIG",
                        name ? name : "?", ")");
  }
  return absl::StrCat("exit status ", exit.exit_code);
}

// The absolute root of the stage directories: `workdir`, or $TMPDIR or
// /tmp. Steps run in their workspace, not in the delegate's directory:
// every path handed to them (output file, script) must be absolute.
std::string WorkRoot(const std::string& workdir) {
  std::string root = workdir;
  if (root.empty()) {
    const char* tmp = getenv("TMPDIR");
    root = tmp && *tmp ? tmp : "/tmp";
  }
  std::error_code ec;
  if (fs::path absolute = fs::absolute(root, ec); !ec) {
    root = absolute.lexically_normal().string();
  }
  return root;
}

// Never empty and never a dot file (".", "..").
std::string SafeFileName(std::string_view s) {
  std::string out = SanitizeName(s, '_', 64);
  if (out.empty() || out[0] == '.') out.insert(out.begin(), '_');
  return out.substr(0, 64);
}

// A stage directory's name without mkdtemp's six characters:
// "delegate-INSTANCE-TASK-", with the instance in it from the moment it
// exists so that it is attributable.
std::string StageDirPrefix(const std::string& instance,
                           std::string_view task_id) {
  return absl::StrCat("delegate-", instance.empty() ? "" : instance + "-",
                      SafeFileName(task_id), "-");
}

bool IsStageDir(std::string_view name, std::string_view prefix) {
  return name.size() == prefix.size() + 6 && name.starts_with(prefix);
}

// Reads what a step wrote to HARNESS_OUTPUT_FILE.
std::map<std::string, std::string> ReadOutputs(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  std::string content(kMaxOutputFileBytes, '\0');
  in.read(content.data(), kMaxOutputFileBytes);
  content.resize(in.gcount());
  return ParseOutputs(content);
}

// What every HostExecutor of one registration shares.
struct HostShared {
  HostExecutorOptions options;
  std::vector<std::string> base_env;
};

class HostExecutor final : public Executor {
 public:
  explicit HostExecutor(std::shared_ptr<const HostShared> shared)
      : shared_(std::move(shared)),
        options_(shared_->options),
        base_env_(shared_->base_env) {}

  absl::Status Validate(const Stage& stage) override;
  absl::Status Initialize(const StageContext& ctx) override;
  absl::Status Resume(const StageContext& ctx) override;
  StepResult Execute(const StepContext& ctx) override;
  absl::Status Cleanup(const StageContext& ctx) override;

 private:
  // The empty_dir volumes' directories, made when missing.
  absl::Status MakeVolumeDirs(const Stage& stage) const;
  absl::StatusOr<std::string> WorkingDir(const Step& step) const;
  absl::Status MountVolumes(const Stage& stage, const Step& step) const;
  absl::StatusOr<ProcessSpec> BuildSpec(const StepContext& ctx,
                                        const std::string& output_file);

  const std::shared_ptr<const HostShared> shared_;
  const HostExecutorOptions& options_;
  const std::vector<std::string>& base_env_;
  fs::path stage_dir_;
  fs::path workspace_;
};

// What the host profile of the policy (CheckStagePolicy) does not know:
// whether this process can switch to the step's user and group.
absl::Status HostExecutor::Validate(const Stage& stage) {
  const uid_t euid = geteuid();
  if (euid == 0) return absl::OkStatus();
  std::vector<std::string> problems;
  for (size_t i = 0; i < stage.steps.size(); ++i) {
    const SecurityContext& sc = stage.steps[i].security_context;
    const std::string at = absl::StrCat("steps[", i, "].security_context.");
    if (sc.run_as_user && *sc.run_as_user != static_cast<int64_t>(euid)) {
      problems.push_back(absl::StrCat(
          at, "run_as_user: the delegate runs as uid ", euid,
          " and cannot switch users; run it as root or drop the field"));
    }
    if (sc.run_as_group &&
        *sc.run_as_group != static_cast<int64_t>(getegid())) {
      problems.push_back(absl::StrCat(
          at, "run_as_group: the delegate runs as gid ", getegid(),
          " and cannot switch groups; run it as root or drop the field"));
    }
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(problems, "\n"));
}

absl::Status HostExecutor::Initialize(const StageContext& ctx) {
  std::string root = WorkRoot(options_.workdir);
  std::error_code ec;
  fs::create_directories(root, ec);
  std::string pattern =
      (fs::path(root) /
       (StageDirPrefix(options_.instance, ctx.task_id) + "XXXXXX"))
          .string();
  if (mkdtemp(pattern.data()) == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot create the stage directory under ", root, ": ", strerror(errno),
        "; set HARNESS_WORKDIR to a writable directory"));
  }
  stage_dir_ = pattern;
  workspace_ = stage_dir_ / "workspace";
  for (const fs::path& dir : {workspace_, stage_dir_ / "engine"}) {
    if (!fs::create_directory(dir, ec)) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create ", dir.string(), ": ", ec.message()));
    }
  }
  if (absl::Status s = MakeVolumeDirs(ctx.stage); !s.ok()) return s;
  ctx.output.SystemLine(absl::StrCat("workspace ", workspace_.string()));
  return absl::OkStatus();
}

absl::Status HostExecutor::MakeVolumeDirs(const Stage& stage) const {
  for (const Volume& volume : stage.volumes) {
    if (!std::holds_alternative<EmptyDirVolume>(volume.source)) continue;
    fs::path dir = stage_dir_ / "volumes" / SafeFileName(volume.name);
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (!fs::is_directory(dir, ec)) {
      return absl::FailedPreconditionError(
          absl::StrCat("volume ", volume.name, ": cannot create ", dir.string(),
                       ": ", ec ? ec.message() : "not a directory"));
    }
  }
  return absl::OkStatus();
}

absl::Status HostExecutor::Resume(const StageContext& ctx) {
  const std::string root = WorkRoot(options_.workdir);
  const std::string prefix = StageDirPrefix(options_.instance, ctx.task_id);
  std::vector<fs::path> found;
  std::error_code ec;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end;
       it.increment(ec)) {
    std::error_code type;
    if (IsStageDir(it->path().filename().string(), prefix) &&
        it->is_directory(type)) {
      found.push_back(it->path());
    }
  }
  const std::string wanted = (fs::path(root) / (prefix + "XXXXXX")).string();
  if (found.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the stage's directory ", wanted,
        " is gone; what the stage's earlier steps wrote to its workspace "
        "went with it (was it removed while the delegate was down?), so the "
        "stage cannot go on: run it again"));
  }
  if (found.size() > 1) {
    // Only task ids that differ in characters a file name cannot hold.
    return absl::FailedPreconditionError(absl::StrCat(
        found.size(), " directories match ", wanted, " (", found[0].string(),
        ", ", found[1].string(),
        "); the stage's own cannot be told apart: run the stage again"));
  }
  stage_dir_ = found[0];
  workspace_ = stage_dir_ / "workspace";
  if (!fs::is_directory(workspace_, ec)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the stage's workspace ", workspace_.string(),
        " is gone; what the stage's earlier steps wrote to it went with it, "
        "so the stage cannot go on: run it again"));
  }
  const fs::path engine = stage_dir_ / "engine";
  fs::create_directories(engine, ec);
  if (!fs::is_directory(engine, ec)) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create ", engine.string()));
  }
  if (absl::Status s = MakeVolumeDirs(ctx.stage); !s.ok()) return s;
  ctx.output.SystemLine(
      absl::StrCat("workspace ", workspace_.string(),
                   ", where the stage goes on after the delegate restarted"));
  return absl::OkStatus();
}

absl::StatusOr<std::string> HostExecutor::WorkingDir(const Step& step) const {
  fs::path dir = step.working_dir.empty() ? workspace_
                 : fs::path(step.working_dir).is_absolute()
                     ? fs::path(step.working_dir)
                     : workspace_ / step.working_dir;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (!fs::is_directory(dir, ec)) {
    return absl::FailedPreconditionError(
        absl::StrCat("working_dir ", dir.string(), " is not a directory"));
  }
  return dir.string();
}

absl::Status HostExecutor::MountVolumes(const Stage& stage,
                                        const Step& step) const {
  for (const VolumeMount& mount : step.volume_mounts) {
    if (fs::path(mount.path).is_absolute()) continue;  // host_path as given
    const Volume* volume = stage.FindVolume(mount.name);
    if (!volume) continue;  // Validate reported it
    fs::path source;
    if (const auto* host = std::get_if<HostPathVolume>(&volume->source)) {
      source = host->path;
    } else {
      source = stage_dir_ / "volumes" / SafeFileName(volume->name);
    }
    fs::path link = workspace_ / mount.path;
    std::error_code ec;
    if (fs::is_symlink(fs::symlink_status(link, ec))) continue;
    fs::create_directories(link.parent_path(), ec);
    fs::create_directory_symlink(source, link, ec);
    if (ec) {
      return absl::FailedPreconditionError(
          absl::StrCat("volume ", mount.name, ": cannot link ", link.string(),
                       " to ", source.string(), ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ProcessSpec> HostExecutor::BuildSpec(
    const StepContext& ctx, const std::string& output_file) {
  const Step& step = ctx.step;
  ProcessSpec spec;
  absl::StatusOr<std::string> dir = WorkingDir(step);
  if (!dir.ok()) return dir.status();
  spec.working_dir = *std::move(dir);
  if (!step.commands.empty()) {
    const std::string script = CommandScript(step.commands);
    if (script.size() <= kMaxInlineScriptBytes) {
      spec.argv = {"/bin/sh", "-c", script, "sh"};
    } else {
      const fs::path script_file =
          stage_dir_ / "engine" / (SafeFileName(step.id) + ".sh");
      std::ofstream out(script_file, std::ios::binary | std::ios::trunc);
      out << script;
      out.close();
      if (!out) {
        return absl::FailedPreconditionError(
            absl::StrCat("cannot write ", script_file.string()));
      }
      spec.argv = {"/bin/sh", script_file.string()};
    }
  } else if (!step.entrypoint.empty()) {
    spec.argv = step.entrypoint;
    spec.argv.insert(spec.argv.end(), step.args.begin(), step.args.end());
    if (spec.argv[0].find('/') == std::string::npos) {
      // Let the shell search PATH, with argv passed through unchanged.
      spec.argv.insert(spec.argv.begin(),
                       {"/bin/sh", "-c", "exec \"$0\" \"$@\""});
    }
  } else {
    return absl::InvalidArgumentError(
        "the step has neither commands nor an entrypoint");
  }

  std::map<std::string, std::string> env;
  for (const std::string& kv : base_env_) {
    size_t eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  if (!env.contains("PATH")) env["PATH"] = kDefaultPath;
  for (const auto& [key, value] : step.envs) env[key] = value;
  env["HARNESS_OUTPUT_FILE"] = output_file;
  env["DRONE_OUTPUT"] = output_file;
  env["HARNESS_WORKSPACE"] = workspace_.string();
  env["HARNESS_STAGE_ID"] = ctx.stage.task_id;
  env["HARNESS_STEP_ID"] = step.id;
  for (const auto& [key, value] : env) spec.env.push_back(key + "=" + value);

  const SecurityContext& sc = step.security_context;
  if (sc.run_as_user) spec.uid = static_cast<uid_t>(*sc.run_as_user);
  if (sc.run_as_group) spec.gid = static_cast<gid_t>(*sc.run_as_group);
  if ((spec.uid || spec.gid) && geteuid() == 0) {
    // The step's user must be able to write its workspace and output file.
    const uid_t uid = spec.uid.value_or(static_cast<uid_t>(-1));
    const gid_t gid = spec.gid.value_or(static_cast<gid_t>(-1));
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(workspace_, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (lchown(it->path().c_str(), uid, gid) != 0) break;
    }
    if (lchown(workspace_.c_str(), uid, gid) != 0 ||
        lchown(output_file.c_str(), uid, gid) != 0 ||
        lchown(spec.working_dir.c_str(), uid, gid) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot hand the workspace to uid ", *sc.run_as_user,
                       ": ", strerror(errno)));
    }
  }
  return spec;
}

StepResult HostExecutor::Execute(const StepContext& ctx) {
  const Step& step = ctx.step;
  StepResult result;
  auto fail = [&](const absl::Status& status) {
    result.status = StepStatus::kFailure;
    result.error = std::string(status.message());
    return result;
  };
  if (stage_dir_.empty()) {
    return fail(absl::FailedPreconditionError("the stage was not initialized"));
  }
  if (ctx.reattach) {
    result.status = StepStatus::kFailure;
    result.error = absl::StrCat(
        "the delegate restarted during step ", step.id,
        "; host steps stop with the delegate (its keeper ends their "
        "processes), so there is nothing to re-attach to and the step's "
        "result is unknown");
    return result;
  }
  if (absl::Status s = MountVolumes(ctx.stage.stage, step); !s.ok()) {
    return fail(s);
  }
  const std::string output_file =
      (stage_dir_ / "engine" / (SafeFileName(step.id) + "-output.env"))
          .string();
  { std::ofstream touch(output_file, std::ios::trunc); }
  absl::StatusOr<ProcessSpec> spec = BuildSpec(ctx, output_file);
  if (!spec.ok()) return fail(spec.status());

  ProcessLauncher& launcher =
      options_.launcher ? *options_.launcher : ProcessLauncher::Default();
  absl::StatusOr<std::unique_ptr<Process>> launched =
      launcher.Launch(*spec, [&ctx](LogStream stream, std::string_view bytes) {
        ctx.output.Write(stream, bytes);
      });
  if (!launched.ok()) return fail(launched.status());
  Process& process = **launched;

  Clock& clock = ctx.stage.clock;
  std::stop_callback on_stop(ctx.stop, [&process] { process.Interrupt(); });
  auto remaining = [&] {
    if (ctx.deadline == absl::InfiniteFuture()) return absl::InfiniteDuration();
    return std::max(ctx.deadline - clock.Now(), absl::ZeroDuration());
  };
  std::optional<ExitInfo> exit;
  std::optional<StepStatus> stopped;
  while (!(exit = process.Wait(remaining())) && !(stopped = StopReason(ctx))) {
  }
  if (stopped) {
    ctx.output.SystemLine(absl::StrCat(
        *stopped == StepStatus::kTimeout ? "step timed out" : "step cancelled",
        "; sending SIGTERM to its processes"));
    process.Signal(SIGTERM);
    const absl::Time kill_at = clock.Now() + options_.grace_period;
    while (!exit && clock.Now() < kill_at) {
      exit = process.Wait(kill_at - clock.Now());
    }
    if (!exit) {
      ctx.output.SystemLine(absl::StrCat(
          "still running after ", absl::FormatDuration(options_.grace_period),
          "; sending SIGKILL"));
      process.Signal(SIGKILL);
      while (!exit) exit = process.Wait(absl::InfiniteDuration());
    }
    result.status = *stopped;
    result.error = *stopped == StepStatus::kTimeout
                       ? absl::StrCat("timed out (", Describe(*exit), ")")
                       : absl::StrCat("cancelled (", Describe(*exit), ")");
    if (exit->term_signal == 0) result.exit_code = exit->exit_code;
    return result;
  }

  if (exit->term_signal == 0) result.exit_code = exit->exit_code;
  if (exit->exit_code != 0 || exit->term_signal != 0) {
    result.status = StepStatus::kFailure;
    result.error = Describe(*exit);
  }
  if (!step.outputs.empty()) {
    std::map<std::string, std::string> written = ReadOutputs(output_file);
    for (const std::string& name : step.outputs) {
      auto it = written.find(name);
      if (it != written.end()) {
        result.outputs[name] = it->second;
      } else if (result.status == StepStatus::kSuccess) {
        ctx.output.SystemLine(absl::StrCat("output ", name,
                                           " was declared but not written to ",
                                           "$HARNESS_OUTPUT_FILE"));
      }
    }
  }
  return result;
}

absl::Status HostExecutor::Cleanup(const StageContext& ctx) {
  (void)ctx;
  if (stage_dir_.empty()) return absl::OkStatus();
  std::error_code ec;
  fs::remove_all(stage_dir_, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat(
        "cannot remove ", stage_dir_.string(), ": ", ec.message()));
  }
  stage_dir_.clear();
  return absl::OkStatus();
}

std::vector<std::string> DefaultBaseEnv() {
  std::vector<std::string> env;
  for (const auto& [key, value] : ProcessEnvironment()) {
    bool hidden = false;
    for (std::string_view name : kHiddenVariables) hidden |= key == name;
    if (!hidden) env.push_back(key + "=" + value);
  }
  return env;
}

}  // namespace

std::vector<std::string> ReapHostLeftovers(
    const std::string& workdir, const std::vector<std::string>& instances,
    const std::string& own_instance, const std::vector<std::string>& resuming) {
  std::vector<std::string> kept;
  if (!own_instance.empty()) {
    for (const std::string& task : resuming) {
      kept.push_back(StageDirPrefix(own_instance, task));
    }
  }
  std::vector<std::string> removed;
  if (instances.empty()) return removed;
  std::error_code ec;
  fs::directory_iterator it(WorkRoot(workdir), ec);
  if (ec) return removed;
  for (const fs::directory_entry& entry : it) {
    const std::string name = entry.path().filename().string();
    if (!absl::StartsWith(name, "delegate-")) continue;
    bool theirs = false;
    for (const std::string& instance : instances) {
      theirs = theirs || absl::StartsWith(name, "delegate-" + instance + "-");
    }
    if (!theirs) continue;
    if (std::any_of(kept.begin(), kept.end(), [&](const std::string& prefix) {
          return IsStageDir(name, prefix);
        })) {
      continue;
    }
    std::error_code rm;
    fs::remove_all(entry.path(), rm);
    if (!rm) removed.push_back("workspace " + entry.path().string());
  }
  return removed;
}

absl::Status RegisterHostExecutor(ExecutorRegistry& registry,
                                  HostExecutorOptions options) {
  auto shared = std::make_shared<HostShared>();
  shared->base_env = options.base_env ? *options.base_env : DefaultBaseEnv();
  ExecutorTraits traits;
  traits.profile = &HostPlatformProfile();
  // The stage directories a crashed earlier run of this instance, and gone
  // instances recorded in the same state directory, left; but those of this
  // instance's stages to be resumed.
  if (!options.state_dir.empty()) {
    traits.on_start = [options](const ExecutorStartup& startup) {
      std::vector<std::string> instances = FindGoneInstances(options.state_dir);
      if (!options.instance.empty()) instances.push_back(options.instance);
      for (const std::string& what :
           ReapHostLeftovers(options.workdir, instances, options.instance,
                             startup.resuming)) {
        startup.log->Info("removed a leftover of an earlier run",
                          {{"what", what}});
      }
    };
  }
  shared->options = std::move(options);
  return registry.Register(
      "host",
      [shared]() -> std::unique_ptr<Executor> {
        return std::make_unique<HostExecutor>(shared);
      },
      std::move(traits));
}

const PlatformProfile& HostPlatformProfile() {
  static constexpr PlatformProfile kProfile = {
      .name = "host",
      .title = "host",
      .instead = "docker",
      .efs_instead = "a container platform (docker, ecs-ec2, ecs-fargate)",
      .containers = false,
      .privileged = false,
      .read_only_root_filesystem = false,
      .host_path = true,
      .efs = false,
      .capability_drop = false,
      .any_capability_add = false,
      .capability_add = {},
      .empty_dir_size_unenforced = "a directory on the host has no size limit",
  };
  return kProfile;
}

}  // namespace delegate

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <system_error>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "delegate/step_runner.h"
#include "runner/identity.h"
#include "runner/step_runner_server.h"

namespace delegate {
namespace {

std::string Get(const EnvMap& env, const std::string& name,
                const std::string& fallback = "") {
  auto it = env.find(name);
  return it == env.end() || it->second.empty() ? fallback : it->second;
}

std::string Dir(const EnvMap& env) {
  return Get(env, "DELEGATE_RUNNER_DIR", "/delegate");
}

// Where the static agent is: DELEGATE_STEP_AGENT, or beside the binary.
std::string AgentSource(const EnvMap& env, const std::string& self_exe) {
  std::string agent = Get(env, "DELEGATE_STEP_AGENT");
  if (!agent.empty()) return agent;
  const std::filesystem::path dir =
      std::filesystem::path(self_exe).parent_path();
  for (const std::filesystem::path& candidate :
       {dir / "delegate-step", dir / "../libexec/delegate/delegate-step",
        dir / "../delegate-step/delegate-step"}) {
    std::error_code ec;
    if (std::filesystem::is_regular_file(candidate, ec)) {
      return candidate.lexically_normal().string();
    }
  }
  return (dir / "delegate-step").string();
}

}  // namespace

absl::Status InstallStepAgent(const EnvMap& env, const std::string& self_exe) {
  const std::string dir = Dir(env);
  const std::string source = AgentSource(env, self_exe);
  const std::string target = dir + "/delegate-step";
  // A name of its own: two installers never rename each other's file.
  const std::string temp = absl::StrCat(target, ".", getpid(), ".tmp");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  std::filesystem::copy_file(
      source, temp, std::filesystem::copy_options::overwrite_existing, ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot put the step agent ", source, " into ", dir, ": ", ec.message(),
        "; set DELEGATE_STEP_AGENT to the static delegate-step program and "
        "DELEGATE_RUNNER_DIR to the volume the task's containers share (the "
        "install container runs as root)"));
  }
  chmod(temp.c_str(), 0755);
  std::filesystem::rename(temp, target, ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot put the step agent into ", dir, ": ", ec.message()));
  }
  // Task volumes start root-owned 0755: the runner (not root) makes its
  // socket in `dir`, and steps of any user write the shared ones. Steps
  // mount `dir` read-only.
  chmod(dir.c_str(), 01777);
  for (absl::string_view shared : absl::StrSplit(
           Get(env, "DELEGATE_RUNNER_SHARED"), ',', absl::SkipEmpty())) {
    chmod(std::string(shared).c_str(), 01777);
  }
  return absl::OkStatus();
}

absl::Status ServeStepRunner(const EnvMap& env, const std::string& self_exe) {
  runner::StepRunnerServerOptions options;
  options.client_sha256 = Get(env, "DELEGATE_RUNNER_CLIENT_SHA256");
  if (!runner::IsSha256Hex(options.client_sha256)) {
    return absl::InvalidArgumentError(
        "DELEGATE_RUNNER_CLIENT_SHA256: set it to the SHA-256 (64 hex digits) "
        "of the client certificate of the delegate that started this task");
  }
  options.listen = Get(env, "DELEGATE_RUNNER_LISTEN", "0.0.0.0:9079");
  if (std::string idle = Get(env, "DELEGATE_RUNNER_IDLE_SECONDS");
      !idle.empty()) {
    int64_t seconds = 0;
    if (!absl::SimpleAtoi(idle, &seconds) || seconds <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "DELEGATE_RUNNER_IDLE_SECONDS: a positive number of seconds, got '",
          idle, "'"));
    }
    options.idle_timeout = absl::Seconds(seconds);
  }
  const std::string dir = Dir(env);
  // The agent goes into the shared volume first, unless the task's install
  // container put it there already.
  if (access((dir + "/delegate-step").c_str(), X_OK) != 0) {
    if (absl::Status s = InstallStepAgent(env, self_exe); !s.ok()) return s;
  }
  options.agent_socket = dir + "/runner.sock";
  absl::StatusOr<std::unique_ptr<runner::StepRunnerServer>> server =
      runner::StepRunnerServer::Start(std::move(options));
  if (!server.ok()) return server.status();
  fprintf(stderr, "delegate runner: listening on port %d\n", (*server)->port());
  (*server)->Wait();
  return absl::OkStatus();
}

absl::Status CheckStepRunner(const EnvMap& env) {
  const std::string socket = Dir(env) + "/runner.sock";
  struct stat st;
  if (stat(socket.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) {
    return absl::UnavailableError(
        absl::StrCat("no socket at ", socket, " yet"));
  }
  return absl::OkStatus();
}

}  // namespace delegate

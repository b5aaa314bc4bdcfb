// The `delegate` binary: flags and environment in, a runtime built from the
// library, a stage run or checked, an exit code out.
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "delegate/builtin_executors.h"
#include "delegate/builtins.h"
#include "delegate/config.h"
#include "delegate/console_log_sink.h"
#include "delegate/env.h"
#include "delegate/event_log.h"
#include "delegate/instance.h"
#include "delegate/manager.h"
#include "delegate/policy.h"
#include "delegate/scheduler.h"
#include "delegate/server.h"
#include "delegate/stage_file.h"
#include "delegate/stage_run.h"
#include "delegate/step_runner.h"
#include "delegate/version.h"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitInvalid = 2;

constexpr const char* kUsage = R"(usage: delegate COMMAND [ARGS]

Commands:
  server         connect to the manager (HARNESS_URL, or --manager) and run
                 the stages it sends, and with --runtime-listen serve
                 RuntimeService (gRPC), until SIGTERM (a second one cancels
                 the open stages); serves /health, /ready and /metrics on
                 HTTPS_BIND (default :3000)
  exec FILE      run a stage file (YAML or JSON) on this machine
  validate FILE  check a stage file and print every problem; runs nothing
  config         print the effective configuration (the token is never shown)
  cleanup        remove what crashed or killed runs of this delegate left on
                 the Docker Engine (containers, networks, volumes): those of
                 the instances recorded in DELEGATE_STATE_DIR whose process
                 is gone; with --all-instances, everything labelled with
                 this HARNESS_NAME, live delegates' containers too
  runner         run in an ECS stage task: serve its steps to the delegate
                 that started it (DELEGATE_RUNNER_CLIENT_SHA256) through
                 the step containers' delegate-step; with --install, only
                 put delegate-step into DELEGATE_RUNNER_DIR; with --check,
                 the task's health check (ready for the step containers)
  version        print the version and the build's git commit

Options:
  --env-file FILE        read KEY=VALUE settings (the environment wins)
  --result OUT.json      exec: write the stage result as JSON
  --manager URL          server: the manager; default HARNESS_URL (Harness
                         protocol); 'none': no manager (and no Harness
                         credentials needed), only --runtime-listen
  --runtime-listen ADDR  server: serve RuntimeService (proto/delegate/v1/
                         runtime.proto) on ADDR: HOST:PORT on a loopback
                         address (port 0: a free one) or unix:PATH; the bound
                         address is logged ("serving RuntimeService"). Its
                         stages get MAX_STAGES slots of their own
  --runtime-tls-cert FILE, --runtime-tls-key FILE
                         server: serve RuntimeService over TLS with this PEM
                         certificate and key (needed on an address that is
                         not loopback)
  --runtime-client-ca FILE
                         server: with TLS, require client certificates
                         signed by this PEM CA (mutual TLS)
  --drain-timeout DUR    exec: on SIGTERM or SIGINT, let the stage run this
                         long before cancelling it (default 30s); a second
                         signal cancels at once
  --all-instances        cleanup: every instance of this name, live ones too

Environment: HARNESS_ACCOUNT_ID, HARNESS_TOKEN, HARNESS_URL, HARNESS_NAME,
HARNESS_TAGS, MAX_STAGES, PARALLEL_WORKERS, POLL_INTERVAL_MILLISECS,
IDLE_WAIT_SECS_BEFORE_STOP, CLEANUP_GRACE_PERIOD_SECONDS, HARNESS_WORKDIR,
DELEGATE_STATE_DIR, DELEGATE_LOG_SPOOL_MIB, HARNESS_CERTS_DIR,
HARNESS_CLIENT_CERT_FILE, HARNESS_CLIENT_KEY_FILE,
PROXY_HOST/PORT/SCHEME/USER/PASSWORD, NO_PROXY, HTTPS_BIND (README.md lists
every variable and its aliases).

Exit status: 0 every step succeeded (server: drained and unregistered), 1 a
step failed, timed out or was cancelled (server: the manager refused the
delegate), 2 invalid input or configuration.
)";

struct Args {
  std::string command;
  std::string file;
  std::string env_file;
  std::string result_file;
  std::string manager;
  std::string runtime_listen;
  std::string runtime_tls_cert;
  std::string runtime_tls_key;
  std::string runtime_client_ca;
  absl::Duration drain = absl::Seconds(30);
  bool all_instances = false;
  bool check = false;    // runner --check
  bool install = false;  // runner --install
};

// The options that take a string, as --NAME VALUE or --NAME=VALUE.
struct StringFlag {
  const char* name;
  const char* needs;  // for the error when the value is missing
  std::string Args::*field;
};
constexpr StringFlag kStringFlags[] = {
    {"--env-file", "a FILE", &Args::env_file},
    {"--result", "a FILE", &Args::result_file},
    {"--manager", "a URL (or none)", &Args::manager},
    {"--runtime-listen", "an ADDR (127.0.0.1:7000, unix:PATH)",
     &Args::runtime_listen},
    {"--runtime-tls-cert", "a FILE", &Args::runtime_tls_cert},
    {"--runtime-tls-key", "a FILE", &Args::runtime_tls_key},
    {"--runtime-client-ca", "a FILE", &Args::runtime_client_ca},
};

int Usage(const std::string& problem) {
  fprintf(stderr, "delegate: %s\nRun 'delegate --help' for usage.\n",
          problem.c_str());
  return kExitInvalid;
}

// Returns an exit code when parsing ends the program.
std::optional<int> ParseArgs(int argc, char** argv, Args& args) {
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](const std::string& flag) -> std::optional<std::string> {
      if (absl::StartsWith(arg, flag + "=")) return arg.substr(flag.size() + 1);
      if (arg == flag && i + 1 < argc) return std::string(argv[++i]);
      return std::nullopt;
    };
    if (arg == "-h" || arg == "--help" || arg == "help") {
      fputs(kUsage, stdout);
      return kExitOk;
    }
    const StringFlag* string_flag = nullptr;
    for (const StringFlag& f : kStringFlags) {
      if (absl::StartsWith(arg, f.name)) string_flag = &f;
    }
    if (string_flag != nullptr) {
      auto v = value(string_flag->name);
      if (!v || v->empty()) {
        return Usage(
            absl::StrCat(string_flag->name, " needs ", string_flag->needs));
      }
      args.*(string_flag->field) = *v;
    } else if (absl::StartsWith(arg, "--drain-timeout")) {
      auto v = value("--drain-timeout");
      if (!v || !absl::ParseDuration(*v, &args.drain) ||
          args.drain < absl::ZeroDuration()) {
        return Usage("--drain-timeout: expected a duration like 30s");
      }
    } else if (arg == "--all-instances") {
      args.all_instances = true;
    } else if (arg == "--check") {
      args.check = true;
    } else if (arg == "--install") {
      args.install = true;
    } else if (absl::StartsWith(arg, "-")) {
      return Usage(absl::StrCat("unknown option ", arg));
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.empty()) {
    fputs(kUsage, stderr);
    return kExitInvalid;
  }
  args.command = positional[0];
  const bool wants_file = args.command == "exec" || args.command == "validate";
  if (wants_file && positional.size() != 2) {
    return Usage(absl::StrCat(args.command, " needs exactly one stage FILE"));
  }
  if (!wants_file && positional.size() != 1) {
    return Usage(absl::StrCat("unexpected argument ", positional[1]));
  }
  if (wants_file) args.file = positional[1];
  const bool runtime_tls = !args.runtime_tls_cert.empty() ||
                           !args.runtime_tls_key.empty() ||
                           !args.runtime_client_ca.empty();
  if ((!args.runtime_listen.empty() || runtime_tls) &&
      args.command != "server") {
    return Usage("--runtime-* options go with the server command");
  }
  if (runtime_tls && args.runtime_listen.empty()) {
    return Usage("--runtime-tls-*/--runtime-client-ca need --runtime-listen");
  }
  return std::nullopt;
}

absl::StatusOr<delegate::DelegateConfig> Configure(const Args& args,
                                                   delegate::ConfigNeed need) {
  delegate::EnvMap file;
  if (!args.env_file.empty()) {
    auto read = delegate::ReadEnvFile(args.env_file);
    if (!read.ok()) return read.status();
    file = *std::move(read);
  }
  absl::StatusOr<delegate::DelegateConfig> config =
      delegate::LoadConfig(delegate::ProcessEnvironment(), file, need);
  // The token is in the configuration now: no one reads it from this
  // process's environment again, neither getenv nor /proc/<pid>/environ.
  delegate::ScrubEnvironment(delegate::TokenVariables());
  return config;
}

absl::Status WriteFileAtomically(const std::string& path,
                                 const std::string& content) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << content << "\n";
    if (!out) {
      return absl::PermissionDeniedError(
          absl::StrCat("--result: cannot write ", path));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat("--result: cannot write ", path, ": ", ec.message()));
  }
  return absl::OkStatus();
}

std::string TaskIdFor(const delegate::Stage& stage) {
  return absl::StrCat(stage.name, "-", getpid(), "-",
                      absl::ToUnixMillis(absl::Now()));
}

// The operator policy from DELEGATE_POLICY_*, or nullopt after saying why.
std::optional<delegate::OperatorPolicy> LoadPolicyOrSay() {
  absl::StatusOr<delegate::OperatorPolicy> policy =
      delegate::LoadOperatorPolicy(delegate::ProcessEnvironment());
  if (!policy.ok()) {
    fprintf(stderr, "delegate: %s\n",
            std::string(policy.status().message()).c_str());
    return std::nullopt;
  }
  return *policy;
}

// Blocks SIGTERM and SIGINT in every thread (children reset the mask) and
// calls `on_signal` with each one from a thread of its own until `stop`.
class SignalWatcher {
 public:
  explicit SignalWatcher(std::function<void(int signal, int count)> on_signal) {
    sigemptyset(&signals_);
    sigaddset(&signals_, SIGTERM);
    sigaddset(&signals_, SIGINT);
    sigaddset(&signals_, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &signals_, nullptr);
    thread_ = std::thread([this, on_signal] {
      int received = 0;
      for (int count = 0;; ++count) {
        if (sigwait(&signals_, &received) != 0) continue;
        if (received == SIGUSR1) return;
        on_signal(received, count);
      }
    });
  }
  ~SignalWatcher() {
    pthread_kill(thread_.native_handle(), SIGUSR1);
    thread_.join();
  }

 private:
  sigset_t signals_;
  std::thread thread_;
};

int Serve(const Args& args) {
  absl::StatusOr<delegate::DelegateConfig> config =
      Configure(args, args.manager.empty() ? delegate::ConfigNeed::kServer
                                           : delegate::ConfigNeed::kLocal);
  if (!config.ok()) {
    fprintf(stderr, "delegate: %s\n",
            std::string(config.status().message()).c_str());
    return kExitInvalid;
  }
  std::optional<delegate::OperatorPolicy> policy = LoadPolicyOrSay();
  if (!policy) return kExitInvalid;
  // The server's instance is kept in the state directory: restarted, it is
  // the same instance and removes what its crashed run left.
  absl::StatusOr<std::unique_ptr<delegate::InstanceLease>> lease =
      delegate::InstanceLease::Acquire(config->StateDir(), true);
  if (!lease.ok()) {
    fprintf(stderr, "delegate: %s\n",
            std::string(lease.status().message()).c_str());
    return kExitInvalid;
  }
  config->instance = (*lease)->id();
  delegate::DelegateServerOptions options;
  options.config = *config;
  options.policy = *policy;
  options.manager = args.manager;
  options.runtime_listen = args.runtime_listen;
  options.runtime_tls_cert_file = args.runtime_tls_cert;
  options.runtime_tls_key_file = args.runtime_tls_key;
  options.runtime_client_ca_file = args.runtime_client_ca;
  delegate::ExecutorRegistry executors;
  delegate::ManagerRegistry managers;
  if (absl::Status s = delegate::RegisterBuiltins(
          *config, delegate::ProcessEnvironment(), executors, &managers);
      !s.ok()) {
    fprintf(stderr, "delegate: %s\n", std::string(s.message()).c_str());
    return kExitInvalid;
  }
  delegate::DelegateServer server(std::move(options), executors, managers);
  SignalWatcher signals([&](int signal, int count) {
    delegate::EventLog::Stdout().Info(
        count == 0 ? "signal received: draining" : "signal received again",
        {{"signal", strsignal(signal)}});
    server.Drain();
  });
  absl::Status ran = server.Run();
  if (!ran.ok()) {
    fprintf(stderr, "delegate: %s\n", std::string(ran.message()).c_str());
    return absl::IsInvalidArgument(ran) ? kExitInvalid : kExitFailed;
  }
  return kExitOk;
}

int Run(const Args& args) {
  if (args.command == "version") {
    printf("delegate %s (commit %s)\n",
           std::string(delegate::Version()).c_str(),
           std::string(delegate::GitCommit()).c_str());
    return kExitOk;
  }
  if (args.command == "server") return Serve(args);
  if (args.command == "runner") {
    const delegate::EnvMap env = delegate::ProcessEnvironment();
    std::error_code ec;
    const std::string self =
        std::filesystem::read_symlink("/proc/self/exe", ec).string();
    absl::Status s = args.check     ? delegate::CheckStepRunner(env)
                     : args.install ? delegate::InstallStepAgent(env, self)
                                    : delegate::ServeStepRunner(env, self);
    if (!s.ok()) {
      fprintf(stderr, "delegate runner: %s\n",
              std::string(s.message()).c_str());
      return args.check ? kExitFailed : kExitInvalid;
    }
    return kExitOk;
  }
  absl::StatusOr<delegate::DelegateConfig> config =
      Configure(args, delegate::ConfigNeed::kLocal);
  if (!config.ok()) {
    fprintf(stderr, "delegate: %s\n",
            std::string(config.status().message()).c_str());
    return kExitInvalid;
  }
  for (const std::string& warning : config->warnings) {
    fprintf(stderr, "delegate: warning: %s\n", warning.c_str());
  }
  if (args.command == "config") {
    fputs(config->Dump().c_str(), stdout);
    return kExitOk;
  }
  delegate::DockerExecutorOptions docker;
  docker.grace_period = config->cleanup_grace_period;
  if (args.command == "cleanup") {
    const std::string state_dir = config->StateDir();
    const std::vector<std::string> gone =
        delegate::FindGoneInstances(state_dir);
    std::vector<std::string> removed;
    std::vector<absl::Status> errors;
    auto on_docker = args.all_instances
                         ? delegate::ReapDockerLeftovers(docker, config->name)
                         : delegate::ReapDockerInstances(docker, gone);
    if (on_docker.ok()) {
      removed = *std::move(on_docker);
    } else {
      errors.push_back(on_docker.status());
    }
    // Stage directories on this machine: only by instance, since the work
    // root may be shared by delegates of other names.
    for (std::string& what :
         delegate::ReapHostLeftovers(config->workdir, gone)) {
      removed.push_back(std::move(what));
    }
    // ECS step tasks and task definitions, when ECS is set up: of this
    // instance, and of stopped delegate tasks of the same name.
    if (absl::StatusOr<delegate::EcsExecutorOptions> ecs =
            delegate::LoadEcsExecutorOptions(delegate::ProcessEnvironment());
        !ecs.ok()) {
      errors.push_back(ecs.status());
    } else if (absl::Status s = delegate::ReapEcsLeftovers(
                   *std::move(ecs), config->name, &removed);
               !s.ok()) {
      errors.push_back(s);
    }
    for (const std::string& what : removed) {
      printf("removed %s\n", what.c_str());
    }
    for (const absl::Status& s : errors) {
      fprintf(stderr, "delegate: cleanup: %s\n",
              std::string(s.message()).c_str());
    }
    if (!errors.empty()) return kExitFailed;
    for (const std::string& id : gone) delegate::ForgetInstance(state_dir, id);
    printf("delegate %s: %zu leftovers removed\n", config->name.c_str(),
           removed.size());
    return kExitOk;
  }
  if (args.command != "exec" && args.command != "validate") {
    return Usage(absl::StrCat("unknown command '", args.command, "'"));
  }

  absl::StatusOr<delegate::Stage> stage = delegate::LoadStageFile(args.file);
  if (!stage.ok()) {
    fprintf(stderr, "%s\n", std::string(stage.status().message()).c_str());
    return kExitInvalid;
  }
  std::optional<delegate::OperatorPolicy> policy = LoadPolicyOrSay();
  if (!policy) return kExitInvalid;
  // One run, one instance: if this process is killed, `delegate cleanup`
  // finds what it left by this id, and leaves live runs of the same name
  // alone. Without a usable state directory the stage still runs.
  std::unique_ptr<delegate::InstanceLease> lease;
  if (args.command == "exec") {
    auto acquired = delegate::InstanceLease::Acquire(config->StateDir(), false);
    if (acquired.ok()) {
      lease = *std::move(acquired);
      config->instance = lease->id();
    } else {
      fprintf(stderr,
              "delegate: warning: %s; a crash of this run leaves containers "
              "that only `delegate cleanup --all-instances` removes\n",
              std::string(acquired.status().message()).c_str());
    }
  }
  delegate::ExecutorRegistry registry;
  if (absl::Status s = delegate::RegisterBuiltins(
          *config, delegate::ProcessEnvironment(), registry, nullptr);
      !s.ok()) {
    fprintf(stderr, "delegate: %s\n", std::string(s.message()).c_str());
    return kExitInvalid;
  }
  auto refused = [&](const absl::Status& s) {
    for (absl::string_view line : absl::StrSplit(s.message(), '\n')) {
      fprintf(stderr, "%s: %s\n", args.file.c_str(), std::string(line).c_str());
    }
    return kExitInvalid;
  };
  if (args.command == "validate") {
    std::vector<std::string> notes;
    if (absl::Status s =
            delegate::ValidateForPlatform(registry, *stage, *policy, &notes);
        !s.ok()) {
      return refused(s);
    }
    printf("%s: stage %s is valid for platform %s (%zu steps)\n",
           args.file.c_str(), stage->name.c_str(), stage->platform.c_str(),
           stage->steps.size());
    for (const std::string& note : notes) {
      printf("%s: note: %s\n", args.file.c_str(), note.c_str());
    }
    return kExitOk;
  }

  // Every thread but the watcher's, and so every child, starts with SIGTERM
  // and SIGINT blocked (children reset it): made before the scheduler.
  std::atomic<delegate::StageRun*> current{nullptr};
  std::optional<SignalWatcher> signals;
  signals.emplace([&](int signal, int count) {
    delegate::StageRun* run = current.load();
    if (run == nullptr) return;
    if (count == 0) {
      fprintf(stderr,
              "delegate: %s received: finishing the stage (up to %s), then "
              "cleaning up; send it again to cancel now\n",
              strsignal(signal), absl::FormatDuration(args.drain).c_str());
    } else {
      fprintf(stderr, "delegate: %s received again: cancelling\n",
              strsignal(signal));
    }
    run->Interrupt(args.drain);
  });

  delegate::ConsoleLogSink sink(stdout);
  delegate::SchedulerOptions options;
  options.registry = &registry;
  options.delegate_name = config->name;
  options.max_stages = config->max_stages;
  options.policy = *policy;
  options.masked_values = config->MaskedValues();
  delegate::Scheduler scheduler(options);

  delegate::StageTask task;
  task.id = TaskIdFor(*stage);
  task.stage = *std::move(stage);
  task.observer = delegate::ObserveWith({.log = &sink});
  delegate::StageResult final_result;
  {
    // The stage is checked (policy included) when it is submitted.
    delegate::StageRun run(scheduler, std::move(task));
    if (!run.submitted().ok()) return refused(run.submitted());
    current = &run;
    final_result = run.Wait();
    signals.reset();  // no signal reaches `run` from here on
  }
  scheduler.Shutdown(absl::ZeroDuration());

  fputs("\n", stdout);
  fputs(delegate::FormatSummary(final_result).c_str(), stdout);
  fflush(stdout);
  if (!args.result_file.empty()) {
    if (absl::Status s = WriteFileAtomically(
            args.result_file, delegate::StageResultToJson(final_result));
        !s.ok()) {
      fprintf(stderr, "delegate: %s\n", std::string(s.message()).c_str());
      return kExitFailed;
    }
  }
  return final_result.status == delegate::StepStatus::kSuccess ? kExitOk
                                                               : kExitFailed;
}

}  // namespace

int main(int argc, char** argv) {
  // Not dumpable: /proc/<pid>/environ, mem, fd/ and the like belong to root,
  // so a step running as the delegate's own (non-root) user cannot read its
  // memory, token included. The price: no core dumps, and no ptrace by the
  // same user (a debugger needs root or CAP_SYS_PTRACE).
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  Args args;
  if (std::optional<int> code = ParseArgs(argc, argv, args)) return *code;
  return Run(args);
}

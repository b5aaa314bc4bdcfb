// Container steps on the real Docker Engine, next to the docker CLI doing the
// same. BM_DockerStep: a one-step stage (`true`) per iteration through the
// scheduler and the docker executor (network, volumes, container, cleanup),
// against `docker run --rm IMAGE true`. BM_DockerTenSteps: a ten-step stage
// with and without reuse_containers, against ten `docker run --rm`.
// items_per_second counts steps. Each benchmark is skipped with an error when
// no engine answers or the image is missing (run scripts/docker-test-setup.sh).
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "delegate/builtin_executors.h"
#include "delegate/scheduler.h"
#include "executor/docker/docker_client.h"

extern char** environ;

namespace delegate {
namespace {

constexpr const char* kImage = "delegate-test/busybox:latest";
constexpr const char* kDockerCli = "/usr/bin/docker";

class NullSink final : public LogSink {
 public:
  void Append(const LogLine&) override {}
};

// OK when an engine answers and has the image; checked once per process.
const absl::Status& EngineReady() {
  static const absl::Status* const ready = [] {
    const char* host = getenv("DOCKER_HOST");
    absl::StatusOr<docker::Endpoint> endpoint =
        docker::ParseDockerHost(host != nullptr ? host : "");
    if (!endpoint.ok()) return new absl::Status(endpoint.status());
    auto client = docker::DockerClient::Connect(*endpoint, absl::Seconds(5));
    if (!client.ok()) {
      return new absl::Status(absl::UnavailableError(
          absl::StrCat("no Docker Engine: ", client.status().message(),
                       "; run scripts/docker-test-setup.sh")));
    }
    absl::StatusOr<bool> exists = (*client)->ImageExists(kImage);
    if (!exists.ok()) return new absl::Status(exists.status());
    if (!*exists) {
      return new absl::Status(absl::FailedPreconditionError(absl::StrCat(
          "image ", kImage, " is missing; run scripts/docker-test-setup.sh")));
    }
    return new absl::Status();
  }();
  return *ready;
}

bool SkipUnlessEngine(benchmark::State& state) {
  const absl::Status& ready = EngineReady();
  if (ready.ok()) return false;
  state.SkipWithError(std::string(ready.message()).c_str());
  return true;
}

Stage TrueStage(int steps, bool reuse) {
  Stage stage;
  stage.name = "docker-bench";
  stage.platform = "docker";
  stage.reuse_containers = reuse;
  for (int i = 0; i < steps; ++i) {
    Step step;
    step.id = "s" + std::to_string(i);
    step.image = kImage;
    step.pull = PullPolicy::kIfNotPresent;
    step.commands = {"true"};
    stage.steps.push_back(std::move(step));
  }
  return stage;
}

// Runs `stage` through the scheduler and the docker executor once per
// iteration.
void RunStages(benchmark::State& state, const Stage& stage) {
  if (SkipUnlessEngine(state)) return;
  ExecutorRegistry registry;
  DockerExecutorOptions docker;
  docker.grace_period = absl::Seconds(2);
  if (absl::Status s = RegisterDockerExecutor(registry, docker); !s.ok()) {
    state.SkipWithError(std::string(s.message()).c_str());
    return;
  }
  // Until the executor supports a setting (reuse_containers), validation
  // refuses it: report that instead of timing failures.
  if (absl::Status s = ValidateForPlatform(registry, stage); !s.ok()) {
    state.SkipWithError(std::string(s.message()).c_str());
    return;
  }
  SchedulerOptions options;
  options.registry = &registry;
  options.delegate_name = "docker-bench-" + std::to_string(getpid());
  Scheduler scheduler(options);
  int64_t next = 0;
  for (auto _ : state) {
    std::promise<StageResult> done;
    StageTask task;
    task.id = absl::StrCat("bench-", next++);
    task.stage = stage;
    task.observer = ObserveWith(
        {.done = [&done](const StageResult& r) { done.set_value(r); }});
    if (absl::Status s = scheduler.Submit(std::move(task)); !s.ok()) {
      state.SkipWithError(std::string(s.message()).c_str());
      break;
    }
    StageResult r = done.get_future().get();
    if (r.status != StepStatus::kSuccess) {
      state.SkipWithError(StageResultToJson(r).c_str());
      break;
    }
  }
  scheduler.Shutdown(absl::Seconds(10));
  state.SetItemsProcessed(state.iterations() *
                          static_cast<int64_t>(stage.steps.size()));
}

// `docker run --rm IMAGE true`, output discarded; its exit status.
int DockerRunTrue() {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  std::vector<std::string> args = {kDockerCli, "run", "--rm", kImage, "true"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  int rc =
      posix_spawn(&pid, kDockerCli, &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return -1;
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// `runs` x `docker run --rm` per iteration.
void RunCli(benchmark::State& state, int runs) {
  if (SkipUnlessEngine(state)) return;
  if (access(kDockerCli, X_OK) != 0) {
    state.SkipWithError(absl::StrCat(kDockerCli, " is missing").c_str());
    return;
  }
  for (auto _ : state) {
    bool failed = false;
    for (int i = 0; i < runs && !failed; ++i) {
      if (int rc = DockerRunTrue(); rc != 0) {
        state.SkipWithError(
            absl::StrCat("docker run --rm ", kImage, " true: exit ", rc)
                .c_str());
        failed = true;
      }
    }
    if (failed) break;
  }
  state.SetItemsProcessed(state.iterations() * runs);
}

enum class Mode { kExecutor, kStepOnly, kReuse, kNoReuse, kCli };

struct NullOutput final : OutputWriter {
  void Write(LogStream, std::string_view) override {}
  void Flush() override {}
};

// The step alone: one stage initialized before the loop (network, volumes),
// then a `true` container per iteration, on the calling thread.
void RunSteps(benchmark::State& state) {
  if (SkipUnlessEngine(state)) return;
  ExecutorRegistry registry;
  (void)RegisterDockerExecutor(registry, {});
  const Stage stage = TrueStage(1, /*reuse=*/false);
  const std::string task_id = "bench-steps", name = "docker-bench-steps";
  NullOutput output;
  std::unique_ptr<Executor> executor = registry.Create("docker");
  const StageContext ctx{
      stage, task_id, name, output, Clock::Real(), {}, absl::InfiniteFuture()};
  if (absl::Status s = executor->Initialize(ctx); !s.ok()) {
    state.SkipWithError(std::string(s.message()).c_str());
    (void)executor->Cleanup(ctx);
    return;
  }
  const StepContext step{ctx,    stage.steps[0],         0,
                         output, absl::InfiniteFuture(), {}};
  for (auto _ : state) {
    StepResult r = executor->Execute(step);
    if (r.status != StepStatus::kSuccess) {
      state.SkipWithError(r.error.c_str());
      break;
    }
  }
  (void)executor->Cleanup(ctx);
  state.SetItemsProcessed(state.iterations());
}

void BM_DockerStep(benchmark::State& state, Mode mode) {
  if (mode == Mode::kCli) {
    RunCli(state, 1);
  } else if (mode == Mode::kStepOnly) {
    RunSteps(state);
  } else {
    RunStages(state, TrueStage(1, /*reuse=*/false));
  }
}

void BM_DockerTenSteps(benchmark::State& state, Mode mode) {
  switch (mode) {
    case Mode::kReuse:
      RunStages(state, TrueStage(10, /*reuse=*/true));
      break;
    case Mode::kNoReuse:
    case Mode::kExecutor:
    case Mode::kStepOnly:
      RunStages(state, TrueStage(10, /*reuse=*/false));
      break;
    case Mode::kCli:
      RunCli(state, 10);
      break;
  }
}

BENCHMARK_CAPTURE(BM_DockerStep, executor, Mode::kExecutor)
    ->Iterations(10)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_DockerStep, executor_step, Mode::kStepOnly)
    ->Iterations(10)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_DockerStep, cli, Mode::kCli)
    ->Iterations(10)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_DockerTenSteps, reuse, Mode::kReuse)
    ->Iterations(3)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_DockerTenSteps, no_reuse, Mode::kNoReuse)
    ->Iterations(3)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_DockerTenSteps, cli, Mode::kCli)
    ->Iterations(3)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace delegate

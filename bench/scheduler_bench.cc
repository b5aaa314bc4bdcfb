// BM_SchedulerDispatch: no-op stages through the scheduler and the executor
// registry. BM_HostStepOverhead: a `true` step through the host executor,
// next to BM_PosixSpawnTrue, the bare spawn of the same command.
#include <spawn.h>
#include <sys/wait.h>

#include <atomic>
#include <filesystem>
#include <future>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "benchmark/benchmark.h"
#include "delegate/builtin_executors.h"
#include "delegate/scheduler.h"

extern char** environ;

namespace delegate {
namespace {

class NullSink final : public LogSink {
 public:
  void Append(const LogLine&) override {}
};

class NoopExecutor final : public Executor {
 public:
  absl::Status Initialize(const StageContext&) override {
    return absl::OkStatus();
  }
  StepResult Execute(const StepContext&) override { return {}; }
  absl::Status Cleanup(const StageContext&) override {
    return absl::OkStatus();
  }
};

// Waits until `n` stages have reported.
class Countdown {
 public:
  void Reset(int64_t n) {
    absl::MutexLock lock(&mu_);
    left_ = n;
  }
  void Done() {
    absl::MutexLock lock(&mu_);
    --left_;
  }
  void Wait() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](int64_t* left) { return *left == 0; }, &left_));
  }

 private:
  absl::Mutex mu_;
  int64_t left_ = 0;
};

void BM_SchedulerDispatch(benchmark::State& state) {
  const int64_t batch = 10000;
  ExecutorRegistry registry;
  (void)registry.Register("noop",
                          [] { return std::make_unique<NoopExecutor>(); });
  NullSink sink;
  SchedulerOptions options;
  options.registry = &registry;
  options.log_sink = &sink;
  if (state.range(0) > 0) options.max_stages = static_cast<int>(state.range(0));
  Scheduler scheduler(options);
  Stage stage;
  stage.name = "noop";
  stage.platform = "noop";
  Step step;
  step.id = "step";
  step.commands = {"true"};
  stage.steps.push_back(step);
  Countdown countdown;
  int64_t next = 0;
  for (auto _ : state) {
    countdown.Reset(batch);
    for (int64_t i = 0; i < batch; ++i) {
      StageTask task;
      task.id = absl::StrCat("t", next++);
      task.stage = stage;
      task.on_done = [&countdown](const StageResult&) { countdown.Done(); };
      if (!scheduler.Submit(std::move(task)).ok()) {
        state.SkipWithError("submit failed");
        return;
      }
    }
    countdown.Wait();
  }
  state.SetItemsProcessed(state.iterations() * batch);
}
// 0: MAX_STAGES unset.
BENCHMARK(BM_SchedulerDispatch)
    ->Arg(0)
    ->Arg(2)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

void BM_HostStepOverhead(benchmark::State& state) {
  ExecutorRegistry registry;
  HostExecutorOptions host;
  host.workdir = std::filesystem::temp_directory_path() / "delegate-bench";
  (void)RegisterHostExecutor(registry, host);
  NullSink sink;
  SchedulerOptions options;
  options.registry = &registry;
  options.log_sink = &sink;
  Scheduler scheduler(options);
  Stage stage;
  stage.name = "host";
  Step step;
  step.id = "true";
  step.commands = {"true"};
  stage.steps.push_back(step);
  int64_t next = 0;
  for (auto _ : state) {
    std::promise<StageResult> done;
    StageTask task;
    task.id = absl::StrCat("h", next++);
    task.stage = stage;
    task.on_done = [&done](const StageResult& r) { done.set_value(r); };
    (void)scheduler.Submit(std::move(task));
    if (done.get_future().get().status != StepStatus::kSuccess) {
      state.SkipWithError("step failed");
      return;
    }
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HostStepOverhead)->UseRealTime()->Unit(benchmark::kMicrosecond);

// The same command the host step runs, spawned bare: /bin/sh -c true.
void BM_PosixSpawnTrue(benchmark::State& state) {
  char sh[] = "/bin/sh", c[] = "-c", t[] = "true";
  char* argv[] = {sh, c, t, nullptr};
  for (auto _ : state) {
    pid_t pid;
    if (posix_spawn(&pid, sh, nullptr, nullptr, argv, environ) != 0) {
      state.SkipWithError("posix_spawn failed");
      return;
    }
    int status;
    waitpid(pid, &status, 0);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PosixSpawnTrue)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace delegate

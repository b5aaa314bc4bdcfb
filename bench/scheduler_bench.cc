// BM_SchedulerDispatch: no-op stages through the scheduler and the executor
// registry. BM_HostStepOverhead: a `true` step through the host executor,
// next to BM_PosixSpawnTrue, the bare spawn of the same command.
#include <spawn.h>
#include <sys/wait.h>

#include <atomic>
#include <filesystem>
#include <future>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "alloc_count.h"
#include "bench_support.h"
#include "benchmark/benchmark.h"
#include "delegate/builtin_executors.h"
#include "delegate/scheduler.h"

extern char** environ;

namespace delegate {
namespace {

using bench::NoopExecutor;
using bench::NullSink;

// Waits until `n` stages have reported. The count is atomic so that the
// workers do not contend on a lock the scheduler does not have.
class Countdown {
 public:
  void Reset(int64_t n) { left_.store(n); }
  void Done() {
    if (left_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      absl::MutexLock lock(&mu_);
      zero_.SignalAll();
    }
  }
  void Wait() {
    absl::MutexLock lock(&mu_);
    while (left_.load(std::memory_order_acquire) != 0) zero_.Wait(&mu_);
  }

 private:
  std::atomic<int64_t> left_{0};
  absl::Mutex mu_;
  absl::CondVar zero_;
};

// A scheduler of no-op stages whose one observer counts results down, as a
// source that counts results would. `max_stages` 0 leaves MAX_STAGES unset.
struct NoopScheduler {
  explicit NoopScheduler(int64_t max_stages) {
    (void)registry.Register("noop",
                            [] { return std::make_unique<NoopExecutor>(); });
    SchedulerOptions options;
    options.registry = &registry;
    if (max_stages > 0) options.max_stages = static_cast<int>(max_stages);
    scheduler.emplace(options);
  }
  // The next task: a fresh id, the no-op stage, the counting observer.
  StageTask Task() {
    StageTask task;
    task.id = absl::StrCat("t", next++);
    task.stage = stage;
    task.observer = observer;
    return task;
  }

  ExecutorRegistry registry;
  const Stage stage = bench::NoopStage();
  Countdown countdown;
  const std::shared_ptr<StageObserver> observer =
      ObserveWith({.done = [this](const StageResult&) { countdown.Done(); }});
  int64_t next = 0;
  std::optional<Scheduler> scheduler;  // last: it goes first
};

void BM_SchedulerDispatch(benchmark::State& state) {
  const int64_t batch = 10000;
  NoopScheduler noop(state.range(0));
  Scheduler& scheduler = *noop.scheduler;
  // range(1): how many tasks go to the scheduler per call (1: Submit, more:
  // SubmitAll, as a poll that returns several events would).
  const int64_t per_call = state.range(1);
  std::vector<StageTask> tasks;
  for (auto _ : state) {
    noop.countdown.Reset(batch);
    for (int64_t i = 0; i < batch; ++i) {
      StageTask task = noop.Task();
      if (per_call == 1) {
        if (!scheduler.Submit(std::move(task)).ok()) {
          state.SkipWithError("submit failed");
          return;
        }
        continue;
      }
      tasks.push_back(std::move(task));
      if (static_cast<int64_t>(tasks.size()) == per_call || i + 1 == batch) {
        for (const absl::Status& s : scheduler.SubmitAll(std::move(tasks))) {
          if (!s.ok()) {
            state.SkipWithError("submit failed");
            return;
          }
        }
        tasks.clear();
      }
    }
    noop.countdown.Wait();
  }
  state.SetItemsProcessed(state.iterations() * batch);
}
// Args: MAX_STAGES (0: unset), tasks per submit call.
BENCHMARK(BM_SchedulerDispatch)
    ->ArgNames({"max_stages", "per_call"})
    ->Args({0, 1})
    ->Args({1, 1})
    ->Args({2, 1})
    ->Args({0, 100})
    ->Args({1, 100})
    ->Args({2, 100})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// Heap allocations per no-op stage, from Submit to its result, on every
// thread (the tasks are made before counting starts). range(0): MAX_STAGES
// (0: unset).
void BM_SchedulerAllocations(benchmark::State& state) {
  const int64_t batch = 10000;
  NoopScheduler noop(state.range(0));
  int64_t allocations = 0;
  int64_t stages = 0;
  for (auto _ : state) {
    state.PauseTiming();
    std::vector<StageTask> tasks;
    tasks.reserve(batch);
    for (int64_t i = 0; i < batch; ++i) tasks.push_back(noop.Task());
    noop.countdown.Reset(batch);
    state.ResumeTiming();
    bench::StartCountingAllocations();
    for (StageTask& task : tasks) {
      if (!noop.scheduler->Submit(std::move(task)).ok()) {
        bench::StopCountingAllocations();
        state.SkipWithError("submit failed");
        return;
      }
    }
    noop.countdown.Wait();
    allocations += bench::StopCountingAllocations();
    stages += batch;
  }
  state.SetItemsProcessed(stages);
  state.counters["allocs_per_stage"] =
      static_cast<double>(allocations) / static_cast<double>(stages);
}
BENCHMARK(BM_SchedulerAllocations)
    ->ArgNames({"max_stages"})
    ->Arg(0)
    ->Arg(1)
    ->Iterations(10)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

Stage TrueStage(int64_t form) {
  Stage stage;
  stage.name = "host";
  Step step;
  step.id = "true";
  if (form == 0) {
    step.commands = {"true"};
  } else {
    step.entrypoint = {"/bin/true"};
  }
  stage.steps.push_back(step);
  return stage;
}

struct NullOutput final : OutputWriter {
  void Write(LogStream, std::string_view) override {}
  void Flush() override {}
};

// A `true` step on the host executor, on the calling thread, inside a stage
// that was initialized once: what each further step of a stage costs.
void BM_HostStepOverhead(benchmark::State& state) {
  ExecutorRegistry registry;
  HostExecutorOptions host;
  host.workdir = std::filesystem::temp_directory_path() / "delegate-bench";
  (void)RegisterHostExecutor(registry, host);
  const Stage stage = TrueStage(state.range(0));
  const std::string task_id = "bench", delegate_name = "bench";
  NullOutput output;
  std::unique_ptr<Executor> executor = registry.Create("host");
  const StageContext ctx{stage,         task_id, delegate_name,         output,
                         Clock::Real(), {},      absl::InfiniteFuture()};
  if (!executor->Initialize(ctx).ok()) {
    state.SkipWithError("init failed");
    return;
  }
  const StepContext step{ctx,    stage.steps[0],         0,
                         output, absl::InfiniteFuture(), {}};
  for (auto _ : state) {
    if (executor->Execute(step).status != StepStatus::kSuccess) {
      state.SkipWithError("step failed");
      break;
    }
  }
  (void)executor->Cleanup(ctx);
  state.SetItemsProcessed(state.iterations());
}
// 0: commands: [true] (through /bin/sh); 1: entrypoint: [/bin/true].
BENCHMARK(BM_HostStepOverhead)
    ->Arg(0)
    ->Arg(1)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// A whole one-step stage on the host executor: initialize (a fresh stage
// directory), the step, cleanup (removing it), on the calling thread.
void BM_HostStageOverhead(benchmark::State& state) {
  ExecutorRegistry registry;
  HostExecutorOptions host;
  host.workdir = std::filesystem::temp_directory_path() / "delegate-bench";
  (void)RegisterHostExecutor(registry, host);
  const Stage stage = TrueStage(state.range(0));
  const std::string task_id = "bench", delegate_name = "bench";
  NullOutput output;
  for (auto _ : state) {
    std::unique_ptr<Executor> executor = registry.Create("host");
    const StageContext ctx{
        stage,         task_id, delegate_name,         output,
        Clock::Real(), {},      absl::InfiniteFuture()};
    if (!executor->Initialize(ctx).ok()) {
      state.SkipWithError("init failed");
      return;
    }
    const StepContext step{ctx,    stage.steps[0],         0,
                           output, absl::InfiniteFuture(), {}};
    StepResult r = executor->Execute(step);
    (void)executor->Cleanup(ctx);
    if (r.status != StepStatus::kSuccess) {
      state.SkipWithError("step failed");
      return;
    }
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HostStageOverhead)
    ->Arg(0)
    ->Arg(1)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// The same, submitted through the scheduler: adds the hand-off to a stage
// thread and back.
void BM_HostStepThroughScheduler(benchmark::State& state) {
  ExecutorRegistry registry;
  HostExecutorOptions host;
  host.workdir = std::filesystem::temp_directory_path() / "delegate-bench";
  (void)RegisterHostExecutor(registry, host);
  SchedulerOptions options;
  options.registry = &registry;
  Scheduler scheduler(options);
  const Stage stage = TrueStage(0);
  int64_t next = 0;
  for (auto _ : state) {
    std::promise<StageResult> done;
    StageTask task;
    task.id = absl::StrCat("h", next++);
    task.stage = stage;
    task.observer = ObserveWith(
        {.done = [&done](const StageResult& r) { done.set_value(r); }});
    (void)scheduler.Submit(std::move(task));
    if (done.get_future().get().status != StepStatus::kSuccess) {
      state.SkipWithError("step failed");
      return;
    }
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HostStepThroughScheduler)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// The same commands spawned bare: 0: /bin/sh -c true; 1: /bin/true.
void BM_PosixSpawnTrue(benchmark::State& state) {
  char sh[] = "/bin/sh", c[] = "-c", t[] = "true", bin_true[] = "/bin/true";
  char* shell_argv[] = {sh, c, t, nullptr};
  char* true_argv[] = {bin_true, nullptr};
  char** argv = state.range(0) == 0 ? shell_argv : true_argv;
  for (auto _ : state) {
    pid_t pid;
    if (posix_spawn(&pid, argv[0], nullptr, nullptr, argv, environ) != 0) {
      state.SkipWithError("posix_spawn failed");
      return;
    }
    int status;
    waitpid(pid, &status, 0);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PosixSpawnTrue)
    ->Arg(0)
    ->Arg(1)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace delegate

// The ECS executor against the loopback ECS and CloudWatch Logs fake: how
// long from submitting a one-step stage to the step's first log line and to
// its result, with many stages at once sharing one DescribeTasks poller.
// The fake's lifecycle (PROVISIONING 20 ms, PENDING 20 ms, a 10 ms run) and
// the poll interval are set here; what is measured is the delegate's
// overhead around them, and how many DescribeTasks calls the steps cost.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bench/bench_support.h"
#include "delegate/builtin_executors.h"
#include "delegate/scheduler.h"
#include "tests/fakes/aws_fake.h"

namespace delegate::bench {
namespace {

// Records when each stage's first stdout line arrived.
class FirstLineSink final : public LogSink {
 public:
  void Append(const LogLine& line) override {
    if (line.stream != LogStream::kStdout) return;
    absl::MutexLock lock(&mu_);
    first_.try_emplace(std::string(line.task_id), absl::Now());
  }
  absl::Time First(const std::string& task) {
    absl::MutexLock lock(&mu_);
    auto it = first_.find(task);
    return it == first_.end() ? absl::InfiniteFuture() : it->second;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, absl::Time> first_;
};

void BM_EcsStep(benchmark::State& state) {
  const int parallel = static_cast<int>(state.range(0));
  const absl::Duration poll = absl::Milliseconds(state.range(1));
  testing::FakeAwsOptions fake_options;
  fake_options.testdata_dir = testing::AwsTestdataDir();
  fake_options.credentials.push_back({"AKIDBENCH", "bench-secret", ""});
  fake_options.behaviour = [](const testing::FakeContainer&) {
    testing::ContainerBehaviour b;
    b.output = {"step output"};
    b.run_for = absl::Milliseconds(10);
    return b;
  };
  auto fake = testing::FakeAws::Start(fake_options);
  if (!fake.ok()) {
    state.SkipWithError(std::string(fake.status().message()).c_str());
    return;
  }
  EcsExecutorOptions options;
  options.env = EnvMap{{"AWS_ACCESS_KEY_ID", "AKIDBENCH"},
                       {"AWS_SECRET_ACCESS_KEY", "bench-secret"},
                       {"AWS_REGION", "us-east-1"},
                       {"AWS_ENDPOINT_URL", (*fake)->url()}};
  options.cluster = "bench";
  options.subnets = {"subnet-0123456789abcdef0"};
  options.execution_role_arn = "arn:aws:iam::123456789012:role/bench";
  options.poll_interval = poll;
  options.instance = "bench";
  options.log_reads_per_second = static_cast<double>(state.range(2));
  ExecutorRegistry registry;
  if (!RegisterEcsExecutors(registry, options).ok()) {
    state.SkipWithError("RegisterEcsExecutors");
    return;
  }
  FirstLineSink sink;
  SchedulerOptions sched;
  sched.registry = &registry;
  sched.delegate_name = "bench";
  Scheduler scheduler(sched);

  Stage stage;
  stage.platform = "ecs-fargate";
  Step step;
  step.id = "s";
  step.image = "busybox";
  step.commands = {"echo step output"};
  stage.steps = {step};

  std::vector<absl::Duration> to_line, to_result;
  int next = 0;
  const int describes_before = (*fake)->CallCount("DescribeTasks");
  for (auto _ : state) {
    std::vector<std::promise<absl::Time>> done(parallel);
    std::vector<std::string> ids;
    const absl::Time start = absl::Now();
    for (int i = 0; i < parallel; ++i) {
      StageTask task;
      task.id = "bench-" + std::to_string(next++);
      ids.push_back(task.id);
      task.stage = stage;
      task.observer = ObserveWith({.done =
                                       [&done, i](const StageResult& r) {
                                         (void)r;
                                         done[i].set_value(absl::Now());
                                       },
                                   .log = &sink});
      if (!scheduler.Submit(std::move(task)).ok()) {
        state.SkipWithError("Submit");
        return;
      }
    }
    for (int i = 0; i < parallel; ++i) {
      const absl::Time end = done[i].get_future().get();
      to_result.push_back(end - start);
      to_line.push_back(sink.First(ids[i]) - start);
    }
  }
  std::sort(to_line.begin(), to_line.end());
  std::sort(to_result.begin(), to_result.end());
  state.SetItemsProcessed(static_cast<int64_t>(to_result.size()));
  state.counters["first_line_p50_ms"] = QuantileMs(to_line, 0.5);
  state.counters["result_p50_ms"] = QuantileMs(to_result, 0.5);
  state.counters["result_p99_ms"] = QuantileMs(to_result, 0.99);
  state.counters["describe_per_step"] =
      static_cast<double>((*fake)->CallCount("DescribeTasks") -
                          describes_before) /
      static_cast<double>(std::max<size_t>(1, to_result.size()));
  state.counters["rejected"] = static_cast<double>((*fake)->Rejected().size());
}
// {stages at once, poll interval ms, GetLogEvents per second}
BENCHMARK(BM_EcsStep)
    ->Args({1, 50, 10})
    ->Args({10, 50, 10})
    ->Args({50, 50, 10})
    ->Args({50, 50, 1000})
    ->Args({50, 200, 1000})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace delegate::bench

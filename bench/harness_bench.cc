// BM_HarnessDispatch: no-op tasks through the Harness Delegate 3.x REST
// protocol, end to end on loopback: the in-process reference manager
// (apps/reference-manager) queues secret/static tasks, a DelegateServer in
// the same process polls runner-events, fetches each task (GET request),
// answers it without running anything and posts task-response. Plain HTTP
// (http://127.0.0.1:PORT), no TLS.
#include <algorithm>
#include <atomic>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench_support.h"
#include "benchmark/benchmark.h"
#include "delegate/config.h"
#include "delegate/event_log.h"
#include "delegate/executor.h"
#include "delegate/harness.h"
#include "delegate/manager.h"
#include "delegate/server.h"
#include "reference_manager.h"

namespace delegate {
namespace {

using bench::QuantileMs;

constexpr char kAccount[] = "acct-bench";
constexpr char kToken[] = "98d8fedb04c574e68939164bf463e73d";
// One secret/static task: the delegate answers it from the task's own data.
constexpr char kNoopTask[] =
    R"({"type":"secret/static","data":{"secrets":[{"id":"s","value":"v"}]}})";

std::vector<absl::Duration> SortedLatencies(
    const reference::ReferenceManager& manager) {
  std::vector<absl::Duration> v = manager.TaskLatencies();
  std::sort(v.begin(), v.end());
  return v;
}

// Waits until every queued task has been answered. WaitAllDone wakes on
// every task-response and then walks all stages under the manager's lock,
// which with thousands of stages would slow the manager it measures; this
// sleeps in 1 ms steps until there are at least `responses` responses (each
// task has at least one), then asks WaitAllDone once.
bool WaitAnswered(reference::ReferenceManager& manager, size_t responses,
                  absl::Time deadline) {
  while (true) {
    if (manager.responses() >= responses &&
        manager.WaitAllDone(absl::ZeroDuration())) {
      return true;
    }
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
}

// A manager and a delegate connected to it, for one benchmark run. The
// delegate runs on its own thread; the destructor drains it and stops the
// manager, whatever state setup reached.
class Harness {
 public:
  ~Harness() {
    if (server_) server_->Drain();
    if (thread_.joinable()) thread_.join();
    if (manager_) manager_->Stop();
  }

  // Starts both and waits until one task has gone all the way round (so the
  // delegate is registered and polling).
  absl::Status Start(absl::Duration poll_interval) {
    reference::ManagerOptions mo;
    mo.address = "127.0.0.1";
    mo.port = 0;
    mo.account_id = kAccount;
    mo.token = SecretString(kToken);
    absl::StatusOr<std::unique_ptr<reference::ReferenceManager>> m =
        reference::ReferenceManager::Start(std::move(mo));
    if (!m.ok()) return m.status();
    manager_ = *std::move(m);

    if (absl::Status s = RegisterHarnessManager(managers_); !s.ok()) return s;
    DelegateServerOptions options;
    options.config.account_id = kAccount;
    options.config.token = SecretString(kToken);
    options.config.manager_url = manager_->url();
    options.config.name = "bench";
    options.config.poll_interval = poll_interval;
    options.config.ops_bind = "127.0.0.1:0";
    options.start_executors = false;
    options.log = &log_;
    server_ = std::make_unique<DelegateServer>(std::move(options), executors_,
                                               managers_);
    thread_ = std::thread([this] {
      run_status_ = server_->Run();
      run_done_ = true;
    });

    absl::StatusOr<std::string> warmup = manager_->SubmitStage(kNoopTask);
    if (!warmup.ok()) return warmup.status();
    // Registration, the first poll and one round trip; generous for a
    // loaded machine, bounded so that a broken setup does not hang, and cut
    // short when the delegate gives up (a refused token, say).
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (!manager_->WaitAllDone(absl::Milliseconds(100))) {
      if (run_done_ || absl::Now() >= deadline) {
        server_->Drain();
        thread_.join();
        return absl::UnavailableError(absl::StrCat(
            "the warm-up task was not answered; the delegate ",
            run_status_.ok() ? "was still running after 30 s"
                             : "stopped: " + run_status_.ToString()));
      }
    }
    absl::StatusOr<std::string> stage = manager_->StageJson(*warmup);
    if (!stage.ok()) return stage.status();
    if (!absl::StrContains(*stage, "\"status\":\"SUCCESS\"")) {
      return absl::InternalError(
          absl::StrCat("the warm-up task did not succeed: ", *stage));
    }
    return absl::OkStatus();
  }

  reference::ReferenceManager& manager() { return *manager_; }

 private:
  EventLog log_{[](std::string_view) {}};
  ExecutorRegistry executors_;  // secret/static tasks need no executor
  ManagerRegistry managers_;
  std::unique_ptr<reference::ReferenceManager> manager_;
  std::unique_ptr<DelegateServer> server_;
  std::thread thread_;
  absl::Status run_status_;  // written by thread_, read after run_done_
  std::atomic<bool> run_done_{false};
};

// Args: the poll interval (POLL_INTERVAL_MILLISECS) and the tasks queued per
// iteration. Each iteration queues the batch at once and waits until every
// task has been answered.
void BM_HarnessDispatch(benchmark::State& state) {
  const absl::Duration poll = absl::Milliseconds(state.range(0));
  const int64_t batch = state.range(1);
  Harness harness;
  if (absl::Status s = harness.Start(poll); !s.ok()) {
    state.SkipWithError(std::string(s.message()).c_str());
    return;
  }
  reference::ReferenceManager& manager = harness.manager();
  const std::vector<absl::Duration> before = SortedLatencies(manager);
  const size_t responses_before = manager.responses();
  size_t answered = responses_before;  // at least this many responses so far
  // Per iteration, at worst: a poll interval, then the batch at well under
  // 1 ms a task.
  const absl::Duration timeout = poll + absl::Seconds(60);
  for (auto _ : state) {
    absl::Status submitted;
    for (int64_t i = 0; i < batch && submitted.ok(); ++i) {
      submitted = manager.SubmitStage(kNoopTask).status();
    }
    if (!submitted.ok()) {
      state.SkipWithError(std::string(submitted.message()).c_str());
      break;
    }
    if (!WaitAnswered(manager, answered + batch, absl::Now() + timeout)) {
      state.SkipWithError("tasks were not all answered in time");
      break;
    }
    answered += batch;
  }
  if (state.error_occurred()) return;  // the Harness drains and stops
  const int64_t tasks = state.iterations() * batch;
  state.SetItemsProcessed(tasks);
  // This run's tasks: every answered task's latency less the warm-up's
  // (an answered task's latency does not change afterwards).
  const std::vector<absl::Duration> after = SortedLatencies(manager);
  std::vector<absl::Duration> run;
  std::set_difference(after.begin(), after.end(), before.begin(), before.end(),
                      std::back_inserter(run));
  state.counters["p50_ms"] = QuantileMs(run, 0.50);
  state.counters["p99_ms"] = QuantileMs(run, 0.99);
  state.counters["max_ms"] = run.empty() ? 0 : QuantileMs(run, 1.0);
  // task-response calls beyond one per task: answers sent again for a task
  // that a poll listed while its first answer was on the way.
  state.counters["repeat_responses"] = static_cast<double>(
      manager.responses() - responses_before - static_cast<size_t>(tasks));
}
BENCHMARK(BM_HarnessDispatch)
    ->ArgNames({"poll_ms", "batch"})
    ->Args({10, 100})
    ->Args({10, 1000})
    ->Iterations(20)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
// The documented default poll: each iteration waits for the next poll, so
// about 3.25 s; 5 iterations keep a run under 20 s.
BENCHMARK(BM_HarnessDispatch)
    ->ArgNames({"poll_ms", "batch"})
    ->Args({3000, 1000})
    ->Iterations(5)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace delegate

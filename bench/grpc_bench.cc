// BM_GrpcDispatch: no-op stages through DelegateSession, end to end on
// loopback: the in-process reference SessionManager (apps/reference-manager)
// queues each stage, pushes it on a delegate's stream against the credit the
// delegate granted, the delegate's connection runs it through its scheduler
// (init, one step, cleanup on a no-op executor), reports the result and gets
// its acknowledgement, and grants the slot again. 1, 4 or 16 delegates, each
// its own connection and scheduler in this process, over plaintext gRPC.
//
// BM_GrpcDispatchPaced: one delegate, stages submitted at a fixed rate (in
// 1 ms ticks) instead of in batches, for the dispatch latency at a load below
// the maximum.
#include <algorithm>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench_support.h"
#include "benchmark/benchmark.h"
#include "delegate/config.h"
#include "delegate/delegate_session.h"
#include "delegate/event_log.h"
#include "delegate/executor.h"
#include "delegate/manager.h"
#include "delegate/metrics.h"
#include "session_manager.h"

namespace delegate {
namespace {

using bench::NoopExecutor;
using bench::NoopStage;
using bench::NullSink;
using bench::QuantileMs;

// Slots each delegate grants (PARALLEL_WORKERS, MAX_STAGES unset).
constexpr int kCreditPerDelegate = 256;

// A manager and `n` delegate connections to it. The destructor drains the
// delegates and stops the manager, whatever state Start reached.
class GrpcRig {
 public:
  ~GrpcRig() {
    for (auto& c : connections_) c->Drain();
    for (auto& t : threads_) t.join();
    if (manager_) manager_->Stop();
  }

  absl::Status Start(int delegates) {
    reference::SessionManagerOptions mo;
    mo.log = &quiet_;
    auto m = reference::SessionManager::Start(mo);
    if (!m.ok()) return m.status();
    manager_ = *std::move(m);
    if (absl::Status s = RegisterGrpcManager(managers_); !s.ok()) return s;
    (void)executors_.Register("noop",
                              [] { return std::make_unique<NoopExecutor>(); });
    for (int i = 0; i < delegates; ++i) {
      DelegateConfig& config = configs_.emplace_back();
      config.name = absl::StrCat("bench-", i);
      config.parallel_workers = kCreditPerDelegate;
      // Each delegate's own scheduler, as DelegateServer makes one.
      SchedulerOptions scheduling;
      scheduling.registry = &executors_;
      scheduling.delegate_name = config.name;
      scheduling.spin_when_idle = false;
      Scheduler& scheduler = schedulers_.emplace_back(scheduling);
      ManagerEnvironment env{config,
                             executors_,
                             scheduler,
                             quiet_,
                             metrics_.emplace_back(),
                             console_,
                             Clock::Real(),
                             "grpc://" + manager_->address()};
      absl::StatusOr<std::unique_ptr<ManagerConnection>> c =
          managers_.Create("grpc", env);
      if (!c.ok()) return c.status();
      connections_.push_back(*std::move(c));
      ManagerConnection* raw = connections_.back().get();
      threads_.emplace_back([raw] { (void)raw->Run(); });
    }
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (manager_->Delegates().size() < static_cast<size_t>(delegates)) {
      if (absl::Now() >= deadline) {
        return absl::UnavailableError("the delegates did not all connect");
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
    if (absl::Status s = manager_->Submit("warm-up", NoopStage(),
                                          Priority::kNormal, nullptr);
        !s.ok()) {
      return s;
    }
    if (!manager_->WaitAllDone(absl::Seconds(30))) {
      return absl::UnavailableError("the warm-up stage did not finish");
    }
    manager_->ForgetDone();
    return absl::OkStatus();
  }

  reference::SessionManager& manager() { return *manager_; }

  // Moves the latencies of the stages done so far to `out` and forgets
  // those stages (so that rounds do not pile up in the manager).
  void TakeLatencies(std::vector<absl::Duration>* out) {
    std::vector<absl::Duration> round = manager_->Latencies();
    out->insert(out->end(), round.begin(), round.end());
    manager_->ForgetDone();
  }

  // Waits (in 200 µs steps, so that the waiting costs the measured path
  // nothing) until `completed` stages have finished since the start.
  bool WaitCompleted(uint64_t completed, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (manager_->Capacity().completed < completed) {
      if (absl::Now() >= deadline) return false;
      absl::SleepFor(absl::Microseconds(200));
    }
    return true;
  }

 private:
  EventLog quiet_{[](std::string_view) {}};
  NullSink console_;
  ExecutorRegistry executors_;
  ManagerRegistry managers_;
  std::deque<DelegateConfig> configs_;
  std::deque<Metrics> metrics_;
  std::deque<Scheduler> schedulers_;  // outlive the connections
  std::unique_ptr<reference::SessionManager> manager_;
  std::vector<std::unique_ptr<ManagerConnection>> connections_;
  std::vector<std::thread> threads_;
};

// Starts a rig for the benchmark, or marks it skipped and returns null.
std::unique_ptr<GrpcRig> StartRig(benchmark::State& state, int delegates) {
  auto rig = std::make_unique<GrpcRig>();
  if (absl::Status s = rig->Start(delegates); !s.ok()) {
    state.SkipWithError(std::string(s.message()).c_str());
    return nullptr;
  }
  return rig;
}

void ReportLatencies(benchmark::State& state, std::vector<absl::Duration> v) {
  std::sort(v.begin(), v.end());
  state.counters["p50_ms"] = QuantileMs(v, 0.50);
  state.counters["p99_ms"] = QuantileMs(v, 0.99);
  state.counters["max_ms"] = QuantileMs(v, 1.0);
}

// Args: delegates, stages per iteration. Each iteration submits the batch
// at once and waits until every stage's result has been accepted.
void BM_GrpcDispatch(benchmark::State& state) {
  const int delegates = static_cast<int>(state.range(0));
  const int64_t batch = state.range(1);
  std::unique_ptr<GrpcRig> rig = StartRig(state, delegates);
  if (!rig) return;
  reference::SessionManager& manager = rig->manager();
  const Stage stage = NoopStage();
  uint64_t expected = manager.Capacity().completed;
  uint64_t next_id = 0;
  std::vector<absl::Duration> latencies;
  for (auto _ : state) {
    for (int64_t i = 0; i < batch; ++i) {
      absl::Status s = manager.Submit(absl::StrCat("s", next_id++), stage,
                                      Priority::kNormal, nullptr);
      if (!s.ok()) {
        state.SkipWithError(std::string(s.message()).c_str());
        return;
      }
    }
    expected += batch;
    if (!rig->WaitCompleted(expected, absl::Seconds(60))) {
      state.SkipWithError("stages were not all done in time");
      return;
    }
    state.PauseTiming();
    rig->TakeLatencies(&latencies);
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * batch);
  ReportLatencies(state, std::move(latencies));
}
BENCHMARK(BM_GrpcDispatch)
    ->ArgNames({"delegates", "batch"})
    ->Args({1, 10000})
    ->Args({4, 10000})
    ->Args({16, 10000})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(2);

// Args: stages per second. Each iteration submits 1 s of stages in 1 ms
// ticks, then waits until all are done.
void BM_GrpcDispatchPaced(benchmark::State& state) {
  const int64_t rate = state.range(0);
  std::unique_ptr<GrpcRig> rig = StartRig(state, 1);
  if (!rig) return;
  reference::SessionManager& manager = rig->manager();
  const Stage stage = NoopStage();
  uint64_t expected = manager.Capacity().completed;
  uint64_t next_id = 0;
  std::vector<absl::Duration> latencies;
  for (auto _ : state) {
    const absl::Time start = absl::Now();
    for (int64_t tick = 0; tick < 1000; ++tick) {
      const int64_t due = rate * (tick + 1) / 1000 - rate * tick / 1000;
      for (int64_t i = 0; i < due; ++i) {
        (void)manager.Submit(absl::StrCat("p", next_id++), stage,
                             Priority::kNormal, nullptr);
      }
      const absl::Time next = start + absl::Milliseconds(tick + 1);
      const absl::Duration wait = next - absl::Now();
      if (wait > absl::ZeroDuration()) absl::SleepFor(wait);
    }
    expected += rate;
    if (!rig->WaitCompleted(expected, absl::Seconds(60))) {
      state.SkipWithError("stages were not all done in time");
      return;
    }
    rig->TakeLatencies(&latencies);
  }
  state.SetItemsProcessed(state.iterations() * rate);
  ReportLatencies(state, std::move(latencies));
}
BENCHMARK(BM_GrpcDispatchPaced)
    ->ArgNames({"rate"})
    ->Arg(5000)
    ->Arg(25000)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(3);

}  // namespace
}  // namespace delegate

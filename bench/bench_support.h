// What several benchmarks share: an executor that does nothing, a sink that
// drops lines, quantiles of latencies.
#ifndef DELEGATE_BENCH_BENCH_SUPPORT_H_
#define DELEGATE_BENCH_BENCH_SUPPORT_H_

#include <algorithm>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "delegate/executor.h"
#include "delegate/log_sink.h"
#include "delegate/stage.h"

namespace delegate::bench {

class NullSink final : public LogSink {
 public:
  void Append(const LogLine&) override {}
};

// Every stage and step succeeds at once: what is measured is the path
// around the executor.
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

// One step on the "noop" platform (register NoopExecutor under that name).
inline Stage NoopStage() {
  Stage stage;
  stage.name = "noop";
  stage.platform = "noop";
  Step step;
  step.id = "step";
  step.commands = {"true"};
  stage.steps.push_back(step);
  return stage;
}

// The q-quantile (0..1) of sorted durations, in milliseconds.
inline double QuantileMs(const std::vector<absl::Duration>& sorted, double q) {
  if (sorted.empty()) return 0;
  const size_t i =
      std::min(sorted.size() - 1,
               static_cast<size_t>(q * static_cast<double>(sorted.size())));
  return absl::ToDoubleMilliseconds(sorted[i]);
}

}  // namespace delegate::bench

#endif  // DELEGATE_BENCH_BENCH_SUPPORT_H_

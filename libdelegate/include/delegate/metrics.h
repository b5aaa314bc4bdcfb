// Counters, gauges and histograms with labels, rendered in the Prometheus
// text exposition format for /metrics. Thread-safe; updating a series takes
// one short lock.
#ifndef DELEGATE_METRICS_H_
#define DELEGATE_METRICS_H_

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "delegate/export.h"

namespace delegate {

// Label values in the order of the family's label names.
using LabelValues = std::vector<std::string>;

class DELEGATE_EXPORT Metrics {
 public:
  enum class Kind { kCounter, kGauge, kHistogram };

  Metrics() = default;
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Declares a family. A second call with the same name is ignored. Buckets
  // (upper bounds, ascending) apply to histograms only.
  void Define(std::string name, Kind kind, std::string help,
              std::vector<std::string> label_names,
              std::vector<double> buckets = {});

  // REQUIRES: `name` was defined with that kind and `labels` has one value
  // per label name; otherwise the call does nothing.
  void Add(std::string_view name, const LabelValues& labels, double delta = 1);
  void Set(std::string_view name, const LabelValues& labels, double value);
  void Observe(std::string_view name, const LabelValues& labels, double value);

  // The current value of a counter or gauge series; 0 when it has none.
  double Value(std::string_view name, const LabelValues& labels) const;

  // "# HELP", "# TYPE" and one line per series, families in name order.
  std::string RenderPrometheus() const;

 private:
  struct Series {
    double value = 0;
    std::vector<uint64_t>
        bucket_counts;  // histograms: per bucket, not cumulative
    uint64_t count = 0;
    double sum = 0;
  };
  struct Family {
    Kind kind;
    std::string help;
    std::vector<std::string> label_names;
    std::vector<double> buckets;
    std::map<LabelValues, Series> series;
  };
  Series* Find(std::string_view name, const LabelValues& labels, Kind kind)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::map<std::string, Family, std::less<>> families_ ABSL_GUARDED_BY(mu_);
};

}  // namespace delegate

#endif  // DELEGATE_METRICS_H_

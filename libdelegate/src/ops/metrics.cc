#include "delegate/metrics.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace delegate {
namespace {

std::string EscapeLabel(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string Number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    return absl::StrCat(static_cast<int64_t>(v));
  }
  return absl::StrFormat("%.9g", v);
}

std::string Labels(const std::vector<std::string>& names,
                   const LabelValues& values, std::string_view extra = "") {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    absl::StrAppend(&out, out.empty() ? "" : ",", names[i], "=\"",
                    EscapeLabel(values[i]), "\"");
  }
  if (!extra.empty()) {
    absl::StrAppend(&out, out.empty() ? "" : ",",
                    absl::string_view(extra.data(), extra.size()));
  }
  return out.empty() ? "" : absl::StrCat("{", out, "}");
}

}  // namespace

void Metrics::Define(std::string name, Kind kind, std::string help,
                     std::vector<std::string> label_names,
                     std::vector<double> buckets) {
  absl::MutexLock lock(&mu_);
  if (families_.count(name)) return;
  families_.emplace(std::move(name), Family{kind,
                                            std::move(help),
                                            std::move(label_names),
                                            std::move(buckets),
                                            {}});
}

Metrics::Series* Metrics::Find(std::string_view name, const LabelValues& labels,
                               Kind kind) {
  auto it = families_.find(name);
  if (it == families_.end() || it->second.kind != kind ||
      it->second.label_names.size() != labels.size()) {
    return nullptr;
  }
  Series& s = it->second.series[labels];
  if (kind == Kind::kHistogram && s.bucket_counts.empty()) {
    s.bucket_counts.assign(it->second.buckets.size(), 0);
  }
  return &s;
}

void Metrics::Add(std::string_view name, const LabelValues& labels,
                  double delta) {
  absl::MutexLock lock(&mu_);
  Series* s = Find(name, labels, Kind::kCounter);
  if (!s) s = Find(name, labels, Kind::kGauge);
  if (s) s->value += delta;
}

void Metrics::Set(std::string_view name, const LabelValues& labels,
                  double value) {
  absl::MutexLock lock(&mu_);
  if (Series* s = Find(name, labels, Kind::kGauge)) s->value = value;
}

void Metrics::Observe(std::string_view name, const LabelValues& labels,
                      double value) {
  absl::MutexLock lock(&mu_);
  Series* s = Find(name, labels, Kind::kHistogram);
  if (!s) return;
  const std::vector<double>& buckets = families_.find(name)->second.buckets;
  for (size_t i = 0; i < buckets.size(); ++i) {
    if (value <= buckets[i]) {
      ++s->bucket_counts[i];
      break;
    }
  }
  ++s->count;
  s->sum += value;
}

double Metrics::Value(std::string_view name, const LabelValues& labels) const {
  absl::MutexLock lock(&mu_);
  auto it = families_.find(name);
  if (it == families_.end()) return 0;
  auto s = it->second.series.find(labels);
  return s == it->second.series.end() ? 0 : s->second.value;
}

std::string Metrics::RenderPrometheus() const {
  absl::MutexLock lock(&mu_);
  std::string out;
  for (const auto& [name, family] : families_) {
    const char* type = family.kind == Kind::kCounter ? "counter"
                       : family.kind == Kind::kGauge ? "gauge"
                                                     : "histogram";
    absl::StrAppend(&out, "# HELP ", name, " ", family.help, "\n# TYPE ", name,
                    " ", type, "\n");
    for (const auto& [labels, s] : family.series) {
      if (family.kind != Kind::kHistogram) {
        absl::StrAppend(&out, name, Labels(family.label_names, labels), " ",
                        Number(s.value), "\n");
        continue;
      }
      uint64_t cumulative = 0;
      for (size_t i = 0; i < family.buckets.size(); ++i) {
        cumulative += s.bucket_counts[i];
        absl::StrAppend(
            &out, name, "_bucket",
            Labels(family.label_names, labels,
                   absl::StrCat("le=\"", Number(family.buckets[i]), "\"")),
            " ", cumulative, "\n");
      }
      absl::StrAppend(&out, name, "_bucket",
                      Labels(family.label_names, labels, "le=\"+Inf\""), " ",
                      s.count, "\n", name, "_sum",
                      Labels(family.label_names, labels), " ", Number(s.sum),
                      "\n", name, "_count", Labels(family.label_names, labels),
                      " ", s.count, "\n");
    }
  }
  return out;
}

}  // namespace delegate

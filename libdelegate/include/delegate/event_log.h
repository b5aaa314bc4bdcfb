// The delegate's own log: one JSON object per line, which container
// platforms (ECS to CloudWatch, Kubernetes) ship as they are:
//   {"time":"2026-12-01T20:44:38.123Z","level":"info","msg":"connected",
//    "delegate_id":"..."}
// Fields are plain strings; callers never pass secret values.
#ifndef DELEGATE_EVENT_LOG_H_
#define DELEGATE_EVENT_LOG_H_

#include <cstdio>
#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "delegate/export.h"
#include "delegate/log_sink.h"

namespace delegate {

class DELEGATE_EXPORT EventLog {
 public:
  // A key and a value, from any string type (absl::Status::message() is an
  // absl::string_view where Abseil has its own).
  struct Field {
    Field(std::string_view k, std::string_view v) : key(k), value(v) {}
    Field(std::string_view k, const std::string& v) : key(k), value(v) {}
    Field(std::string_view k, const char* v) : key(k), value(v) {}
#ifndef ABSL_USES_STD_STRING_VIEW
    Field(std::string_view k, absl::string_view v)
        : key(k), value(v.data(), v.size()) {}
#endif
    std::string_view key;
    std::string_view value;
  };
  // Each finished line (without its newline) goes to `write`.
  explicit EventLog(std::function<void(std::string_view line)> write);
  // Lines go to `out` (stdout for a delegate in a container).
  static EventLog& Stdout();

  void Info(std::string_view msg, std::initializer_list<Field> fields = {}) {
    Emit("info", msg, fields);
  }
  void Warn(std::string_view msg, std::initializer_list<Field> fields = {}) {
    Emit("warn", msg, fields);
  }
  void Error(std::string_view msg, std::initializer_list<Field> fields = {}) {
    Emit("error", msg, fields);
  }
  void Emit(std::string_view level, std::string_view msg,
            std::initializer_list<Field> fields);

 private:
  // Called under mu_: lines from many threads never interleave.
  std::function<void(std::string_view)> write_ ABSL_GUARDED_BY(mu_);
  absl::Mutex mu_;
};

// A LogSink that writes each step output line as an event ("msg":"output",
// with task, step, stream and the line as "out"): where step logs go when a
// task names no log service.
class DELEGATE_EXPORT EventLogSink final : public LogSink {
 public:
  explicit EventLogSink(EventLog& log) : log_(log) {}
  void Append(const LogLine& line) override;

 private:
  EventLog& log_;
};

}  // namespace delegate

#endif  // DELEGATE_EVENT_LOG_H_

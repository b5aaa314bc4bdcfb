#include "delegate/event_log.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "util/json_escape.h"

namespace delegate {
EventLog::EventLog(std::function<void(std::string_view line)> write)
    : write_(std::move(write)) {}

EventLog& EventLog::Stdout() {
  static EventLog* log = new EventLog([](std::string_view line) {
    fwrite(line.data(), 1, line.size(), stdout);
    fputc('\n', stdout);
    fflush(stdout);
  });
  return *log;
}

void EventLog::Emit(std::string_view level, std::string_view msg,
                    std::initializer_list<Field> fields) {
  std::string line =
      absl::StrCat("{\"time\":\"",
                   absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(),
                                    absl::UTCTimeZone()),
                   "\",\"level\":\"");
  AppendJsonEscaped(line, level);
  line += "\",\"msg\":\"";
  AppendJsonEscaped(line, msg);
  line += '"';
  for (const auto& [key, value] : fields) {
    line += ",\"";
    AppendJsonEscaped(line, key);
    line += "\":\"";
    AppendJsonEscaped(line, value);
    line += '"';
  }
  line += '}';
  absl::MutexLock lock(&mu_);
  write_(line);
}

void EventLogSink::Append(const LogLine& line) {
  const char* stream = line.stream == LogStream::kStdout   ? "stdout"
                       : line.stream == LogStream::kStderr ? "stderr"
                                                           : "system";
  log_.Info("output", {{"task", line.task_id},
                       {"step", line.step_id},
                       {"stream", stream},
                       {"out", line.text}});
}

}  // namespace delegate

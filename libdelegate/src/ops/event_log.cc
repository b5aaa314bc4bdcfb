#include "delegate/event_log.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace delegate {
namespace {

// Length of the valid UTF-8 sequence at s[i], or 0.
size_t Utf8Length(std::string_view s, size_t i) {
  const auto b = static_cast<unsigned char>(s[i]);
  size_t n = b < 0x80         ? 1
             : (b >> 5) == 6  ? 2
             : (b >> 4) == 14 ? 3
             : (b >> 3) == 30 ? 4
                              : 0;
  if (n == 0 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return 0;
  }
  return n;
}

}  // namespace

void AppendJsonEscaped(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
      ++i;
    } else if (c == '\n') {
      out += "\\n";
      ++i;
    } else if (c == '\r') {
      out += "\\r";
      ++i;
    } else if (c == '\t') {
      out += "\\t";
      ++i;
    } else if (c < 0x20 || c == 0x7f) {
      out += "\\u00";
      out += kHex[c >> 4];
      out += kHex[c & 15];
      ++i;
    } else if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
    } else if (size_t n = Utf8Length(s, i); n > 0) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out += "\xef\xbf\xbd";
      ++i;
    }
  }
}

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
  std::lock_guard lock(mu_);
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

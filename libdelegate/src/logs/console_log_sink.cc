#include "delegate/console_log_sink.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "util/strings.h"

namespace delegate {

ConsoleLogSink::ConsoleLogSink(FILE* out) : out_(out) {}

void ConsoleLogSink::Append(const LogLine& line) {
  static const absl::TimeZone zone = absl::LocalTimeZone();
  std::string text =
      absl::StrCat(absl::FormatTime("%H:%M:%E3S", line.time, zone), " ",
                   line.step_id.empty() ? absl::string_view("stage")
                                        : AbslView(line.step_id),
                   line.stream == LogStream::kSystem   ? " # "
                   : line.stream == LogStream::kStderr ? " ! "
                                                       : " | ",
                   AbslView(line.text), line.partial ? "\\\n" : "\n");
  absl::MutexLock lock(&mu_);
  fwrite(text.data(), 1, text.size(), out_);
  fflush(out_);
}

}  // namespace delegate

// A LogSink for terminals and container stdout: one line per log line,
// "HH:MM:SS.mmm step | text".
#ifndef DELEGATE_CONSOLE_LOG_SINK_H_
#define DELEGATE_CONSOLE_LOG_SINK_H_

#include <cstdio>

#include "absl/synchronization/mutex.h"
#include "delegate/export.h"
#include "delegate/log_sink.h"

namespace delegate {

class DELEGATE_EXPORT ConsoleLogSink final : public LogSink {
 public:
  // REQUIRES: `out` outlives the sink.
  explicit ConsoleLogSink(FILE* out);
  void Append(const LogLine& line) override;

 private:
  absl::Mutex mu_;
  FILE* out_;
};

}  // namespace delegate

#endif  // DELEGATE_CONSOLE_LOG_SINK_H_

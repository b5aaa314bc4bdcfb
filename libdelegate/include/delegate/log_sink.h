// Where step output goes once it has been masked and split into lines.
#ifndef DELEGATE_LOG_SINK_H_
#define DELEGATE_LOG_SINK_H_

#include <cstdint>
#include <string_view>

#include "absl/time/time.h"
#include "delegate/export.h"

namespace delegate {

enum class LogStream {
  kStdout,
  kStderr,
  kSystem,  // written by the delegate or an executor about the step
};

struct LogLine {
  std::string_view task_id;  // the stage transaction
  std::string_view step_id;  // empty for stage-level lines (init, cleanup)
  LogStream stream = LogStream::kStdout;
  absl::Time time;
  uint64_t number = 0;  // 1-based per (task, step)
  // One line without its newline, already masked. A line longer than the
  // pipeline's cap arrives as several LogLines, each but the last with
  // `partial` set.
  std::string_view text;
  bool partial = false;
};

// Receives every log line of every stage. REQUIRES: thread-safe; Append may be
// called from many stage threads at once. Append must not block for long: it
// runs on the thread that reads a step's output.
class DELEGATE_EXPORT LogSink {
 public:
  virtual ~LogSink() = default;
  virtual void Append(const LogLine& line) = 0;
  // The step (or, with an empty step_id, the stage) will write no more lines.
  virtual void Close(std::string_view task_id, std::string_view step_id) {
    (void)task_id;
    (void)step_id;
  }
};

// What an executor writes raw output to. The implementation masks secrets
// (also when a secret is split across two writes), splits lines, caps their
// length, stamps them with the clock and hands them to the LogSink.
// REQUIRES: one writer per step; not thread-safe across streams unless noted.
class DELEGATE_EXPORT OutputWriter {
 public:
  virtual ~OutputWriter() = default;
  virtual void Write(LogStream stream, std::string_view bytes) = 0;
  // Convenience: one whole line on kSystem.
  void SystemLine(std::string_view line) {
    Write(LogStream::kSystem, line);
    Write(LogStream::kSystem, "\n");
  }
  // Pushes out a held-back partial line (end of step, or a pause).
  virtual void Flush() = 0;
};

}  // namespace delegate

#endif  // DELEGATE_LOG_SINK_H_

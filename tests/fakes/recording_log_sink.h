// A LogSink that keeps every line, for assertions.
#ifndef DELEGATE_TESTS_FAKES_RECORDING_LOG_SINK_H_
#define DELEGATE_TESTS_FAKES_RECORDING_LOG_SINK_H_

#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "delegate/log_sink.h"

namespace delegate::testing {

struct RecordedLine {
  std::string task_id;
  std::string step_id;
  LogStream stream;
  std::string text;
  bool partial;
};

class RecordingLogSink final : public LogSink {
 public:
  void Append(const LogLine& line) override {
    absl::MutexLock lock(&mu_);
    lines_.push_back({std::string(line.task_id), std::string(line.step_id),
                      line.stream, std::string(line.text), line.partial});
  }
  void Close(std::string_view task_id, std::string_view step_id) override {
    absl::MutexLock lock(&mu_);
    closed_.push_back(std::string(task_id) + "/" + std::string(step_id));
  }
  std::vector<RecordedLine> lines() const {
    absl::MutexLock lock(&mu_);
    return lines_;
  }
  // Text of the lines of one step (any stream), in order.
  std::vector<std::string> TextOf(const std::string& step_id) const {
    absl::MutexLock lock(&mu_);
    std::vector<std::string> out;
    for (const RecordedLine& l : lines_) {
      if (l.step_id == step_id) out.push_back(l.text);
    }
    return out;
  }
  // Everything, joined with newlines.
  std::string All() const {
    absl::MutexLock lock(&mu_);
    std::string out;
    for (const RecordedLine& l : lines_) out += l.text + "\n";
    return out;
  }
  std::vector<std::string> closed() const {
    absl::MutexLock lock(&mu_);
    return closed_;
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<RecordedLine> lines_;
  std::vector<std::string> closed_;
};

}  // namespace delegate::testing

#endif  // DELEGATE_TESTS_FAKES_RECORDING_LOG_SINK_H_

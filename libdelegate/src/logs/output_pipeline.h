// The OutputWriter that executors write to: masking, line splitting, time
// stamps, then the LogSink.
#ifndef DELEGATE_LOGS_OUTPUT_PIPELINE_H_
#define DELEGATE_LOGS_OUTPUT_PIPELINE_H_

#include <memory>
#include <optional>
#include <string>

#include "delegate/clock.h"
#include "delegate/log_sink.h"
#include "logs/masker.h"
#include "util/mutex.h"

namespace delegate::logs {

// One per step (or per stage, with an empty step id). Thread-safe. The
// destructor flushes and closes the step in the sink.
class StepOutputWriter final : public OutputWriter {
 public:
  StepOutputWriter(LogSink& sink, Clock& clock,
                   std::shared_ptr<const SecretMasker> masker,
                   std::string task_id, std::string step_id,
                   size_t max_line_bytes);
  StepOutputWriter(const StepOutputWriter&) = delete;
  StepOutputWriter& operator=(const StepOutputWriter&) = delete;
  ~StepOutputWriter() override;

  void Write(LogStream stream, std::string_view bytes) override;
  void Flush() override;

 private:
  struct Channel {
    Channel(StepOutputWriter* owner, LogStream stream);
    LineSplitter lines;
    MaskingStream masked;
  };

  void Emit(LogStream stream, std::string_view line, bool partial)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  LogSink& sink_;
  Clock& clock_;
  std::shared_ptr<const SecretMasker> masker_;
  const std::string task_id_;
  const std::string step_id_;
  const size_t max_line_bytes_;
  // A std::mutex: one is made per step, and absl::Mutex's bookkeeping on
  // destruction shows in dispatch throughput.
  StdMutex mu_;
  uint64_t line_number_ ABSL_GUARDED_BY(mu_) = 0;
  // Made on first use: most no-op steps never write.
  std::optional<Channel> channels_[3] ABSL_GUARDED_BY(mu_);
};

}  // namespace delegate::logs

#endif  // DELEGATE_LOGS_OUTPUT_PIPELINE_H_

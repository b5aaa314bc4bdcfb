#include "logs/output_pipeline.h"

namespace delegate::logs {

StepOutputWriter::Channel::Channel(StepOutputWriter* owner, LogStream stream)
    : lines(owner->max_line_bytes_,
            [owner, stream](std::string_view line, bool partial) {
              // Lines come out of Write and Flush, under the lock.
              owner->mu_.AssertHeld();
              owner->Emit(stream, line, partial);
            }),
      masked(owner->masker_,
             [this](std::string_view bytes) { lines.Write(bytes); }) {}

StepOutputWriter::StepOutputWriter(LogSink& sink, Clock& clock,
                                   std::shared_ptr<const SecretMasker> masker,
                                   std::string task_id, std::string step_id,
                                   size_t max_line_bytes)
    : sink_(sink),
      clock_(clock),
      masker_(std::move(masker)),
      task_id_(std::move(task_id)),
      step_id_(std::move(step_id)),
      max_line_bytes_(max_line_bytes) {}

StepOutputWriter::~StepOutputWriter() {
  Flush();
  sink_.Close(task_id_, step_id_);
}

void StepOutputWriter::Write(LogStream stream, std::string_view bytes) {
  if (bytes.empty()) return;
  StdMutexLock lock(&mu_);
  std::optional<Channel>& channel = channels_[static_cast<int>(stream)];
  if (!channel) channel.emplace(this, stream);
  channel->masked.Write(bytes);
}

void StepOutputWriter::Flush() {
  StdMutexLock lock(&mu_);
  for (std::optional<Channel>& channel : channels_) {
    if (!channel) continue;
    channel->masked.Flush();
    channel->lines.Flush();
  }
}

void StepOutputWriter::Emit(LogStream stream, std::string_view line,
                            bool partial) {
  LogLine out;
  out.task_id = task_id_;
  out.step_id = step_id_;
  out.stream = stream;
  out.time = clock_.Now();
  out.number = ++line_number_;
  out.text = line;
  out.partial = partial;
  sink_.Append(out);
}

}  // namespace delegate::logs

#include "runtime/stage_journal.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/time/clock.h"
#include "manager/grpc/convert.h"

namespace delegate::runtime {
namespace {

// A log event holds at most this much, well under gRPC's 4 MiB message
// limit (lines are up to 64 KiB each).
constexpr int kMaxChunkLines = 1000;
constexpr size_t kMaxChunkBytes = 1 << 20;

}  // namespace

StageJournal::StageJournal(std::string task_id, std::string stage_name,
                           size_t max_events,
                           std::function<void(const StageJournal*)> on_finished)
    : task_id_(std::move(task_id)),
      stage_name_(std::move(stage_name)),
      // stage_finished, at least, must stay.
      max_events_(std::max<size_t>(max_events, 1)),
      on_finished_(std::move(on_finished)) {}

v1::StageEvent& StageJournal::Add() {
  if (events_.size() >= max_events_) events_.pop_front();
  v1::StageEvent& event = events_.emplace_back();
  event.set_task_id(task_id_);
  event.set_sequence(next_sequence_++);
  *event.mutable_time() = grpcv1::TimeToProto(absl::Now());
  tail_open_ = false;
  return event;
}

void StageJournal::Started(std::string_view platform,
                           std::string_view delegate_name) {
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    v1::StageStarted* started = Add().mutable_stage_started();
    started->set_stage(stage_name_);
    started->set_platform(std::string(platform));
    started->set_delegate_name(std::string(delegate_name));
    cv_.SignalAll();
  }
}

void StageJournal::StepStarted(std::string_view step_id,
                               std::string_view name) {
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    v1::StepStarted* started = Add().mutable_step_started();
    started->set_step_id(std::string(step_id));
    started->set_name(std::string(name.empty() ? step_id : name));
    cv_.SignalAll();
  }
}

void StageJournal::StepFinished(const StepResult& result) {
  v1::StepResult proto = grpcv1::ToProto(result);
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    *Add().mutable_step_finished() = std::move(proto);
    cv_.SignalAll();
  }
}

void StageJournal::Log(const LogLine& line) {
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    if (tail_open_) {
      v1::LogChunk* chunk = events_.back().mutable_log();
      if (chunk->lines_size() < kMaxChunkLines &&
          tail_bytes_ + line.text.size() <= kMaxChunkBytes &&
          grpcv1::AppendToChunk(line, chunk)) {
        tail_bytes_ += line.text.size();
        return;  // a reader is woken by the event's first line already
      }
    }
    v1::StageEvent& event = Add();
    *event.mutable_time() = grpcv1::TimeToProto(line.time);
    grpcv1::AppendToChunk(line, event.mutable_log());
    tail_open_ = true;
    tail_bytes_ = line.text.size();
    cv_.SignalAll();
  }
}

void StageJournal::Finished(const StageResult& result) {
  v1::StageResult proto = grpcv1::ToProto(result);
  std::function<void(const StageJournal*)> on_finished;
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    finished_ = true;
    on_finished.swap(on_finished_);
  }
  // Before any watcher can see stage_finished: one that then looks at other
  // stages finds the bookkeeping done.
  if (on_finished) on_finished(this);
  {
    absl::MutexLock lock(&mu_);
    *Add().mutable_stage_finished() = std::move(proto);
    published_ = true;
    cv_.SignalAll();
  }
}

StageJournal::Batch StageJournal::Read(uint64_t after, bool skip_logs,
                                       size_t max_events, absl::Duration wait) {
  Batch batch;
  batch.after = after;
  const absl::Time deadline = absl::Now() + wait;
  absl::MutexLock lock(&mu_);
  while (true) {
    const uint64_t first = next_sequence_ - events_.size();
    size_t i = batch.after + 1 > first ? batch.after + 1 - first : 0;
    for (; i < events_.size() && batch.events.size() < max_events; ++i) {
      const v1::StageEvent& event = events_[i];
      batch.after = event.sequence();
      if (skip_logs && event.has_log()) continue;
      batch.events.push_back(event);
      // Lines that come from now on go into a new event.
      if (i + 1 == events_.size()) tail_open_ = false;
    }
    batch.done = published_ && batch.after + 1 >= next_sequence_;
    if (!batch.events.empty() || batch.done) return batch;
    // Closed: what was recorded has been handed out; nothing more comes.
    if (closed_) {
      batch.closed = true;
      return batch;
    }
    if (cv_.WaitWithDeadline(&mu_, deadline)) return batch;
  }
}

void StageJournal::Close() {
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    cv_.SignalAll();
  }
}

bool StageJournal::finished() const {
  absl::MutexLock lock(&mu_);
  return finished_;
}

}  // namespace delegate::runtime

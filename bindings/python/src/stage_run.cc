#include "stage_run.h"

#include <utility>

#include "gil.h"
#include "pybind11/pybind11.h"
#include "runtime.h"

namespace delegate::python {
namespace py = pybind11;

void RunState::Append(const LogLine& line) {
  absl::MutexLock lock(&mu_);
  if (!keep_lines_) return;
  lines_.push_back(LogRecord{
      .step = std::string(line.step_id),
      .stream = line.stream,
      .time = line.time,
      .number = line.number,
      .text = std::string(line.text),
      .partial = line.partial,
  });
  if (lines_.size() == 1) cv_.SignalAll();
}

void RunState::Done(const StageResult& result) {
  absl::MutexLock lock(&mu_);
  result_ = result;
  cv_.SignalAll();
}

RunState::Took RunState::TakeLines(std::deque<LogRecord>& out,
                                   absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  const absl::Time deadline = absl::Now() + timeout;
  while (lines_.empty() && !result_) {
    if (cv_.WaitWithDeadline(&mu_, deadline)) break;
  }
  if (!lines_.empty()) {
    if (out.empty()) {
      out.swap(lines_);
    } else {
      for (LogRecord& line : lines_) out.push_back(std::move(line));
      lines_.clear();
    }
    return Took::kLines;
  }
  return result_ ? Took::kEnd : Took::kNone;
}

bool RunState::WaitDone(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  const absl::Time deadline = absl::Now() + timeout;
  while (!result_) {
    if (cv_.WaitWithDeadline(&mu_, deadline)) break;
  }
  return result_.has_value();
}

std::optional<StageResult> RunState::result() const {
  absl::MutexLock lock(&mu_);
  return result_;
}

bool RunState::done() const {
  absl::MutexLock lock(&mu_);
  return result_.has_value();
}

void RunState::StopKeepingLines() {
  absl::MutexLock lock(&mu_);
  keep_lines_ = false;
  lines_.clear();
}

void RunObserver::Append(const LogLine& line) {
  state_->Append(line);
  if (echo_ != nullptr) echo_->Append(line);
}

void RunObserver::Done(const StageResult& result) { state_->Done(result); }

void StageRunHandle::CheckSignals() {
  if (PyErr_CheckSignals() == 0) return;
  py::error_already_set raised;  // takes the pending exception
  WithoutGil([&] { CancelAndWait(); });
  throw raised;
}

void StageRunHandle::CancelAndWait() {
  (void)runtime_->Cancel(task_id_);
  // The cleanup is not cut short: a second Ctrl-C is not looked at.
  while (!state_->WaitDone(absl::Seconds(1))) {
  }
}

std::optional<StageResult> StageRunHandle::Wait(std::optional<double> timeout) {
  const absl::Time deadline =
      timeout ? absl::Now() + absl::Seconds(std::max(0.0, *timeout))
              : absl::InfiniteFuture();
  if (!WaitInterruptibly(
          [&](absl::Duration slice) { return state_->WaitDone(slice); },
          deadline, [&] { CancelAndWait(); })) {
    return std::nullopt;
  }
  return state_->result();
}

bool StageRunHandle::Cancel() {
  if (state_->done()) return false;
  return WithoutGil([&] { return runtime_->Cancel(task_id_).ok(); });
}

LogRecord LogIterator::Next() {
  const absl::Duration slice = WaitSlice();
  for (;;) {
    if (!buffer_.empty()) {
      LogRecord line = std::move(buffer_.front());
      buffer_.pop_front();
      return line;
    }
    std::deque<LogRecord> taken;
    const RunState::Took took =
        WithoutGil([&] { return run_->state()->TakeLines(taken, slice); });
    if (!taken.empty()) {
      if (buffer_.empty()) {
        buffer_.swap(taken);
      } else {  // another thread read meanwhile (one reader is the contract)
        for (LogRecord& line : taken) buffer_.push_back(std::move(line));
      }
      continue;
    }
    if (took == RunState::Took::kEnd) throw py::stop_iteration();
    run_->CheckSignals();
  }
}

}  // namespace delegate::python

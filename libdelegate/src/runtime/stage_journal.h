// The events of one stage as RuntimeService sends them: StageEvent protos
// numbered from 1, kept in memory for any number of watchers, the oldest
// dropped beyond a bound. The runner writes (through StageEvents), each
// watcher reads on its own thread; a watcher never slows the writer.
#ifndef DELEGATE_RUNTIME_STAGE_JOURNAL_H_
#define DELEGATE_RUNTIME_STAGE_JOURNAL_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "delegate/runtime_service.h"
#include "delegate/v1/runtime.pb.h"

namespace delegate::runtime {

// Thread-safe.
class StageJournal final : public StageEvents {
 public:
  // `on_finished` is called once with this journal, after the
  // stage_finished event is in it, on the thread that calls Finished.
  StageJournal(std::string task_id, std::string stage_name, size_t max_events,
               std::function<void(const StageJournal*)> on_finished);
  StageJournal(const StageJournal&) = delete;
  StageJournal& operator=(const StageJournal&) = delete;

  void Started(std::string_view platform,
               std::string_view delegate_name) override;
  void StepStarted(std::string_view step_id, std::string_view name) override;
  void StepFinished(const StepResult& result) override;
  // Lines that continue the journal's last event (a log chunk no watcher has
  // read yet) join it, so lines that come faster than watchers read travel
  // together; otherwise each starts a new log event.
  void Log(const LogLine& line) override;
  void Finished(const StageResult& result) override;

  struct Batch {
    std::vector<v1::StageEvent> events;
    // What the watcher has now seen: the sequence to pass as `after` next.
    uint64_t after = 0;
    // Everything up to stage_finished has been read.
    bool done = false;
    // Close was called and every event recorded before was read: no more.
    bool closed = false;
  };
  // The next events with a sequence above `after` (log events left out with
  // `skip_logs`), at most `max_events`, waiting up to `wait` for one to come.
  // Events the journal no longer holds are passed over: the sequence shows
  // the gap.
  Batch Read(uint64_t after, bool skip_logs, size_t max_events,
             absl::Duration wait);

  // Wakes the readers; from now on a Read hands out what is recorded and,
  // once nothing is left, answers `closed` at once instead of waiting (the
  // runtime is shutting down). Idempotent.
  void Close();

  // Finished was called (its event may be a moment behind).
  bool finished() const;

 private:
  v1::StageEvent& Add() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string task_id_;
  const std::string stage_name_;
  const size_t max_events_;
  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  std::deque<v1::StageEvent> events_ ABSL_GUARDED_BY(mu_);
  uint64_t next_sequence_ ABSL_GUARDED_BY(mu_) = 1;
  // The last event is a log chunk that may still grow: no reader has it.
  bool tail_open_ ABSL_GUARDED_BY(mu_) = false;
  size_t tail_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Finished was called; then its event is in.
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool published_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::function<void(const StageJournal*)> on_finished_ ABSL_GUARDED_BY(mu_);
};

}  // namespace delegate::runtime

#endif  // DELEGATE_RUNTIME_STAGE_JOURNAL_H_

// One stage submitted from Python: the observer that keeps its log lines and
// its result for Python to pull, and the handle Python holds (StageRun).
//
// No library thread calls into Python here: the observer only fills a
// queue, and Python takes from it, waiting without the GIL.
#ifndef DELEGATE_PYTHON_STAGE_RUN_H_
#define DELEGATE_PYTHON_STAGE_RUN_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "delegate/log_sink.h"
#include "delegate/result.h"
#include "delegate/scheduler.h"

namespace delegate::python {

class Runtime;

// A LogLine that owns its strings.
struct LogRecord {
  std::string step;  // empty for stage-level lines (init, cleanup)
  LogStream stream = LogStream::kStdout;
  absl::Time time;
  uint64_t number = 0;
  std::string text;
  bool partial = false;
};

// What one stage has said so far. Written by its observer from library
// threads, read by Python without the GIL. Thread-safe.
class RunState {
 public:
  // `keep_lines`: false for a run whose lines nobody will read.
  explicit RunState(bool keep_lines) : keep_lines_(keep_lines) {}

  // The observer's side.
  void Append(const LogLine& line);
  void Done(const StageResult& result);

  enum class Took {
    kLines,  // `out` got lines
    kNone,   // none came within the timeout
    kEnd,    // the stage is done and every line has been taken
  };
  // Moves every queued line to the back of `out`, waiting up to `timeout`
  // for one when none is queued.
  Took TakeLines(std::deque<LogRecord>& out, absl::Duration timeout);
  // True once the stage has finished (waits up to `timeout` for it).
  bool WaitDone(absl::Duration timeout);
  // The result, once the stage has finished.
  std::optional<StageResult> result() const;
  bool done() const;
  // Nobody will read the lines: drops those queued and those to come.
  void StopKeepingLines();

 private:
  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  bool keep_lines_ ABSL_GUARDED_BY(mu_);
  std::deque<LogRecord> lines_ ABSL_GUARDED_BY(mu_);
  std::optional<StageResult> result_ ABSL_GUARDED_BY(mu_);
};

// The stage's observer: lines and the result into a RunState, and lines also
// to `echo` when set (the console, for Runtime.run(echo=True)).
class RunObserver final : public StageObserver {
 public:
  RunObserver(std::shared_ptr<RunState> state, LogSink* echo)
      : state_(std::move(state)), echo_(echo) {}
  void Append(const LogLine& line) override;
  void Done(const StageResult& result) override;

 private:
  const std::shared_ptr<RunState> state_;
  LogSink* const echo_;
};

// Python's StageRun. Dropping it does not stop the stage (its Runtime still
// runs it, as a dropped subprocess.Popen does); only its lines are no longer
// kept.
class StageRunHandle {
 public:
  StageRunHandle(std::shared_ptr<Runtime> runtime, std::string task_id,
                 std::shared_ptr<RunState> state)
      : runtime_(std::move(runtime)),
        task_id_(std::move(task_id)),
        state_(std::move(state)) {}
  ~StageRunHandle() { state_->StopKeepingLines(); }
  StageRunHandle(const StageRunHandle&) = delete;
  StageRunHandle& operator=(const StageRunHandle&) = delete;

  const std::string& task_id() const { return task_id_; }
  const std::shared_ptr<RunState>& state() const { return state_; }

  // Blocks, without the GIL, until the stage has been cleaned up or
  // `timeout` (seconds) has passed (nullopt then). On the main thread it
  // runs Python's signal handlers every few milliseconds; when one raises
  // (KeyboardInterrupt on Ctrl-C), the stage is cancelled, its cleanup
  // waited for, and the exception re-raised. REQUIRES: the GIL.
  std::optional<StageResult> Wait(std::optional<double> timeout);
  // Cancels the stage (its current step is stopped, the rest skipped,
  // cleanup run). False when it had already finished. Any thread.
  // REQUIRES: the GIL.
  bool Cancel();
  // Cancels the stage and waits for its cleanup. Without the GIL.
  void CancelAndWait();

  // Between two waits: runs Python's signal handlers (main thread only);
  // when one raises, cancels the stage, waits for its end and re-raises.
  // REQUIRES: the GIL.
  void CheckSignals();

 private:
  const std::shared_ptr<Runtime> runtime_;
  const std::string task_id_;
  const std::shared_ptr<RunState> state_;
};

// Python's iterator over a run's log lines. Each line is handed out once,
// in the order the stage wrote it, to one reader at a time; iteration ends
// when the stage is done and every line was taken.
class LogIterator {
 public:
  explicit LogIterator(std::shared_ptr<StageRunHandle> run)
      : run_(std::move(run)) {}
  // Throws pybind11::stop_iteration at the end. REQUIRES: the GIL.
  LogRecord Next();

 private:
  const std::shared_ptr<StageRunHandle> run_;
  std::deque<LogRecord> buffer_;  // guarded by the GIL
};

}  // namespace delegate::python

#endif  // DELEGATE_PYTHON_STAGE_RUN_H_

// Step output to the Harness log service (harness-protocol.md §8): a stream
// per task key, opened with POST /stream, written with PUT /stream (a JSON
// array of lines) at most every second, closed with DELETE /stream, each
// with X-Harness-Token. Lines are masked before they get here (the
// scheduler's output pipeline).
//
// A line leaves the buffer only when a PUT that held it was answered 2xx.
// While the service is down the lines wait and are sent again (backing off
// up to 30 s); a stream the service forgot (404, a restarted service) is
// opened again. A stream closed during an outage is finished by the
// flusher once the service is back. Only a full buffer drops lines, the
// oldest first, and then the log says how many lines and bytes went.
#ifndef DELEGATE_MANAGER_HARNESS_LOG_STREAM_H_
#define DELEGATE_MANAGER_HARNESS_LOG_STREAM_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "delegate/event_log.h"
#include "delegate/log_sink.h"
#include "http/http_client.h"
#include "manager/harness/harness_client.h"
#include "manager/harness/payloads.h"

namespace delegate::harness {

struct LogStreamLimits {
  absl::Duration flush_interval = absl::Seconds(1);
  size_t max_line_bytes = 70 * 1024;          // longer lines are cut
  size_t max_buffer_bytes = 5 * 1024 * 1024;  // then the oldest lines go
  absl::Duration call_timeout = absl::Seconds(15);
  // After a failed write, the next waits this long, doubling up to
  // max_backoff.
  absl::Duration first_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Seconds(30);
  // How long a closed stream's undelivered lines are kept trying.
  absl::Duration deliver_closed_for = absl::Minutes(10);
};

class LogService;

// One open stream. Thread-safe.
class LogServiceStream : public std::enable_shared_from_this<LogServiceStream> {
 public:
  // Buffers a line; the flusher sends it within flush_interval.
  void Append(const LogLine& line);
  // Sends what is buffered, then closes the stream (unless the task says
  // skip_closing_stream). Idempotent; later Appends are dropped. When the
  // service does not take them now, the flusher goes on trying for
  // deliver_closed_for.
  void Close();
  // Lines dropped because the buffer was full.
  uint64_t dropped() const;

  // For a step re-attached after a restart, whose output is read again from
  // its start: the first `lines` complete output lines (not the delegate's
  // own, kSystem) to come are dropped, the service having taken them from
  // the earlier process. Before the first Append.
  void SkipOutputLines(uint64_t lines);
  // Called, after each write the service took, with how many complete
  // output lines have left this stream so far (taken, dropped for a full
  // buffer, or skipped): what SkipOutputLines is given after a restart.
  // Before the first Append. It runs on the writing thread: keep it quick.
  void OnOutputHandled(std::function<void(uint64_t lines)> handled);
  // Lines not yet taken by the service.
  size_t undelivered() const;

 private:
  friend class LogService;
  LogServiceStream(LogService& service, TaskLogger logger);
  struct Line {
    uint64_t pos;
    std::string json;  // the line's JSON object
    size_t bytes;      // of its text
    bool output_end;   // the end of a line of the step's own output
  };
  // Sends the buffered lines, unless a failed write's backoff has not
  // passed (then Unavailable). They stay buffered until answered 2xx.
  absl::Status FlushLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(send_mu_);
  absl::Status PutLocked(std::string body)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(send_mu_);
  // The rest of Close: what is buffered, then DELETE. True when done.
  bool FinishCloseLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(send_mu_);
  void NoteFailure(const absl::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(send_mu_);
  void NoteSuccess() ABSL_EXCLUSIVE_LOCKS_REQUIRED(send_mu_);

  LogService& service_;
  const TaskLogger logger_;
  std::string query_;  // "?accountID=..&key=.."
  mutable absl::Mutex mu_;
  std::deque<Line> pending_ ABSL_GUARDED_BY(mu_);
  size_t pending_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t position_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t dropped_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t dropped_reported_ ABSL_GUARDED_BY(mu_) = 0;
  // The position of the notice of dropped lines not yet delivered, so that
  // a resent notice is the same line.
  std::optional<uint64_t> notice_pos_ ABSL_GUARDED_BY(mu_);
  absl::Time notice_time_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t skip_output_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t handled_output_ ABSL_GUARDED_BY(mu_) = 0;
  std::function<void(uint64_t)> on_handled_ ABSL_GUARDED_BY(mu_);
  // One PUT at a time, in order; taken before mu_.
  absl::Mutex send_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  // Failed writes in a row, and when the next may be tried.
  int failures_ ABSL_GUARDED_BY(send_mu_) = 0;
  absl::Time next_try_ ABSL_GUARDED_BY(send_mu_) = absl::InfinitePast();
  absl::Time closed_at_ ABSL_GUARDED_BY(send_mu_) = absl::InfinitePast();
  bool close_sent_ ABSL_GUARDED_BY(send_mu_) = false;
};

class LogService {
 public:
  // REQUIRES: `http` and `log` outlive the service.
  LogService(http::HttpClient& http, Transport transport, EventLog& log,
             LogStreamLimits limits = {});
  ~LogService();
  LogService(const LogService&) = delete;
  LogService& operator=(const LogService&) = delete;

  // Opens the stream `logger` names (POST /stream, unless
  // skip_opening_stream; retried on 5xx for up to 30 s). On failure the
  // stream still accepts lines and tries to send them; the error is logged.
  // `existing`: the stream was opened by an earlier process of this
  // delegate (a step re-attached after a restart) and is written on: no
  // POST, which would make it anew and drop the lines it holds. (Should
  // the service have forgotten it, the first write opens it again.)
  std::shared_ptr<LogServiceStream> Open(const TaskLogger& logger,
                                         bool existing = false);

 private:
  friend class LogServiceStream;
  absl::Status Send(const TaskLogger& logger, const std::string& method,
                    const std::string& query, std::string body);
  // Opens the stream, retrying on 5xx for up to `for_up_to`.
  absl::Status OpenStream(const TaskLogger& logger, const std::string& query,
                          absl::Duration for_up_to);
  // A closed stream whose lines the service has not taken yet.
  void KeepClosing(std::shared_ptr<LogServiceStream> stream);
  void FlusherLoop();

  http::HttpClient& http_;
  const Transport transport_;
  EventLog& log_;
  const LogStreamLimits limits_;
  absl::Mutex mu_;
  absl::CondVar cv_;
  std::vector<std::weak_ptr<LogServiceStream>> streams_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<LogServiceStream>> closing_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread flusher_;
};

// The log of one stage on its way to the log service. A Harness stage is
// several tasks (its init, each step, its cleanup), each naming its own
// stream: while a task runs, the lines with its step id ("" for init and
// cleanup) go to its stream; lines nobody routes go to `fallback` (the
// console). Thread-safe.
class StageLogRouter {
 public:
  // REQUIRES: `fallback` outlives the router.
  explicit StageLogRouter(LogSink& fallback) : fallback_(fallback) {}
  // False, and nothing changes, when `step_id` is routed already (a step id
  // repeated while the first step runs).
  bool Route(const std::string& step_id,
             std::shared_ptr<LogServiceStream> stream);
  // Stops routing the step and returns its stream (or nullptr).
  std::shared_ptr<LogServiceStream> Unroute(const std::string& step_id);
  void Append(const LogLine& line);

 private:
  LogSink& fallback_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<LogServiceStream>> routes_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace delegate::harness

#endif  // DELEGATE_MANAGER_HARNESS_LOG_STREAM_H_

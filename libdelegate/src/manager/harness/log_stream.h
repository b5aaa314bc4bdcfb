// Step output to the Harness log service (harness-protocol.md §8): a stream
// per task key, opened with POST /stream, written with PUT /stream (a JSON
// array of lines) at most every second, closed with DELETE /stream, each
// with X-Harness-Token. Lines are masked before they get here (the
// scheduler's output pipeline).
#ifndef DELEGATE_MANAGER_HARNESS_LOG_STREAM_H_
#define DELEGATE_MANAGER_HARNESS_LOG_STREAM_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
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
};

class LogService;

// One open stream. Thread-safe.
class LogServiceStream {
 public:
  // Buffers a line; the flusher sends it within flush_interval.
  void Append(const LogLine& line);
  // Sends what is buffered, then closes the stream (unless the task says
  // skip_closing_stream). Idempotent; later Appends are dropped.
  void Close();
  // Lines dropped because the buffer was full.
  uint64_t dropped() const;

 private:
  friend class LogService;
  LogServiceStream(LogService& service, TaskLogger logger);
  // Sends the buffered lines; REQUIRES: send_mu_ held.
  void FlushLocked();

  LogService& service_;
  const TaskLogger logger_;
  std::string query_;  // "?accountID=..&key=.."
  mutable std::mutex mu_;
  std::deque<std::string> pending_;  // JSON objects; guarded by mu_
  size_t pending_bytes_ = 0;         // guarded by mu_
  uint64_t position_ = 0;            // guarded by mu_
  uint64_t dropped_ = 0;             // guarded by mu_
  uint64_t dropped_reported_ = 0;    // guarded by mu_
  bool closed_ = false;              // guarded by mu_
  std::mutex send_mu_;               // one PUT at a time, in order
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
  std::shared_ptr<LogServiceStream> Open(const TaskLogger& logger);

 private:
  friend class LogServiceStream;
  absl::Status Send(const TaskLogger& logger, const std::string& method,
                    const std::string& query, std::string body);
  void FlusherLoop();

  http::HttpClient& http_;
  const Transport transport_;
  EventLog& log_;
  const LogStreamLimits limits_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::weak_ptr<LogServiceStream>> streams_;  // guarded by mu_
  bool stopping_ = false;                                 // guarded by mu_
  std::thread flusher_;
};

// A LogSink that sends the lines of registered (task, step) pairs to their
// log service stream and every other line to `fallback`.
class RoutingLogSink final : public LogSink {
 public:
  explicit RoutingLogSink(LogSink& fallback) : fallback_(fallback) {}
  void Route(const std::string& task_id, const std::string& step_id,
             std::shared_ptr<LogServiceStream> stream);
  // Stops routing the pair and returns its stream (or nullptr).
  std::shared_ptr<LogServiceStream> Unroute(const std::string& task_id,
                                            const std::string& step_id);
  void Append(const LogLine& line) override;

 private:
  LogSink& fallback_;
  std::mutex mu_;
  std::map<std::pair<std::string, std::string>,
           std::shared_ptr<LogServiceStream>,
           std::less<>>
      routes_;  // guarded by mu_
};

}  // namespace delegate::harness

#endif  // DELEGATE_MANAGER_HARNESS_LOG_STREAM_H_

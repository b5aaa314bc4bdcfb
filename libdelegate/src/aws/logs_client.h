// Amazon CloudWatch Logs for the ECS executor and the delegate's own logs:
// log groups and streams that are created when missing, PutLogEvents
// batches that keep every limit of the API, GetLogEvents paging to follow
// what the awslogs driver writes, and a LogSink that ships lines to a
// stream. Every call goes through a client-side rate limiter first (the
// quotas are per account and region, shared with every other client), then
// through JsonClient's retries.
#ifndef DELEGATE_AWS_LOGS_CLIENT_H_
#define DELEGATE_AWS_LOGS_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "aws/json_client.h"
#include "aws/rate_limiter.h"
#include "delegate/clock.h"
#include "delegate/log_sink.h"

namespace delegate::aws {

struct LogEvent {
  int64_t timestamp_ms = 0;  // since the Unix epoch
  std::string message;
};

// Client-side limits, per second. The defaults are CloudWatch Logs' quotas
// (PutLogEvents' per log group); <= 0 disables a limit.
struct LogsRateLimits {
  double create_log_group_per_s = 5;
  double create_log_stream_per_s = 50;
  double put_log_events_per_s_per_group = 800;
  double get_log_events_per_s = 10;
};

// PutLogEvents' limits.
inline constexpr size_t kMaxLogBatchBytes = 1'048'576;
inline constexpr size_t kLogEventOverheadBytes = 26;
inline constexpr size_t kMaxLogBatchEvents = 10'000;
inline constexpr int64_t kMaxLogBatchSpanMs = 24 * 60 * 60 * 1000;
// The older documented cap on one event (the current model says 1 MB).
inline constexpr size_t kMaxLogEventBytes = 256 * 1024 - kLogEventOverheadBytes;

// Splits `events` into batches PutLogEvents accepts: sorted by timestamp
// (stable: events with the same timestamp keep their order), each batch at
// most 10,000 events and 1,048,576 bytes (UTF-8 message bytes plus 26 per
// event), the first and last event of a batch less than 24 h apart. On the
// way:
//   - bytes that are not UTF-8 become U+FFFD (a JSON body must be UTF-8);
//   - a message longer than `max_event_bytes` (clamped to 4..1,048,550)
//     becomes several events with its timestamp, cut between characters;
//   - an empty message (CloudWatch requires one character) becomes " ", so
//     that blank lines of a step's output survive;
//   - a negative timestamp becomes 0 (CloudWatch then rejects the event as
//     too old on its own instead of failing the whole batch).
std::vector<std::vector<LogEvent>> BatchLogEvents(
    std::vector<LogEvent> events, size_t max_event_bytes = kMaxLogEventBytes);

// What became of the events of one LogsClient::PutLogEvents call, counted
// after BatchLogEvents (a long message counts once per piece).
struct PutLogEventsResult {
  int64_t events = 0;  // to send, after BatchLogEvents
  int64_t sent = 0;    // in batches CloudWatch answered 2xx
  int batches = 0;
  // Of `sent`, refused one by one (rejectedLogEventsInfo): older than 14
  // days or the group's retention, or more than 2 h in the future.
  int64_t rejected_too_old = 0;
  int64_t rejected_too_new = 0;
  int64_t rejected() const { return rejected_too_old + rejected_too_new; }
};

// Counts a PutLogEvents answer for a batch of `n` events into `out`
// (rejectedLogEventsInfo's indexes clamped to the batch). While an old
// service's sequence token is in use (`token` not empty), takes the next one
// from the answer.
void ReadPutLogEventsAnswer(std::string_view answer, int64_t n,
                            PutLogEventsResult& out, std::string& token);

struct LogPage {
  std::vector<LogEvent> events;
  // Pass it to the next call; the same token back means no more for now.
  std::string next_forward_token;
};

// Thread-safe. Errors keep the JsonClient's code and AwsError payload
// (AwsErrorCode still works) and name the group and stream; they never hold
// message contents.
class LogsClient {
 public:
  // `clock` drives the rate limiters; nullptr: the JsonClient's clock (or
  // Clock::Real()). REQUIRES: `client` (a kCloudWatchLogs client) and
  // `clock` outlive this.
  explicit LogsClient(JsonClient& client, LogsRateLimits limits = {},
                      Clock* clock = nullptr);
  LogsClient(const LogsClient&) = delete;
  LogsClient& operator=(const LogsClient&) = delete;

  // CreateLogGroup; ResourceAlreadyExistsException is success. A group this
  // client created or saw exist is remembered, and later calls return at
  // once without a call (PutLogEvents finds a group deleted since and
  // recreates it). InvalidArgument, without a call, for a name CloudWatch
  // would refuse (1-512 of [.-_/#A-Za-z0-9]).
  absl::Status EnsureLogGroup(const std::string& group)
      ABSL_LOCKS_EXCLUDED(mu_);
  // CreateLogStream, remembered likewise; ResourceAlreadyExistsException is
  // success, and a missing group is created first. InvalidArgument, without
  // a call, for a bad group or stream name (1-512 characters, no ':' or
  // '*').
  absl::Status EnsureLogStream(const std::string& group,
                               const std::string& stream)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Sends every event, in the batches of BatchLogEvents, each after a token
  // of the group's PutLogEvents limiter. A ResourceNotFoundException
  // recreates the stream (and the group) once per call and resends the
  // batch; DataAlreadyAcceptedException counts as sent, and
  // InvalidSequenceTokenException is resent with the expected token (both
  // only from old regions and emulators). No events: OK without a call. On
  // an error the batches before it stay sent (see `result`); the error says
  // how many events went. `result` may be nullptr.
  absl::Status PutLogEvents(const std::string& group, const std::string& stream,
                            std::vector<LogEvent> events,
                            PutLogEventsResult* result = nullptr)
      ABSL_LOCKS_EXCLUDED(mu_);
  // One GetLogEvents call, startFromHead, from `next_token` ("" for the
  // stream's first event), at most `limit` (clamped to 1..10,000) events.
  // NotFound when the group or stream does not exist (yet: the awslogs
  // driver creates the stream when the container starts).
  absl::StatusOr<LogPage> GetLogEvents(const std::string& group,
                                       const std::string& stream,
                                       const std::string& next_token,
                                       int limit = 10000);

 private:
  absl::Status CreateStream(const std::string& group,
                            const std::string& stream);
  void Forget(const std::string& group, const std::string& stream)
      ABSL_LOCKS_EXCLUDED(mu_);
  RateLimiter& PutLimiter(const std::string& group) ABSL_LOCKS_EXCLUDED(mu_);

  JsonClient& client_;
  const LogsRateLimits limits_;
  Clock& clock_;
  RateLimiter create_group_limiter_;
  RateLimiter create_stream_limiter_;
  RateLimiter get_events_limiter_;
  absl::Mutex mu_;
  absl::flat_hash_set<std::string> known_groups_ ABSL_GUARDED_BY(mu_);
  // "GROUP:STREAM" (':' cannot be in either name).
  absl::flat_hash_set<std::string> known_streams_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<RateLimiter>> put_limiters_
      ABSL_GUARDED_BY(mu_);
};

// Follows one stream from its first event. Not thread-safe: one poller.
class LogTailer {
 public:
  // REQUIRES: `client` outlives the tailer; max_pages_per_poll >= 1.
  LogTailer(LogsClient& client, std::string group, std::string stream,
            int max_pages_per_poll = 10);

  // The events that arrived since the last Poll, each once across polls:
  // pages are followed until the forward token comes back unchanged or
  // `max_pages_per_poll` pages were read (the rest comes with the next
  // Poll). A stream that does not exist yet gives no events, not an error.
  // An error after some pages returns those pages' events; the error comes
  // back on the next Poll if it persists.
  absl::StatusOr<std::vector<LogEvent>> Poll();

  // Where the next Poll starts ("" before the first event was seen).
  const std::string& next_token() const { return token_; }

 private:
  LogsClient& client_;
  const std::string group_;
  const std::string stream_;
  const int max_pages_;
  std::string token_;
};

struct CloudWatchLogSinkOptions {
  // Lines beyond this (message bytes plus 26 each) are dropped and counted
  // until a flush makes room. The Harness log service's cap.
  size_t max_buffer_bytes = size_t{5} << 20;
  // The background thread sends at least this often (real time) ...
  absl::Duration flush_interval = absl::Seconds(1);
  // ... and at once when this much is buffered (a full PutLogEvents batch).
  size_t flush_bytes = kMaxLogBatchBytes;
  size_t flush_events = kMaxLogBatchEvents;
};

// A LogSink that ships every line to one stream (created when missing),
// "TASK/STEP | text" (" ! " for stderr, " # " for the delegate's own
// lines; "stage" for stage-level lines), stamped with the line's time. Append
// only copies the line into a buffer; a background thread sends it.
// Thread-safe.
class CloudWatchLogSink final : public LogSink {
 public:
  struct Stats {
    // Lines:
    int64_t appended = 0;
    int64_t dropped = 0;  // the buffer was full
    // Events, as PutLogEventsResult counts them (a line longer than 256 KiB
    // is several):
    int64_t sent = 0;
    int64_t rejected = 0;  // of `sent`, too old or too new
    int64_t failed = 0;    // lost to an error after JsonClient's retries
    absl::Status last_error;
  };

  // REQUIRES: `client` outlives the sink.
  CloudWatchLogSink(LogsClient& client, std::string group, std::string stream,
                    CloudWatchLogSinkOptions options = {});
  // Stops the background thread and sends what is left.
  ~CloudWatchLogSink() override;
  CloudWatchLogSink(const CloudWatchLogSink&) = delete;
  CloudWatchLogSink& operator=(const CloudWatchLogSink&) = delete;

  void Append(const LogLine& line) override ABSL_LOCKS_EXCLUDED(mu_);
  // Sends everything appended before the call; returns the send's error.
  absl::Status Flush() ABSL_LOCKS_EXCLUDED(send_mu_, mu_);
  Stats stats() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Run() ABSL_LOCKS_EXCLUDED(mu_);
  bool Wake() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  LogsClient& client_;
  const std::string group_;
  const std::string stream_;
  const CloudWatchLogSinkOptions options_;

  // One send at a time, in order.
  absl::Mutex send_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  bool stream_ready_ ABSL_GUARDED_BY(send_mu_) = false;

  mutable absl::Mutex mu_;
  std::vector<LogEvent> buffer_ ABSL_GUARDED_BY(mu_);
  size_t buffered_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  Stats stats_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace delegate::aws

#endif  // DELEGATE_AWS_LOGS_CLIENT_H_

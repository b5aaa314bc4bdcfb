#include "aws/logs_client.h"

#include <algorithm>
#include <iterator>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "rapidjson/document.h"
#include "rapidjson/stringbuffer.h"
#include "rapidjson/writer.h"
#include "util/json.h"
#include "util/strings.h"

namespace delegate::aws {
namespace {

using JsonWriter = json::Writer;

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// ------------------------------------------------------------ UTF-8

// The length of the well-formed UTF-8 sequence at s[i] (RFC 3629: no
// overlong forms, no surrogates, nothing above U+10FFFF), or 0.
size_t Utf8Length(std::string_view s, size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;  // the bounds of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (s.size() - i < n) return 0;
  const unsigned char c1 = static_cast<unsigned char>(s[i + 1]);
  if (c1 < lo || c1 > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 0;
  }
  return n;
}

// The offset of the first byte that does not start a well-formed sequence,
// or s.size().
size_t FirstInvalidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const size_t n = Utf8Length(s, i);
    if (n == 0) return i;
    i += n;
  }
  return i;
}

// Replaces every byte that does not start a well-formed sequence by U+FFFD.
void SanitizeUtf8(std::string& s) {
  size_t i = FirstInvalidUtf8(s);
  if (i == s.size()) return;
  std::string out(s, 0, i);
  while (i < s.size()) {
    const size_t n = Utf8Length(s, i);
    if (n == 0) {
      out.append(kReplacement);
      ++i;
    } else {
      out.append(s, i, n);
      i += n;
    }
  }
  s = std::move(out);
}

// ------------------------------------------------------------ JSON

// An integer member, or -1 when absent or not an integer.
int64_t IntMember(const rapidjson::Value& v, const char* name) {
  auto it = v.FindMember(name);
  if (it == v.MemberEnd()) return -1;
  if (it->value.IsInt64()) return it->value.GetInt64();
  if (it->value.IsNumber()) return static_cast<int64_t>(it->value.GetDouble());
  return -1;
}

std::string Finish(rapidjson::StringBuffer& buffer) {
  return std::string(buffer.GetString(), buffer.GetSize());
}

std::string GroupBody(const std::string& group) {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  w.Key("logGroupName");
  json::String(w, group);
  w.EndObject();
  return Finish(buffer);
}

void GroupAndStream(JsonWriter& w, const std::string& group,
                    const std::string& stream) {
  w.Key("logGroupName");
  json::String(w, group);
  w.Key("logStreamName");
  json::String(w, stream);
}

std::string StreamBody(const std::string& group, const std::string& stream) {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  GroupAndStream(w, group, stream);
  w.EndObject();
  return Finish(buffer);
}

std::string PutBody(const std::string& group, const std::string& stream,
                    const std::vector<LogEvent>& batch,
                    const std::string& sequence_token) {
  size_t estimate = group.size() + stream.size() + 128;
  for (const LogEvent& e : batch) estimate += e.message.size() + 40;
  rapidjson::StringBuffer buffer;
  buffer.Reserve(estimate);
  JsonWriter w(buffer);
  w.StartObject();
  GroupAndStream(w, group, stream);
  w.Key("logEvents");
  w.StartArray();
  for (const LogEvent& e : batch) {
    w.StartObject();
    w.Key("timestamp");
    w.Int64(e.timestamp_ms);
    w.Key("message");
    json::String(w, e.message);
    w.EndObject();
  }
  w.EndArray();
  if (!sequence_token.empty()) {
    w.Key("sequenceToken");
    json::String(w, sequence_token);
  }
  w.EndObject();
  return Finish(buffer);
}

std::string GetBody(const std::string& group, const std::string& stream,
                    const std::string& next_token, int limit) {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  GroupAndStream(w, group, stream);
  w.Key("startFromHead");
  w.Bool(true);
  w.Key("limit");
  w.Int(std::clamp(limit, 1, static_cast<int>(kMaxLogBatchEvents)));
  if (!next_token.empty()) {
    w.Key("nextToken");
    json::String(w, next_token);
  }
  w.EndObject();
  return Finish(buffer);
}

// The expectedSequenceToken of an old service's InvalidSequenceTokenException
// or DataAlreadyAcceptedException; "" when it has none.
std::string ExpectedSequenceToken(const absl::Status& status) {
  std::optional<AwsError> e = GetAwsError(status);
  if (!e) return "";
  rapidjson::Document doc;
  doc.Parse(e->body.data(), e->body.size());
  if (doc.HasParseError() || !doc.IsObject()) return "";
  return json::StringMember(doc, "expectedSequenceToken");
}

}  // namespace

// Counts a PutLogEvents answer for a batch of `n` events into `out`. While
// an old service's sequence token is in use (`token` not empty), takes the
// next one from the answer.
void ReadPutLogEventsAnswer(std::string_view answer, int64_t n,
                            PutLogEventsResult& out, std::string& token) {
  out.sent += n;
  ++out.batches;
  rapidjson::Document doc;
  doc.Parse(answer.data(), answer.size());
  if (doc.HasParseError() || !doc.IsObject()) return;
  const rapidjson::Value& root = doc;
  if (!token.empty()) token = json::StringMember(root, "nextSequenceToken");
  auto info = root.FindMember("rejectedLogEventsInfo");
  if (info == root.MemberEnd() || !info->value.IsObject()) return;
  // The old-end indexes are exclusive, the new start inclusive.
  const int64_t too_old = std::clamp<int64_t>(
      std::max(IntMember(info->value, "tooOldLogEventEndIndex"),
               IntMember(info->value, "expiredLogEventEndIndex")),
      0, n);
  const int64_t too_new_start =
      IntMember(info->value, "tooNewLogEventStartIndex");
  out.rejected_too_old += too_old;
  if (too_new_start >= 0) {
    out.rejected_too_new += n - std::clamp(too_new_start, too_old, n);
  }
}

namespace {

// ------------------------------------------------------------ errors

// `status` with `context` before its message and a hint after it; the code
// and the AwsError payload stay.
absl::Status Annotate(const absl::Status& status, std::string_view context,
                      std::string_view permission) {
  std::string message = absl::StrCat(AbslView(context), ": ", status.message());
  if (absl::IsPermissionDenied(status) && !permission.empty()) {
    absl::StrAppend(&message, "; allow ", AbslView(permission),
                    " to the delegate's IAM role (the ECS task role)");
  } else if (absl::IsResourceExhausted(status)) {
    absl::StrAppend(&message,
                    "; the account is over its CloudWatch Logs quota: lower "
                    "the delegate's LogsRateLimits or raise the quota in "
                    "Service Quotas");
  }
  absl::Status out(status.code(), message);
  status.ForEachPayload(
      [&out](absl::string_view url, const absl::Cord& payload) {
        out.SetPayload(url, payload);
      });
  return out;
}

std::string GroupContext(std::string_view what, const std::string& group) {
  return absl::StrCat(AbslView(what), " CloudWatch Logs group \"", group, "\"");
}

std::string StreamContext(std::string_view what, const std::string& group,
                          const std::string& stream) {
  return absl::StrCat(AbslView(what), " CloudWatch Logs stream \"", stream,
                      "\" of group \"", group, "\"");
}

absl::Status ValidateGroup(const std::string& group) {
  bool ok = !group.empty() && group.size() <= 512;
  for (char c : group) {
    const bool allowed = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                         (c >= '0' && c <= '9') || c == '.' || c == '-' ||
                         c == '_' || c == '/' || c == '#';
    ok = ok && allowed;
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "CloudWatch Logs group name \"", group,
      "\" is invalid: use 1 to 512 of the characters A-Z a-z 0-9 . - _ / #"));
}

absl::Status ValidateStream(const std::string& group,
                            const std::string& stream) {
  if (absl::Status s = ValidateGroup(group); !s.ok()) return s;
  if (!stream.empty() && stream.size() <= 512 &&
      stream.find_first_of(":*") == std::string::npos) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "CloudWatch Logs stream name \"", stream, "\" (group \"", group,
      "\") is invalid: use 1 to 512 characters, without ':' or '*'"));
}

std::string StreamKey(const std::string& group, const std::string& stream) {
  return absl::StrCat(group, ":", stream);
}

}  // namespace

// ------------------------------------------------------------ batching

std::vector<std::vector<LogEvent>> BatchLogEvents(std::vector<LogEvent> events,
                                                  size_t max_event_bytes) {
  max_event_bytes = std::clamp<size_t>(
      max_event_bytes, 4, kMaxLogBatchBytes - kLogEventOverheadBytes);
  size_t pieces = 0;  // beyond one per event
  for (LogEvent& e : events) {
    e.timestamp_ms = std::max<int64_t>(e.timestamp_ms, 0);
    SanitizeUtf8(e.message);
    // Not = " ": GCC 12 warns falsely (-Wrestrict).
    if (e.message.empty()) e.message.push_back(' ');
    if (e.message.size() > max_event_bytes) {
      pieces += e.message.size() / max_event_bytes;
    }
  }
  if (pieces > 0) {
    std::vector<LogEvent> split;
    split.reserve(events.size() + pieces);
    for (LogEvent& e : events) {
      if (e.message.size() <= max_event_bytes) {
        split.push_back(std::move(e));
        continue;
      }
      std::string_view rest = e.message;
      while (!rest.empty()) {
        size_t cut = std::min(rest.size(), max_event_bytes);
        // Well-formed UTF-8 and max_event_bytes >= 4: a lead byte is near.
        while (cut < rest.size() &&
               (static_cast<unsigned char>(rest[cut]) & 0xC0) == 0x80) {
          --cut;
        }
        split.push_back({e.timestamp_ms, std::string(rest.substr(0, cut))});
        rest.remove_prefix(cut);
      }
    }
    events = std::move(split);
  }
  const auto earlier = [](const LogEvent& a, const LogEvent& b) {
    return a.timestamp_ms < b.timestamp_ms;
  };
  if (!std::is_sorted(events.begin(), events.end(), earlier)) {
    std::stable_sort(events.begin(), events.end(), earlier);
  }

  // Where each batch ends; every event fits a batch on its own.
  std::vector<size_t> ends;
  for (size_t begin = 0; begin < events.size(); begin = ends.back()) {
    const int64_t first = events[begin].timestamp_ms;
    size_t end = begin;
    size_t bytes = 0;
    while (end < events.size() && end - begin < kMaxLogBatchEvents) {
      const size_t size = events[end].message.size() + kLogEventOverheadBytes;
      if (bytes + size > kMaxLogBatchBytes ||
          events[end].timestamp_ms - first >= kMaxLogBatchSpanMs) {
        break;
      }
      bytes += size;
      ++end;
    }
    ends.push_back(end);
  }
  // The first batch keeps the input's storage; the others are moved out.
  std::vector<std::vector<LogEvent>> batches(ends.size());
  for (size_t i = 1; i < ends.size(); ++i) {
    batches[i].assign(std::make_move_iterator(events.begin() + ends[i - 1]),
                      std::make_move_iterator(events.begin() + ends[i]));
  }
  if (!ends.empty()) {
    events.resize(ends[0]);
    batches[0] = std::move(events);
  }
  return batches;
}

// ------------------------------------------------------------ LogsClient

LogsClient::LogsClient(JsonClient& client, LogsRateLimits limits, Clock* clock)
    : client_(client),
      limits_(limits),
      clock_(clock                    ? *clock
             : client.options().clock ? *client.options().clock
                                      : Clock::Real()),
      create_group_limiter_(limits.create_log_group_per_s, clock_),
      create_stream_limiter_(limits.create_log_stream_per_s, clock_),
      get_events_limiter_(limits.get_log_events_per_s, clock_) {}

absl::Status LogsClient::EnsureLogGroup(const std::string& group) {
  if (absl::Status s = ValidateGroup(group); !s.ok()) return s;
  {
    absl::MutexLock lock(&mu_);
    if (known_groups_.contains(group)) return absl::OkStatus();
  }
  create_group_limiter_.Acquire();
  absl::StatusOr<std::string> r =
      client_.Call("CreateLogGroup", GroupBody(group));
  if (!r.ok() && AwsErrorCode(r.status()) != "ResourceAlreadyExistsException") {
    return Annotate(r.status(), GroupContext("creating", group),
                    "logs:CreateLogGroup (or create the group beforehand)");
  }
  absl::MutexLock lock(&mu_);
  known_groups_.insert(group);
  return absl::OkStatus();
}

absl::Status LogsClient::CreateStream(const std::string& group,
                                      const std::string& stream) {
  create_stream_limiter_.Acquire();
  absl::StatusOr<std::string> r =
      client_.Call("CreateLogStream", StreamBody(group, stream));
  if (r.ok() || AwsErrorCode(r.status()) == "ResourceAlreadyExistsException") {
    return absl::OkStatus();
  }
  return r.status();
}

absl::Status LogsClient::EnsureLogStream(const std::string& group,
                                         const std::string& stream) {
  if (absl::Status s = ValidateStream(group, stream); !s.ok()) return s;
  const std::string key = StreamKey(group, stream);
  {
    absl::MutexLock lock(&mu_);
    if (known_streams_.contains(key)) return absl::OkStatus();
  }
  absl::Status s = CreateStream(group, stream);
  if (AwsErrorCode(s) == "ResourceNotFoundException") {
    {
      absl::MutexLock lock(&mu_);
      known_groups_.erase(group);
    }
    if (absl::Status g = EnsureLogGroup(group); !g.ok()) return g;
    s = CreateStream(group, stream);
  }
  if (!s.ok()) {
    return Annotate(s, StreamContext("creating", group, stream),
                    "logs:CreateLogStream");
  }
  absl::MutexLock lock(&mu_);
  known_groups_.insert(group);
  known_streams_.insert(key);
  return absl::OkStatus();
}

void LogsClient::Forget(const std::string& group, const std::string& stream) {
  absl::MutexLock lock(&mu_);
  known_groups_.erase(group);
  known_streams_.erase(StreamKey(group, stream));
}

RateLimiter& LogsClient::PutLimiter(const std::string& group) {
  absl::MutexLock lock(&mu_);
  std::unique_ptr<RateLimiter>& limiter = put_limiters_[group];
  if (!limiter) {
    limiter = std::make_unique<RateLimiter>(
        limits_.put_log_events_per_s_per_group, clock_);
  }
  return *limiter;
}

absl::Status LogsClient::PutLogEvents(const std::string& group,
                                      const std::string& stream,
                                      std::vector<LogEvent> events,
                                      PutLogEventsResult* result) {
  PutLogEventsResult local;
  PutLogEventsResult& out = result ? *result : local;
  out = {};
  if (absl::Status s = ValidateStream(group, stream); !s.ok()) return s;
  const std::vector<std::vector<LogEvent>> batches =
      BatchLogEvents(std::move(events));
  for (const auto& batch : batches) out.events += batch.size();
  if (batches.empty()) return absl::OkStatus();
  RateLimiter& limiter = PutLimiter(group);
  const auto context = [&] {
    return absl::StrCat(StreamContext("sending log events to", group, stream),
                        " (", out.sent, " of ", out.events, " sent)");
  };

  bool recreated = false;
  // Only an old service wants one (it says so with
  // InvalidSequenceTokenException); from then on each answer gives the next.
  std::string token;
  for (const std::vector<LogEvent>& batch : batches) {
    int token_retries = 0;
    for (;;) {
      limiter.Acquire();
      absl::StatusOr<std::string> r =
          client_.Call("PutLogEvents", PutBody(group, stream, batch, token));
      if (r.ok()) {
        ReadPutLogEventsAnswer(*r, static_cast<int64_t>(batch.size()), out,
                               token);
        break;
      }
      const std::string code = AwsErrorCode(r.status());
      if (code == "DataAlreadyAcceptedException") {
        out.sent += static_cast<int64_t>(batch.size());
        ++out.batches;
        token = ExpectedSequenceToken(r.status());
        break;
      }
      if (code == "InvalidSequenceTokenException" && token_retries++ < 2) {
        token = ExpectedSequenceToken(r.status());
        if (!token.empty()) continue;
      }
      if (code == "ResourceNotFoundException" && !recreated) {
        recreated = true;
        Forget(group, stream);
        if (absl::Status s = EnsureLogStream(group, stream); !s.ok()) {
          return Annotate(s, context(), "");  // s has its hint
        }
        continue;
      }
      if (code == "InvalidParameterException") {
        return Annotate(
            r.status(),
            absl::StrCat(context(),
                         ": a batch broke a PutLogEvents rule that "
                         "BatchLogEvents should have kept; report it with the "
                         "request id"),
            "");
      }
      return Annotate(r.status(), context(), "logs:PutLogEvents");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<LogPage> LogsClient::GetLogEvents(const std::string& group,
                                                 const std::string& stream,
                                                 const std::string& next_token,
                                                 int limit) {
  if (absl::Status s = ValidateStream(group, stream); !s.ok()) return s;
  get_events_limiter_.Acquire();
  absl::StatusOr<std::string> r =
      client_.Call("GetLogEvents", GetBody(group, stream, next_token, limit));
  if (!r.ok()) {
    std::string context = StreamContext("reading", group, stream);
    if (absl::IsNotFound(r.status())) {
      absl::StrAppend(&context,
                      ": it does not exist (yet): the awslogs driver creates "
                      "the stream when the container starts");
    }
    return Annotate(r.status(), context, "logs:GetLogEvents");
  }
  rapidjson::Document doc;
  doc.Parse(r->data(), r->size());
  if (doc.HasParseError() || !doc.IsObject()) {
    return absl::UnavailableError(
        absl::StrCat(StreamContext("reading", group, stream),
                     ": the GetLogEvents answer is not a JSON object; is the "
                     "endpoint CloudWatch Logs?"));
  }
  const rapidjson::Value& root = doc;
  LogPage page;
  page.next_forward_token = json::StringMember(root, "nextForwardToken");
  if (page.next_forward_token.empty()) page.next_forward_token = next_token;
  auto events = root.FindMember("events");
  if (events != root.MemberEnd() && events->value.IsArray()) {
    page.events.reserve(events->value.Size());
    for (const rapidjson::Value& e : events->value.GetArray()) {
      if (!e.IsObject()) continue;
      page.events.push_back({std::max<int64_t>(IntMember(e, "timestamp"), 0),
                             json::StringMember(e, "message")});
    }
  }
  return page;
}

// ------------------------------------------------------------ LogTailer

LogTailer::LogTailer(LogsClient& client, std::string group, std::string stream,
                     int max_pages_per_poll)
    : client_(client),
      group_(std::move(group)),
      stream_(std::move(stream)),
      max_pages_(std::max(1, max_pages_per_poll)) {}

absl::StatusOr<std::vector<LogEvent>> LogTailer::Poll() {
  std::vector<LogEvent> out;
  for (int page = 0; page < max_pages_; ++page) {
    absl::StatusOr<LogPage> p = client_.GetLogEvents(group_, stream_, token_);
    if (!p.ok()) {
      if (absl::IsNotFound(p.status()) || !out.empty()) return out;
      return p.status();
    }
    if (out.empty()) {
      out = std::move(p->events);
    } else {
      out.insert(out.end(), std::make_move_iterator(p->events.begin()),
                 std::make_move_iterator(p->events.end()));
    }
    if (p->next_forward_token == token_) break;
    token_ = std::move(p->next_forward_token);
  }
  return out;
}

// ------------------------------------------------------------ the sink

CloudWatchLogSink::CloudWatchLogSink(LogsClient& client, std::string group,
                                     std::string stream,
                                     CloudWatchLogSinkOptions options)
    : client_(client),
      group_(std::move(group)),
      stream_(std::move(stream)),
      options_(options) {
  thread_ = std::thread([this] { Run(); });
}

CloudWatchLogSink::~CloudWatchLogSink() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
  Flush().IgnoreError();  // counted in stats()
}

void CloudWatchLogSink::Append(const LogLine& line) {
  std::string message =
      absl::StrCat(AbslView(line.task_id), "/",
                   line.step_id.empty() ? absl::string_view("stage")
                                        : AbslView(line.step_id),
                   line.stream == LogStream::kSystem   ? " # "
                   : line.stream == LogStream::kStderr ? " ! "
                                                       : " | ",
                   AbslView(line.text));
  const size_t size = message.size() + kLogEventOverheadBytes;
  const int64_t time = absl::ToUnixMillis(line.time);
  absl::MutexLock lock(&mu_);
  ++stats_.appended;
  if (buffered_bytes_ + size > options_.max_buffer_bytes) {
    ++stats_.dropped;
    return;
  }
  buffer_.push_back({time, std::move(message)});
  buffered_bytes_ += size;
}

bool CloudWatchLogSink::Wake() const {
  return stopping_ || buffered_bytes_ >= options_.flush_bytes ||
         buffer_.size() >= options_.flush_events;
}

void CloudWatchLogSink::Run() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(this, &CloudWatchLogSink::Wake),
                           options_.flush_interval);
      if (stopping_) return;
    }
    Flush().IgnoreError();  // counted in stats()
  }
}

absl::Status CloudWatchLogSink::Flush() {
  absl::MutexLock send(&send_mu_);
  std::vector<LogEvent> events;
  {
    absl::MutexLock lock(&mu_);
    events.swap(buffer_);
    buffered_bytes_ = 0;
  }
  if (events.empty()) return absl::OkStatus();
  const int64_t lines = static_cast<int64_t>(events.size());
  absl::Status s;
  if (!stream_ready_) {
    s = client_.EnsureLogStream(group_, stream_);
    stream_ready_ = s.ok();
  }
  PutLogEventsResult r;
  if (s.ok()) s = client_.PutLogEvents(group_, stream_, std::move(events), &r);
  absl::MutexLock lock(&mu_);
  stats_.sent += r.sent;
  stats_.rejected += r.rejected();
  if (!s.ok()) {
    stats_.failed += r.events > 0 ? r.events - r.sent : lines;
    stats_.last_error = s;
  }
  return s;
}

CloudWatchLogSink::Stats CloudWatchLogSink::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace delegate::aws

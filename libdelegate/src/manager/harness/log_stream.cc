#include "manager/harness/log_stream.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "util/json_escape.h"
#include "util/strings.h"
#include "util/url.h"

namespace delegate::harness {
namespace {

std::string TrimSlash(std::string s) {
  while (!s.empty() && s.back() == '/') s.pop_back();
  return s;
}

std::string LineJson(std::string_view level, uint64_t pos, std::string_view out,
                     absl::Time time) {
  std::string json = absl::StrCat("{\"level\":\"", AbslView(level),
                                  "\",\"pos\":", pos, ",\"out\":\"");
  AppendJsonEscaped(json, out);
  absl::StrAppend(
      &json, "\",\"time\":\"",
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", time, absl::UTCTimeZone()),
      "\",\"args\":{}}");
  return json;
}

}  // namespace

LogServiceStream::LogServiceStream(LogService& service, TaskLogger logger)
    : service_(service), logger_(std::move(logger)) {
  query_ = absl::StrCat("?accountID=", UrlEncode(logger_.account),
                        "&key=", UrlEncode(logger_.key));
}

void LogServiceStream::Append(const LogLine& line) {
  std::string_view text = line.text;
  const size_t cap = service_.limits_.max_line_bytes;
  std::string cut;
  if (text.size() > cap) {
    cut = absl::StrCat(AbslView(text.substr(0, cap)), "... (line cut at ", cap,
                       " bytes)");
    text = cut;
  }
  const std::string_view level =
      line.stream == delegate::LogStream::kStderr ? "error" : "info";
  absl::MutexLock lock(&mu_);
  if (closed_) return;
  std::string json = LineJson(
      level, position_++,
      absl::StrCat(AbslView(text), line.partial ? "" : "\n"), line.time);
  pending_bytes_ += json.size();
  pending_.push_back(std::move(json));
  while (pending_bytes_ > service_.limits_.max_buffer_bytes &&
         pending_.size() > 1) {
    pending_bytes_ -= pending_.front().size();
    pending_.pop_front();
    ++dropped_;
  }
}

void LogServiceStream::FlushLocked() {
  std::deque<std::string> lines;
  uint64_t newly_dropped = 0;
  uint64_t pos = 0;
  {
    absl::MutexLock lock(&mu_);
    lines.swap(pending_);
    pending_bytes_ = 0;
    newly_dropped = dropped_ - dropped_reported_;
    dropped_reported_ = dropped_;
    pos = position_;
  }
  if (lines.empty() && newly_dropped == 0) return;
  std::string body = "[";
  if (newly_dropped > 0) {
    absl::StrAppend(&body,
                    LineJson("warn", pos,
                             absl::StrCat("[delegate] ", newly_dropped,
                                          " log lines were dropped: the step "
                                          "wrote faster than the log service "
                                          "took them\n"),
                             absl::Now()));
  }
  for (const std::string& l : lines) {
    if (body.size() > 1) body += ',';
    body += l;
  }
  body += ']';
  absl::Status s = service_.Send(logger_, "PUT", query_, std::move(body));
  if (!s.ok()) {
    service_.log_.Warn("log service write failed",
                       {{"key", logger_.key}, {"error", s.message()}});
  }
}

void LogServiceStream::Close() {
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    closed_ = true;
  }
  absl::MutexLock send(&send_mu_);
  FlushLocked();
  if (logger_.skip_closing_stream) return;
  std::string query = query_;
  if (logger_.skip_opening_stream) query += "&snapshot=true";
  absl::Status s = service_.Send(logger_, "DELETE", query, "");
  if (!s.ok()) {
    service_.log_.Warn("log service close failed",
                       {{"key", logger_.key}, {"error", s.message()}});
  }
}

uint64_t LogServiceStream::dropped() const {
  absl::MutexLock lock(&mu_);
  return dropped_;
}

LogService::LogService(http::HttpClient& http, Transport transport,
                       EventLog& log, LogStreamLimits limits)
    : http_(http),
      transport_(std::move(transport)),
      log_(log),
      limits_(limits),
      flusher_([this] { FlusherLoop(); }) {}

LogService::~LogService() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    cv_.SignalAll();
  }
  flusher_.join();
}

absl::Status LogService::Send(const TaskLogger& logger,
                              const std::string& method,
                              const std::string& query, std::string body) {
  http::Request req;
  req.method = method;
  req.url = absl::StrCat(TrimSlash(logger.address), "/stream", query);
  req.headers = {{"X-Harness-Token", logger.token.reveal()},
                 {"Content-Type", "application/json"}};
  req.body = std::move(body);
  req.timeout = limits_.call_timeout;
  req.tls = transport_.tls;
  // A task's "insecure" is not honoured: the log token would go to a peer
  // nobody verified. Add the log service's CA to HARNESS_CERTS_DIR instead.
  req.proxy = transport_.proxy;
  req.no_proxy = transport_.no_proxy;
  absl::StatusOr<http::Response> resp = http_.Perform(req);
  if (!resp.ok()) return resp.status();
  if (resp->status >= 300) {
    const std::string what =
        absl::StrCat(method, " ", TrimSlash(logger.address),
                     "/stream answered HTTP ", resp->status);
    return resp->status >= 500 ? absl::UnavailableError(what)
                               : absl::FailedPreconditionError(what);
  }
  return absl::OkStatus();
}

std::shared_ptr<LogServiceStream> LogService::Open(const TaskLogger& logger) {
  std::shared_ptr<LogServiceStream> stream(new LogServiceStream(*this, logger));
  if (!logger.skip_opening_stream) {
    RetryPolicy policy;
    // The step waits for this: a log service that is down delays it by a
    // few seconds, then its lines are still sent when it is back.
    policy.initial = absl::Milliseconds(500);
    policy.max_elapsed = absl::Seconds(5);
    absl::Status s = Retry(
        policy, [&] { return Send(logger, "POST", stream->query_, ""); },
        [this] {
          absl::MutexLock lock(&mu_);
          return stopping_;
        });
    if (!s.ok()) {
      log_.Warn("log service open failed",
                {{"key", logger.key}, {"error", s.message()}});
    }
  }
  {
    absl::MutexLock lock(&mu_);
    streams_.push_back(stream);
  }
  return stream;
}

void LogService::FlusherLoop() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    cv_.WaitWithTimeout(&mu_, limits_.flush_interval);
    if (stopping_) break;
    std::vector<std::shared_ptr<LogServiceStream>> live;
    std::vector<std::weak_ptr<LogServiceStream>> kept;
    for (auto& w : streams_) {
      if (auto s = w.lock()) {
        live.push_back(s);
        kept.push_back(w);
      }
    }
    streams_.swap(kept);
    mu_.Unlock();
    for (auto& s : live) {
      // A Close in progress flushes itself.
      if (s->send_mu_.TryLock()) {
        s->FlushLocked();
        s->send_mu_.Unlock();
      }
    }
    mu_.Lock();
  }
}

bool StageLogRouter::Route(const std::string& step_id,
                           std::shared_ptr<LogServiceStream> stream) {
  absl::MutexLock lock(&mu_);
  return routes_.try_emplace(step_id, std::move(stream)).second;
}

std::shared_ptr<LogServiceStream> StageLogRouter::Unroute(
    const std::string& step_id) {
  absl::MutexLock lock(&mu_);
  auto it = routes_.find(step_id);
  if (it == routes_.end()) return nullptr;
  std::shared_ptr<LogServiceStream> stream = std::move(it->second);
  routes_.erase(it);
  return stream;
}

void StageLogRouter::Append(const LogLine& line) {
  std::shared_ptr<LogServiceStream> stream;
  {
    absl::MutexLock lock(&mu_);
    auto it = routes_.find(AbslView(line.step_id));
    if (it != routes_.end()) stream = it->second;
  }
  if (stream) {
    stream->Append(line);
  } else {
    fallback_.Append(line);
  }
}

}  // namespace delegate::harness

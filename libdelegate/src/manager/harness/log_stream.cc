#include "manager/harness/log_stream.h"

#include <algorithm>

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
  const bool output = line.stream != delegate::LogStream::kSystem;
  const bool output_end = output && !line.partial;
  absl::MutexLock lock(&mu_);
  if (closed_) return;
  if (output && skip_output_ > 0) {
    if (output_end) {
      --skip_output_;
      ++handled_output_;
    }
    return;
  }
  const uint64_t pos = position_++;
  std::string json = LineJson(
      level, pos, absl::StrCat(AbslView(text), line.partial ? "" : "\n"),
      line.time);
  pending_bytes_ += json.size();
  pending_.push_back({pos, std::move(json), text.size(), output_end});
  while (pending_bytes_ > service_.limits_.max_buffer_bytes &&
         pending_.size() > 1) {
    pending_bytes_ -= pending_.front().json.size();
    dropped_bytes_ += pending_.front().bytes;
    handled_output_ += pending_.front().output_end;
    pending_.pop_front();
    ++dropped_;
  }
}

void LogServiceStream::SkipOutputLines(uint64_t lines) {
  absl::MutexLock lock(&mu_);
  skip_output_ = lines;
}

void LogServiceStream::OnOutputHandled(
    std::function<void(uint64_t lines)> handled) {
  absl::MutexLock lock(&mu_);
  on_handled_ = std::move(handled);
}

absl::Status LogServiceStream::FlushLocked() {
  if (absl::Now() < next_try_) {
    return absl::UnavailableError("waiting before the next write");
  }
  std::string body = "[";
  uint64_t last_pos = 0;
  uint64_t reporting = 0;
  {
    absl::MutexLock lock(&mu_);
    const uint64_t newly_dropped = dropped_ - dropped_reported_;
    if (pending_.empty() && newly_dropped == 0) return absl::OkStatus();
    if (newly_dropped > 0) {
      if (!notice_pos_) {
        notice_pos_ = position_++;
        notice_time_ = absl::Now();
      }
      absl::StrAppend(
          &body, LineJson("warn", *notice_pos_,
                          absl::StrCat(
                              "[delegate] ", newly_dropped, " log lines (",
                              dropped_bytes_,
                              " bytes in all so far) were dropped: the step "
                              "wrote faster than the log service took them\n"),
                          notice_time_));
      reporting = dropped_;
    }
    for (const Line& l : pending_) {
      if (body.size() > 1) body += ',';
      body += l.json;
    }
    if (!pending_.empty()) last_pos = pending_.back().pos;
  }
  body += ']';
  const bool had_lines = body.size() > 2;
  absl::Status s = PutLocked(std::move(body));
  if (!s.ok()) return s;
  std::function<void(uint64_t)> handled;
  uint64_t handled_lines = 0;
  {
    absl::MutexLock lock(&mu_);
    // Lines appended meanwhile have later positions; lines dropped
    // meanwhile are gone from the front already.
    while (had_lines && !pending_.empty() && pending_.front().pos <= last_pos) {
      pending_bytes_ -= pending_.front().json.size();
      handled_output_ += pending_.front().output_end;
      pending_.pop_front();
    }
    if (reporting > 0) {
      dropped_reported_ = reporting;
      notice_pos_.reset();
    }
    handled = on_handled_;
    handled_lines = handled_output_;
  }
  if (handled && had_lines) handled(handled_lines);
  return absl::OkStatus();
}

absl::Status LogServiceStream::PutLocked(std::string body) {
  absl::Status s = service_.Send(logger_, "PUT", query_, body);
  if (absl::IsNotFound(s) && !logger_.skip_opening_stream) {
    // The service forgot the stream (it restarted): open it again.
    s = service_.OpenStream(logger_, query_, absl::ZeroDuration());
    if (s.ok()) s = service_.Send(logger_, "PUT", query_, std::move(body));
  }
  if (s.ok()) {
    NoteSuccess();
  } else {
    NoteFailure(s);
  }
  return s;
}

void LogServiceStream::NoteFailure(const absl::Status& status) {
  absl::Duration wait = service_.limits_.first_backoff;
  for (int i = 0; i < failures_ && wait < service_.limits_.max_backoff; ++i) {
    wait *= 2;
  }
  wait = std::min(wait, service_.limits_.max_backoff);
  next_try_ = absl::Now() + wait;
  if (failures_++ == 0) {
    service_.log_.Warn(
        "log service write failed; the lines are kept and sent again",
        {{"key", logger_.key},
         {"error", status.message()},
         {"buffered_lines", absl::StrCat(undelivered())}});
  }
}

void LogServiceStream::NoteSuccess() {
  if (failures_ > 0) {
    service_.log_.Info(
        "log service writes resumed",
        {{"key", logger_.key}, {"failed_attempts", absl::StrCat(failures_)}});
  }
  failures_ = 0;
  next_try_ = absl::InfinitePast();
}

bool LogServiceStream::FinishCloseLocked() {
  if (!FlushLocked().ok()) return false;
  if (logger_.skip_closing_stream || close_sent_) return true;
  std::string query = query_;
  if (logger_.skip_opening_stream) query += "&snapshot=true";
  absl::Status s = service_.Send(logger_, "DELETE", query, "");
  if (absl::IsNotFound(s)) s = absl::OkStatus();  // nothing left to close
  if (!s.ok()) {
    NoteFailure(s);
    return false;
  }
  close_sent_ = true;
  return true;
}

void LogServiceStream::Close() {
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    closed_ = true;
  }
  absl::MutexLock send(&send_mu_);
  closed_at_ = absl::Now();
  // One attempt here (at most call_timeout each for the PUT and the
  // DELETE); a service that fails it is not retried here, so that the
  // step's result does not wait on its log: the flusher finishes the stream.
  next_try_ = absl::InfinitePast();
  if (!FinishCloseLocked()) service_.KeepClosing(shared_from_this());
}

uint64_t LogServiceStream::dropped() const {
  absl::MutexLock lock(&mu_);
  return dropped_;
}

size_t LogServiceStream::undelivered() const {
  absl::MutexLock lock(&mu_);
  return pending_.size();
}

LogService::LogService(http::HttpClient& http, Transport transport,
                       EventLog& log, LogStreamLimits limits)
    : http_(http),
      transport_(std::move(transport)),
      log_(log),
      limits_(limits),
      flusher_([this] { FlusherLoop(); }) {}

LogService::~LogService() {
  std::vector<std::shared_ptr<LogServiceStream>> closing;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    cv_.SignalAll();
  }
  flusher_.join();
  {
    absl::MutexLock lock(&mu_);
    closing.swap(closing_);
  }
  // Nothing goes silently: say what the service never took.
  for (auto& s : closing) {
    absl::MutexLock send(&s->send_mu_);
    s->next_try_ = absl::InfinitePast();
    if (s->FinishCloseLocked()) continue;
    log_.Warn(
        "log lines not delivered at shutdown",
        {{"key", s->logger_.key}, {"lines", absl::StrCat(s->undelivered())}});
  }
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
    if (resp->status == 404) return absl::NotFoundError(what);
    return resp->status >= 500 || resp->status == 429
               ? absl::UnavailableError(what)
               : absl::FailedPreconditionError(what);
  }
  return absl::OkStatus();
}

absl::Status LogService::OpenStream(const TaskLogger& logger,
                                    const std::string& query,
                                    absl::Duration for_up_to) {
  RetryPolicy policy;
  policy.initial = absl::Milliseconds(500);
  policy.max_elapsed = for_up_to;
  return Retry(
      policy, [&] { return Send(logger, "POST", query, ""); },
      [this] {
        absl::MutexLock lock(&mu_);
        return stopping_;
      });
}

std::shared_ptr<LogServiceStream> LogService::Open(const TaskLogger& logger,
                                                   bool existing) {
  std::shared_ptr<LogServiceStream> stream(new LogServiceStream(*this, logger));
  if (!logger.skip_opening_stream && !existing) {
    // The step waits for this: a log service that is down delays it by a
    // few seconds, then its lines are still sent when it is back.
    absl::Status s = OpenStream(logger, stream->query_, absl::Seconds(5));
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

void LogService::KeepClosing(std::shared_ptr<LogServiceStream> stream) {
  absl::MutexLock lock(&mu_);
  closing_.push_back(std::move(stream));
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
    std::vector<std::shared_ptr<LogServiceStream>> closing;
    closing.swap(closing_);
    mu_.Unlock();
    for (auto& s : live) {
      // A Close in progress flushes itself.
      if (s->send_mu_.TryLock()) {
        (void)s->FlushLocked();
        s->send_mu_.Unlock();
      }
    }
    std::vector<std::shared_ptr<LogServiceStream>> still;
    for (auto& s : closing) {
      absl::MutexLock send(&s->send_mu_);
      if (s->FinishCloseLocked()) continue;
      if (absl::Now() - s->closed_at_ < limits_.deliver_closed_for) {
        still.push_back(s);
        continue;
      }
      log_.Warn(
          "gave up delivering a closed log stream",
          {{"key", s->logger_.key}, {"lines", absl::StrCat(s->undelivered())}});
    }
    mu_.Lock();
    for (auto& s : still) closing_.push_back(std::move(s));
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

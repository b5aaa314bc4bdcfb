#include "manager/harness/log_stream.h"

#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "http/http_server.h"
#include "rapidjson/document.h"

namespace delegate::harness {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A log service on loopback that records each call.
class FakeLogService {
 public:
  FakeLogService() {
    auto s = http::HttpServer::Start({}, [this](const http::ServerRequest& r) {
      std::lock_guard lock(mu_);
      calls_.push_back(absl::StrCat(r.method, " ", r.target));
      tokens_.emplace_back(r.header("X-Harness-Token"));
      if (failing_) {
        http::ServerResponse down;
        down.status = 503;
        return down;
      }
      const std::string key(r.query("key").value_or(""));
      if (r.method == "POST") open_.insert(key);
      if (r.method == "PUT" && !open_.count(key)) {
        http::ServerResponse unknown;
        unknown.status = 404;
        return unknown;
      }
      if (r.method == "PUT") {
        rapidjson::Document d;
        d.Parse(r.body.c_str());
        EXPECT_TRUE(d.IsArray()) << r.body;
        for (const auto& line : d.GetArray()) {
          EXPECT_TRUE(line.HasMember("pos") && line.HasMember("time") &&
                      line.HasMember("level") && line.HasMember("args"));
          lines_.push_back(line["out"].GetString());
        }
      }
      return http::ServerResponse{};
    });
    EXPECT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
  }
  TaskLogger Logger() const {
    TaskLogger l;
    l.address = server_->url() + "/log-service/";
    l.token = SecretString("log-token");
    l.key = "acct/stage/step 1";
    l.account = "acct";
    return l;
  }
  std::vector<std::string> calls() {
    std::lock_guard lock(mu_);
    return calls_;
  }
  std::vector<std::string> lines() {
    std::lock_guard lock(mu_);
    return lines_;
  }
  std::vector<std::string> tokens() {
    std::lock_guard lock(mu_);
    return tokens_;
  }
  // Answers 503 to everything while set.
  void SetFailing(bool failing) {
    std::lock_guard lock(mu_);
    failing_ = failing;
  }
  // A restart: the open streams are forgotten, so a PUT gets 404.
  void ForgetStreams() {
    std::lock_guard lock(mu_);
    open_.clear();
  }
  size_t CallsStartingWith(const std::string& prefix) {
    std::lock_guard lock(mu_);
    size_t n = 0;
    for (const std::string& c : calls_) n += absl::StartsWith(c, prefix);
    return n;
  }

 private:
  std::mutex mu_;
  bool failing_ = false;
  std::set<std::string> open_;
  std::vector<std::string> calls_, lines_, tokens_;
  std::unique_ptr<http::HttpServer> server_;
};

LogLine Line(std::string_view text) {
  LogLine l;
  l.text = text;
  l.time = absl::Now();
  return l;
}

TEST(LogServiceTest, OpensWritesAndClosesTheStreamWithTheTaskToken) {
  FakeLogService fake;
  http::HttpClient http;
  EventLog log([](std::string_view) {});
  LogService service(http, {}, log);
  auto stream = service.Open(fake.Logger());
  stream->Append(Line("first"));
  stream->Append(Line("second"));
  stream->Close();
  const std::string q =
      "/log-service/stream?accountID=acct&key=acct%2Fstage%2Fstep%201";
  EXPECT_THAT(fake.calls(),
              ElementsAre("POST " + q, "PUT " + q, "DELETE " + q));
  EXPECT_THAT(fake.lines(), ElementsAre("first\n", "second\n"));
  for (const std::string& t : fake.tokens()) EXPECT_EQ(t, "log-token");
}

TEST(LogServiceTest, FlushesWhileTheStepRuns) {
  FakeLogService fake;
  http::HttpClient http;
  EventLog log([](std::string_view) {});
  LogStreamLimits limits;
  limits.flush_interval = absl::Milliseconds(20);
  LogService service(http, {}, log, limits);
  auto stream = service.Open(fake.Logger());
  stream->Append(Line("early"));
  for (int i = 0; i < 500 && fake.lines().empty(); ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_THAT(fake.lines(), ElementsAre("early\n"));
  stream->Close();
}

TEST(LogServiceTest, LongLinesAreCutAndAFullBufferSaysWhatItDropped) {
  FakeLogService fake;
  http::HttpClient http;
  EventLog log([](std::string_view) {});
  LogStreamLimits limits;
  limits.flush_interval = absl::Hours(1);  // only Close sends
  limits.max_line_bytes = 100;
  limits.max_buffer_bytes = 2000;
  LogService service(http, {}, log, limits);
  auto stream = service.Open(fake.Logger());
  stream->Append(Line(std::string(500, 'x')));
  for (int i = 0; i < 100; ++i) stream->Append(Line(absl::StrCat("line ", i)));
  stream->Close();
  std::vector<std::string> lines = fake.lines();
  ASSERT_FALSE(lines.empty());
  EXPECT_THAT(lines[0], HasSubstr("were dropped: the step wrote faster"));
  EXPECT_EQ(lines.back(), "line 99\n");  // the newest are kept
  EXPECT_GT(stream->dropped(), 0u);
  EXPECT_LT(lines.size(), 101u);
  for (const std::string& l : lines) EXPECT_LE(l.size(), 200u);
}

// Waits up to 5 s for `done`.
template <typename F>
void AwaitTrue(F done) {
  for (int i = 0; i < 1000 && !done(); ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
}

// Limits that flush and retry quickly.
LogStreamLimits Quick() {
  LogStreamLimits limits;
  limits.flush_interval = absl::Milliseconds(10);
  limits.first_backoff = absl::Milliseconds(10);
  limits.max_backoff = absl::Milliseconds(40);
  return limits;
}

TEST(LogServiceTest, LinesWrittenWhileTheServiceIsDownArriveOnceItIsBack) {
  FakeLogService fake;
  http::HttpClient http;
  std::vector<std::string> events;
  std::mutex events_mu;
  EventLog log([&](std::string_view e) {
    std::lock_guard lock(events_mu);
    events.emplace_back(e);
  });
  LogService service(http, {}, log, Quick());
  auto stream = service.Open(fake.Logger());
  stream->Append(Line("before"));
  AwaitTrue([&] { return fake.lines().size() == 1; });
  fake.SetFailing(true);
  for (int i = 0; i < 20; ++i) stream->Append(Line(absl::StrCat("during ", i)));
  // Several writes fail while the lines wait.
  AwaitTrue([&] { return fake.CallsStartingWith("PUT") >= 4; });
  EXPECT_EQ(stream->undelivered(), 20u);
  fake.SetFailing(false);
  stream->Append(Line("after"));
  AwaitTrue([&] { return fake.lines().size() == 22; });
  std::vector<std::string> want = {"before\n"};
  for (int i = 0; i < 20; ++i) want.push_back(absl::StrCat("during ", i, "\n"));
  want.push_back("after\n");
  EXPECT_EQ(fake.lines(), want);  // each once, in order
  // The service has them; the answer is on its way.
  AwaitTrue([&] { return stream->undelivered() == 0; });
  EXPECT_EQ(stream->undelivered(), 0u);
  EXPECT_EQ(stream->dropped(), 0u);
  stream->Close();
  std::lock_guard lock(events_mu);
  size_t failed = 0, resumed = 0;
  for (const std::string& e : events) {
    failed += absl::StrContains(e, "log service write failed");
    resumed += absl::StrContains(e, "log service writes resumed");
  }
  EXPECT_EQ(failed, 1u) << "one warning per outage, not per attempt";
  EXPECT_EQ(resumed, 1u);
}

TEST(LogServiceTest,
     AStreamClosedDuringAnOutageIsFinishedWhenTheServiceIsBack) {
  FakeLogService fake;
  http::HttpClient http;
  EventLog log([](std::string_view) {});
  LogService service(http, {}, log, Quick());
  auto stream = service.Open(fake.Logger());
  fake.SetFailing(true);
  stream->Append(Line("last words"));
  const absl::Time asked = absl::Now();
  stream->Close();
  EXPECT_LT(absl::Now() - asked, absl::Seconds(2)) << "Close waited";
  stream.reset();  // the service keeps what it must still deliver
  fake.SetFailing(false);
  AwaitTrue([&] {
    return fake.CallsStartingWith("DELETE") > 0 && fake.lines().size() == 1;
  });
  EXPECT_THAT(fake.lines(), ElementsAre("last words\n"));
  EXPECT_GT(fake.CallsStartingWith("DELETE"), 0u);
}

TEST(LogServiceTest, AServiceThatForgotTheStreamHasItOpenedAgain) {
  FakeLogService fake;
  http::HttpClient http;
  EventLog log([](std::string_view) {});
  LogService service(http, {}, log, Quick());
  auto stream = service.Open(fake.Logger());
  stream->Append(Line("one"));
  AwaitTrue([&] { return fake.lines().size() == 1; });
  fake.ForgetStreams();  // the service restarted without its streams
  stream->Append(Line("two"));
  AwaitTrue([&] { return fake.lines().size() == 2; });
  EXPECT_THAT(fake.lines(), ElementsAre("one\n", "two\n"));
  EXPECT_EQ(fake.CallsStartingWith("POST"), 2u);
  stream->Close();
}

TEST(LogServiceTest, AFullBufferDuringAnOutageSaysHowManyLinesAndBytesWent) {
  FakeLogService fake;
  http::HttpClient http;
  EventLog log([](std::string_view) {});
  LogStreamLimits limits = Quick();
  limits.max_buffer_bytes = 3000;
  LogService service(http, {}, log, limits);
  auto stream = service.Open(fake.Logger());
  fake.SetFailing(true);
  for (int i = 0; i < 100; ++i) {
    stream->Append(Line(absl::StrCat("line ", i, " ", std::string(40, 'y'))));
  }
  fake.SetFailing(false);
  stream->Close();
  std::vector<std::string> lines = fake.lines();
  ASSERT_FALSE(lines.empty());
  const uint64_t dropped = stream->dropped();
  ASSERT_GT(dropped, 0u);
  EXPECT_THAT(lines[0], HasSubstr(absl::StrCat(dropped, " log lines (")));
  EXPECT_THAT(lines[0], HasSubstr(" bytes in all so far) were dropped"));
  // What was kept and what was dropped add up to everything written.
  EXPECT_EQ(lines.size() - 1 + dropped, 100u);
  EXPECT_THAT(lines.back(), HasSubstr("line 99 "));
}

TEST(LogServiceTest, AReattachedStepSkipsTheOutputTheServiceAlreadyHas) {
  FakeLogService fake;
  http::HttpClient http;
  EventLog log([](std::string_view) {});
  LogService service(http, {}, log);
  std::vector<uint64_t> handled;
  std::mutex mu;
  auto record = [&](uint64_t n) {
    std::lock_guard lock(mu);
    handled.push_back(n);
  };
  {
    // The first process: three lines of output, one of the delegate's own.
    auto first = service.Open(fake.Logger());
    first->OnOutputHandled(record);
    LogLine own = Line("pulling");
    own.stream = LogStream::kSystem;
    first->Append(own);
    first->Append(Line("one"));
    first->Append(Line("two"));
    LogLine part = Line("thr");
    part.partial = true;
    first->Append(part);
    first->Append(Line("ee"));
    first->Close();
  }
  {
    std::lock_guard lock(mu);
    ASSERT_FALSE(handled.empty());
    EXPECT_EQ(handled.back(), 3u);  // complete output lines, not "pulling"
  }
  // After a restart the output is read again from its start: the lines
  // the service has are not sent twice; the delegate's own line is new.
  // Written on, not opened anew: a POST would make the stream afresh.
  auto again = service.Open(fake.Logger(), /*existing=*/true);
  again->OnOutputHandled(record);
  again->SkipOutputLines(2);
  LogLine own = Line("re-attached");
  own.stream = LogStream::kSystem;
  again->Append(own);
  for (const char* text : {"one", "two", "three", "four"}) {
    again->Append(Line(text));
  }
  again->Close();
  EXPECT_THAT(fake.lines(),
              ElementsAre("pulling\n", "one\n", "two\n", "thr", "ee\n",
                          "re-attached\n", "three\n", "four\n"));
  EXPECT_EQ(fake.CallsStartingWith("POST "), 1u);
  std::lock_guard lock(mu);
  EXPECT_EQ(handled.back(), 4u);
}

TEST(StageLogRouterTest, RoutedStepsGoToTheirStreamOthersToTheFallback) {
  struct Recorder : LogSink {
    void Append(const LogLine& l) override { seen.emplace_back(l.text); }
    std::vector<std::string> seen;
  } fallback;
  FakeLogService fake;
  http::HttpClient http;
  EventLog log([](std::string_view) {});
  LogService service(http, {}, log);
  StageLogRouter sink(fallback);
  auto stream = service.Open(fake.Logger());
  sink.Route("build", stream);
  LogLine routed = Line("to the service");
  routed.task_id = "stage#1";
  routed.step_id = "build";
  LogLine other = Line("to stdout");
  other.task_id = "stage#1";
  other.step_id = "test";
  sink.Append(routed);
  sink.Append(other);
  EXPECT_EQ(sink.Unroute("build"), stream);
  sink.Append(routed);
  stream->Close();
  EXPECT_THAT(fake.lines(), ElementsAre("to the service\n"));
  EXPECT_THAT(fallback.seen, ElementsAre("to stdout", "to the service"));
}

}  // namespace
}  // namespace delegate::harness

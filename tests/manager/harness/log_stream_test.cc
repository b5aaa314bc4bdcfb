#include "manager/harness/log_stream.h"

#include <mutex>
#include <string>
#include <vector>

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

 private:
  std::mutex mu_;
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
  EXPECT_THAT(lines[0], HasSubstr("log lines were dropped"));
  EXPECT_EQ(lines.back(), "line 99\n");  // the newest are kept
  EXPECT_GT(stream->dropped(), 0u);
  EXPECT_LT(lines.size(), 101u);
  for (const std::string& l : lines) EXPECT_LE(l.size(), 200u);
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

// The CloudWatch Logs client against a loopback server that keeps groups,
// streams and events the way CloudWatch Logs does and refuses what it would
// refuse (order, span, size, count, empty or non-UTF-8 messages): batching
// over random input, groups and streams created when missing, the rate
// limits, GetLogEvents paging in the tailer, and the LogSink.
#include "aws/logs_client.h"

#include <algorithm>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "http/http_server.h"
#include "rapidjson/document.h"
#include "rapidjson/stringbuffer.h"
#include "rapidjson/writer.h"
#include "tests/fakes/aws_fake.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/log_batch_check.h"
#include "util/strings.h"

namespace delegate::aws {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

using ::delegate::testing::BatchBytes;
using ::delegate::testing::BatchProblem;
using ::delegate::testing::ValidUtf8;

// ------------------------------------------------------------ batching

std::string RandomText(std::mt19937& rng, size_t chars) {
  static const char* const kPieces[] = {
      "a",  "Z",  " ",  "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9D\x84\x9E",
      "\"", "\\", "\n", "\x01",     "\xE6\x97\xA5"};
  std::string s;
  for (size_t i = 0; i < chars; ++i) s += kPieces[rng() % std::size(kPieces)];
  return s;
}

TEST(BatchLogEventsTest, RandomInputGivesValidBatchesAndLosesNothing) {
  std::mt19937 rng(20261201);
  for (int round = 0; round < 30; ++round) {
    const size_t max_event_bytes = round % 4 == 0   ? 7 + rng() % 20
                                   : round % 4 == 1 ? 1000
                                                    : kMaxLogEventBytes;
    const size_t count = round == 0 ? 25000 : rng() % 2000;
    const int64_t span_ms = int64_t{1} << (20 + rng() % 10);  // ~17 min..3 d
    std::vector<LogEvent> events;
    for (size_t i = 0; i < count; ++i) {
      const int kind = static_cast<int>(rng() % 200);
      std::string text;
      if (kind == 0 && max_event_bytes > 1000) {  // over 256 KiB
        const std::string chunk = RandomText(rng, 1000);
        while (text.size() < 270'000) text += chunk;
      } else if (kind < 5) {
        text = "";
      } else {
        text = RandomText(rng, kind < 20 ? 500 + rng() % 2000 : rng() % 80);
      }
      events.push_back(
          {1'800'000'000'000 + static_cast<int64_t>(rng() % span_ms),
           std::move(text)});
    }
    // What each timestamp's messages must read, joined, in input order.
    std::map<int64_t, std::string> expected;
    for (const LogEvent& e : events) {
      expected[e.timestamp_ms] += e.message.empty() ? " " : e.message;
    }

    const std::vector<std::vector<LogEvent>> batches =
        BatchLogEvents(events, max_event_bytes);
    std::map<int64_t, std::string> got;
    int64_t last = 0;
    for (const std::vector<LogEvent>& batch : batches) {
      ASSERT_EQ(BatchProblem(batch, max_event_bytes), "") << "round " << round;
      ASSERT_GE(batch.front().timestamp_ms, last) << "batches out of order";
      last = batch.back().timestamp_ms;
      for (const LogEvent& e : batch) got[e.timestamp_ms] += e.message;
    }
    ASSERT_EQ(got, expected) << "round " << round;
  }
}

TEST(BatchLogEventsTest, FillsBatchesToTheCountAndByteLimits) {
  std::vector<LogEvent> small(25000, LogEvent{1, "x"});
  std::vector<std::vector<LogEvent>> b = BatchLogEvents(small);
  ASSERT_EQ(b.size(), 3u);
  EXPECT_EQ(b[0].size(), 10000u);
  EXPECT_EQ(b[2].size(), 5000u);

  // 1,048,576 / (262,118 + 26) = 4 events of the largest size.
  std::vector<LogEvent> large(9, LogEvent{1, std::string(262118, 'y')});
  b = BatchLogEvents(large);
  ASSERT_EQ(b.size(), 3u);
  EXPECT_EQ(b[0].size(), 4u);
  EXPECT_EQ(BatchBytes(b[0]), 1048576u);
}

TEST(BatchLogEventsTest, A24HourSpanStartsANewBatch) {
  const int64_t day = 24 * 3600 * 1000;
  std::vector<std::vector<LogEvent>> b = BatchLogEvents(
      {{day - 1, "c"}, {0, "a"}, {day, "d"}, {day - 1, "c2"}, {5, "b"}});
  ASSERT_EQ(b.size(), 2u);
  ASSERT_EQ(b[0].size(), 4u);
  EXPECT_EQ(b[0][0].message, "a");
  EXPECT_EQ(b[0][2].message, "c");  // stable among equal timestamps
  EXPECT_EQ(b[0][3].message, "c2");
  EXPECT_EQ(b[1][0].message, "d");
}

TEST(BatchLogEventsTest, CutsLongMessagesBetweenCharacters) {
  std::string euros;
  for (int i = 0; i < 10; ++i) euros += "\xE2\x82\xAC";  // 3 bytes each
  std::vector<std::vector<LogEvent>> b = BatchLogEvents({{7, "ab" + euros}}, 8);
  ASSERT_EQ(b.size(), 1u);
  std::string joined;
  for (const LogEvent& e : b[0]) {
    EXPECT_EQ(e.timestamp_ms, 7);
    EXPECT_LE(e.message.size(), 8u);
    EXPECT_TRUE(ValidUtf8(e.message));
    joined += e.message;
  }
  EXPECT_EQ(joined, "ab" + euros);
  EXPECT_EQ(b[0][0].message, "ab\xE2\x82\xAC\xE2\x82\xAC");
}

TEST(BatchLogEventsTest, EmptyMessagesBecomeASpaceAndBadBytesReplacement) {
  std::vector<std::vector<LogEvent>> b = BatchLogEvents(
      {{1, ""}, {2, "ok\xFF"}, {3, "\xC3"}, {4, "\xED\xA0\x80"}, {-5, "neg"}});
  ASSERT_EQ(b.size(), 1u);
  ASSERT_EQ(b[0].size(), 5u);
  EXPECT_EQ(b[0][0].timestamp_ms, 0);  // a negative time is clamped
  EXPECT_EQ(b[0][1].message, " ");
  EXPECT_EQ(b[0][2].message, "ok\xEF\xBF\xBD");
  EXPECT_EQ(b[0][3].message, "\xEF\xBF\xBD");
  EXPECT_EQ(b[0][4].message, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_THAT(BatchLogEvents({}), IsEmpty());
}

// ------------------------------------------------------------ the fake

std::string Str(const rapidjson::Value& v, const char* name) {
  auto it = v.FindMember(name);
  if (it == v.MemberEnd() || !it->value.IsString()) return "";
  return std::string(it->value.GetString(), it->value.GetStringLength());
}

http::ServerResponse Answer(int status, std::string body) {
  return {.status = status,
          .content_type = "application/x-amz-json-1.1",
          .headers = {{"x-amzn-RequestId", "req-logs"}},
          .body = std::move(body)};
}

http::ServerResponse Error(int status, std::string_view code,
                           std::string_view message) {
  return Answer(
      status, absl::StrCat(R"({"__type":")", AbslView(code), R"(","message":")",
                           AbslView(message), "\"}"));
}

// CloudWatch Logs in memory: CreateLogGroup, CreateLogStream, PutLogEvents
// (with rejectedLogEventsInfo against its clock), GetLogEvents (forward
// tokens "f/INDEX", `page_size` events a page).
class LogsFake {
 public:
  explicit LogsFake(Clock& clock) : clock_(clock) {
    server_ = *http::HttpServer::Start(
        {}, [this](const http::ServerRequest& r) { return Handle(r); });
  }

  std::string url() const { return server_->url(); }

  void AddGroup(const std::string& group) {
    absl::MutexLock lock(&mu_);
    groups_[group];
  }
  void DeleteGroup(const std::string& group) {
    absl::MutexLock lock(&mu_);
    groups_.erase(group);
  }
  void Inject(std::string operation, http::ServerResponse answer) {
    absl::MutexLock lock(&mu_);
    injected_.push_back({std::move(operation), std::move(answer)});
  }
  void SetPageSize(size_t n) {
    absl::MutexLock lock(&mu_);
    page_size_ = n;
  }
  void Append(const std::string& group, const std::string& stream,
              std::vector<LogEvent> events) {
    absl::MutexLock lock(&mu_);
    auto& s = groups_[group][stream];
    s.insert(s.end(), events.begin(), events.end());
  }

  std::vector<LogEvent> Events(const std::string& group,
                               const std::string& stream) {
    absl::MutexLock lock(&mu_);
    auto g = groups_.find(group);
    if (g == groups_.end()) return {};
    auto s = g->second.find(stream);
    return s == g->second.end() ? std::vector<LogEvent>{} : s->second;
  }
  std::vector<std::string> Messages(const std::string& group,
                                    const std::string& stream) {
    std::vector<std::string> out;
    for (const LogEvent& e : Events(group, stream)) out.push_back(e.message);
    return out;
  }
  bool HasStream(const std::string& group, const std::string& stream) {
    absl::MutexLock lock(&mu_);
    auto g = groups_.find(group);
    return g != groups_.end() && g->second.contains(stream);
  }
  std::vector<std::string> Calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  int CallCount(std::string_view op) {
    const std::vector<std::string> calls = Calls();
    return static_cast<int>(std::count(calls.begin(), calls.end(), op));
  }
  std::vector<std::string> Bodies() {
    absl::MutexLock lock(&mu_);
    return bodies_;
  }
  // Requests CloudWatch would have refused, and why.
  std::vector<std::string> Refused() {
    absl::MutexLock lock(&mu_);
    return refused_;
  }

 private:
  using Streams = std::map<std::string, std::vector<LogEvent>>;

  http::ServerResponse Handle(const http::ServerRequest& r) {
    const std::string target(r.header("X-Amz-Target"));
    const std::string kPrefix = "Logs_20140328.";
    absl::MutexLock lock(&mu_);
    if (!absl::StartsWith(target, kPrefix) ||
        r.header("Content-Type") != "application/x-amz-json-1.1" ||
        !absl::StrContains(AbslView(r.header("Authorization")),
                           "/logs/aws4_request")) {
      refused_.push_back("not a signed Logs request: " + target);
      return Error(400, "UnknownOperationException", "");
    }
    const std::string op = target.substr(kPrefix.size());
    calls_.push_back(op);
    bodies_.push_back(r.body);
    for (auto it = injected_.begin(); it != injected_.end(); ++it) {
      if (it->first == op) {
        http::ServerResponse a = std::move(it->second);
        injected_.erase(it);
        return a;
      }
    }
    rapidjson::Document doc;
    doc.Parse<rapidjson::kParseValidateEncodingFlag>(r.body.data(),
                                                     r.body.size());
    if (doc.HasParseError() || !doc.IsObject()) {
      refused_.push_back(op + ": body is not UTF-8 JSON");
      return Error(400, "SerializationException", "");
    }
    const std::string group = Str(doc, "logGroupName");
    const std::string stream = Str(doc, "logStreamName");
    if (op == "CreateLogGroup") {
      if (groups_.contains(group)) {
        return Error(400, "ResourceAlreadyExistsException",
                     "The specified log group already exists");
      }
      groups_[group];
      return Answer(200, "");
    }
    auto g = groups_.find(group);
    if (op == "CreateLogStream") {
      if (g == groups_.end()) {
        return Error(400, "ResourceNotFoundException",
                     "The specified log group does not exist.");
      }
      if (g->second.contains(stream)) {
        return Error(400, "ResourceAlreadyExistsException",
                     "The specified log stream already exists");
      }
      g->second[stream];
      return Answer(200, "");
    }
    if (g == groups_.end() || !g->second.contains(stream)) {
      return Error(400, "ResourceNotFoundException",
                   g == groups_.end()
                       ? "The specified log group does not exist."
                       : "The specified log stream does not "
                         "exist.");
    }
    std::vector<LogEvent>& events = g->second[stream];
    if (op == "PutLogEvents") return Put(doc, events);
    if (op == "GetLogEvents") return Get(doc, events);
    refused_.push_back("unexpected operation " + op);
    return Error(400, "UnknownOperationException", "");
  }

  http::ServerResponse Put(const rapidjson::Document& doc,
                           std::vector<LogEvent>& events)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<LogEvent> batch;
    auto list = doc.FindMember("logEvents");
    if (list != doc.MemberEnd() && list->value.IsArray()) {
      for (const rapidjson::Value& e : list->value.GetArray()) {
        batch.push_back({e["timestamp"].GetInt64(), Str(e, "message")});
      }
    }
    if (std::string problem = BatchProblem(batch); !problem.empty()) {
      refused_.push_back("PutLogEvents: " + problem);
      return Error(400, "InvalidParameterException", problem);
    }
    const int64_t now = absl::ToUnixMillis(clock_.Now());
    int64_t too_old_end = 0, too_new_start = -1;
    for (size_t i = 0; i < batch.size(); ++i) {
      if (batch[i].timestamp_ms < now - 14 * 24 * 3600 * 1000LL) {
        too_old_end = static_cast<int64_t>(i) + 1;
      } else if (batch[i].timestamp_ms > now + 2 * 3600 * 1000LL) {
        if (too_new_start < 0) too_new_start = static_cast<int64_t>(i);
      } else {
        events.push_back(batch[i]);
      }
    }
    std::string info;
    if (too_old_end > 0) {
      absl::StrAppend(&info, R"("tooOldLogEventEndIndex":)", too_old_end);
    }
    if (too_new_start >= 0) {
      absl::StrAppend(&info, info.empty() ? "" : ",",
                      R"("tooNewLogEventStartIndex":)", too_new_start);
    }
    return Answer(
        200, info.empty()
                 ? R"({"nextSequenceToken":"49"})"
                 : absl::StrCat(R"({"rejectedLogEventsInfo":{)", info, "}}"));
  }

  http::ServerResponse Get(const rapidjson::Document& doc,
                           const std::vector<LogEvent>& events)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto head = doc.FindMember("startFromHead");
    if (head == doc.MemberEnd() || !head->value.IsTrue()) {
      refused_.push_back("GetLogEvents without startFromHead");
    }
    size_t from = 0;
    const std::string token = Str(doc, "nextToken");
    if (!token.empty() && (!absl::StartsWith(token, "f/") ||
                           !absl::SimpleAtoi(token.substr(2), &from))) {
      refused_.push_back("GetLogEvents with a token it never gave: " + token);
      return Error(400, "InvalidParameterException", "bad token");
    }
    const size_t limit = doc["limit"].GetUint();
    const size_t to =
        std::min({events.size(), from + page_size_, from + limit});
    rapidjson::StringBuffer buffer;
    rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
    w.StartObject();
    w.Key("events");
    w.StartArray();
    for (size_t i = from; i < to; ++i) {
      w.StartObject();
      w.Key("timestamp");
      w.Int64(events[i].timestamp_ms);
      w.Key("message");
      w.String(events[i].message.data(),
               static_cast<rapidjson::SizeType>(events[i].message.size()));
      w.Key("ingestionTime");
      w.Int64(1);
      w.EndObject();
    }
    w.EndArray();
    const std::string next = absl::StrCat("f/", std::max(from, to));
    w.Key("nextForwardToken");
    w.String(next.c_str());
    w.Key("nextBackwardToken");
    w.String("b/0");
    w.EndObject();
    const std::string body(buffer.GetString(), buffer.GetSize());
    return Answer(200, body);
  }

  Clock& clock_;
  absl::Mutex mu_;
  std::map<std::string, Streams> groups_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<std::string, http::ServerResponse>> injected_
      ABSL_GUARDED_BY(mu_);
  size_t page_size_ ABSL_GUARDED_BY(mu_) = 10000;
  std::vector<std::string> calls_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> bodies_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> refused_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<http::HttpServer> server_;
};

// A CloudWatch Logs client of `endpoint` whose retries wait half the
// backoff on `clock`.
std::unique_ptr<JsonClient> LogsJsonClient(const std::string& endpoint,
                                           CredentialsProvider& credentials,
                                           http::HttpClient& http,
                                           Clock& clock) {
  JsonClientOptions o;
  o.service = kCloudWatchLogs;
  o.endpoint = endpoint;
  o.region = "us-east-1";
  o.credentials = &credentials;
  o.http = &http;
  o.clock = &clock;
  o.random = [] { return 0.5; };
  return std::make_unique<JsonClient>(std::move(o));
}

class LogsClientTest : public ::testing::Test {
 protected:
  LogsClientTest() : fake_(clock_) {}

  void SetUp() override {
    json_ = LogsJsonClient(fake_.url(), credentials_, http_, clock_);
  }
  void TearDown() override { EXPECT_THAT(fake_.Refused(), IsEmpty()); }

  int64_t NowMs() { return absl::ToUnixMillis(clock_.Now()); }

  testing::FakeClock clock_;
  LogsFake fake_;
  StaticCredentialsProvider credentials_{
      Credentials{"AKIDTEST", SecretString("secret"), SecretString("")}};
  http::HttpClient http_;
  std::unique_ptr<JsonClient> json_;
};

// ------------------------------------------------------------ groups, streams

TEST_F(LogsClientTest, EnsureLogGroupTwiceOrOfAnExistingGroupIsOk) {
  fake_.AddGroup("/ecs/harness-delegates");
  LogsClient logs(*json_);
  EXPECT_TRUE(logs.EnsureLogGroup("/ecs/harness-delegates").ok());
  EXPECT_TRUE(logs.EnsureLogGroup("/ecs/new").ok());
  EXPECT_TRUE(logs.EnsureLogGroup("/ecs/new").ok());
  // The second call for a group it has seen makes none.
  EXPECT_EQ(fake_.CallCount("CreateLogGroup"), 2);
  // Another client (another delegate) finds it existing.
  LogsClient other(*json_);
  EXPECT_TRUE(other.EnsureLogGroup("/ecs/new").ok());
  EXPECT_EQ(fake_.CallCount("CreateLogGroup"), 3);
}

TEST_F(LogsClientTest, EnsureLogStreamCreatesAMissingGroupFirst) {
  LogsClient logs(*json_);
  ASSERT_TRUE(logs.EnsureLogStream("/ecs/ci", "delegate/main/1").ok());
  EXPECT_TRUE(fake_.HasStream("/ecs/ci", "delegate/main/1"));
  EXPECT_THAT(fake_.Calls(), ElementsAre("CreateLogStream", "CreateLogGroup",
                                         "CreateLogStream"));
  EXPECT_TRUE(logs.EnsureLogStream("/ecs/ci", "delegate/main/1").ok());
  EXPECT_TRUE(
      LogsClient(*json_).EnsureLogStream("/ecs/ci", "delegate/main/1").ok());
  EXPECT_EQ(fake_.Calls().size(), 4u);
}

TEST_F(LogsClientTest, BadNamesFailBeforeAnyCall) {
  LogsClient logs(*json_);
  absl::Status s = logs.EnsureLogGroup("bad group!");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("\"bad group!\""));
  s = logs.EnsureLogStream("/ok", "a:b");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("':'"));
  EXPECT_FALSE(logs.PutLogEvents("", "s", {{1, "x"}}).ok());
  EXPECT_FALSE(logs.GetLogEvents("/ok", std::string(513, 's'), "").ok());
  EXPECT_THAT(fake_.Calls(), IsEmpty());
}

TEST_F(LogsClientTest, AccessDeniedNamesTheGroupAndThePermission) {
  fake_.Inject("CreateLogGroup",
               Error(400, "AccessDeniedException",
                     "User is not authorized to perform: logs:CreateLogGroup"));
  LogsClient logs(*json_);
  absl::Status s = logs.EnsureLogGroup("/ecs/locked");
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(s.message(), HasSubstr("\"/ecs/locked\""));
  EXPECT_THAT(s.message(), HasSubstr("allow logs:CreateLogGroup"));
  EXPECT_THAT(s.message(), HasSubstr("req-logs"));
  EXPECT_EQ(AwsErrorCode(s), "AccessDeniedException");
  // Not remembered: the next call tries again.
  EXPECT_TRUE(logs.EnsureLogGroup("/ecs/locked").ok());
}

TEST_F(LogsClientTest, CreateLogGroupCallsAreSpacedAtFivePerSecond) {
  LogsClient logs(*json_);
  const absl::Time start = clock_.Now();
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(logs.EnsureLogGroup(absl::StrCat("/ecs/g", i)).ok());
  }
  EXPECT_GE(clock_.Now() - start, absl::Milliseconds(1799));
  EXPECT_LT(clock_.Now() - start, absl::Milliseconds(1900));
}

TEST_F(LogsClientTest, PutLogEventsIsLimitedPerGroup) {
  fake_.AddGroup("/a");
  fake_.AddGroup("/b");
  LogsRateLimits limits;
  limits.put_log_events_per_s_per_group = 2;
  LogsClient logs(*json_, limits);
  ASSERT_TRUE(logs.EnsureLogStream("/a", "s").ok());
  ASSERT_TRUE(logs.EnsureLogStream("/b", "s").ok());
  const absl::Time start = clock_.Now();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(logs.PutLogEvents("/a", "s", {{NowMs(), "a"}}).ok());
    ASSERT_TRUE(logs.PutLogEvents("/b", "s", {{NowMs(), "b"}}).ok());
  }
  // Three calls a group at 2/s: 1 s, the groups in parallel.
  EXPECT_GE(clock_.Now() - start, absl::Milliseconds(999));
  EXPECT_LT(clock_.Now() - start, absl::Milliseconds(1100));
}

// ------------------------------------------------------------ PutLogEvents

TEST_F(LogsClientTest, SendsEveryEventInValidBatchesSorted) {
  LogsClient logs(*json_);
  ASSERT_TRUE(logs.EnsureLogStream("/ecs/ci", "s").ok());
  std::mt19937 rng(7);
  std::vector<LogEvent> events;
  const int64_t now = NowMs();
  for (int i = 0; i < 23000; ++i) {
    events.push_back({now - static_cast<int64_t>(rng() % 300'000'000),
                      i % 1000 == 0 ? RandomText(rng, 100000)
                                    : RandomText(rng, rng() % 40)});
  }
  std::vector<LogEvent> expected;
  for (auto& b : BatchLogEvents(events)) {
    expected.insert(expected.end(), b.begin(), b.end());
  }
  PutLogEventsResult result;
  ASSERT_TRUE(logs.PutLogEvents("/ecs/ci", "s", events, &result).ok());
  EXPECT_EQ(result.events, static_cast<int64_t>(expected.size()));
  EXPECT_EQ(result.sent, result.events);
  EXPECT_EQ(result.rejected(), 0);
  EXPECT_GE(result.batches, 4);  // 3.5 days and 23,000 events
  const std::vector<LogEvent> stored = fake_.Events("/ecs/ci", "s");
  ASSERT_EQ(stored.size(), expected.size());
  for (size_t i = 0; i < stored.size(); ++i) {
    ASSERT_EQ(stored[i].timestamp_ms, expected[i].timestamp_ms) << i;
    ASSERT_EQ(stored[i].message, expected[i].message) << i;
  }
  EXPECT_EQ(fake_.CallCount("PutLogEvents"), result.batches);
}

TEST_F(LogsClientTest, NoEventsMakeNoCall) {
  LogsClient logs(*json_);
  EXPECT_TRUE(logs.PutLogEvents("/ecs/ci", "s", {}).ok());
  EXPECT_THAT(fake_.Calls(), IsEmpty());
}

TEST_F(LogsClientTest, AMissingStreamAndGroupAreRecreatedOnce) {
  fake_.AddGroup("/ecs/ci");
  LogsClient logs(*json_);
  ASSERT_TRUE(logs.EnsureLogStream("/ecs/ci", "s").ok());
  fake_.DeleteGroup("/ecs/ci");  // retention, or an operator
  ASSERT_TRUE(logs.PutLogEvents("/ecs/ci", "s", {{NowMs(), "after"}}).ok());
  EXPECT_THAT(fake_.Messages("/ecs/ci", "s"), ElementsAre("after"));
  EXPECT_THAT(fake_.Calls(),
              ElementsAre("CreateLogStream", "PutLogEvents", "CreateLogStream",
                          "CreateLogGroup", "CreateLogStream", "PutLogEvents"));
  // A stream never created: the first PutLogEvents creates it.
  ASSERT_TRUE(logs.PutLogEvents("/ecs/ci", "fresh", {{NowMs(), "x"}}).ok());
  EXPECT_THAT(fake_.Messages("/ecs/ci", "fresh"), ElementsAre("x"));
}

TEST_F(LogsClientTest, AStreamThatKeepsVanishingIsAnErrorNamingIt) {
  fake_.AddGroup("/ecs/ci");
  for (int i = 0; i < 2; ++i) {
    fake_.Inject("PutLogEvents",
                 Error(400, "ResourceNotFoundException",
                       "The specified log stream does not exist."));
  }
  LogsClient logs(*json_);
  PutLogEventsResult result;
  absl::Status s = logs.PutLogEvents("/ecs/ci", "s", {{NowMs(), "x"}}, &result);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("stream \"s\" of group \"/ecs/ci\""));
  EXPECT_THAT(s.message(), HasSubstr("0 of 1 sent"));
  EXPECT_EQ(result.sent, 0);
}

TEST_F(LogsClientTest, EventsTooOldOrTooNewAreCountedNotFatal) {
  LogsClient logs(*json_);
  const int64_t now = NowMs();
  const int64_t day = 24 * 3600 * 1000;
  PutLogEventsResult result;
  ASSERT_TRUE(logs.PutLogEvents("/ecs/ci", "s",
                                {{now, "ok"},
                                 {now - 20 * day, "old1"},
                                 {now - 20 * day + 1, "old2"},
                                 {now + day / 4, "new"}},
                                &result)
                  .ok());
  EXPECT_EQ(result.rejected_too_old, 2);
  EXPECT_EQ(result.rejected_too_new, 1);
  EXPECT_EQ(result.sent, 4);
  EXPECT_THAT(fake_.Messages("/ecs/ci", "s"), ElementsAre("ok"));
}

TEST_F(LogsClientTest, ToleratesTheOldSequenceTokenErrors) {
  fake_.AddGroup("/ecs/ci");
  fake_.Inject("PutLogEvents",
               Answer(400, R"({"__type":"InvalidSequenceTokenException",)"
                           R"("message":"The given sequenceToken is invalid",)"
                           R"("expectedSequenceToken":"tok-1"})"));
  LogsClient logs(*json_);
  ASSERT_TRUE(logs.EnsureLogStream("/ecs/ci", "s").ok());
  PutLogEventsResult result;
  ASSERT_TRUE(
      logs.PutLogEvents("/ecs/ci", "s", {{NowMs(), "a"}}, &result).ok());
  EXPECT_EQ(result.sent, 1);
  fake_.Inject("PutLogEvents",
               Answer(400, R"({"__type":"DataAlreadyAcceptedException",)"
                           R"("message":"already accepted",)"
                           R"("expectedSequenceToken":"tok-2"})"));
  ASSERT_TRUE(
      logs.PutLogEvents("/ecs/ci", "s", {{NowMs(), "b"}}, &result).ok());
  EXPECT_EQ(result.sent, 1);
  const std::vector<std::string> bodies = fake_.Bodies();
  ASSERT_EQ(bodies.size(), 4u);
  EXPECT_THAT(bodies[1], Not(HasSubstr("sequenceToken")));
  EXPECT_THAT(bodies[2], HasSubstr(R"("sequenceToken":"tok-1")"));
  EXPECT_THAT(bodies[3], Not(HasSubstr("sequenceToken")));
  // "b" was (as the service says) already there.
  EXPECT_THAT(fake_.Messages("/ecs/ci", "s"), ElementsAre("a"));
}

TEST_F(LogsClientTest, ErrorsNeverQuoteTheMessages) {
  fake_.AddGroup("/ecs/ci");
  fake_.Inject("PutLogEvents",
               Error(400, "InvalidParameterException", "Log events rejected"));
  LogsClient logs(*json_);
  absl::Status s =
      logs.PutLogEvents("/ecs/ci", "s", {{NowMs(), "password=hunter2"}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("report it"));
  EXPECT_THAT(s.message(), Not(HasSubstr("hunter2")));
}

// ------------------------------------------------------------ reading

TEST_F(LogsClientTest, GetLogEventsOfAMissingStreamIsNotFound) {
  LogsClient logs(*json_);
  absl::StatusOr<LogPage> page = logs.GetLogEvents("/ecs/ci", "none", "");
  ASSERT_FALSE(page.ok());
  EXPECT_EQ(page.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(page.status().message(), HasSubstr("\"none\""));
  EXPECT_THAT(page.status().message(), HasSubstr("awslogs"));
}

TEST_F(LogsClientTest, TailerReturnsEachEventOnceAndNothingBeforeTheStream) {
  fake_.SetPageSize(3);
  LogsClient logs(*json_);
  LogTailer tailer(logs, "/ecs/ci", "delegate/step/task1");
  absl::StatusOr<std::vector<LogEvent>> got = tailer.Poll();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(*got, IsEmpty());

  std::vector<LogEvent> first;
  for (int i = 0; i < 7; ++i) first.push_back({i, absl::StrCat("line ", i)});
  fake_.Append("/ecs/ci", "delegate/step/task1", first);
  got = tailer.Poll();
  ASSERT_TRUE(got.ok()) << got.status();
  std::vector<std::string> messages;
  for (const LogEvent& e : *got) messages.push_back(e.message);
  EXPECT_THAT(messages, ElementsAre("line 0", "line 1", "line 2", "line 3",
                                    "line 4", "line 5", "line 6"));
  EXPECT_EQ((*got)[6].timestamp_ms, 6);

  got = tailer.Poll();
  ASSERT_TRUE(got.ok());
  EXPECT_THAT(*got, IsEmpty());
  fake_.Append("/ecs/ci", "delegate/step/task1", {{8, "late"}});
  got = tailer.Poll();
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ((*got)[0].message, "late");
}

TEST_F(LogsClientTest, TailerReadsAtMostItsPagesPerPoll) {
  fake_.SetPageSize(2);
  std::vector<LogEvent> events;
  for (int i = 0; i < 9; ++i) events.push_back({i, absl::StrCat(i)});
  fake_.Append("/g", "s", events);
  LogsClient logs(*json_);
  LogTailer tailer(logs, "/g", "s", 3);
  EXPECT_EQ(tailer.Poll()->size(), 6u);
  EXPECT_EQ(fake_.CallCount("GetLogEvents"), 3);
  EXPECT_EQ(tailer.Poll()->size(), 3u);
  EXPECT_THAT(*tailer.Poll(), IsEmpty());
}

TEST_F(LogsClientTest, TailerKeepsWhatItReadBeforeAnError) {
  fake_.SetPageSize(2);
  fake_.Append("/g", "s", {{1, "a"}, {2, "b"}, {3, "c"}});
  LogsClient logs(*json_);
  LogTailer tailer(logs, "/g", "s");
  absl::StatusOr<std::vector<LogEvent>> got = tailer.Poll();
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->size(), 3u);
  fake_.Append("/g", "s", {{4, "d"}, {5, "e"}, {6, "f"}});
  // This time the first page arrives, the second fails (after the
  // JsonClient's retries), and the third Poll fails from the start.
  fake_.Inject("GetLogEvents",
               Answer(200, R"({"events":[{"timestamp":4,"message":"d"},)"
                           R"({"timestamp":5,"message":"e"}],)"
                           R"("nextForwardToken":"f/5"})"));
  for (int i = 0; i < 6; ++i) {
    fake_.Inject("GetLogEvents", Error(500, "ServiceUnavailableException", ""));
  }
  got = tailer.Poll();
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 2u);
  got = tailer.Poll();
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable);
  got = tailer.Poll();
  ASSERT_TRUE(got.ok()) << got.status();
  std::vector<std::string> messages;
  for (const LogEvent& e : *got) messages.push_back(e.message);
  EXPECT_THAT(messages, ElementsAre("f"));
}

// ------------------------------------------------------------ the sink

LogLine Line(std::string_view step, LogStream stream, std::string_view text,
             absl::Time time) {
  LogLine l;
  l.task_id = "task-1";
  l.step_id = step;
  l.stream = stream;
  l.text = text;
  l.time = time;
  return l;
}

TEST_F(LogsClientTest, SinkShipsFormattedLinesOnFlushAndAtTheEnd) {
  LogsClient logs(*json_);
  const absl::Time at = clock_.Now() - absl::Milliseconds(1500);
  {
    CloudWatchLogSinkOptions o;
    o.flush_interval = absl::Hours(1);
    CloudWatchLogSink sink(logs, "/ecs/harness-delegates", "delegate/own", o);
    sink.Append(Line("build", LogStream::kStdout, "compiling", at));
    sink.Append(Line("build", LogStream::kStderr, "warning", clock_.Now()));
    sink.Append(Line("", LogStream::kSystem, "", clock_.Now()));
    ASSERT_TRUE(sink.Flush().ok());
    EXPECT_THAT(fake_.Messages("/ecs/harness-delegates", "delegate/own"),
                ElementsAre("task-1/build | compiling",
                            "task-1/build ! warning", "task-1/stage # "));
    sink.Append(Line("test", LogStream::kStdout, "last", clock_.Now()));
  }
  EXPECT_EQ(fake_.Messages("/ecs/harness-delegates", "delegate/own").back(),
            "task-1/test | last");
  EXPECT_EQ(
      fake_.Events("/ecs/harness-delegates", "delegate/own")[0].timestamp_ms,
      absl::ToUnixMillis(at));
}

// Waits (in real time) until the fake holds `n` events in the stream.
bool WaitForEvents(LogsFake& fake, const std::string& group,
                   const std::string& stream, size_t n) {
  for (int i = 0; i < 500; ++i) {
    if (fake.Events(group, stream).size() >= n) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return false;
}

TEST_F(LogsClientTest, SinkFlushesOnItsOwnByTimeAndBySize) {
  LogsClient logs(*json_);
  CloudWatchLogSinkOptions o;
  o.flush_interval = absl::Milliseconds(20);
  CloudWatchLogSink by_time(logs, "/g", "time", o);
  by_time.Append(Line("s", LogStream::kStdout, "tick", clock_.Now()));
  EXPECT_TRUE(WaitForEvents(fake_, "/g", "time", 1));

  o.flush_interval = absl::Hours(1);
  o.flush_events = 5;
  CloudWatchLogSink by_size(logs, "/g", "size", o);
  for (int i = 0; i < 5; ++i) {
    by_size.Append(Line("s", LogStream::kStdout, "x", clock_.Now()));
  }
  EXPECT_TRUE(WaitForEvents(fake_, "/g", "size", 5));
  // The fake holds the events before the sink has read its answer and
  // counted them.
  for (int i = 0; i < 5000 && by_size.stats().sent < 5; ++i) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_EQ(by_size.stats().sent, 5);
}

TEST_F(LogsClientTest, SinkDropsAndCountsWhenItsBufferIsFull) {
  LogsClient logs(*json_);
  CloudWatchLogSinkOptions o;
  o.flush_interval = absl::Hours(1);
  o.max_buffer_bytes = 200;  // 4 lines of 21 + 26 bytes
  CloudWatchLogSink sink(logs, "/g", "s", o);
  for (int i = 0; i < 10; ++i) {
    sink.Append(Line("s", LogStream::kStdout, "0123456789", clock_.Now()));
  }
  ASSERT_TRUE(sink.Flush().ok());
  CloudWatchLogSink::Stats stats = sink.stats();
  EXPECT_EQ(stats.appended, 10);
  EXPECT_EQ(stats.dropped, 6);
  EXPECT_EQ(stats.sent, 4);
  EXPECT_EQ(stats.failed, 0);
  // Room again after the flush.
  sink.Append(Line("s", LogStream::kStdout, "again", clock_.Now()));
  ASSERT_TRUE(sink.Flush().ok());
  EXPECT_EQ(fake_.Events("/g", "s").size(), 5u);
}

TEST_F(LogsClientTest, SinkCountsWhatAnErrorLost) {
  fake_.Inject("CreateLogStream", Error(400, "AccessDeniedException", "no"));
  LogsClient logs(*json_);
  CloudWatchLogSinkOptions o;
  o.flush_interval = absl::Hours(1);
  CloudWatchLogSink sink(logs, "/g", "s", o);
  sink.Append(Line("s", LogStream::kStdout, "lost", clock_.Now()));
  EXPECT_EQ(sink.Flush().code(), absl::StatusCode::kPermissionDenied);
  sink.Append(Line("s", LogStream::kStdout, "kept", clock_.Now()));
  EXPECT_TRUE(sink.Flush().ok());
  CloudWatchLogSink::Stats stats = sink.stats();
  EXPECT_EQ(stats.failed, 1);
  EXPECT_EQ(stats.sent, 1);
  EXPECT_THAT(stats.last_error.message(), HasSubstr("logs:CreateLogStream"));
  EXPECT_THAT(fake_.Messages("/g", "s"), ElementsAre("task-1/s | kept"));
}

// ------------------------------------------------------------ end to end

// Against the strict fake of ECS and Logs shared by the executor's tests: it
// checks signatures, the model's shapes and the PutLogEvents rules, and
// records anything AWS would refuse.
class LogsClientFakeAwsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::FakeAwsOptions options;
    options.testdata_dir = testing::AwsTestdataDir();
    options.credentials = {
        {"AKIDE2E", "e2e-secret", "", absl::InfiniteFuture()}};
    options.clock = &clock_;
    absl::StatusOr<std::unique_ptr<testing::FakeAws>> fake =
        testing::FakeAws::Start(options);
    ASSERT_TRUE(fake.ok()) << fake.status();
    fake_ = *std::move(fake);
    json_ = LogsJsonClient(fake_->url(), credentials_, http_, clock_);
  }
  void TearDown() override {
    if (!fake_) return;
    for (const testing::FakeRejection& r : fake_->Rejected()) {
      ADD_FAILURE() << "AWS would refuse " << r.operation << ": " << r.code
                    << ": " << r.message;
    }
  }

  testing::FakeClock clock_;
  StaticCredentialsProvider credentials_{
      Credentials{"AKIDE2E", SecretString("e2e-secret"), SecretString("")}};
  http::HttpClient http_;
  std::unique_ptr<testing::FakeAws> fake_;
  std::unique_ptr<JsonClient> json_;
};

TEST_F(LogsClientFakeAwsTest, WritesAndTailsAStreamAsAwsWouldAcceptIt) {
  LogsClient logs(*json_);
  const std::string group = "/ecs/harness-delegates";
  const std::string stream = "delegate/step/0123456789abcdef";
  LogTailer tailer(logs, group, stream);
  absl::StatusOr<std::vector<LogEvent>> early = tailer.Poll();
  ASSERT_TRUE(early.ok()) << early.status();
  EXPECT_THAT(*early, IsEmpty());

  ASSERT_TRUE(logs.EnsureLogStream(group, stream).ok());
  ASSERT_TRUE(logs.EnsureLogGroup(group).ok());
  std::mt19937 rng(11);
  const int64_t now = absl::ToUnixMillis(clock_.Now());
  std::vector<LogEvent> events;
  for (int i = 0; i < 15000; ++i) {
    events.push_back({now - static_cast<int64_t>(rng() % 172'800'000),
                      i % 5000 == 1 ? std::string(300'000, 'x')
                                    : RandomText(rng, 1 + rng() % 60)});
  }
  events.push_back({now, ""});
  std::vector<LogEvent> expected;
  for (auto& b : BatchLogEvents(events)) {
    expected.insert(expected.end(), b.begin(), b.end());
  }
  PutLogEventsResult result;
  ASSERT_TRUE(logs.PutLogEvents(group, stream, events, &result).ok());
  EXPECT_EQ(result.sent, static_cast<int64_t>(expected.size()));
  EXPECT_EQ(result.rejected(), 0);

  const std::vector<testing::FakeLogEvent> stored =
      fake_->LogEvents(group, stream);
  ASSERT_EQ(stored.size(), expected.size());
  for (size_t i = 0; i < stored.size(); ++i) {
    ASSERT_EQ(stored[i].timestamp, expected[i].timestamp_ms) << i;
    ASSERT_EQ(stored[i].message, expected[i].message) << i;
  }

  absl::StatusOr<std::vector<LogEvent>> read = tailer.Poll();
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), expected.size());
  for (size_t i = 0; i < read->size(); ++i) {
    ASSERT_EQ((*read)[i].message, expected[i].message) << i;
  }
  ASSERT_TRUE(logs.PutLogEvents(group, stream, {{now, "one more"}}).ok());
  read = tailer.Poll();
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), 1u);
  EXPECT_EQ((*read)[0].message, "one more");
  EXPECT_THAT(fake_->LogGroups(), ElementsAre(group));
  EXPECT_EQ(fake_->CallCount("CreateLogGroup"), 1);
}

TEST_F(LogsClientFakeAwsTest, TheSinkShipsToItsStream) {
  LogsClient logs(*json_);
  {
    CloudWatchLogSink sink(logs, "/ecs/harness-delegates", "delegate/own");
    for (int i = 0; i < 100; ++i) {
      sink.Append(Line("step", LogStream::kStdout, absl::StrCat("line ", i),
                       clock_.Now()));
    }
  }
  const std::vector<testing::FakeLogEvent> stored =
      fake_->LogEvents("/ecs/harness-delegates", "delegate/own");
  ASSERT_EQ(stored.size(), 100u);
  EXPECT_EQ(stored[99].message, "task-1/step | line 99");
}

}  // namespace
}  // namespace delegate::aws

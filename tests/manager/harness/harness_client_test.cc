#include "manager/harness/harness_client.h"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "http/http_server.h"
#include "manager/harness/token.h"

namespace delegate::harness {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kToken[] = "98d8fedb04c574e68939164bf463e73d";

// A manager on loopback that answers `status` and records what it saw.
struct FakeManager {
  explicit FakeManager(int status, std::string body = "{}") {
    auto s = http::HttpServer::Start(
        {}, [this, status, body](const http::ServerRequest& r) {
          absl::MutexLock lock(&mu);
          targets.push_back(r.method + " " + r.target);
          auth.emplace_back(r.header("Authorization"));
          hash.emplace_back(r.header("delegateTokenHash"));
          http::ServerResponse resp;
          resp.status = status;
          resp.body = body;
          return resp;
        });
    EXPECT_TRUE(s.ok());
    server = *std::move(s);
  }
  absl::Mutex mu;
  std::vector<std::string> targets ABSL_GUARDED_BY(mu);
  std::vector<std::string> auth ABSL_GUARDED_BY(mu);
  std::vector<std::string> hash ABSL_GUARDED_BY(mu);
  std::unique_ptr<http::HttpServer> server;
};

class HarnessClientTest : public ::testing::Test {
 protected:
  std::unique_ptr<HarnessClient> Client(const FakeManager& m) {
    return std::make_unique<HarnessClient>(m.server->url(), "acct 1",
                                           SecretString(kToken), Transport{},
                                           http_, Clock::Real());
  }
  http::HttpClient http_;
};

TEST_F(HarnessClientTest, EveryCallCarriesTheJweAndTheTokenHash) {
  FakeManager m(200, R"({"resource":{"delegateId":"d-7"}})");
  auto client = Client(m);
  RegisterInfo info;
  info.account_id = "acct 1";
  absl::StatusOr<std::string> id = client->Register(info);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(*id, "d-7");
  absl::MutexLock lock(&m.mu);
  ASSERT_EQ(m.targets.size(), 1u);
  EXPECT_EQ(m.targets[0],
            "POST /api/agent/delegates/register?accountId=acct%201");
  std::string_view auth = m.auth[0];
  ASSERT_TRUE(auth.starts_with("Delegate "));
  auth.remove_prefix(9);
  absl::StatusOr<RequestClaims> claims =
      DecryptRequestToken(auth, SecretString(kToken));
  ASSERT_TRUE(claims.ok()) << claims.status();
  EXPECT_EQ(claims->sub, "acct 1");
  EXPECT_GT(claims->exp, absl::Now() + absl::Minutes(19));
  EXPECT_EQ(m.hash[0], DelegateTokenHash(SecretString(kToken)));
}

TEST_F(HarnessClientTest, TaskPathsFollowTheRunner) {
  FakeManager m(200, R"({"delegateRunnerEvents":[],"requests":[]})");
  auto client = Client(m);
  ASSERT_TRUE(client->PollEvents("d-1").ok());
  ASSERT_TRUE(client->Acquire("t-1", "d-1", "my delegate").ok());
  ASSERT_TRUE(client->SendResponse("t-1", "d-1", "{}").ok());
  absl::MutexLock lock(&m.mu);
  EXPECT_THAT(m.targets,
              ::testing::ElementsAre(
                  "GET /api/executions/d-1/runner-events?accountId=acct%201",
                  "GET /api/executions/t-1/request?delegateId=d-1&accountId="
                  "acct%201&delegateInstanceId=d-1&delegateName=my%20delegate",
                  "POST /api/executions/t-1/task-response?runnerId=d-1&"
                  "accountId=acct%201"));
}

TEST_F(HarnessClientTest, RefusedCredentialsNameWhatToCheckAndAreNotRetried) {
  FakeManager m(401, R"({"message":"Unauthorized"})");
  auto client = Client(m);
  int attempts = 0;
  absl::Status s = Retry({},
                         [&] {
                           ++attempts;
                           return client->Heartbeat({});
                         },
                         {});
  EXPECT_TRUE(absl::IsUnauthenticated(s)) << s;
  EXPECT_EQ(attempts, 1);
  EXPECT_THAT(s.message(), HasSubstr("HARNESS_TOKEN"));
  EXPECT_THAT(s.message(), HasSubstr("acct 1"));
  EXPECT_THAT(s.message(), Not(HasSubstr(kToken)));
}

TEST_F(HarnessClientTest, HttpErrorsNameTheManagerUrlWithoutItsPassword) {
  FakeManager m(404, R"({"message":"gone"})");
  std::string url = m.server->url();
  url.insert(url.find("://") + 3, "user:url-pw-77@");
  HarnessClient client(url, "acct 1", SecretString(kToken), Transport{},
                       http_, Clock::Real());
  absl::Status s = client.Heartbeat({});
  EXPECT_TRUE(absl::IsNotFound(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("user:***@"));
  EXPECT_THAT(s.message(), Not(HasSubstr("url-pw-77")));
}

TEST_F(HarnessClientTest, APayloadOverTheLimitIsRefusedNamingTheLimit) {
  FakeManager m(200, std::string(4096, 'x'));
  Transport transport;
  transport.max_task_payload_bytes = 2048;
  HarnessClient client(m.server->url(), "acct 1", SecretString(kToken),
                       transport, http_, Clock::Real());
  absl::StatusOr<std::vector<TaskRequest>> got =
      client.Acquire("t-1", "d-1", "my delegate");
  ASSERT_FALSE(got.ok());
  // InvalidArgument: the connection answers the task FAILED, and does not
  // fetch it again.
  EXPECT_TRUE(absl::IsInvalidArgument(got.status())) << got.status();
  EXPECT_THAT(got.status().message(),
              HasSubstr("larger than 2048 bytes, the limit "
                        "DELEGATE_MAX_TASK_PAYLOAD_BYTES sets"));
}

TEST_F(HarnessClientTest, ServerErrorsAreRetriedWithBackoffUntilTheBudget) {
  FakeManager m(503);
  auto client = Client(m);
  RetryPolicy policy;
  policy.initial = absl::Milliseconds(10);
  policy.max_elapsed = absl::Milliseconds(300);
  std::vector<absl::Duration> waits;
  const absl::Time start = absl::Now();
  absl::Status s = Retry(
      policy, [&] { return client->Heartbeat({}); }, {},
      [&](const absl::Status&, absl::Duration wait) { waits.push_back(wait); });
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_GE(waits.size(), 3u);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  // Exponential: the last wait is longer than the first, jitter and all.
  EXPECT_GT(waits.back(), waits.front());
}

TEST_F(HarnessClientTest, UnknownDelegateIsNotFoundAndRedirectsAreNotFollowed) {
  FakeManager gone(404);
  EXPECT_TRUE(absl::IsNotFound(Client(gone)->Heartbeat({})));
  FakeManager moved(302);
  absl::Status s = Client(moved)->Heartbeat({});
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("does not follow"));
}

TEST_F(HarnessClientTest, RetryStopsWhenAskedTo) {
  std::atomic<bool> stop{false};
  RetryPolicy policy;
  policy.initial = absl::Seconds(10);
  policy.max_elapsed = absl::InfiniteDuration();
  std::thread stopper([&] {
    absl::SleepFor(absl::Milliseconds(50));
    stop = true;
  });
  const absl::Time start = absl::Now();
  absl::Status s = Retry(
      policy, [] { return absl::UnavailableError("down"); },
      [&] { return stop.load(); });
  stopper.join();
  EXPECT_TRUE(absl::IsUnavailable(s));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

}  // namespace
}  // namespace delegate::harness

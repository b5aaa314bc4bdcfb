// The JSON 1.1 client against a loopback server that checks each request's
// signature with the signer's own steps: the target and content type, error
// parsing, retries with backoff, and expired credentials.
#include "aws/json_client.h"

#include <atomic>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "http/http_server.h"
#include "tests/fakes/fake_clock.h"

namespace delegate::aws {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

// Recomputes the signature of `r` from the headers it names as signed.
bool SignatureValid(const http::ServerRequest& r, const std::string& secret,
                    const std::string& region, const std::string& service,
                    std::string* why) {
  const std::string auth(r.header("Authorization"));
  const size_t cred = auth.find("Credential=");
  const size_t sh = auth.find("SignedHeaders=");
  const size_t sig = auth.find("Signature=");
  if (cred == std::string::npos || sh == std::string::npos ||
      sig == std::string::npos) {
    *why = "no Authorization";
    return false;
  }
  const std::string credential =
      auth.substr(cred + 11, auth.find(',', cred) - cred - 11);
  std::vector<std::string> scope = absl::StrSplit(credential, '/');
  const std::string signed_headers =
      auth.substr(sh + 14, auth.find(',', sh) - sh - 14);
  SignableRequest s;
  s.method = r.method;
  s.path = r.path;
  s.body = r.body;
  for (absl::string_view name : absl::StrSplit(signed_headers, ';')) {
    s.headers.push_back(
        {std::string(name),
         std::string(r.header(std::string_view(name.data(), name.size())))});
  }
  SigningOptions o;
  o.region = region;
  o.service = service;
  std::string names;
  const std::string canonical = CanonicalRequest(s, o, &names);
  const std::string date(r.header("X-Amz-Date"));
  const std::string sts =
      StringToSign(canonical, date,
                   absl::StrCat(date.substr(0, 8), "/", region, "/", service,
                                "/aws4_request"));
  const std::string expected =
      Signature(SecretString(secret), date.substr(0, 8), region, service, sts);
  if (scope.size() != 5 || scope[2] != region || scope[3] != service) {
    *why = "scope " + credential;
    return false;
  }
  for (const char* must :
       {"content-type", "host", "x-amz-date", "x-amz-target"}) {
    if (!absl::StrContains(signed_headers, must)) {
      *why = absl::StrCat(must, " not signed");
      return false;
    }
  }
  if (auth.substr(sig + 10) != expected) {
    *why = "signature mismatch";
    return false;
  }
  return true;
}

http::ServerResponse Answer(int status, std::string body) {
  http::ServerResponse r;
  r.status = status;
  r.content_type = "application/x-amz-json-1.1";
  r.headers.push_back({"x-amzn-RequestId", "req-123"});
  r.body = std::move(body);
  return r;
}

class JsonClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ =
        *http::HttpServer::Start({}, [this](const http::ServerRequest& r) {
          std::string why;
          absl::MutexLock lock(&mu_);
          targets_.push_back(std::string(r.header("X-Amz-Target")));
          if (!SignatureValid(r, secret_, "eu-west-1", "ecs", &why)) {
            return Answer(
                403, absl::StrCat(
                         R"({"__type":"InvalidSignatureException","message":")",
                         why, "\"}"));
          }
          bodies_.push_back(r.body);
          tokens_.push_back(std::string(r.header("X-Amz-Security-Token")));
          if (!answers_.empty()) {
            http::ServerResponse a = answers_.front();
            answers_.pop_front();
            return a;
          }
          return Answer(200, R"({"ok":true})");
        });
  }

  std::unique_ptr<JsonClient> Client(CredentialsProvider& creds) {
    JsonClientOptions o;
    o.service = kEcs;
    o.endpoint = server_->url();
    o.region = "eu-west-1";
    o.credentials = &creds;
    o.http = &http_;
    o.clock = &clock_;
    o.random = [] { return 0.5; };
    return std::make_unique<JsonClient>(std::move(o));
  }

  void Queue(http::ServerResponse r) {
    absl::MutexLock lock(&mu_);
    answers_.push_back(std::move(r));
  }
  std::vector<std::string> Targets() {
    absl::MutexLock lock(&mu_);
    return targets_;
  }

  Credentials Keys(std::string token = "") {
    Credentials c;
    c.access_key_id = "AKIDTEST";
    c.secret_access_key = SecretString(secret_);
    c.session_token = SecretString(std::move(token));
    return c;
  }

  std::string secret_ = "test-secret-key";
  http::HttpClient http_;
  testing::FakeClock clock_;
  absl::Mutex mu_;
  std::deque<http::ServerResponse> answers_;
  std::vector<std::string> targets_, bodies_, tokens_;
  std::unique_ptr<http::HttpServer> server_;
};

TEST_F(JsonClientTest, SendsASignedJson11Request) {
  StaticCredentialsProvider creds(Keys("session"));
  absl::StatusOr<std::string> r =
      Client(creds)->Call("DescribeTasks", R"({"tasks":["a"]})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, R"({"ok":true})");
  EXPECT_THAT(Targets(),
              ElementsAre("AmazonEC2ContainerServiceV20141113.DescribeTasks"));
  EXPECT_THAT(bodies_, ElementsAre(R"({"tasks":["a"]})"));
  EXPECT_THAT(tokens_, ElementsAre("session"));
}

TEST_F(JsonClientTest, AnEmptyBodyIsAnEmptyObject) {
  StaticCredentialsProvider creds(Keys());
  ASSERT_TRUE(Client(creds)->Call("ListClusters", "").ok());
  EXPECT_THAT(bodies_, ElementsAre("{}"));
}

TEST_F(JsonClientTest, ClientErrorsAreNotRetriedAndCarryCodeAndRequestId) {
  Queue(Answer(400, R"({"__type":"com.amazonaws.ecs#ClientException",)"
                    R"("message":"Unable to describe task definition."})"));
  StaticCredentialsProvider creds(Keys());
  absl::StatusOr<std::string> r = Client(creds)->Call("RunTask", "{}");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(),
            "ECS RunTask: ClientException: Unable to describe task "
            "definition. (request id req-123)");
  EXPECT_EQ(AwsErrorCode(r.status()), "ClientException");
  EXPECT_EQ(GetAwsError(r.status())->http_status, 400);
  EXPECT_EQ(Targets().size(), 1u);
}

TEST_F(JsonClientTest, ThrottlingIsRetriedWithBackoffThenSucceeds) {
  Queue(Answer(
      400, R"({"__type":"ThrottlingException","message":"Rate exceeded"})"));
  Queue(Answer(503, R"({"__type":"ServiceUnavailableException"})"));
  StaticCredentialsProvider creds(Keys());
  const absl::Time start = clock_.Now();
  absl::StatusOr<std::string> r = Client(creds)->Call("RunTask", "{}");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Targets().size(), 3u);
  // Jitter 0.5: 0.5 * 1 s after throttling, then 0.5 * 0.1 s after a 503.
  EXPECT_EQ(clock_.Now() - start, absl::Milliseconds(550));
}

TEST_F(JsonClientTest, GivesUpAfterMaxAttemptsWithTheLastError) {
  for (int i = 0; i < 3; ++i) {
    Queue(Answer(
        400, R"({"__type":"ThrottlingException","message":"Rate exceeded"})"));
  }
  StaticCredentialsProvider creds(Keys());
  absl::StatusOr<std::string> r = Client(creds)->Call("DescribeTasks", "{}");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(r.status().message(),
              HasSubstr("ThrottlingException: Rate exceeded"));
  EXPECT_EQ(Targets().size(), 3u);
}

TEST_F(JsonClientTest, ExpiredTokenRefreshesCredentialsOnce) {
  int fetches = 0;
  RefreshingCredentialsProvider creds(
      [&]() -> absl::StatusOr<TimedCredentials> {
        TimedCredentials t;
        t.credentials = Keys(absl::StrCat("token-", ++fetches));
        t.expiration = clock_.Now() + absl::Hours(1);
        return t;
      },
      clock_);
  Queue(Answer(
      403,
      R"({"__type":"ExpiredTokenException","message":"The security token included in the request is expired"})"));
  absl::StatusOr<std::string> r = Client(creds)->Call("StopTask", "{}");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(tokens_, ElementsAre("token-1", "token-2"));
}

TEST_F(JsonClientTest, WrongSecretIsUnauthenticatedWithAHint) {
  Credentials wrong = Keys();
  wrong.secret_access_key = SecretString("not-the-secret");
  StaticCredentialsProvider creds(wrong);
  absl::StatusOr<std::string> r = Client(creds)->Call("RunTask", "{}");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(r.status().message(), HasSubstr("InvalidSignatureException"));
  EXPECT_THAT(r.status().message(), HasSubstr("clock"));
  EXPECT_THAT(r.status().message(), Not(HasSubstr("not-the-secret")));
}

TEST_F(JsonClientTest, NoServerIsUnavailableAfterRetries) {
  StaticCredentialsProvider creds(Keys());
  JsonClientOptions o;
  o.endpoint = "http://127.0.0.1:1";
  o.region = "eu-west-1";
  o.credentials = &creds;
  o.http = &http_;
  o.clock = &clock_;
  JsonClient client(std::move(o));
  absl::StatusOr<std::string> r = client.Call("RunTask", "{}");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(r.status().message(), HasSubstr("after 3 attempts"));
}

TEST(AwsErrorTest, ParsesLikeBotocore) {
  AwsError e = ParseAwsError(
      400, R"({"__type":"InvalidParameterException:extra","Message":"bad"})");
  EXPECT_EQ(e.code, "InvalidParameterException");
  EXPECT_EQ(e.message, "bad");
  e = ParseAwsError(502, "<html>Bad Gateway</html>");
  EXPECT_EQ(e.code, "502");
  EXPECT_EQ(e.message, "<html>Bad Gateway</html>");
  EXPECT_TRUE(IsRetryableError(e));
  EXPECT_FALSE(
      IsRetryableError(ParseAwsError(400, R"({"__type":"ClientException"})")));
  EXPECT_TRUE(IsRetryableError(
      ParseAwsError(400, R"({"__type":"ThrottlingException"})")));
}

}  // namespace
}  // namespace delegate::aws

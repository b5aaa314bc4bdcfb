// The credentials chain against loopback stand-ins for the ECS container
// credentials endpoint and EC2 instance metadata, the refresh rules on a
// clock the test moves, and the endpoint and region rules.
#include "aws/credentials.h"

#include <atomic>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "aws/endpoints.h"
#include "aws/task_metadata.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "http/http_server.h"
#include "tests/fakes/fake_clock.h"

namespace delegate::aws {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kCredentialsJson[] =
    R"({"AccessKeyId":"ASIAFAKE","SecretAccessKey":"very-secret",)"
    R"("Token":"session-token","Expiration":"2027-01-01T12:00:00Z",)"
    R"("RoleArn":"arn:aws:iam::123456789012:role/step"})";

// A loopback server that records what it was asked and answers `answer`.
class Endpoint {
 public:
  explicit Endpoint(
      std::function<http::ServerResponse(const http::ServerRequest&)> answer)
      : answer_(std::move(answer)) {
    server_ =
        *http::HttpServer::Start({}, [this](const http::ServerRequest& r) {
          {
            absl::MutexLock lock(&mu_);
            requests_.push_back(r);
          }
          return answer_(r);
        });
  }
  std::string url() const { return server_->url(); }
  std::vector<http::ServerRequest> requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }

 private:
  std::function<http::ServerResponse(const http::ServerRequest&)> answer_;
  absl::Mutex mu_;
  std::vector<http::ServerRequest> requests_;
  std::unique_ptr<http::HttpServer> server_;
};

http::ServerResponse Json(std::string body, int status = 200) {
  http::ServerResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

class CredentialsTest : public ::testing::Test {
 protected:
  http::HttpClient http_;
  testing::FakeClock clock_;
  CredentialsOptions options_;
};

TEST_F(CredentialsTest, EnvironmentKeysComeFirst) {
  EnvMap env = {{"AWS_ACCESS_KEY_ID", "AKIDENV"},
                {"AWS_SECRET_ACCESS_KEY", "env-secret"},
                {"AWS_SESSION_TOKEN", "env-token"},
                {"AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:1/x"}};
  auto chain = DefaultCredentialsChain(env, options_, http_, clock_);
  ASSERT_TRUE(chain.ok()) << chain.status();
  absl::StatusOr<Credentials> c = (*chain)->Get();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->access_key_id, "AKIDENV");
  EXPECT_EQ(c->secret_access_key.reveal(), "env-secret");
  EXPECT_EQ(c->session_token.reveal(), "env-token");
}

TEST_F(CredentialsTest, HalfSetEnvironmentKeysNameTheMissingVariable) {
  auto chain = DefaultCredentialsChain({{"AWS_ACCESS_KEY_ID", "AKID"}},
                                       options_, http_, clock_);
  ASSERT_FALSE(chain.ok());
  EXPECT_THAT(chain.status().message(), HasSubstr("AWS_SECRET_ACCESS_KEY"));
}

TEST_F(CredentialsTest, RelativeUriIsFetchedFromTheContainerEndpoint) {
  Endpoint endpoint(
      [](const http::ServerRequest&) { return Json(kCredentialsJson); });
  options_.container_endpoint = endpoint.url();
  EnvMap env = {
      {"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/credentials/abc"}};
  absl::StatusOr<TimedCredentials> c =
      FetchContainerCredentials(env, options_, http_, clock_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->credentials.access_key_id, "ASIAFAKE");
  EXPECT_EQ(c->credentials.secret_access_key.reveal(), "very-secret");
  EXPECT_EQ(c->credentials.session_token.reveal(), "session-token");
  EXPECT_EQ(c->expiration,
            absl::FromCivil(absl::CivilSecond(2027, 1, 1, 12, 0, 0),
                            absl::UTCTimeZone()));
  ASSERT_EQ(endpoint.requests().size(), 1u);
  EXPECT_EQ(endpoint.requests()[0].path, "/v2/credentials/abc");
  EXPECT_EQ(endpoint.requests()[0].header("Accept"), "application/json");
  EXPECT_EQ(endpoint.requests()[0].header("Authorization"), "");
}

TEST_F(CredentialsTest, FullUriSendsTheTokenFromTheFileBeforeTheVariable) {
  Endpoint endpoint([](const http::ServerRequest& r) {
    return r.header("Authorization") == "from-file" ? Json(kCredentialsJson)
                                                    : Json("{}", 401);
  });
  const std::string file =
      ::testing::TempDir() + "/container-token-" + std::to_string(getpid());
  std::ofstream(file) << "from-file\n";
  EnvMap env = {
      {"AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url() + "/creds"},
      {"AWS_CONTAINER_AUTHORIZATION_TOKEN", "from-variable"},
      {"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", file}};
  absl::StatusOr<TimedCredentials> c =
      FetchContainerCredentials(env, options_, http_, clock_);
  ASSERT_TRUE(c.ok()) << c.status();
  // The file is read again at every fetch: a rotated token is used.
  std::ofstream(file) << "rotated\n";
  c = FetchContainerCredentials(env, options_, http_, clock_);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("HTTP 401"));
  EXPECT_THAT(c.status().message(), Not(HasSubstr("rotated")));
  EXPECT_EQ(endpoint.requests().back().header("Authorization"), "rotated");
}

TEST_F(CredentialsTest, FullUriOverPlainHttpMustStayOnTheMachine) {
  EnvMap env = {{"AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "http://credentials.example.com/creds"}};
  absl::StatusOr<TimedCredentials> c =
      FetchContainerCredentials(env, options_, http_, clock_);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(),
              HasSubstr("AWS_CONTAINER_CREDENTIALS_FULL_URI"));
  EXPECT_THAT(c.status().message(), HasSubstr("credentials.example.com"));
}

TEST_F(CredentialsTest, TokenWithALineBreakIsRefused) {
  EnvMap env = {{"AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:9/c"},
                {"AWS_CONTAINER_AUTHORIZATION_TOKEN", "abc\r\nX-Evil: 1"}};
  absl::StatusOr<TimedCredentials> c =
      FetchContainerCredentials(env, options_, http_, clock_);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(),
              HasSubstr("AWS_CONTAINER_AUTHORIZATION_TOKEN"));
  EXPECT_THAT(c.status().message(), Not(HasSubstr("Evil")));
}

TEST_F(CredentialsTest, ContainerEndpointIsRetriedOnServerErrors) {
  std::atomic<int> calls{0};
  Endpoint endpoint([&](const http::ServerRequest&) {
    return ++calls < 3 ? Json("oops", 500) : Json(kCredentialsJson);
  });
  EnvMap env = {{"AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url() + "/c"}};
  const absl::Time before = clock_.Now();
  absl::StatusOr<TimedCredentials> c =
      FetchContainerCredentials(env, options_, http_, clock_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(calls.load(), 3);
  EXPECT_EQ(clock_.Now() - before, absl::Seconds(2));  // 1 s between tries
}

TEST_F(CredentialsTest, SecretsNeverAppearInErrors) {
  Endpoint endpoint([](const http::ServerRequest&) {
    return Json(R"({"AccessKeyId":"ASIA","SecretAccessKey":"very-secret"})");
  });
  EnvMap env = {{"AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url() + "/c"}};
  absl::StatusOr<TimedCredentials> c =
      FetchContainerCredentials(env, options_, http_, clock_);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("no Token"));
  EXPECT_THAT(c.status().message(), Not(HasSubstr("very-secret")));
}

TEST_F(CredentialsTest, ImdsV2UsesASessionTokenForTheRoleAndItsCredentials) {
  Endpoint imds([](const http::ServerRequest& r) {
    if (r.method == "PUT" && r.path == "/latest/api/token") {
      return r.header("x-aws-ec2-metadata-token-ttl-seconds") == "21600"
                 ? Json("imds-session")
                 : Json("", 400);
    }
    if (r.header("x-aws-ec2-metadata-token") != "imds-session") {
      return Json("", 401);
    }
    if (r.path == "/latest/meta-data/iam/security-credentials/") {
      return Json("ci-runner-role\n");
    }
    if (r.path == "/latest/meta-data/iam/security-credentials/ci-runner-role") {
      return Json(absl::StrCat(R"({"Code":"Success","Type":"AWS-HMAC",)",
                               std::string(kCredentialsJson).substr(1)));
    }
    return Json("", 404);
  });
  options_.imds_endpoint = imds.url();
  auto chain = DefaultCredentialsChain({}, options_, http_, clock_);
  ASSERT_TRUE(chain.ok()) << chain.status();
  absl::StatusOr<Credentials> c = (*chain)->Get();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->access_key_id, "ASIAFAKE");
  EXPECT_EQ(imds.requests().size(), 3u);
}

TEST_F(CredentialsTest, NoSourceAtAllSaysWhatToSet) {
  auto chain = DefaultCredentialsChain({{"AWS_EC2_METADATA_DISABLED", "true"}},
                                       options_, http_, clock_);
  ASSERT_FALSE(chain.ok());
  EXPECT_THAT(chain.status().message(), HasSubstr("AWS_ACCESS_KEY_ID"));
  EXPECT_THAT(chain.status().message(), HasSubstr("task role"));
}

// ------------------------------------------------------------ refreshing

TEST_F(CredentialsTest, RefreshesBeforeExpiryAndKeepsOldOnesWhenItCan) {
  int fetches = 0;
  bool fail = false;
  RefreshingCredentialsProvider provider(
      [&]() -> absl::StatusOr<TimedCredentials> {
        ++fetches;
        if (fail) return absl::UnavailableError("endpoint down");
        TimedCredentials t;
        t.credentials.access_key_id = absl::StrCat("KEY", fetches);
        t.expiration = clock_.Now() + absl::Hours(1);
        return t;
      },
      clock_);
  EXPECT_EQ(provider.Get()->access_key_id, "KEY1");
  clock_.Advance(absl::Minutes(40));  // 20 min left: cached
  EXPECT_EQ(provider.Get()->access_key_id, "KEY1");
  clock_.Advance(absl::Minutes(6));  // 14 min left: advisory refresh
  EXPECT_EQ(provider.Get()->access_key_id, "KEY2");
  EXPECT_EQ(fetches, 2);

  fail = true;
  clock_.Advance(absl::Minutes(48));  // 12 min left; refresh fails: keep
  absl::StatusOr<Credentials> kept = provider.Get();
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(kept->access_key_id, "KEY2");
  clock_.Advance(absl::Minutes(3));  // 9 min left: must refresh
  absl::StatusOr<Credentials> none = provider.Get();
  ASSERT_FALSE(none.ok());
  EXPECT_THAT(none.status().message(), HasSubstr("endpoint down"));
  fail = false;
  EXPECT_EQ(provider.Get()->access_key_id, "KEY5");
}

TEST_F(CredentialsTest, InvalidateForcesAFetch) {
  int fetches = 0;
  RefreshingCredentialsProvider provider(
      [&]() -> absl::StatusOr<TimedCredentials> {
        TimedCredentials t;
        t.credentials.access_key_id = absl::StrCat("KEY", ++fetches);
        t.expiration = clock_.Now() + absl::Hours(6);
        return t;
      },
      clock_);
  EXPECT_EQ(provider.Get()->access_key_id, "KEY1");
  provider.Invalidate();
  EXPECT_EQ(provider.Get()->access_key_id, "KEY2");
  EXPECT_EQ(provider.Get()->access_key_id, "KEY2");
}

// ------------------------------------------------------------ endpoints

TEST(EndpointsTest, DefaultsFollowTheRegionAndPartition) {
  EXPECT_EQ(*ResolveEndpoint(kEcs, "eu-west-1", {}),
            "https://ecs.eu-west-1.amazonaws.com");
  EXPECT_EQ(*ResolveEndpoint(kCloudWatchLogs, "cn-north-1", {}),
            "https://logs.cn-north-1.amazonaws.com.cn");
  EXPECT_EQ(
      *ResolveEndpoint(kEcs, "us-east-1", {{"AWS_USE_FIPS_ENDPOINT", "true"}}),
      "https://ecs-fips.us-east-1.amazonaws.com");
}

TEST(EndpointsTest, ServiceVariableBeatsTheGlobalOne) {
  EnvMap env = {{"AWS_ENDPOINT_URL", "http://127.0.0.1:4566/"},
                {"AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", "http://127.0.0.1:9000"}};
  EXPECT_EQ(*ResolveEndpoint(kEcs, "us-east-1", env), "http://127.0.0.1:4566");
  EXPECT_EQ(*ResolveEndpoint(kCloudWatchLogs, "us-east-1", env),
            "http://127.0.0.1:9000");
  env["AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"] = "true";
  EXPECT_EQ(*ResolveEndpoint(kEcs, "us-east-1", env),
            "https://ecs.us-east-1.amazonaws.com");
}

TEST(EndpointsTest, BadOverridesNameTheVariable) {
  absl::StatusOr<std::string> e = ResolveEndpoint(
      kEcs, "us-east-1", {{"AWS_ENDPOINT_URL_ECS", "ecs.local"}});
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(e.status().message(), HasSubstr("AWS_ENDPOINT_URL_ECS"));
  e = ResolveEndpoint(kEcs, "US East", {});
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(e.status().message(), HasSubstr("AWS_REGION"));
}

TEST(EndpointsTest, RegionComesFromTheVariablesThenTheTaskArn) {
  EXPECT_EQ(*ResolveRegion({{"AWS_REGION", "eu-central-1"},
                            {"AWS_DEFAULT_REGION", "us-west-2"}}),
            "eu-central-1");
  EXPECT_EQ(*ResolveRegion({{"AWS_DEFAULT_REGION", "us-west-2"}}), "us-west-2");
  EXPECT_EQ(
      *ResolveRegion(
          {}, "arn:aws:ecs:ap-south-1:123456789012:task/ci/0123456789abcdef"),
      "ap-south-1");
  absl::StatusOr<std::string> none = ResolveRegion({});
  ASSERT_FALSE(none.ok());
  EXPECT_THAT(none.status().message(), HasSubstr("AWS_REGION"));
}

TEST(TaskMetadataTest, ReadsClusterArnAndRegion) {
  Endpoint metadata([](const http::ServerRequest& r) {
    if (r.path != "/v4/abc/task") return Json("", 404);
    return Json(
        R"({"Cluster":"arn:aws:ecs:us-west-2:111122223333:cluster/ci",)"
        R"("TaskARN":"arn:aws:ecs:us-west-2:111122223333:task/ci/1234",)"
        R"("Family":"delegate","Revision":"7","LaunchType":"FARGATE",)"
        R"("AvailabilityZone":"us-west-2a","Containers":[]})");
  });
  http::HttpClient http;
  absl::StatusOr<TaskMetadata> m =
      FetchTaskMetadata(http, metadata.url() + "/v4/abc");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->cluster, "arn:aws:ecs:us-west-2:111122223333:cluster/ci");
  EXPECT_EQ(m->region, "us-west-2");
  EXPECT_EQ(m->account, "111122223333");
  EXPECT_EQ(m->launch_type, "FARGATE");
  absl::StatusOr<TaskMetadata> missing =
      FetchTaskMetadata(http, metadata.url() + "/v4/nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("HTTP 404"));
}

}  // namespace
}  // namespace delegate::aws

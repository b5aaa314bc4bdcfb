// The ECS executors' AWS calls behind a proxy and a private CA, the way the
// AWS SDKs read HTTPS_PROXY, HTTP_PROXY, NO_PROXY and AWS_CA_BUNDLE: through
// EcsRuntime::Ready (ListTasks, ListTaskDefinitions, the log group) against
// the strict AWS fake, served over TLS by a terminator with a test CA's
// certificate, and a loopback proxy that records where each request asked
// to go.
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "executor/ecs/ecs_runtime.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/aws_fake.h"
#include "tests/fakes/connect_proxy.h"
#include "tests/fakes/test_ca.h"
#include "tests/fakes/tls_terminator.h"

namespace delegate::ecs {
namespace {

using delegate::testing::ConnectProxy;
using delegate::testing::FakeAws;
using delegate::testing::FakeAwsCredential;
using delegate::testing::FakeAwsOptions;
using delegate::testing::FakeRejection;
using delegate::testing::ProxiedRequest;
using delegate::testing::TestCa;
using delegate::testing::TlsTerminator;
using ::testing::Each;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

constexpr char kProxyUser[] = "proxy-user";
constexpr char kProxyPassword[] = "pr0xy-s3cret";

const FakeAwsCredential& Key() {
  static const FakeAwsCredential* key = new FakeAwsCredential{
      "AKIDPROXY", "proxy-test-secret", "", absl::InfiniteFuture()};
  return *key;
}

class EcsProxyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeAwsOptions options;
    options.testdata_dir = delegate::testing::AwsTestdataDir();
    options.credentials.push_back(Key());
    absl::StatusOr<std::unique_ptr<FakeAws>> fake = FakeAws::Start(options);
    ASSERT_TRUE(fake.ok()) << fake.status();
    fake_ = *std::move(fake);
    const std::string url = fake_->url();
    int port = 0;
    ASSERT_TRUE(absl::SimpleAtoi(url.substr(url.rfind(':') + 1), &port));
    absl::StatusOr<std::unique_ptr<TestCa>> ca = TestCa::Create();
    ASSERT_TRUE(ca.ok()) << ca.status();
    ca_ = *std::move(ca);
    tls_ = std::make_unique<TlsTerminator>(ca_->server(), port);
    ASSERT_TRUE(tls_->ok());
    proxy_ = std::make_unique<ConnectProxy>(
        absl::StrCat(kProxyUser, ":", kProxyPassword));
  }

  void TearDown() override {
    if (!fake_) return;
    for (const FakeRejection& r : fake_->Rejected()) {
      ADD_FAILURE() << "AWS would refuse " << r.operation << ": " << r.code
                    << ": " << r.message;
    }
  }

  // "http://USER:PASSWORD@127.0.0.1:PORT"
  std::string ProxyUrl(const std::string& password = kProxyPassword) const {
    return absl::StrCat("http://", kProxyUser, ":", password,
                        "@127.0.0.1:", proxy_->port());
  }

  // The executor's options: the fake's key and region, the ECS and Logs
  // endpoint `endpoint`, and `more`.
  static EcsExecutorOptions Options(
      const std::string& endpoint,
      const std::map<std::string, std::string>& more) {
    EcsExecutorOptions o;
    o.env = EnvMap{{"AWS_ACCESS_KEY_ID", Key().access_key_id},
                   {"AWS_SECRET_ACCESS_KEY", Key().secret_access_key},
                   {"AWS_REGION", "us-east-1"},
                   {"AWS_ENDPOINT_URL", endpoint}};
    for (const auto& [name, value] : more) (*o.env)[name] = value;
    o.cluster = "ci";
    o.subnets = {"subnet-0123456789abcdef0"};
    o.instance = "me";
    return o;
  }

  // Ready's result; *output gets what it reported, a line each.
  absl::Status Ready(EcsExecutorOptions options, std::string* output) {
    EcsRuntime runtime(std::move(options));
    ReapReport report;
    absl::StatusOr<EcsSession*> session = runtime.Ready("d", &report);
    *output = absl::StrJoin(report.removed, "\n") + "\n" +
              absl::StrJoin(report.errors, "\n");
    return session.status();
  }

  std::unique_ptr<FakeAws> fake_;
  std::unique_ptr<TestCa> ca_;
  std::unique_ptr<TlsTerminator> tls_;
  std::unique_ptr<ConnectProxy> proxy_;
};

TEST_F(EcsProxyTest, HttpsProxyTunnelsEveryCallToAnHttpsEndpoint) {
  std::string output;
  absl::Status s = Ready(
      Options(tls_->url(),
              {{"HTTPS_PROXY", ProxyUrl()}, {"AWS_CA_BUNDLE", ca_->ca_file()}}),
      &output);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_GT(fake_->CallCount("ListTasks"), 0);
  EXPECT_GT(fake_->CallCount("ListTaskDefinitions"), 0);
  EXPECT_GT(fake_->CallCount("CreateLogGroup") +
                fake_->CallCount("DescribeLogGroups"),
            0);
  const std::vector<ProxiedRequest> requests = proxy_->Requests();
  ASSERT_THAT(requests, Not(IsEmpty()));
  for (const ProxiedRequest& r : requests) {
    EXPECT_EQ(r.method, "CONNECT");
    EXPECT_EQ(r.target, absl::StrCat("localhost:", tls_->port()));
    EXPECT_EQ(r.authorization,
              absl::StrCat("Basic ", absl::Base64Escape(absl::StrCat(
                                         kProxyUser, ":", kProxyPassword))));
  }
  EXPECT_EQ(tls_->failed_handshakes(), 0);
  EXPECT_THAT(output, Not(HasSubstr(kProxyPassword)));
}

TEST_F(EcsProxyTest, LowerCaseHttpsProxyIsReadToo) {
  std::string output;
  absl::Status s = Ready(
      Options(tls_->url(),
              {{"https_proxy", ProxyUrl()}, {"AWS_CA_BUNDLE", ca_->ca_file()}}),
      &output);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_THAT(proxy_->Targets(),
              Each(absl::StrCat("localhost:", tls_->port())));
  EXPECT_THAT(proxy_->Targets(), Not(IsEmpty()));
}

TEST_F(EcsProxyTest, NoProxyBypassesTheProxyByNameCidrOrStar) {
  // The endpoint's host as a name (in a list), within a CIDR range, or "*".
  const std::vector<std::pair<std::string, std::string>> cases = {
      {tls_->url(), "example.com, localhost"},
      {absl::StrCat("https://127.0.0.1:", tls_->port()), "127.0.0.0/8"},
      {tls_->url(), "*"},
  };
  for (const auto& [endpoint, no_proxy] : cases) {
    SCOPED_TRACE(no_proxy);
    const int before = tls_->connections();
    std::string output;
    absl::Status s =
        Ready(Options(endpoint, {{"HTTPS_PROXY", ProxyUrl()},
                                 {"NO_PROXY", no_proxy},
                                 {"AWS_CA_BUNDLE", ca_->ca_file()}}),
              &output);
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_GT(tls_->connections(), before);
  }
  EXPECT_THAT(proxy_->Requests(), IsEmpty());
}

TEST_F(EcsProxyTest, AnHttpEndpointTakesHttpProxyNotHttpsProxy) {
  // HTTPS_PROXY alone: not for an http:// endpoint.
  std::string output;
  absl::Status s =
      Ready(Options(fake_->url(), {{"HTTPS_PROXY", ProxyUrl()}}), &output);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_THAT(proxy_->Requests(), IsEmpty());

  // HTTP_PROXY: absolute-URI requests to the endpoint.
  s = Ready(Options(fake_->url(), {{"HTTP_PROXY", ProxyUrl()}}), &output);
  ASSERT_TRUE(s.ok()) << s;
  const std::vector<ProxiedRequest> requests = proxy_->Requests();
  ASSERT_THAT(requests, Not(IsEmpty()));
  const std::string endpoint =
      fake_->url().substr(std::string("http://").size());
  for (const ProxiedRequest& r : requests) {
    EXPECT_EQ(r.method, "POST");
    EXPECT_EQ(r.target, endpoint);
  }
}

TEST_F(EcsProxyTest, MetadataAndCredentialEndpointsAreNeverProxied) {
  EcsExecutorOptions options = Options(
      tls_->url(),
      {{"HTTPS_PROXY", ProxyUrl()},
       {"HTTP_PROXY", ProxyUrl()},
       {"AWS_CA_BUNDLE", ca_->ca_file()},
       {"AWS_CONTAINER_CREDENTIALS_FULL_URI",
        fake_->ServeContainerCredentials("", absl::Hours(1))},
       {"ECS_CONTAINER_METADATA_URI_V4",
        fake_->ServeOwnTask("delegates", "FARGATE", "subnet-0aaaaaaaaaaaaaaaa",
                            "sg-0bbbbbbbbbbbbbbbb")}});
  options.env->erase("AWS_ACCESS_KEY_ID");
  options.env->erase("AWS_SECRET_ACCESS_KEY");
  options.cluster.clear();
  std::string output;
  absl::Status s = Ready(std::move(options), &output);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_GT(fake_->container_credential_fetches(), 0);
  // Only the service calls, to the TLS endpoint, went through the proxy.
  EXPECT_THAT(proxy_->Targets(), Not(IsEmpty()));
  EXPECT_THAT(proxy_->Targets(),
              Each(absl::StrCat("localhost:", tls_->port())));
}

TEST_F(EcsProxyTest, WithoutTheCaBundleTheTestCaIsNotTrusted) {
  std::string output;
  absl::Status s =
      Ready(Options(tls_->url(), {{"HTTPS_PROXY", ProxyUrl()}}), &output);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(s.message(), HasSubstr("TLS: "));
  EXPECT_THAT(s.message(), HasSubstr("certificate"));
  EXPECT_THAT(s.message(), HasSubstr("set AWS_CA_BUNDLE"));
  EXPECT_THAT(s.message(), Not(HasSubstr(kProxyPassword)));
  // The endpoint was reached (its certificate refused), through the proxy.
  EXPECT_GT(tls_->connections(), 0);
  EXPECT_THAT(proxy_->Requests(), Not(IsEmpty()));
  EXPECT_THAT(fake_->Calls(), IsEmpty());
}

TEST_F(EcsProxyTest, AMissingCaBundleIsAClearErrorBeforeAnyCall) {
  const std::string missing = ca_->dir() + "/no-such-bundle.pem";
  std::string output;
  absl::Status s =
      Ready(Options(tls_->url(), {{"AWS_CA_BUNDLE", missing}}), &output);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("AWS_CA_BUNDLE"));
  EXPECT_THAT(s.message(), HasSubstr(missing));
  EXPECT_THAT(s.message(), HasSubstr("No such file or directory"));
  EXPECT_THAT(s.message(), HasSubstr("or unset it"));

  // A file that is there but holds no certificate (a key).
  s = Ready(Options(tls_->url(), {{"AWS_CA_BUNDLE", ca_->server().key_file}}),
            &output);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("no PEM certificate"));
  EXPECT_THAT(fake_->Calls(), IsEmpty());
  EXPECT_EQ(tls_->connections(), 0);
}

TEST_F(EcsProxyTest, ARefusedProxyPasswordNeverShows) {
  std::string output;
  absl::Status s =
      Ready(Options(tls_->url(), {{"HTTPS_PROXY", ProxyUrl("wr0ng-s3cret")},
                                  {"AWS_CA_BUNDLE", ca_->ca_file()}}),
            &output);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("via proxy http://127.0.0.1:",
                                                  proxy_->port())))
      << s;
  EXPECT_THAT(s.message(), HasSubstr("407"));
  EXPECT_THAT(s.message(), Not(HasSubstr("wr0ng-s3cret")));
  EXPECT_THAT(output, Not(HasSubstr("wr0ng-s3cret")));
  EXPECT_THAT(proxy_->Requests(), Not(IsEmpty()));
}

}  // namespace
}  // namespace delegate::ecs

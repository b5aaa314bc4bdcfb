// The proxy and CA bundle variables of the AWS service calls, read from an
// EnvMap as the AWS SDKs read them: which proxy an endpoint's scheme takes,
// NO_PROXY passed on, AWS_CA_BUNDLE checked when read, and no password in a
// message. The calls themselves, through a proxy and a TLS endpoint, are in
// tests/executor/ecs/ecs_proxy_test.cc.
#include "aws/transport.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/test_ca.h"

namespace delegate::aws {
namespace {

using delegate::testing::TestCa;
using ::testing::HasSubstr;
using ::testing::Not;

http::Request To(const Transport& t, const std::string& url) {
  http::Request r;
  r.url = url;
  t.Apply(r);
  return r;
}

TEST(TransportTest, NothingSetIsDirectWithTheSystemsCas) {
  absl::StatusOr<Transport> t = TransportFromEnv({});
  ASSERT_TRUE(t.ok()) << t.status();
  http::Request r = To(*t, "https://ecs.us-east-1.amazonaws.com/");
  EXPECT_EQ(r.proxy, "");
  EXPECT_EQ(r.no_proxy, "");
  EXPECT_FALSE(r.use_env_proxy);
  EXPECT_EQ(r.tls.ca_file, "");
}

TEST(TransportTest, TheEndpointsSchemeChoosesTheProxy) {
  absl::StatusOr<Transport> t =
      TransportFromEnv({{"HTTPS_PROXY", "http://secure:3128"},
                        {"HTTP_PROXY", "http://plain:3128"},
                        {"NO_PROXY", "localhost,10.0.0.0/8"}});
  ASSERT_TRUE(t.ok()) << t.status();
  http::Request https = To(*t, "https://ecs.us-east-1.amazonaws.com/");
  EXPECT_EQ(https.proxy, "http://secure:3128");
  EXPECT_EQ(https.no_proxy, "localhost,10.0.0.0/8");
  http::Request http = To(*t, "http://localstack:4566/");
  EXPECT_EQ(http.proxy, "http://plain:3128");
  EXPECT_EQ(http.no_proxy, "localhost,10.0.0.0/8");

  // Only one of them set: the other scheme goes direct.
  t = TransportFromEnv({{"https_proxy", "proxy.corp:8080"}});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(To(*t, "https://logs.eu-west-1.amazonaws.com/").proxy,
            "proxy.corp:8080");
  EXPECT_EQ(To(*t, "http://localstack:4566/").proxy, "");
}

TEST(TransportTest, UpperCaseWinsAsForTheManagerConnection) {
  absl::StatusOr<Transport> t =
      TransportFromEnv({{"HTTPS_PROXY", "http://upper:1"},
                        {"https_proxy", "http://lower:1"},
                        {"NO_PROXY", "upper.example"},
                        {"no_proxy", "lower.example"}});
  ASSERT_TRUE(t.ok()) << t.status();
  http::Request r = To(*t, "https://ecs.us-east-1.amazonaws.com/");
  EXPECT_EQ(r.proxy, "http://upper:1");
  EXPECT_EQ(r.no_proxy, "upper.example");
  // A blank value counts as unset.
  t = TransportFromEnv(
      {{"HTTPS_PROXY", " "}, {"https_proxy", "http://lower:1"}});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(To(*t, "https://ecs.us-east-1.amazonaws.com/").proxy,
            "http://lower:1");
}

TEST(TransportTest, AProxyOfAnUnknownSchemeNamesTheVariableNotThePassword) {
  absl::StatusOr<Transport> t =
      TransportFromEnv({{"HTTPS_PROXY", "ftp://user:hunter2@proxy:21"}});
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("HTTPS_PROXY"));
  EXPECT_THAT(t.status().message(), HasSubstr("proxy:21"));
  EXPECT_THAT(t.status().message(), Not(HasSubstr("hunter2")));
  for (const char* ok : {"https://p:1", "socks5h://p:1", "SOCKS5://p:1"}) {
    EXPECT_TRUE(TransportFromEnv({{"HTTP_PROXY", ok}}).ok()) << ok;
  }
}

TEST(TransportTest, TheCaBundleIsForHttpsEndpointsOnly) {
  absl::StatusOr<std::unique_ptr<TestCa>> ca = TestCa::Create();
  ASSERT_TRUE(ca.ok()) << ca.status();
  absl::StatusOr<Transport> t =
      TransportFromEnv({{"AWS_CA_BUNDLE", (*ca)->ca_file()}});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(To(*t, "https://ecs.us-east-1.amazonaws.com/").tls.ca_file,
            (*ca)->ca_file());
  EXPECT_EQ(To(*t, "http://localstack:4566/").tls.ca_file, "");
  EXPECT_THAT(t->TlsHint(), HasSubstr((*ca)->ca_file()));
  EXPECT_THAT(Transport().TlsHint(), HasSubstr("set AWS_CA_BUNDLE"));
}

TEST(TransportTest, AnUnusableCaBundleSaysWhatToDo) {
  absl::StatusOr<std::unique_ptr<TestCa>> ca = TestCa::Create();
  ASSERT_TRUE(ca.ok()) << ca.status();
  const std::string empty = (*ca)->dir() + "/empty.pem";
  std::ofstream(empty).close();
  struct Case {
    std::string path;
    std::string why;
  };
  for (const Case& c :
       {Case{(*ca)->dir() + "/missing.pem", "No such file or directory"},
        Case{(*ca)->dir(), "not a regular file"},
        Case{empty, "no PEM certificate"},
        Case{(*ca)->server().key_file, "no PEM certificate"}}) {
    absl::StatusOr<Transport> t = TransportFromEnv({{"AWS_CA_BUNDLE", c.path}});
    ASSERT_FALSE(t.ok()) << c.path;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(t.status().message(), HasSubstr("AWS_CA_BUNDLE"));
    EXPECT_THAT(t.status().message(), HasSubstr(c.path));
    EXPECT_THAT(t.status().message(), HasSubstr(c.why));
    EXPECT_THAT(t.status().message(), HasSubstr("or unset it"));
  }
}

}  // namespace
}  // namespace delegate::aws

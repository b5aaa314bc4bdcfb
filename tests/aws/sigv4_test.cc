// Every case of the AWS SigV4 test suite (../shared/testdata/aws/sigv4/,
// read in place): the canonical request, the string to sign, the
// Authorization header and the signed request.
#include "aws/sigv4.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "openssl/hmac.h"

namespace delegate::aws {
namespace {

namespace fs = std::filesystem;

// The suite's fixed inputs.
constexpr char kAccessKey[] = "AKIDEXAMPLE";
constexpr char kSecretKey[] = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
constexpr char kSuiteToken[] =
    "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";

// Where the suite is: DELEGATE_AWS_TESTDATA, else next to the checkout.
fs::path SuiteDir() {
  for (fs::path dir : {fs::path(DELEGATE_AWS_TESTDATA) / "sigv4",
                       fs::path("/work/shared/testdata/aws/sigv4")}) {
    if (fs::is_directory(dir)) return dir;
  }
  return {};
}

std::string Read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A .req or .sreq file: the request line, headers (a line that starts with
// white space continues the one before), a blank line, the body.
SignableRequest ParseRequest(const std::string& text) {
  SignableRequest r;
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  const std::string& first = lines[0];
  const size_t space = first.find(' ');
  const size_t version = first.rfind(" HTTP/");
  r.method = first.substr(0, space);
  std::string target = first.substr(space + 1, version - space - 1);
  const size_t q = target.find('?');
  r.path = target.substr(0, q);
  if (q != std::string::npos) r.query = target.substr(q + 1);
  size_t i = 1;
  for (; i < lines.size() && !lines[i].empty(); ++i) {
    const std::string& line = lines[i];
    if ((line[0] == ' ' || line[0] == '\t') && !r.headers.empty()) {
      r.headers.back().second += " " + line;
      continue;
    }
    const size_t colon = line.find(':');
    r.headers.emplace_back(line.substr(0, colon), line.substr(colon + 1));
  }
  std::vector<std::string> body(lines.begin() + std::min(i + 1, lines.size()),
                                lines.end());
  r.body = absl::StrJoin(body, "\n");
  return r;
}

struct Case {
  std::string name;
  fs::path dir;
};

std::vector<Case> Cases() {
  std::vector<Case> out;
  const fs::path root = SuiteDir();
  if (root.empty()) return out;
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    if (entry.path().extension() != ".req") continue;
    out.push_back({entry.path().stem().string(), entry.path().parent_path()});
  }
  std::sort(out.begin(), out.end(),
            [](const Case& a, const Case& b) { return a.name < b.name; });
  return out;
}

TEST(SigV4SuiteTest, TheSuiteIsThere) {
  ASSERT_FALSE(SuiteDir().empty())
      << "the AWS SigV4 test suite was not found: set DELEGATE_AWS_TESTDATA "
         "(CMake) to the folder that holds sigv4/";
  EXPECT_GE(Cases().size(), 30u);
}

class SigV4CaseTest : public ::testing::TestWithParam<Case> {};

TEST_P(SigV4CaseTest, MatchesTheSuite) {
  const Case& c = GetParam();
  const fs::path base = c.dir / c.name;
  const SignableRequest request = ParseRequest(Read(base.string() + ".req"));
  Credentials credentials{kAccessKey, SecretString(kSecretKey), {}};
  SigningOptions options;
  options.region = "us-east-1";
  options.service = "service";
  SignableRequest basis = request;  // what the canonical request covers
  if (c.name == "get-vanilla-with-session-token") {
    credentials.session_token = SecretString(kSuiteToken);
    basis.headers.emplace_back("X-Amz-Security-Token", kSuiteToken);
  } else if (c.name == "post-sts-header-after") {
    // The token goes on after signing: read it from the signed request.
    for (const auto& [n, v] :
         ParseRequest(Read(base.string() + ".sreq")).headers) {
      if (n == "X-Amz-Security-Token") credentials.session_token = SecretString(v);
    }
    options.sign_session_token = false;
  }

  std::string signed_headers;
  const std::string creq = CanonicalRequest(basis, options, &signed_headers);
  EXPECT_EQ(creq, Read(base.string() + ".creq"));
  EXPECT_EQ(StringToSign(creq, "20150830T123600Z",
                         "20150830/us-east-1/service/aws4_request"),
            Read(base.string() + ".sts"));

  SignableRequest signed_request = request;
  Sign(credentials, options, signed_request);
  ASSERT_FALSE(signed_request.headers.empty());
  EXPECT_EQ(signed_request.headers.back().first, "Authorization");
  EXPECT_EQ(signed_request.headers.back().second,
            std::string(absl::StripTrailingAsciiWhitespace(
                Read(base.string() + ".authz"))));
  // The signed request as the suite writes it: the same headers, in order.
  // The Authorization value is checked against .authz above: the suite's
  // get-vanilla-with-session-token.sreq carries get-vanilla's signature
  // (an erratum; its .authz and .sts agree with each other and with us).
  const SignableRequest expected = ParseRequest(Read(base.string() + ".sreq"));
  ASSERT_EQ(signed_request.headers.size(), expected.headers.size());
  for (size_t i = 0; i < expected.headers.size(); ++i) {
    EXPECT_EQ(signed_request.headers[i].first, expected.headers[i].first);
    if (expected.headers[i].first == "Authorization") continue;
    EXPECT_EQ(absl::StripAsciiWhitespace(signed_request.headers[i].second),
              absl::StripAsciiWhitespace(expected.headers[i].second));
  }
  // The secret key is nowhere in what goes on the wire.
  for (const auto& [n, v] : signed_request.headers) {
    EXPECT_FALSE(absl::StrContains(v, kSecretKey)) << n;
  }
}

INSTANTIATE_TEST_SUITE_P(Suite, SigV4CaseTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           std::string name = info.param.name;
                           for (char& ch : name) {
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return name;
                         });

TEST(SigV4Test, AddsTheDateAndTokenWhenMissing) {
  SignableRequest r;
  r.headers = {{"Host", "ecs.us-east-1.amazonaws.com"},
               {"X-Amz-Target", "AmazonEC2ContainerServiceV20141113.RunTask"}};
  r.body = "{}";
  SigningOptions o;
  o.region = "us-east-1";
  o.service = "ecs";
  o.time = absl::FromUnixSeconds(1440938160);  // 2015-08-30T12:36:00Z
  Credentials c{"AKID", SecretString("secret"), SecretString("tok")};
  Sign(c, o, r);
  ASSERT_EQ(r.headers.size(), 5u);
  EXPECT_EQ(r.headers[2].first, "X-Amz-Date");
  EXPECT_EQ(r.headers[2].second, "20150830T123600Z");
  EXPECT_EQ(r.headers[3].first, "X-Amz-Security-Token");
  EXPECT_THAT(r.headers[4].second,
              ::testing::HasSubstr(
                  "Credential=AKID/20150830/us-east-1/ecs/aws4_request, "
                  "SignedHeaders=host;x-amz-date;x-amz-security-token;"
                  "x-amz-target, Signature="));
}

// Signing keys are derived once per secret, date, region and service and
// kept (a few at a time): a signature never uses another secret's key, or
// another day's, region's or service's, whatever the order and however
// often the cache turns over. Checked against HMAC computed here with
// OpenSSL's own HMAC().
TEST(SigV4Test, EverySignatureUsesItsOwnSigningKey) {
  auto hmac = [](const std::string& key, const std::string& data) {
    unsigned char out[32];
    unsigned int n = 0;
    HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
         reinterpret_cast<const unsigned char*>(data.data()), data.size(),
         out, &n);
    return std::string(reinterpret_cast<char*>(out), n);
  };
  auto expected = [&](const std::string& secret, const std::string& date,
                      const std::string& region, const std::string& service,
                      const std::string& sts) {
    std::string key = hmac("AWS4" + secret, date);
    key = hmac(key, region);
    key = hmac(key, service);
    key = hmac(key, "aws4_request");
    std::string hex;
    for (unsigned char c : hmac(key, sts)) {
      hex += "0123456789abcdef"[c >> 4];
      hex += "0123456789abcdef"[c & 15];
    }
    return hex;
  };
  const std::vector<std::string> secrets = {kSecretKey, "another/secret+key",
                                            std::string(80, 'k')};
  const std::vector<std::vector<std::string>> scopes = {
      {"20150830", "us-east-1", "ecs"},
      {"20150831", "us-east-1", "ecs"},
      {"20150830", "eu-west-1", "ecs"},
      {"20150830", "us-east-1", "logs"}};
  for (int round = 0; round < 3; ++round) {
    for (const std::string& secret : secrets) {
      for (const auto& scope : scopes) {
        const std::string sts = "string to sign " + secret + scope[0];
        EXPECT_EQ(Signature(SecretString(secret), scope[0], scope[1],
                            scope[2], sts),
                  expected(secret, scope[0], scope[1], scope[2], sts))
            << "round " << round << " " << absl::StrJoin(scope, "/");
      }
    }
  }
}

}  // namespace
}  // namespace delegate::aws

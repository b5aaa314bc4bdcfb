#include "manager/harness/token.h"

#include <set>

#include "absl/strings/escaping.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_clock.h"

namespace delegate::harness {
namespace {

using ::delegate::testing::FakeClock;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr const char* kToken = "98d8fedb04c574e68939164bf463e73d";

std::string Base64(const std::string& s) {
  std::string out;
  absl::Base64Escape(s, &out);
  return out;
}

TEST(DelegateTokenHashTest, MatchesTheManagersGoldenVectors) {
  // harness-protocol.md §2.2: Java BigInteger.toString(16) of SHA-256.
  EXPECT_EQ(DelegateTokenHash(SecretString(kToken)),
            "9d5c66162adf75e9258f8e30054d3d507c4e1f65c9511d6104c37d62a76bb04f");
  const std::string stripped =
      DelegateTokenHash(SecretString("ab00000000000000000000000000012c"));
  EXPECT_EQ(stripped.size(), 62u);
  EXPECT_EQ(stripped,
            "427e1637b3abbdf434a0034e6a55d5c809e30fc6d1ac11e701a537a346ca7f");
}

TEST(NormalizeDelegateTokenTest, AcceptsHexAndItsBase64) {
  EXPECT_EQ(NormalizeDelegateToken(SecretString(kToken))->reveal(), kToken);
  EXPECT_EQ(NormalizeDelegateToken(SecretString(Base64(kToken)))->reveal(),
            kToken);
  std::string unpadded = Base64(std::string(kToken) + "\n");
  while (!unpadded.empty() && unpadded.back() == '=') unpadded.pop_back();
  EXPECT_EQ(NormalizeDelegateToken(SecretString(unpadded))->reveal(), kToken);
  EXPECT_EQ(
      NormalizeDelegateToken(SecretString("  " + std::string(kToken) + "\n"))
          ->reveal(),
      kToken);
}

TEST(NormalizeDelegateTokenTest, RefusesAnythingElseWithoutEchoingIt) {
  for (const char* bad : {"", "not-a-token-at-all-zzzzzzzzzzzzz",
                          "98d8fedb04c574e68939164bf463e73", "c3VwM3I="}) {
    absl::StatusOr<SecretString> r =
        NormalizeDelegateToken(SecretString(bad), "DELEGATE_TOKEN");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_THAT(r.status().message(), HasSubstr("DELEGATE_TOKEN"));
    if (*bad) {
      EXPECT_THAT(r.status().message(), Not(HasSubstr(bad)));
    }
  }
}

TEST(RequestTokenTest, IsAJweThatTheTokenDecryptsWithTheHarnessClaims) {
  const absl::Time now = absl::FromUnixSeconds(1'800'000'000);
  absl::StatusOr<std::string> jwe =
      MintRequestToken(SecretString(kToken), "acct-123", now);
  ASSERT_TRUE(jwe.ok()) << jwe.status();
  std::vector<std::string> parts = absl::StrSplit(*jwe, '.');
  ASSERT_EQ(parts.size(), 5u);
  std::string header;
  ASSERT_TRUE(absl::WebSafeBase64Unescape(parts[0], &header));
  EXPECT_EQ(header, R"({"alg":"dir","enc":"A128GCM","typ":"JWT"})");
  EXPECT_EQ(parts[1], "");
  EXPECT_THAT(*jwe, Not(HasSubstr("acct-123")));

  absl::StatusOr<RequestClaims> claims =
      DecryptRequestToken(*jwe, SecretString(kToken));
  ASSERT_TRUE(claims.ok()) << claims.status();
  EXPECT_EQ(claims->sub, "acct-123");
  EXPECT_EQ(claims->iss, "issuer");
  EXPECT_THAT(claims->aud, ElementsAre("audience"));
  EXPECT_EQ(claims->iat, now);
  EXPECT_EQ(claims->exp, now + absl::Minutes(20));
  EXPECT_EQ(claims->jti.size(), 36u);
  EXPECT_EQ(claims->jti[14], '4') << "not a version 4 UUID";
}

TEST(RequestTokenTest, EveryMintHasItsOwnIvAndJti) {
  std::set<std::string> tokens, jtis;
  for (int i = 0; i < 50; ++i) {
    std::string jwe = *MintRequestToken(SecretString(kToken), "a", absl::Now());
    tokens.insert(jwe);
    jtis.insert(DecryptRequestToken(jwe, SecretString(kToken))->jti);
  }
  EXPECT_EQ(tokens.size(), 50u);
  EXPECT_EQ(jtis.size(), 50u);
}

TEST(RequestTokenTest, WrongTokenOrAlteredTokenDoesNotDecrypt) {
  std::string jwe = *MintRequestToken(SecretString(kToken), "a", absl::Now());
  absl::StatusOr<RequestClaims> wrong = DecryptRequestToken(
      jwe, SecretString("ab00000000000000000000000000012c"));
  EXPECT_TRUE(absl::IsUnauthenticated(wrong.status())) << wrong.status();
  // Flip one character of the ciphertext, then of the header.
  std::vector<std::string> parts = absl::StrSplit(jwe, '.');
  parts[3][0] = parts[3][0] == 'A' ? 'B' : 'A';
  EXPECT_FALSE(
      DecryptRequestToken(absl::StrJoin(parts, "."), SecretString(kToken))
          .ok());
  EXPECT_FALSE(DecryptRequestToken("a.b.c", SecretString(kToken)).ok());
  EXPECT_FALSE(DecryptRequestToken("....", SecretString(kToken)).ok());
  for (const absl::Status& s :
       {wrong.status(),
        DecryptRequestToken("x", SecretString(kToken)).status()}) {
    EXPECT_THAT(s.message(), Not(HasSubstr(kToken)));
  }
}

// Found by tests/fuzz/jwe_fuzz.cc: claims were read up to a NUL, so
// "acct\0other" decrypted as "acct".
TEST(RequestTokenTest, ClaimsWithANulDecryptWhole) {
  const std::string account("acct\0other", 10);
  const absl::Time now = absl::FromUnixSeconds(1'800'000'000);
  absl::StatusOr<std::string> jwe =
      MintRequestToken(SecretString(kToken), account, now);
  ASSERT_TRUE(jwe.ok()) << jwe.status();
  absl::StatusOr<RequestClaims> claims =
      DecryptRequestToken(*jwe, SecretString(kToken));
  ASSERT_TRUE(claims.ok()) << claims.status();
  EXPECT_EQ(claims->sub, account);
}

TEST(RequestTokenCacheTest, ReMintsAfterHalfTheLifetime) {
  FakeClock clock;
  RequestTokenCache cache(SecretString(kToken), "acct", clock);
  std::string first = *cache.Get();
  clock.Advance(absl::Minutes(9));
  EXPECT_EQ(*cache.Get(), first);
  clock.Advance(absl::Minutes(1));
  std::string second = *cache.Get();
  EXPECT_NE(second, first);
  absl::StatusOr<RequestClaims> claims =
      DecryptRequestToken(second, SecretString(kToken));
  ASSERT_TRUE(claims.ok());
  EXPECT_EQ(claims->iat, clock.Now());
  EXPECT_EQ(claims->exp, clock.Now() + absl::Minutes(20));
}

}  // namespace
}  // namespace delegate::harness

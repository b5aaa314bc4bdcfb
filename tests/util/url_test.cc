#include "util/url.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace delegate {
namespace {

TEST(RedactUrlTest, PasswordOfTheUserInfoIsStarred) {
  EXPECT_EQ(RedactUrl("http://user:pw@host"), "http://user:***@host");
  EXPECT_EQ(RedactUrl("https://u:p%40ss@h.example:8443/a/b?x=1"),
            "https://u:***@h.example:8443/a/b?x=1");
  // An unencoded "@" in the password: the host follows the last one.
  EXPECT_EQ(RedactUrl("http://u:p@ss@host/x"), "http://u:***@host/x");
  EXPECT_EQ(RedactUrl("u:pw@proxy:3128"), "u:***@proxy:3128");
  EXPECT_EQ(RedactUrl("http://u:@host"), "http://u:***@host");
}

TEST(RedactUrlTest, UrlsWithoutAPasswordAreKept) {
  EXPECT_EQ(RedactUrl("https://app.harness.io"), "https://app.harness.io");
  EXPECT_EQ(RedactUrl("http://user@host:80/p"), "http://user@host:80/p");
  EXPECT_EQ(RedactUrl("http://host:80/p?mail=a:b@c"),
            "http://host:80/p?mail=a:b@c");
  EXPECT_EQ(RedactUrl("grpc://127.0.0.1:7000"), "grpc://127.0.0.1:7000");
  EXPECT_EQ(RedactUrl(""), "");
}

TEST(UrlPasswordTest, IsPercentDecoded) {
  EXPECT_EQ(UrlPassword("http://u:p%40ss%20w@h"), "p@ss w");
  EXPECT_EQ(UrlPassword("http://u:100%@h"), "100%");
  EXPECT_EQ(UrlPassword("http://u@h"), std::nullopt);
  EXPECT_EQ(UrlPassword("http://h/x:y@z"), std::nullopt);
}

}  // namespace
}  // namespace delegate

namespace delegate {
namespace {

TEST(UrlDecodeTest, DecodesEscapesAndKeepsAStrayPercent) {
  EXPECT_EQ(UrlDecode("a%2Fb%20c"), "a/b c");
  EXPECT_EQ(UrlDecode("100%"), "100%");
  EXPECT_EQ(UrlDecode("%zz%4"), "%zz%4");
  EXPECT_EQ(UrlDecode(UrlEncode("p@ss:w/rd ~")), "p@ss:w/rd ~");
}

}  // namespace
}  // namespace delegate

#include "manager/harness/base64.h"

#include <optional>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace delegate::harness {
namespace {

TEST(PayloadsBase64Test, RoundTripsAndAcceptsUnpaddedText) {
  EXPECT_EQ(Base64Encode(R"({"a":1})"), "eyJhIjoxfQ==");
  EXPECT_EQ(Base64Decode("eyJhIjoxfQ=="), R"({"a":1})");
  EXPECT_EQ(Base64Decode("eyJhIjoxfQ"), R"({"a":1})");
  EXPECT_EQ(Base64Decode(""), "");
  EXPECT_EQ(Base64Decode("not base64!"), std::nullopt);
  const std::string binary("\0\xff\x10 x", 5);
  EXPECT_EQ(Base64Decode(Base64Encode(binary)), binary);
}

}  // namespace
}  // namespace delegate::harness

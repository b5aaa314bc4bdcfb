#include "manager/harness/sealed.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace delegate::harness {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(SealKeyTest, WhatIsSealedOpensOnlyUnderTheSameSecretAndPurpose) {
  const std::string text = "{\"password\":\"hunter2\"}";
  const SealKey key = SealKey::Derive("token-a", "journal v1");
  const std::string sealed = key.Seal(text);
  EXPECT_EQ(sealed.size(), text.size() + 28);
  EXPECT_THAT(sealed, Not(HasSubstr("hunter2")));
  // A fresh nonce each time: the same text seals differently.
  EXPECT_NE(key.Seal(text), sealed);
  absl::StatusOr<std::string> opened =
      SealKey::Derive("token-a", "journal v1").Open(sealed);
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(*opened, text);

  for (const SealKey& other : {SealKey::Derive("token-b", "journal v1"),
                               SealKey::Derive("token-a", "journal v2")}) {
    absl::StatusOr<std::string> wrong = other.Open(sealed);
    EXPECT_TRUE(absl::IsDataLoss(wrong.status()));
    EXPECT_THAT(wrong.status().message(), HasSubstr("another key"));
  }
}

TEST(SealKeyTest, WhatIsBoundMustBeGivenAgain) {
  const SealKey key = SealKey::Derive("token", "p");
  const std::string sealed = key.Seal("payload of task-1", "task-1");
  EXPECT_EQ(*key.Open(sealed, "task-1"), "payload of task-1");
  // Filed under another task, it does not open.
  EXPECT_FALSE(key.Open(sealed, "task-2").ok());
  EXPECT_FALSE(key.Open(sealed).ok());
}

TEST(SealKeyTest, AnAlteredOrShortMessageIsRefused) {
  const SealKey key = SealKey::Derive("token", "p");
  std::string sealed = key.Seal("abc");
  for (size_t i = 0; i < sealed.size(); ++i) {
    std::string bad = sealed;
    bad[i] ^= 1;
    EXPECT_FALSE(key.Open(bad).ok()) << "byte " << i;
  }
  EXPECT_FALSE(key.Open(sealed.substr(0, 27)).ok());
  EXPECT_FALSE(key.Open("").ok());
  ASSERT_TRUE(key.Open(key.Seal("")).ok());
  EXPECT_EQ(*key.Open(key.Seal("")), "");
}

}  // namespace
}  // namespace delegate::harness

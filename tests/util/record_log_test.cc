#include "util/record_log.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace delegate {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

class RecordLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = ::testing::TempDir() + "/record-log-" + std::to_string(getpid());
    std::filesystem::remove(path_);
  }
  void TearDown() override { std::filesystem::remove(path_); }

  absl::StatusOr<RecordLog::Opened> Open(uint32_t version = 1) {
    return RecordLog::Open(path_, "TESTLOG!", version);
  }
  std::string Read() {
    std::ifstream in(path_, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  void Write(const std::string& content) {
    std::ofstream(path_, std::ios::binary | std::ios::trunc) << content;
  }

  std::string path_;
};

TEST(Crc32Test, EightBytesAtATimeMatchesOneAtATime) {
  auto bytewise = [](std::string_view data) {
    uint32_t crc = ~0u;
    for (unsigned char b : data) {
      crc ^= b;
      for (int k = 0; k < 8; ++k)
        crc = (crc & 1) ? 0xEDB88320u ^ (crc >> 1) : crc >> 1;
    }
    return ~crc;
  };
  std::string data;
  uint32_t x = 12345;
  for (int i = 0; i < 300; ++i) {
    x = x * 1103515245u + 12345u;
    data.push_back(static_cast<char>(x >> 16));
  }
  for (size_t offset = 0; offset < 9; ++offset) {
    for (size_t n = 0; offset + n <= data.size(); n += 7) {
      const std::string_view piece = std::string_view(data).substr(offset, n);
      ASSERT_EQ(Crc32(piece), bytewise(piece)) << offset << "+" << n;
      // Chained over a split, as the log spool computes a whole log's.
      const size_t half = n / 2;
      ASSERT_EQ(Crc32(piece.substr(half), Crc32(piece.substr(0, half))),
                bytewise(piece));
    }
  }
}

TEST(Crc32Test, MatchesTheStandardCheckValue) {
  EXPECT_EQ(Crc32("123456789"), 0xCBF43926u);
  EXPECT_EQ(Crc32(""), 0u);
  EXPECT_EQ(Crc32("6789", Crc32("12345")), 0xCBF43926u);
}

TEST_F(RecordLogTest, RecordsSurviveReopening) {
  {
    auto opened = Open();
    ASSERT_TRUE(opened.ok()) << opened.status();
    EXPECT_THAT(opened->records, IsEmpty());
    ASSERT_TRUE(opened->log->Append("one").ok());
    ASSERT_TRUE(opened->log->Append(std::string("t\0wo", 4)).ok());
  }
  auto again = Open();
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_THAT(again->records, ElementsAre("one", std::string("t\0wo", 4)));
  EXPECT_EQ(again->torn_bytes, 0u);
}

TEST_F(RecordLogTest, ARecordCutShortAtTheEndIsDroppedAndTheRestKept) {
  {
    auto opened = Open();
    ASSERT_TRUE(opened->log->Append("kept").ok());
    ASSERT_TRUE(opened->log->Append("torn record").ok());
  }
  std::string content = Read();
  Write(content.substr(0, content.size() - 4));  // killed mid-write
  auto again = Open();
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_THAT(again->records, ElementsAre("kept"));
  EXPECT_EQ(again->torn_bytes, 8u + 11u - 4u);
  ASSERT_TRUE(again->log->Append("after").ok());
  again->log.reset();
  EXPECT_THAT(Open()->records, ElementsAre("kept", "after"));
}

TEST_F(RecordLogTest, AZeroFilledTailIsCutNotReadAsRecords) {
  {
    auto opened = Open();
    ASSERT_TRUE(opened->log->Append("kept").ok());
    EXPECT_TRUE(absl::IsInvalidArgument(opened->log->Append("")));
  }
  // What a file system may leave after a power loss: zeros past the end.
  Write(Read() + std::string(64, '\0'));
  auto again = Open();
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_THAT(again->records, ElementsAre("kept"));
  EXPECT_EQ(again->torn_bytes, 64u);
}

TEST_F(RecordLogTest, DamageBeforeTheLastRecordIsRefusedAndTheFileKept) {
  {
    auto opened = Open();
    ASSERT_TRUE(opened->log->Append("first").ok());
    ASSERT_TRUE(opened->log->Append("second").ok());
  }
  std::string content = Read();
  content[8 + 4 + 8 + 1] ^= 0x20;  // a byte of "first"
  Write(content);
  auto damaged = Open();
  ASSERT_FALSE(damaged.ok());
  EXPECT_TRUE(absl::IsDataLoss(damaged.status())) << damaged.status();
  EXPECT_THAT(damaged.status().message(), HasSubstr(path_));
  EXPECT_THAT(damaged.status().message(), HasSubstr("damaged at byte 12"));
  EXPECT_EQ(Read(), content) << "the damaged file was changed";
}

TEST_F(RecordLogTest, ANewerVersionOrAnotherFileIsRefusedByName) {
  { ASSERT_TRUE(Open(3).ok()); }
  auto older = Open(2);
  ASSERT_FALSE(older.ok());
  EXPECT_THAT(older.status().message(), HasSubstr("newer delegate"));
  EXPECT_THAT(older.status().message(), HasSubstr("version 3"));
  Write("{\"not\": \"a journal\"}");
  auto other = Open();
  ASSERT_FALSE(other.ok());
  EXPECT_THAT(other.status().message(), HasSubstr("is not a delegate journal"));
}

TEST_F(RecordLogTest, RewriteKeepsOnlyWhatItIsGiven) {
  auto opened = Open();
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(opened->log->Append("r" + std::to_string(i)).ok());
  }
  ASSERT_TRUE(opened->log->Rewrite({"r8", "r9"}).ok());
  ASSERT_TRUE(opened->log->Append("r10").ok());
  EXPECT_EQ(opened->log->bytes(), Read().size());
  opened->log.reset();
  EXPECT_THAT(Open()->records, ElementsAre("r8", "r9", "r10"));
}

}  // namespace
}  // namespace delegate

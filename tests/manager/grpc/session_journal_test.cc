#include "manager/grpc/session_journal.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace delegate::grpcv1 {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

class SessionJournalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ =
        ::testing::TempDir() + "/session-journal-" + std::to_string(getpid());
    std::filesystem::remove(path_);
  }
  void TearDown() override { std::filesystem::remove(path_); }
  std::unique_ptr<SessionJournal> Open() {
    auto j = SessionJournal::Open(path_);
    EXPECT_TRUE(j.ok()) << j.status();
    return j.ok() ? *std::move(j) : nullptr;
  }
  std::string path_;
};

TEST_F(SessionJournalTest, RunsHeldWhenTheProcessEndedAreInterrupted) {
  {
    auto j = Open();
    j->Dispatched("s1", "lease-1", 1, absl::Seconds(30));
    j->StepStarted("s1", 1, "build");
    j->Retired("s1", 1);
    j->Dispatched("s2", "lease-2", 4, absl::Seconds(30));
    j->StepStarted("s2", 4, "build");
    j->StepStarted("s2", 4, "test");
    j->Dispatched("s3", "lease-3", 7, absl::Seconds(30));
    ASSERT_TRUE(j->Flush().ok());  // one write(2) for all seven
  }                                // killed (nothing was pending)
  auto j = Open();
  ASSERT_THAT(j->interrupted(), SizeIs(2));
  EXPECT_EQ(j->interrupted()[0].stage_id, "s2");
  EXPECT_EQ(j->interrupted()[0].lease_id, "lease-2");
  EXPECT_EQ(j->interrupted()[0].fencing_token, 4u);
  EXPECT_EQ(j->interrupted()[0].step_id, "test");  // the last one started
  EXPECT_EQ(j->interrupted()[0].lease_ms, 30000);
  EXPECT_FALSE(j->interrupted()[0].result.has_value());
  EXPECT_EQ(j->interrupted()[1].stage_id, "s3");
  EXPECT_EQ(j->interrupted()[1].step_id, "");
  // Reported and retired by this process: gone for the next.
  j->Retired("s2", 4);
  j->Retired("s3", 7);
  j.reset();  // a normal end flushes
  EXPECT_THAT(Open()->interrupted(), IsEmpty());
}

TEST_F(SessionJournalTest, AResultNotYetTakenIsKeptWithItsRun) {
  {
    auto j = Open();
    j->Dispatched("s1", "lease-1", 1, absl::Seconds(5));
    j->Finished("s1", 1, std::string("result\0bytes", 12));
  }
  auto j = Open();
  ASSERT_THAT(j->interrupted(), SizeIs(1));
  EXPECT_EQ(j->interrupted()[0].lease_ms, 5000);
  EXPECT_EQ(j->interrupted()[0].result, std::string("result\0bytes", 12));
  j.reset();  // compacted at open: still there
  EXPECT_EQ(Open()->interrupted()[0].result, std::string("result\0bytes", 12));
}

TEST_F(SessionJournalTest, ADispatchUnderAnotherTokenIsAnotherRun) {
  {
    auto j = Open();
    j->Dispatched("s1", "lease-a", 1, absl::Seconds(30));
    j->Dispatched("s1", "lease-b", 2, absl::Seconds(30));
    j->Retired("s1", 1);
  }
  auto j = Open();
  ASSERT_THAT(j->interrupted(), SizeIs(1));
  EXPECT_EQ(j->interrupted()[0].lease_id, "lease-b");
  EXPECT_EQ(j->interrupted()[0].fencing_token, 2u);
}

TEST_F(SessionJournalTest, ThousandsOfStagesKeepTheFileSmall) {
  auto j = Open();
  for (int i = 0; i < 30000; ++i) {  // past one rewrite (64K records)
    const std::string id = "s" + std::to_string(i);
    j->Dispatched(id, "lease", 1, absl::Seconds(30));
    j->StepStarted(id, 1, "build");
    j->Retired(id, 1);
    ASSERT_TRUE(j->Flush().ok());
  }
  j->Dispatched("open", "lease", 1, absl::Seconds(30));
  ASSERT_TRUE(j->Flush().ok());
  // Rewritten once, after 65,536 records, with the one open run: the
  // 24,465 records since then are what is left (about 0.6 MB of 2.2).
  EXPECT_LT(std::filesystem::file_size(path_), 1u << 20);
  j.reset();
  auto again = Open();
  ASSERT_THAT(again->interrupted(), SizeIs(1));
  EXPECT_EQ(again->interrupted()[0].stage_id, "open");
}

TEST_F(SessionJournalTest, AnotherFileIsRefusedAndKept) {
  std::ofstream(path_) << "not a journal at all";
  auto j = SessionJournal::Open(path_);
  ASSERT_FALSE(j.ok());
  EXPECT_THAT(std::string(j.status().message()), HasSubstr(path_));
  EXPECT_TRUE(std::filesystem::exists(path_));
}

}  // namespace
}  // namespace delegate::grpcv1

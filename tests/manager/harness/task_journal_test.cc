#include "manager/harness/task_journal.h"

#include <unistd.h>

#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace delegate::harness {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Pair;

class TaskJournalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = ::testing::TempDir() + "/task-journal-" + std::to_string(getpid());
    std::filesystem::remove(path_);
  }
  void TearDown() override { std::filesystem::remove(path_); }
  std::unique_ptr<TaskJournal> Open(size_t keep = 2000) {
    auto j = TaskJournal::Open(path_, keep);
    EXPECT_TRUE(j.ok()) << j.status();
    return j.ok() ? *std::move(j) : nullptr;
  }
  std::string path_;
};

TEST_F(TaskJournalTest, ATaskRunningWhenTheProcessEndedIsInterrupted) {
  {
    auto j = Open();
    ASSERT_TRUE(j->Started("t1", "local_init", "").ok());
    ASSERT_TRUE(j->Answered("t1", "{init}").ok());
    ASSERT_TRUE(j->Delivered("t1").ok());
    ASSERT_TRUE(j->Started("t2", "local_execute", "build").ok());
  }  // killed while t2 ran
  auto j = Open();
  ASSERT_EQ(j->interrupted().size(), 1u);
  EXPECT_EQ(j->interrupted()[0].task_id, "t2");
  EXPECT_EQ(j->interrupted()[0].type, "local_execute");
  EXPECT_EQ(j->interrupted()[0].step_id, "build");
  EXPECT_THAT(j->undelivered(), IsEmpty());
  EXPECT_EQ(j->AnswerOf("t1"), "{init}");  // a re-delivery is answered
  EXPECT_EQ(j->AnswerOf("t2"), std::nullopt);
}

TEST_F(TaskJournalTest, AnAnswerTheManagerDidNotTakeIsSentAgain) {
  {
    auto j = Open();
    ASSERT_TRUE(j->Started("t1", "local_execute", "s").ok());
    ASSERT_TRUE(j->Answered("t1", "{body}").ok());
  }
  auto j = Open();
  EXPECT_THAT(j->interrupted(), IsEmpty());
  EXPECT_THAT(j->undelivered(), ElementsAre(Pair("t1", "{body}")));
  ASSERT_TRUE(j->Delivered("t1").ok());
  j.reset();
  EXPECT_THAT(Open()->undelivered(), IsEmpty());
}

TEST_F(TaskJournalTest, AnInterruptedTaskAnsweredAfterTheRestartIsDone) {
  {
    auto j = Open();
    ASSERT_TRUE(j->Started("t1", "local_execute", "s").ok());
  }
  {
    auto j = Open();
    ASSERT_EQ(j->interrupted().size(), 1u);
    ASSERT_TRUE(j->Answered("t1", "{restarted}").ok());
    ASSERT_TRUE(j->Delivered("t1").ok());
  }
  auto j = Open();
  EXPECT_THAT(j->interrupted(), IsEmpty());
  EXPECT_EQ(j->AnswerOf("t1"), "{restarted}");
}

TEST_F(TaskJournalTest, OnlyTheNewestDeliveredAnswersAreKept) {
  {
    auto j = Open(5);
    for (int i = 0; i < 100; ++i) {
      const std::string id = "t" + std::to_string(i);
      ASSERT_TRUE(j->Started(id, "local_execute", "s").ok());
      ASSERT_TRUE(j->Answered(id, "{}").ok());
      ASSERT_TRUE(j->Delivered(id).ok());
    }
  }
  auto j = Open(5);
  EXPECT_EQ(j->AnswerOf("t0"), std::nullopt);
  EXPECT_EQ(j->AnswerOf("t99"), "{}");
  EXPECT_EQ(j->AnswerOf("t95"), "{}");
  EXPECT_LT(std::filesystem::file_size(path_), 1000u) << "not compacted";
}

}  // namespace
}  // namespace delegate::harness

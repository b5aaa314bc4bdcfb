#include "manager/harness/task_journal.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace delegate::harness {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
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

TEST_F(TaskJournalTest, AnOpenStageIsRememberedWithItsInitUntilItsCleanup) {
  {
    auto j = Open();
    ASSERT_TRUE(j->Registered("dlg-7").ok());
    ASSERT_TRUE(j->Started("i1", "local_init", "", "stage-a", "INIT-A").ok());
    ASSERT_TRUE(j->StageOpened("stage-a", "i1").ok());
    ASSERT_TRUE(j->Answered("i1", "{ready}").ok());
    ASSERT_TRUE(j->Delivered("i1").ok());
    ASSERT_TRUE(
        j->Started("e1", "local_execute", "s1", "stage-a", "EXEC-1").ok());
    ASSERT_TRUE(j->Answered("e1", "{done}").ok());
    ASSERT_TRUE(j->Delivered("e1").ok());
    // A second stage whose init failed (no StageOpened): nothing to resume.
    ASSERT_TRUE(j->Started("i2", "local_init", "", "stage-b", "INIT-B").ok());
    ASSERT_TRUE(j->Answered("i2", "{failed}").ok());
    // Killed while step s2 of stage-a ran.
    ASSERT_TRUE(
        j->Started("e2", "local_execute", "s2", "stage-a", "EXEC-2").ok());
  }
  auto j = Open();
  EXPECT_EQ(j->delegate_id(), "dlg-7");
  ASSERT_EQ(j->open_stages().size(), 1u);
  EXPECT_EQ(j->open_stages()[0].key, "stage-a");
  EXPECT_EQ(j->open_stages()[0].init_task_id, "i1");
  EXPECT_EQ(j->open_stages()[0].init_payload, "INIT-A");
  ASSERT_EQ(j->interrupted().size(), 1u);
  EXPECT_EQ(j->interrupted()[0].task_id, "e2");
  EXPECT_EQ(j->interrupted()[0].stage_key, "stage-a");
  EXPECT_EQ(j->interrupted()[0].payload, "EXEC-2");
  // Answered payloads are not kept: only what a resume needs is.
  std::string file;
  {
    std::ifstream in(path_, std::ios::binary);
    file.assign(std::istreambuf_iterator<char>(in), {});
  }
  EXPECT_THAT(file, HasSubstr("INIT-A"));
  EXPECT_THAT(file, HasSubstr("EXEC-2"));
  EXPECT_THAT(file, Not(HasSubstr("EXEC-1")));
  EXPECT_THAT(file, Not(HasSubstr("INIT-B")));

  // The step is answered, and the cleanup starts: the stage is closed.
  ASSERT_TRUE(j->Answered("e2", "{reattached}").ok());
  ASSERT_TRUE(j->Started("c1", "local_cleanup", "", "stage-a", "CLEAN").ok());
  j.reset();
  j = Open();
  EXPECT_THAT(j->open_stages(), IsEmpty());
  ASSERT_EQ(j->interrupted().size(), 1u);  // the cleanup
  EXPECT_EQ(j->interrupted()[0].type, "local_cleanup");
  EXPECT_EQ(j->delegate_id(), "dlg-7");
}

TEST_F(TaskJournalTest, AnOpenStagesInitOutlivesTheAnswersPastTheLimit) {
  {
    auto j = Open(5);
    ASSERT_TRUE(j->Started("i1", "local_init", "", "stage-a", "INIT").ok());
    ASSERT_TRUE(j->StageOpened("stage-a", "i1").ok());
    ASSERT_TRUE(j->Answered("i1", "{ready}").ok());
    ASSERT_TRUE(j->Delivered("i1").ok());
    for (int i = 0; i < 100; ++i) {
      const std::string id = "t" + std::to_string(i);
      ASSERT_TRUE(j->Started(id, "local_execute", "s", "stage-a", "P").ok());
      ASSERT_TRUE(j->Answered(id, "{}").ok());
      ASSERT_TRUE(j->Delivered(id).ok());
    }
  }
  auto j = Open(5);
  ASSERT_EQ(j->open_stages().size(), 1u);
  EXPECT_EQ(j->open_stages()[0].init_payload, "INIT");
  EXPECT_EQ(j->AnswerOf("t0"), std::nullopt);
}

TEST_F(TaskJournalTest, ARunningStepsDeliveredLinesSurviveCompaction) {
  {
    auto j = Open(5);
    ASSERT_TRUE(j->Started("i1", "local_init", "", "k", "INIT").ok());
    ASSERT_TRUE(j->StageOpened("k", "i1").ok());
    ASSERT_TRUE(j->Answered("i1", "{ready}").ok());
    ASSERT_TRUE(j->Started("e1", "local_execute", "s", "k", "EXEC").ok());
    ASSERT_TRUE(j->LogLinesHandled("e1", 10).ok());
    ASSERT_TRUE(j->LogLinesHandled("e1", 25).ok());
    // Enough other tasks for compactions meanwhile.
    for (int i = 0; i < 100; ++i) {
      const std::string id = "t" + std::to_string(i);
      ASSERT_TRUE(j->Started(id, "secret/static", "").ok());
      ASSERT_TRUE(j->Answered(id, "{}").ok());
      ASSERT_TRUE(j->Delivered(id).ok());
    }
  }
  for (int restart = 0; restart < 2; ++restart) {  // rewritten at each open
    auto j = Open(5);
    ASSERT_EQ(j->interrupted().size(), 1u);
    EXPECT_EQ(j->interrupted()[0].log_lines, 25u);
    EXPECT_EQ(j->interrupted()[0].payload, "EXEC");
    ASSERT_EQ(j->open_stages().size(), 1u);
  }
}

TEST_F(TaskJournalTest, AReopenedKeyStaysOpenThroughCompaction) {
  {
    auto j = Open();
    // A first init of the key fails its setup (no stage opened) and its
    // cleanup comes; the retried init opens the stage.
    ASSERT_TRUE(j->Started("i1", "local_init", "", "k", "A").ok());
    ASSERT_TRUE(j->Answered("i1", "{failed}").ok());
    ASSERT_TRUE(j->Started("c1", "local_cleanup", "", "k", "").ok());
    ASSERT_TRUE(j->Answered("c1", "{}").ok());
    ASSERT_TRUE(j->Started("i2", "local_init", "", "k", "B").ok());
    ASSERT_TRUE(j->StageOpened("k", "i2").ok());
    ASSERT_TRUE(j->Answered("i2", "{ready}").ok());
  }
  for (int restart = 0; restart < 3; ++restart) {
    auto j = Open();
    ASSERT_EQ(j->open_stages().size(), 1u) << "restart " << restart;
    EXPECT_EQ(j->open_stages()[0].init_task_id, "i2");
    EXPECT_EQ(j->open_stages()[0].init_payload, "B");
  }
}

TEST_F(TaskJournalTest, AStageThatEndedWithoutItsCleanupIsClosed) {
  {
    auto j = Open();
    ASSERT_TRUE(j->Started("i1", "local_init", "", "k", "SECRET").ok());
    ASSERT_TRUE(j->StageOpened("k", "i1").ok());
    ASSERT_TRUE(j->Answered("i1", "{ready}").ok());
    // Another init's stage of the same key does not close this one.
    ASSERT_TRUE(j->StageClosed("k", "i0").ok());
  }
  {
    auto j = Open();
    ASSERT_EQ(j->open_stages().size(), 1u);
    // It idled out, or was abandoned: no local_cleanup came.
    ASSERT_TRUE(j->StageClosed("k", "i1").ok());
  }
  auto j = Open();
  EXPECT_THAT(j->open_stages(), IsEmpty());
  std::string file;
  {
    std::ifstream in(path_, std::ios::binary);
    file.assign(std::istreambuf_iterator<char>(in), {});
  }
  EXPECT_THAT(file, Not(HasSubstr("SECRET"))) << "the init's payload is kept";
}

TEST_F(TaskJournalTest, AVersionOneJournalIsReadAsItIs) {
  {
    // What a delegate before task payloads wrote: 'S' with three fields.
    auto opened = RecordLog::Open(path_, "LDHTJRNL", 1);
    ASSERT_TRUE(opened.ok()) << opened.status();
    ASSERT_TRUE(opened->log
                    ->Append(std::vector<std::string>{
                        EncodeFields('S', {"t1", "local_execute", "build"})})
                    .ok());
  }
  auto j = Open();
  ASSERT_EQ(j->interrupted().size(), 1u);
  EXPECT_EQ(j->interrupted()[0].step_id, "build");
  EXPECT_EQ(j->interrupted()[0].payload, "");
  EXPECT_THAT(j->open_stages(), IsEmpty());
}

}  // namespace
}  // namespace delegate::harness

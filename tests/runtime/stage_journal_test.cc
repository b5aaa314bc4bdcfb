#include "runtime/stage_journal.h"

#include <string>

#include "absl/time/time.h"
#include "delegate/result.h"
#include "gtest/gtest.h"

namespace delegate::runtime {
namespace {

StageResult Succeeded() {
  StageResult result;
  result.task_id = "t1";
  result.stage = "s";
  result.status = StepStatus::kSuccess;
  return result;
}

// The runtime shuts down just after a stage finished during the drain: a
// watcher that had not read the last events yet still gets them, to the end.
TEST(StageJournalTest, ClosedJournalStillHandsOutWhatItRecorded) {
  StageJournal journal("t1", "s", 100, [](const StageJournal*) {});
  journal.Started("host", "d1");
  journal.Finished(Succeeded());
  journal.Close();
  StageJournal::Batch batch =
      journal.Read(0, /*skip_logs=*/false, 100, absl::Seconds(5));
  ASSERT_EQ(batch.events.size(), 2u);
  EXPECT_TRUE(batch.events.back().has_stage_finished());
  EXPECT_TRUE(batch.done);
  EXPECT_FALSE(batch.closed);
}

TEST(StageJournalTest, ClosedJournalWithNothingLeftAnswersClosedAtOnce) {
  StageJournal journal("t1", "s", 100, [](const StageJournal*) {});
  journal.Started("host", "d1");
  StageJournal::Batch first =
      journal.Read(0, /*skip_logs=*/false, 100, absl::Seconds(5));
  ASSERT_EQ(first.events.size(), 1u);
  journal.Close();
  // Would wait the whole minute if Close did not answer.
  StageJournal::Batch next =
      journal.Read(first.after, /*skip_logs=*/false, 100, absl::Minutes(1));
  EXPECT_TRUE(next.events.empty());
  EXPECT_FALSE(next.done);
  EXPECT_TRUE(next.closed);
}

}  // namespace
}  // namespace delegate::runtime

#include "manager/harness/answer_cache.h"

#include <optional>
#include <string>

#include "gtest/gtest.h"
#include "manager/harness/task_responses.h"
#include "tests/fakes/fake_clock.h"

namespace delegate::harness {
namespace {

using ::delegate::testing::FakeClock;
using Listing = AnswerCache::Listing;

TEST(HarnessAnswerCacheTest, ResendAfterIsThreePollsAndAtLeastTenSeconds) {
  EXPECT_EQ(AnswerCache::ResendAfter(absl::Seconds(1)), absl::Seconds(10));
  EXPECT_EQ(AnswerCache::ResendAfter(absl::Seconds(5)), absl::Seconds(15));
}

TEST(HarnessAnswerCacheTest, ARedeliveryGetsTheFirstAnswerAgain) {
  FakeClock clock;
  AnswerCache cache(clock, absl::Seconds(10));
  EXPECT_EQ(cache.Find("t1"), std::nullopt);
  EXPECT_EQ(cache.Classify("t1"), Listing::kNew);
  const std::string ok = TaskResponseBody("t1", "local_execute", true, "", "");
  cache.Record("t1", ok);
  cache.Record("t1", TaskResponseBody("t1", "local_execute", false, "x", ""));
  EXPECT_EQ(cache.Find("t1"), ok);
}

TEST(HarnessAnswerCacheTest, AListingSoonAfterTheAnswerWasAcceptedIsLeftAlone) {
  FakeClock clock;
  AnswerCache cache(clock, absl::Seconds(10));
  cache.Record("t1", "body");
  // Sent, not yet accepted (the manager was away): listed again, it is sent
  // again at once.
  EXPECT_EQ(cache.Classify("t1"), Listing::kResend);
  cache.Accepted("t1");
  EXPECT_EQ(cache.Classify("t1"), Listing::kJustAnswered);
  clock.Advance(absl::Seconds(10) - absl::Milliseconds(1));
  EXPECT_EQ(cache.Classify("t1"), Listing::kJustAnswered);
  clock.Advance(absl::Milliseconds(1));
  EXPECT_EQ(cache.Classify("t1"), Listing::kResend);
  // Accepted again: the window starts again.
  cache.Accepted("t1");
  EXPECT_EQ(cache.Classify("t1"), Listing::kJustAnswered);
}

TEST(HarnessAnswerCacheTest, AcceptingAnUnknownTaskKeepsNothing) {
  FakeClock clock;
  AnswerCache cache(clock, absl::Seconds(10));
  cache.Accepted("t1");
  EXPECT_EQ(cache.Find("t1"), std::nullopt);
  EXPECT_EQ(cache.Classify("t1"), Listing::kNew);
}

TEST(HarnessAnswerCacheTest, TheOldestAnswerLeavesAFullWindow) {
  FakeClock clock;
  AnswerCache cache(clock, absl::Seconds(10), /*window=*/2);
  cache.Record("t1", "b1");
  cache.Record("t2", "b2");
  cache.Record("t1", "again");  // kept already: not a new entry
  EXPECT_EQ(cache.Find("t1"), "b1");
  cache.Record("t3", "b3");
  EXPECT_EQ(cache.Find("t1"), std::nullopt);
  EXPECT_EQ(cache.Classify("t1"), Listing::kNew);
  EXPECT_EQ(cache.Find("t2"), "b2");
  EXPECT_EQ(cache.Find("t3"), "b3");
}

}  // namespace
}  // namespace delegate::harness

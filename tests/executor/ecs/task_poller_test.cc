// The DescribeTasks poller, with a describe function in place of ECS: calls
// of at most 100 tasks, a version per change, waits that end at a change,
// and backing off while the calls fail.
#include "executor/ecs/task_poller.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace delegate::ecs {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

std::vector<std::string> Arns(int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(
        absl::StrCat("arn:aws:ecs:us-east-1:123456789012:task/ci/", 1000 + i));
  }
  return out;
}

// A stand-in for DescribeTasks: every task has `status`; each call is
// recorded.
class FakeDescribe {
 public:
  TaskPoller::Describe Function() {
    return [this](const std::vector<std::string>& arns)
               -> absl::StatusOr<TaskStates> {
      absl::MutexLock lock(&mu_);
      calls_.push_back(arns);
      if (!fail_.ok()) return fail_;
      TaskStates out;
      for (const std::string& arn : arns) out[arn].last_status = status_;
      return out;
    };
  }
  void SetStatus(std::string status) {
    absl::MutexLock lock(&mu_);
    status_ = std::move(status);
  }
  void SetFailure(absl::Status status) {
    absl::MutexLock lock(&mu_);
    fail_ = std::move(status);
  }
  std::vector<std::vector<std::string>> calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }

 private:
  absl::Mutex mu_;
  std::string status_ ABSL_GUARDED_BY(mu_) = "PENDING";
  absl::Status fail_ ABSL_GUARDED_BY(mu_);
  std::vector<std::vector<std::string>> calls_ ABSL_GUARDED_BY(mu_);
};

TEST(ChunksTest, CutsAtTheLimit) {
  std::vector<std::vector<std::string>> chunks =
      Chunks({"a", "b", "c", "d", "e"}, 2);
  EXPECT_THAT(chunks, ElementsAre(ElementsAre("a", "b"), ElementsAre("c", "d"),
                                  ElementsAre("e")));
  EXPECT_THAT(Chunks({}, 100), IsEmpty());
  EXPECT_THAT(Chunks({"a", "b"}, 2), ElementsAre(ElementsAre("a", "b")));
}

TEST(TaskPollerTest, DescribesEveryWatchedTaskAHundredAtATime) {
  FakeDescribe describe;
  // Long enough for every Watch below to come before the first round.
  TaskPoller poller(describe.Function(), absl::Milliseconds(200));
  const std::vector<std::string> arns = Arns(250);
  for (const std::string& arn : arns) poller.Watch(arn);
  for (const std::string& arn : arns) {
    EXPECT_EQ(poller.WaitForChange(arn, 0, absl::Seconds(30)).last_status,
              "PENDING")
        << arn;
  }
  std::vector<std::vector<std::string>> calls = describe.calls();
  ASSERT_GE(calls.size(), 3u);
  EXPECT_EQ(calls[0].size(), 100u);
  EXPECT_EQ(calls[1].size(), 100u);
  EXPECT_EQ(calls[2].size(), 50u);
  std::vector<std::string> first_round;
  for (int i = 0; i < 3; ++i) {
    first_round.insert(first_round.end(), calls[i].begin(), calls[i].end());
  }
  EXPECT_EQ(first_round, arns);  // the map's order: by ARN
}

TEST(TaskPollerTest, AWaitEndsAtAChangeAndOnlyThen) {
  FakeDescribe describe;
  TaskPoller poller(describe.Function(), absl::Milliseconds(5));
  const std::string arn = Arns(1)[0];
  poller.Watch(arn);
  TaskState s = poller.WaitForChange(arn, 0, absl::Seconds(30));
  EXPECT_EQ(s.version, 1u);
  EXPECT_EQ(s.last_status, "PENDING");
  // The same answer again is no change: the wait runs out.
  s = poller.WaitForChange(arn, s.version, absl::Milliseconds(50));
  EXPECT_EQ(s.version, 1u);
  describe.SetStatus("RUNNING");
  s = poller.WaitForChange(arn, s.version, absl::Seconds(30));
  EXPECT_EQ(s.version, 2u);
  EXPECT_EQ(s.last_status, "RUNNING");
  poller.Unwatch(arn);
  // Not watched: an empty state at once.
  const absl::Time start = absl::Now();
  s = poller.WaitForChange(arn, 2, absl::Seconds(30));
  EXPECT_EQ(s.version, 0u);
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

TEST(TaskPollerTest, BacksOffWhileDescribeFails) {
  FakeDescribe describe;
  describe.SetFailure(absl::UnavailableError("no connection"));
  TaskPoller poller(describe.Function(), absl::Milliseconds(10));
  const std::string arn = Arns(1)[0];
  poller.Watch(arn);
  // Without backing off, about 40 calls; with it, 10 + 20 + 40 + 80 + 160 ms
  // of waits fill the time.
  EXPECT_EQ(poller.WaitForChange(arn, 0, absl::Milliseconds(400)).version, 0u);
  EXPECT_LE(describe.calls().size(), 8u);
  describe.SetFailure(absl::OkStatus());
  EXPECT_EQ(poller.WaitForChange(arn, 0, absl::Seconds(30)).last_status,
            "PENDING");
}

}  // namespace
}  // namespace delegate::ecs

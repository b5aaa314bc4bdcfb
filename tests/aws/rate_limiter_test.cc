// The token bucket that keeps the CloudWatch Logs calls under their quotas:
// spacing at the rate, the burst after an idle spell, and many threads.
#include "aws/rate_limiter.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_clock.h"

namespace delegate::aws {
namespace {

TEST(RateLimiterTest, SpacesCallsAtTheRateFromTheFirst) {
  testing::FakeClock clock;
  RateLimiter limiter(5, clock);
  const absl::Time start = clock.Now();
  for (int i = 0; i < 10; ++i) limiter.Acquire();
  // The first at once, then one every 0.2 s.
  const absl::Duration took = clock.Now() - start;
  EXPECT_GE(took, absl::Milliseconds(1799));
  EXPECT_LE(took, absl::Milliseconds(1801));
}

TEST(RateLimiterTest, AnIdleBucketFillsToTheBurstAndNoFurther) {
  testing::FakeClock clock;
  RateLimiter limiter(5, clock);
  clock.Advance(absl::Minutes(1));
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(limiter.TryAcquire()) << i;
  EXPECT_FALSE(limiter.TryAcquire());
  clock.Advance(absl::Milliseconds(200));
  EXPECT_TRUE(limiter.TryAcquire());
  EXPECT_FALSE(limiter.TryAcquire());
}

TEST(RateLimiterTest, TryAcquireNeverSleeps) {
  testing::FakeClock clock;
  RateLimiter limiter(1, clock);
  const absl::Time start = clock.Now();
  EXPECT_TRUE(limiter.TryAcquire());
  for (int i = 0; i < 100; ++i) EXPECT_FALSE(limiter.TryAcquire());
  EXPECT_EQ(clock.Now(), start);
}

TEST(RateLimiterTest, SlowRatesHaveABurstOfOne) {
  testing::FakeClock clock;
  RateLimiter limiter(0.5, clock);
  clock.Advance(absl::Hours(1));
  EXPECT_TRUE(limiter.TryAcquire());
  EXPECT_FALSE(limiter.TryAcquire());
  const absl::Time start = clock.Now();
  limiter.Acquire();
  EXPECT_EQ(clock.Now() - start, absl::Seconds(2));
}

TEST(RateLimiterTest, ZeroMeansNoLimit) {
  testing::FakeClock clock;
  RateLimiter limiter(0, clock);
  const absl::Time start = clock.Now();
  for (int i = 0; i < 1000; ++i) limiter.Acquire();
  EXPECT_TRUE(limiter.TryAcquire());
  EXPECT_EQ(clock.Now(), start);
}

TEST(RateLimiterTest, ManyThreadsShareTheRateOnTheRealClock) {
  RateLimiter limiter(400, Clock::Real());
  std::atomic<int> acquired{0};
  const absl::Time start = absl::Now();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        limiter.Acquire();
        ++acquired;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(acquired.load(), 200);
  // 199 tokens after the first at 400/s.
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(495));
}

}  // namespace
}  // namespace delegate::aws

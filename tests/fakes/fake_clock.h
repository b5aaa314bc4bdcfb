// A Clock that only moves when told to, or when something sleeps on it.
#ifndef DELEGATE_TESTS_FAKES_FAKE_CLOCK_H_
#define DELEGATE_TESTS_FAKES_FAKE_CLOCK_H_

#include "absl/synchronization/mutex.h"
#include "delegate/clock.h"

namespace delegate::testing {

class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1'800'000'000))
      : now_(start) {}
  absl::Time Now() override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  // Sleeping moves the clock at once: tests of timeouts take no real time.
  void SleepFor(absl::Duration d) override { Advance(d); }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

 private:
  absl::Mutex mu_;
  absl::Time now_;
};

}  // namespace delegate::testing

#endif  // DELEGATE_TESTS_FAKES_FAKE_CLOCK_H_

// A client-side token bucket, so that a delegate stays under an AWS API's
// rate limit (CreateLogGroup 5/s, CreateLogStream 50/s, ...) instead of
// finding it through ThrottlingException answers and backoff.
#ifndef DELEGATE_AWS_RATE_LIMITER_H_
#define DELEGATE_AWS_RATE_LIMITER_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "delegate/clock.h"

namespace delegate::aws {

// Tokens come back at `per_second` up to a burst of max(1, per_second). The
// bucket starts with one token, not full: a process that starts (or
// restarts) and makes many calls at once is spaced at the rate from its
// first call, since other clients of the same account may be using the
// burst. It fills to the burst while idle. `per_second` <= 0 means no
// limit. Thread-safe; waiters are served in the order they arrived.
// REQUIRES: `clock` outlives the limiter.
class RateLimiter {
 public:
  RateLimiter(double per_second, Clock& clock);
  RateLimiter(const RateLimiter&) = delete;
  RateLimiter& operator=(const RateLimiter&) = delete;

  // Takes a token, sleeping on the clock (outside any lock) until the one it
  // reserved is due.
  void Acquire() ABSL_LOCKS_EXCLUDED(mu_);
  // Takes a token if one is free now; never sleeps.
  bool TryAcquire() ABSL_LOCKS_EXCLUDED(mu_);

  double per_second() const { return rate_; }

 private:
  void Refill(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const double rate_;
  const double burst_;
  Clock& clock_;
  absl::Mutex mu_;
  // Negative while callers wait: each waiter holds a reservation.
  double tokens_ ABSL_GUARDED_BY(mu_) = 1;
  absl::Time last_ ABSL_GUARDED_BY(mu_);
};

}  // namespace delegate::aws

#endif  // DELEGATE_AWS_RATE_LIMITER_H_

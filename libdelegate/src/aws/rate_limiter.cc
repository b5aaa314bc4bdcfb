#include "aws/rate_limiter.h"

#include <algorithm>

namespace delegate::aws {

RateLimiter::RateLimiter(double per_second, Clock& clock)
    : rate_(per_second),
      burst_(std::max(1.0, per_second)),
      clock_(clock),
      last_(clock.Now()) {}

void RateLimiter::Refill(absl::Time now) {
  if (now > last_) {
    tokens_ =
        std::min(burst_, tokens_ + absl::ToDoubleSeconds(now - last_) * rate_);
  }
  // A clock that went back gives nothing and restarts the count from now.
  last_ = now;
}

void RateLimiter::Acquire() {
  if (rate_ <= 0) return;
  absl::Duration wait;
  {
    absl::MutexLock lock(&mu_);
    Refill(clock_.Now());
    tokens_ -= 1;
    if (tokens_ >= 0) return;
    wait = absl::Seconds(-tokens_ / rate_);
  }
  clock_.SleepFor(wait);
}

bool RateLimiter::TryAcquire() {
  if (rate_ <= 0) return true;
  absl::MutexLock lock(&mu_);
  Refill(clock_.Now());
  if (tokens_ < 1) return false;
  tokens_ -= 1;
  return true;
}

}  // namespace delegate::aws

// The passage of time, behind an interface so that timeouts and retries can be
// tested with a clock the test moves by hand.
#ifndef DELEGATE_CLOCK_H_
#define DELEGATE_CLOCK_H_

#include "absl/time/time.h"
#include "delegate/export.h"

namespace delegate {

// REQUIRES: thread-safe.
class DELEGATE_EXPORT Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
  virtual void SleepFor(absl::Duration d) = 0;

  // The wall clock. Never destroyed.
  static Clock& Real();
};

}  // namespace delegate

#endif  // DELEGATE_CLOCK_H_

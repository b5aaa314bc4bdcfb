#include "logs/held_credentials.h"

#include <algorithm>
#include <deque>

#include "absl/synchronization/mutex.h"

namespace delegate::logs {
namespace {

struct Held {
  absl::Mutex mu;
  std::deque<std::string> values ABSL_GUARDED_BY(mu);
};

// Never destroyed: a thread may still fetch credentials during exit.
Held& TheHeld() {
  static Held* const held = new Held;
  return *held;
}

}  // namespace

void AddHeldCredential(const std::string& value) {
  if (value.empty()) return;
  Held& held = TheHeld();
  absl::MutexLock lock(&held.mu);
  if (std::find(held.values.begin(), held.values.end(), value) !=
      held.values.end()) {
    return;
  }
  held.values.push_back(value);
  if (held.values.size() > kMaxHeldCredentials) held.values.pop_front();
}

std::vector<std::string> HeldCredentials() {
  Held& held = TheHeld();
  absl::MutexLock lock(&held.mu);
  return {held.values.begin(), held.values.end()};
}

}  // namespace delegate::logs

// This delegate process among others of the same name: an instance id,
// labelled on what the executors make, and a lock that tells a live
// instance from one that died. Leftovers (after a crash or SIGKILL) are
// found by instance, so two delegates with the same HARNESS_NAME on one
// Docker Engine never remove each other's live containers.
//
// Under the state directory (DELEGATE_STATE_DIR):
//   instance              the id of the `delegate server` that uses it
//   instances/ID.lock     one per instance that ran here; its process holds
//                         an flock on it while it lives
#ifndef DELEGATE_INSTANCE_H_
#define DELEGATE_INSTANCE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "delegate/export.h"

namespace delegate {

class DELEGATE_EXPORT InstanceLease {
 public:
  // `persistent` (a server): the id in STATE_DIR/instance, made at the first
  // start and kept, so that a restarted delegate is the same instance; one
  // process at a time (FailedPrecondition naming DELEGATE_STATE_DIR when
  // another holds it). Otherwise (one `delegate exec`): a fresh id, its lock
  // file removed when the lease ends normally. The directory is created.
  static absl::StatusOr<std::unique_ptr<InstanceLease>> Acquire(
      const std::string& state_dir, bool persistent);
  ~InstanceLease();
  InstanceLease(const InstanceLease&) = delete;
  InstanceLease& operator=(const InstanceLease&) = delete;

  const std::string& id() const { return id_; }

 private:
  InstanceLease(std::string state_dir, std::string id, int lock_fd,
                bool persistent);
  const std::string state_dir_;
  const std::string id_;
  const int lock_fd_;
  const bool persistent_;
};

// The instances recorded under `state_dir` whose process is gone (their lock
// is free): what they left may be removed. An instance recorded elsewhere
// (another machine, another state directory) is never among them.
DELEGATE_EXPORT std::vector<std::string> FindGoneInstances(
    const std::string& state_dir);

// Forgets a gone instance once its leftovers are removed. Does nothing when
// its process holds the lock again.
DELEGATE_EXPORT void ForgetInstance(const std::string& state_dir,
                                    const std::string& id);

}  // namespace delegate

#endif  // DELEGATE_INSTANCE_H_

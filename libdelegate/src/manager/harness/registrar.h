// The delegate's standing with the Harness manager (harness-protocol.md §4):
// what it says about itself, its registration (retried until it succeeds),
// and the heartbeat that keeps it, registering again when the manager has
// forgotten the delegate.
#ifndef DELEGATE_MANAGER_HARNESS_REGISTRAR_H_
#define DELEGATE_MANAGER_HARNESS_REGISTRAR_H_

#include <functional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "delegate/config.h"
#include "delegate/event_log.h"
#include "delegate/metrics.h"
#include "manager/harness/harness_client.h"
#include "manager/harness/registration.h"

namespace delegate::harness {

// The labels that name this runner in metrics: account_id, runner_name.
LabelValues RunnerLabels(const DelegateConfig& config);

// Thread-safe.
class Registrar {
 public:
  static constexpr absl::Duration kHeartbeatInterval = absl::Seconds(10);

  // REQUIRES: `config`, `log` and `metrics` outlive the registrar;
  // `metrics` defines io_harness_runner_error_count and
  // io_harness_runner_heartbeat_failure_count.
  Registrar(const DelegateConfig& config, EventLog& log, Metrics& metrics,
            absl::Duration heartbeat_interval = kHeartbeatInterval);
  Registrar(const Registrar&) = delete;
  Registrar& operator=(const Registrar&) = delete;

  // What register, heartbeat and unregister say about the delegate now;
  // delegate_id is empty until it registered. max_stages is left unset.
  RegisterInfo Info() const;
  std::string delegate_id() const;
  // The id the manager gave an earlier process of this instance: sent with
  // the first register, so that a manager that knows it keeps it (and the
  // stages it runs there). Before Register only.
  void RememberId(std::string delegate_id);
  // Registered, not stopped, and fewer than three heartbeats in a row failed.
  bool InGoodStanding() const;

  // Registers with `client`, retrying retryable errors (each logged and
  // counted) until it succeeds or `stopped` returns true (then the last
  // error is returned). Other errors (Unauthenticated for a refused token)
  // are returned at once.
  absl::Status Register(HarnessClient& client,
                        const std::function<bool()>& stopped);

  // Sends a heartbeat every heartbeat_interval until Stop. When the manager
  // answers that it does not know the delegate and `draining` is false, it
  // registers again (until `draining`); when that gave the delegate a new id,
  // `forgotten` is called: the manager forgot the delegate's stages too.
  void HeartbeatLoop(HarnessClient& client,
                     const std::function<bool()>& draining,
                     const std::function<void()>& forgotten);

  // Makes HeartbeatLoop return, and the delegate no longer in good standing.
  void Stop();

 private:
  const DelegateConfig& config_;
  EventLog& log_;
  Metrics& metrics_;
  const absl::Duration heartbeat_interval_;
  const std::string host_name_;
  const std::string ip_;

  mutable absl::Mutex mu_;
  std::string delegate_id_ ABSL_GUARDED_BY(mu_);
  bool registered_ ABSL_GUARDED_BY(mu_) = false;
  int heartbeat_failures_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace delegate::harness

#endif  // DELEGATE_MANAGER_HARNESS_REGISTRAR_H_

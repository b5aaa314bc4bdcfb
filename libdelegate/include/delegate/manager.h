// A manager connection: where a delegate's stage work comes from and where
// results go (Harness's REST protocol, a gRPC session, or one a host program
// writes). Connections are registered by name, like executors, and the
// delegate server picks one from the --manager URL's scheme.
#ifndef DELEGATE_MANAGER_H_
#define DELEGATE_MANAGER_H_

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "delegate/clock.h"
#include "delegate/config.h"
#include "delegate/event_log.h"
#include "delegate/executor.h"
#include "delegate/export.h"
#include "delegate/log_sink.h"
#include "delegate/metrics.h"
#include "delegate/scheduler.h"

namespace delegate {

// What a connection works with. References outlive the connection.
struct ManagerEnvironment {
  const DelegateConfig& config;
  ExecutorRegistry& executors;
  // The delegate's one scheduler, shared with RuntimeService: MAX_STAGES
  // holds for the whole delegate, and the operator policy is applied there.
  // A connection submits through a StageGroup of its own, and cancels and
  // waits for its own stages before it returns from Run or is destroyed.
  Scheduler& scheduler;
  EventLog& log;
  Metrics& metrics;
  // Where step output goes when no log service takes it.
  LogSink& console;
  Clock& clock;
  // The manager address from --manager (empty: config.manager_url).
  std::string address;
};

class DELEGATE_EXPORT ManagerConnection {
 public:
  virtual ~ManagerConnection() = default;
  // Connects and takes work until a drain has finished (OK) or the
  // connection cannot go on (for example Unauthenticated when the manager
  // refuses the token: retrying would not help). Called once.
  virtual absl::Status Run() = 0;
  // Stops taking new stages, lets the running ones finish, waits
  // config.idle_wait_before_stop, says goodbye to the manager, and makes Run
  // return. Returns at once; thread-safe; idempotent.
  virtual void Drain() = 0;
  // Connected and in good standing with the manager (for /ready).
  virtual bool Ready() const = 0;
  // Called once before Run, before the executors' start-up hooks remove
  // what an earlier process of this instance left: the stages (StageTask
  // ids) Run will resume (StageTask::resume), whose leftovers must stay
  // (ExecutorStartup::resuming). An error (an unreadable journal) is Run's
  // to report; then none.
  virtual std::vector<std::string> StagesToResume() { return {}; }
};

using ManagerFactory =
    std::function<absl::StatusOr<std::unique_ptr<ManagerConnection>>(
        ManagerEnvironment env)>;

// Connections by scheme ("harness", "grpc"). Thread-safe.
class DELEGATE_EXPORT ManagerRegistry {
 public:
  absl::Status Register(std::string scheme, ManagerFactory factory);
  // NotFound naming the registered schemes when none has that name.
  absl::StatusOr<std::unique_ptr<ManagerConnection>> Create(
      std::string_view scheme, ManagerEnvironment env) const;
  std::vector<std::string> Names() const;

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, ManagerFactory> factories_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace delegate

#endif  // DELEGATE_MANAGER_H_

// Python's Server: DelegateServer (server.h) run on a thread of its own,
// as `delegate server` runs it, with start and stop.
#ifndef DELEGATE_PYTHON_SERVER_H_
#define DELEGATE_PYTHON_SERVER_H_

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "delegate/event_log.h"
#include "delegate/executor.h"
#include "delegate/manager.h"
#include "delegate/server.h"
#include "gil.h"
#include "pybind11/pybind11.h"
#include "runtime.h"

namespace delegate::python {

struct ServerOptions {
  RuntimeOptions runtime;  // environment, max_stages, workdir, name
  // manager, runtime_*, start_executors; config, policy and log are filled
  // in by Create.
  DelegateServerOptions server;
  // Overrides HTTPS_BIND: where /health, /ready and /metrics are served.
  std::optional<std::string> ops_bind;
  // The server's event log is kept (events()); also written to stderr.
  bool echo_events = false;
};

// Thread-safe. Every method but RegisterExecutor is called without the GIL.
class Server final : public Closable {
 public:
  static absl::StatusOr<std::shared_ptr<Server>> Create(ServerOptions options);
  // Close(); releases the GIL for that when the caller holds it. (Create's
  // deleter runs it on a thread of its own when the last reference goes on
  // a scheduler worker that runs a Python executor.)
  ~Server() override;

  // A Python executor under `name`. REQUIRES: the GIL.
  absl::Status RegisterExecutor(std::string name, pybind11::object factory);

  // Runs DelegateServer::Run on a thread of its own. FailedPrecondition
  // when called twice.
  absl::Status Start();
  // True once serving (the ops port is bound, and RuntimeService, when
  // asked for, listens) or Run has ended; waits up to `timeout` for it.
  bool WaitStarted(absl::Duration timeout);
  // True once Run has ended, or at once when Start was never called; waits
  // up to `timeout` for it.
  bool WaitEnded(absl::Duration timeout);
  // DelegateServer::Drain: the first lets running stages finish, a second
  // cancels them.
  void Drain();
  // Run's status once it has ended.
  std::optional<absl::Status> ended() const;
  // Drains twice (cancels what runs) and joins Run's thread.
  void Close() override;

  int ops_port() const;
  // RuntimeService's bound address, once it is served ("" before, or
  // without runtime_listen).
  std::string runtime_address() const;
  // The server's event log so far (JSON lines; the last 10,000).
  std::vector<std::string> events() const;

 private:
  explicit Server(ServerOptions options);
  void Event(std::string_view line);

  const ServerOptions options_;
  ExecutorRegistry executors_;
  ManagerRegistry managers_;
  EventLog log_;
  std::unique_ptr<DelegateServer> server_;

  mutable absl::Mutex mu_;
  std::deque<std::string> events_ ABSL_GUARDED_BY(mu_);
  std::string runtime_address_ ABSL_GUARDED_BY(mu_);
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> ended_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;   // set once by Start, joined once by Close
  absl::Mutex join_mu_;  // serializes Close
};

}  // namespace delegate::python

#endif  // DELEGATE_PYTHON_SERVER_H_

// `delegate server` as a library call: serves /health, /ready and /metrics,
// runs the executors' start-up hooks, runs a manager connection and, when
// asked, serves RuntimeService (runtime_service.h), until it is drained. The
// server owns the delegate's one Scheduler: the connection and RuntimeService
// both submit to it, so MAX_STAGES and the operator policy hold for the whole
// delegate. A host program that embeds the runtime builds the same thing from
// its own ExecutorRegistry and ManagerRegistry.
#ifndef DELEGATE_SERVER_H_
#define DELEGATE_SERVER_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "delegate/config.h"
#include "delegate/event_log.h"
#include "delegate/executor.h"
#include "delegate/export.h"
#include "delegate/manager.h"
#include "delegate/metrics.h"
#include "delegate/policy.h"
#include "delegate/runtime_service.h"
#include "delegate/scheduler.h"

namespace delegate {

struct DelegateServerOptions {
  DelegateConfig config;
  OperatorPolicy policy;
  // The manager: "SCHEME://..." picks the connection registered as SCHEME
  // in the ManagerRegistry ("grpc://HOST:PORT"); an http(s) URL, or empty
  // (config.manager_url), the "harness" one; "none": no manager connection
  // at all, only RuntimeService (runtime_listen is then required).
  std::string manager;
  // Serves RuntimeService here ("HOST:PORT" on a loopback address, port 0
  // for a free one, or "unix:PATH"); empty: not served. Its stages share the
  // delegate's MAX_STAGES slots with the manager connection's. The bound
  // address is logged as {"msg":"serving RuntimeService","address":...}.
  std::string runtime_listen;
  // PEM files for RuntimeService; both set: TLS (needed on an address that
  // is not loopback). With runtime_client_ca_file too: mutual TLS.
  std::string runtime_tls_cert_file;
  std::string runtime_tls_key_file;
  std::string runtime_client_ca_file;
  // Runs the executors' start-up hooks (ExecutorRegistry::Start) before
  // connecting: "docker" removes what an earlier, crashed run of this
  // delegate name left on the engine.
  bool start_executors = true;
  // nullptr: EventLog::Stdout().
  EventLog* log = nullptr;
};

class DELEGATE_EXPORT DelegateServer {
 public:
  // REQUIRES: the registries outlive the server.
  DelegateServer(DelegateServerOptions options, ExecutorRegistry& executors,
                 ManagerRegistry& managers);
  ~DelegateServer();
  DelegateServer(const DelegateServer&) = delete;
  DelegateServer& operator=(const DelegateServer&) = delete;

  // Runs until a drain has finished (OK) or the manager connection gives up
  // (its error, such as Unauthenticated for a refused token; RuntimeService
  // then drains too). InvalidArgument naming the option for an unusable
  // runtime_listen, or manager "none" without it. The ops endpoints answer
  // from the start: /health 200 while the process serves, /ready 200 only
  // while the connection is in good standing and RuntimeService (when
  // served) takes stages, /metrics the Prometheus text.
  absl::Status Run();
  // SIGTERM: see ManagerConnection::Drain. RuntimeService answers SubmitStage
  // with UNAVAILABLE and GetHealth with DRAINING, its running stages finish
  // (watchers see them end), then it stops serving. A second call cancels
  // those stages (each is cleaned up). Thread-safe; returns at once; may be
  // called before Run.
  void Drain();
  // The port /health is served on, once Run has started it (0 before).
  int ops_port() const { return ops_port_.load(); }
  Metrics& metrics() { return metrics_; }

 private:
  DelegateServerOptions options_;
  ExecutorRegistry& executors_;
  ManagerRegistry& managers_;
  EventLog& log_;
  Metrics metrics_;
  EventLogSink log_sink_{log_};
  std::atomic<int> ops_port_{0};
  // With runtime_listen: from Run's start to its end.
  absl::Status StartRuntime();
  // Waits for a drain, then drains the runtime and stops serving it.
  void DrainRuntime();

  // Waits are Mutex::Await on these: no condition variable to signal.
  absl::Mutex mu_;
  bool drain_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool drain_forced_ ABSL_GUARDED_BY(mu_) = false;  // a second Drain
  bool runtime_drained_ ABSL_GUARDED_BY(mu_) = false;
  ManagerConnection* connection_ ABSL_GUARDED_BY(mu_) = nullptr;
  // Made by Run, before anything that submits to it, and gone after them.
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<SchedulerStageRunner> runtime_runner_;
  std::unique_ptr<RuntimeServer> runtime_server_;
};

}  // namespace delegate

#endif  // DELEGATE_SERVER_H_

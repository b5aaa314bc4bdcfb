// `delegate server` as a library call: serves /health, /ready and /metrics,
// clears what a crashed run left on Docker, and runs a manager connection
// until it is drained. A host program that embeds the runtime builds the same
// thing from its own ExecutorRegistry and ManagerRegistry.
#ifndef DELEGATE_SERVER_H_
#define DELEGATE_SERVER_H_

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "delegate/builtin_executors.h"
#include "delegate/config.h"
#include "delegate/event_log.h"
#include "delegate/executor.h"
#include "delegate/manager.h"
#include "delegate/metrics.h"
#include "delegate/policy.h"

namespace delegate {

struct DelegateServerOptions {
  DelegateConfig config;
  OperatorPolicy policy;
  // The manager: "SCHEME://..." picks the connection registered as SCHEME
  // in the ManagerRegistry ("grpc://HOST:PORT"); an http(s) URL, or empty
  // (config.manager_url), the "harness" one.
  std::string manager;
  // Removes containers, networks and volumes an earlier run of this
  // delegate name left behind (after a crash) before connecting.
  bool reap_docker_leftovers = true;
  DockerExecutorOptions docker;
  // nullptr: EventLog::Stdout().
  EventLog* log = nullptr;
};

class DelegateServer {
 public:
  // REQUIRES: the registries outlive the server.
  DelegateServer(DelegateServerOptions options, ExecutorRegistry& executors,
                 ManagerRegistry& managers);
  ~DelegateServer();
  DelegateServer(const DelegateServer&) = delete;
  DelegateServer& operator=(const DelegateServer&) = delete;

  // Runs until a drain has finished (OK) or the manager connection gives up
  // (its error, such as Unauthenticated for a refused token). The ops
  // endpoints answer from the start: /health 200 while the process serves,
  // /ready 200 only while the connection is in good standing, /metrics the
  // Prometheus text.
  absl::Status Run();
  // SIGTERM: see ManagerConnection::Drain. Thread-safe; idempotent; may be
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
  std::mutex mu_;
  bool drain_requested_ = false;             // guarded by mu_
  ManagerConnection* connection_ = nullptr;  // guarded by mu_
};

}  // namespace delegate

#endif  // DELEGATE_SERVER_H_

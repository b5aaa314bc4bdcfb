// RuntimeService (proto/delegate/v1/runtime.proto) from the library: how a
// host program, or a controller over a channel, submits stages, watches their
// events and logs, cancels them and reads capacity and health.
//
// The service is written once over an abstract StageRunner, so the same gRPC
// surface fronts a delegate's own scheduler (NewSchedulerStageRunner, what
// `delegate server --runtime-listen ADDR` serves) and a manager that hands the
// stages on to delegates (the reference manager). The service keeps what the
// contract promises on top of the runner: idempotent submits by task_id, a
// sequence-numbered event journal per stage for any number of watchers
// (resuming after after_sequence), and the recently finished stages.
#ifndef DELEGATE_RUNTIME_SERVICE_H_
#define DELEGATE_RUNTIME_SERVICE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "delegate/clock.h"
#include "delegate/executor.h"
#include "delegate/export.h"
#include "delegate/log_sink.h"
#include "delegate/policy.h"
#include "delegate/result.h"
#include "delegate/scheduler.h"
#include "delegate/stage.h"

namespace grpc {
class Service;
}  // namespace grpc

namespace delegate {

// What happens to one stage, told by a StageRunner in this order: Started
// (unless the stage ends while queued), then for each step StepStarted, its
// Log lines and StepFinished, stage-level Log lines (empty step_id) at any
// point, and Finished last, exactly once. Calls for one stage do not overlap.
// Implementations are cheap and never block for long: they run on a stage's
// thread.
class DELEGATE_EXPORT StageEvents {
 public:
  virtual ~StageEvents() = default;
  // The stage left the queue and began initializing on `platform` (the
  // executor's name) of the delegate `delegate_name`.
  virtual void Started(std::string_view platform,
                       std::string_view delegate_name) = 0;
  virtual void StepStarted(std::string_view step_id, std::string_view name) = 0;
  // Also for skipped and cancelled steps.
  virtual void StepFinished(const StepResult& result) = 0;
  // Already masked. line.task_id is the stage's task id.
  virtual void Log(const LogLine& line) = 0;
  virtual void Finished(const StageResult& result) = 0;
};

struct RuntimeCapacity {
  std::optional<uint32_t> max_stages;  // unset: no limit
  uint32_t running = 0;
  uint32_t queued = 0;
  uint64_t completed = 0;
  std::vector<std::string> platforms;
  bool draining = false;
};

struct RuntimeHealth {
  enum class State { kServing, kDraining, kNotServing };
  State state = State::kServing;
  std::string message;  // why not kServing; never a secret
  std::string delegate_name;
};

// Runs stages for RuntimeService. Thread-safe.
class DELEGATE_EXPORT StageRunner {
 public:
  virtual ~StageRunner() = default;
  // Queues the stage; `events` then hears everything until Finished, and is
  // not called at all when Submit fails. Errors: InvalidArgument naming every
  // problem (no executor for the platform, refused by policy), one per line,
  // by its path in the stage ("steps[1].image: ..."; RuntimeService reports
  // it under "stage."), Unavailable while draining, ResourceExhausted when
  // the queue is full. No error holds a secret value. The caller has
  // already made task_id unique.
  virtual absl::Status Submit(std::string task_id, Stage stage,
                              Priority priority,
                              std::shared_ptr<StageEvents> events) = 0;
  // A queued stage finishes CANCELLED at once; a running one has its step
  // stopped, the rest skipped and cleanup run. NotFound when it is neither
  // queued nor running. `reason` ends up in StageResult.error (empty:
  // "cancelled").
  virtual absl::Status Cancel(std::string_view task_id,
                              std::string_view reason) = 0;
  virtual RuntimeCapacity Capacity() const = 0;
  virtual RuntimeHealth Health() const = 0;
};

struct SchedulerStageRunnerOptions {
  // Also receives every log line (the console), or nullptr.
  LogSink* also_log_to = nullptr;
};

// A StageRunner over a Scheduler, which it may share with a manager
// connection (its MAX_STAGES then holds for both). Submit is the scheduler's:
// it checks the stage as `delegate validate` does before it queues it. Log
// lines go to the stage's StageEvents and to also_log_to.
class DELEGATE_EXPORT SchedulerStageRunner : public StageRunner {
 public:
  // REQUIRES: `scheduler` outlives the runner.
  SchedulerStageRunner(Scheduler& scheduler,
                       SchedulerStageRunnerOptions options = {});
  ~SchedulerStageRunner() override;  // Drain(absl::ZeroDuration())

  absl::Status Submit(std::string task_id, Stage stage, Priority priority,
                      std::shared_ptr<StageEvents> events) override;
  absl::Status Cancel(std::string_view task_id,
                      std::string_view reason) override;
  RuntimeCapacity Capacity() const override;
  RuntimeHealth Health() const override;
  // Takes nothing new (Submit answers Unavailable, Health kDraining),
  // cancels its stages that wait for a slot, lets the running ones finish
  // for up to `drain`, then cancels them; returns once every cleanup has
  // run. Other users of the scheduler are not touched. Idempotent.
  void Drain(absl::Duration drain);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

struct RuntimeServiceOptions {
  // Events kept per stage for watchers that join or resume late: the
  // latest, older ones are dropped (a watcher sees the gap in sequence).
  size_t events_per_stage = 10000;
  // Finished stages remembered for SubmitStage idempotency and WatchStage.
  size_t finished_kept = 10000;
};

// The service alone, for a host program that runs its own grpc::Server
// (ServerBuilder::RegisterService). A watch lasts until its stage finishes
// or its client goes: shut that server down with a deadline. REQUIRES:
// `runner` outlives it.
DELEGATE_EXPORT std::unique_ptr<grpc::Service> NewRuntimeService(
    StageRunner& runner, RuntimeServiceOptions options = {});

struct RuntimeServerOptions {
  // "HOST:PORT" (port 0: a free one) or "unix:PATH". Without TLS only a
  // loopback address (127.x.x.x, [::1], localhost) or a Unix socket is
  // taken: requests hold secret values.
  std::string listen = "127.0.0.1:0";
  // PEM files; both set: TLS. With client_ca_file too: mutual TLS.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string client_ca_file;
  RuntimeServiceOptions service;
};

// A grpc::Server that serves RuntimeService over a runner.
class DELEGATE_EXPORT RuntimeServer {
 public:
  // InvalidArgument naming the option when `listen` or the TLS files are
  // unusable; Unavailable when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<RuntimeServer>> Start(
      RuntimeServerOptions options, StageRunner& runner);
  virtual ~RuntimeServer() = default;
  // "127.0.0.1:PORT" as bound (the real port when 0 was asked), or
  // "unix:PATH".
  virtual std::string address() const = 0;
  virtual int port() const = 0;
  // Ends the watch streams (UNAVAILABLE) and stops serving. Idempotent.
  virtual void Shutdown() = 0;
};

}  // namespace delegate

#endif  // DELEGATE_RUNTIME_SERVICE_H_

// The Executor interface: how a stage transaction (init, each step, cleanup)
// runs on one platform. A host program adds a platform by implementing
// Executor and registering a factory under a name; a stage selects it with
// `platform: NAME`.
#ifndef DELEGATE_EXECUTOR_H_
#define DELEGATE_EXECUTOR_H_

#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "delegate/clock.h"
#include "delegate/event_log.h"
#include "delegate/export.h"
#include "delegate/log_sink.h"
#include "delegate/policy.h"
#include "delegate/result.h"
#include "delegate/stage.h"

namespace delegate {

// What an executor gets for the whole stage. References stay valid from
// Initialize until Cleanup returns.
struct StageContext {
  const Stage& stage;          // secrets already substituted in steps
  const std::string& task_id;  // the transaction id; unique per delegate
  const std::string& delegate_name;
  OutputWriter& output;  // stage-level lines (init, cleanup)
  Clock& clock;
  std::stop_token stop;  // cancel or shutdown of the stage
  absl::Time deadline;   // absl::InfiniteFuture() when the stage has none
};

// What an executor gets for one step.
struct StepContext {
  const StageContext& stage;
  // The step to run: secrets substituted, stage env merged under its envs.
  const Step& step;
  size_t index;  // position in stage.steps
  OutputWriter& output;
  // The earlier of the step's and the stage's deadline. The executor stops the
  // step when it passes and returns kTimeout.
  absl::Time deadline;
  // Requested on cancel or shutdown: the executor stops the step promptly
  // and returns kCancelled.
  std::stop_token stop;
  // Set for the step an earlier process of this delegate had started when
  // it stopped (killed, crashed), in a stage resumed with Executor::Resume:
  // the executor re-attaches to what runs it (follows its output from the
  // start, collects its exit and outputs) and never starts it again. Where
  // nothing of it is left to follow (a host process died with the delegate,
  // a container that was never created or is gone), the result is
  // kFailure with an error that says so.
  bool reattach = false;
};

// Why a step must stop now: kCancelled when its stop was requested,
// kTimeout when its deadline has passed on the stage's clock, nullopt while
// it may go on. What an executor polls while a step runs.
DELEGATE_EXPORT std::optional<StepStatus> StopReason(const StepContext& ctx);

// One instance runs one stage: the scheduler calls Validate, then
// Initialize (or Resume), then Execute once per step in order, then Cleanup.
// Cleanup is called exactly once whenever Initialize or Resume was called,
// whatever it or the steps returned, on the same instance and thread. An
// executor instance is used by one thread at a time.
class DELEGATE_EXPORT Executor {
 public:
  Executor() = default;
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;
  // Runs on whichever thread lets the stage go last (a worker, or the one
  // that cancelled it), never under a scheduler lock: it may call the
  // scheduler, and may block (a binding taking its interpreter's lock).
  virtual ~Executor() = default;

  // Checks, without side effects, that this platform can run the stage as
  // written. Returns InvalidArgument naming the field (for example
  // "steps[1].security_context.privileged") and what to do instead.
  virtual absl::Status Validate(const Stage& stage) {
    (void)stage;
    return absl::OkStatus();
  }
  // What this platform accepts in `stage` but does not apply as written,
  // beyond what its registered profile says (StageNotes): one sentence each,
  // naming the field. Said first in the stage's log, and by `delegate
  // validate`. Called only on a stage that Validate accepted.
  virtual std::vector<std::string> Notes(const Stage& stage) {
    (void)stage;
    return {};
  }
  // Creates what the stage needs: workspace, network, volumes.
  virtual absl::Status Initialize(const StageContext& ctx) = 0;
  // Instead of Initialize, for a stage an earlier process of this delegate
  // (the same instance, killed or crashed) had initialized: adopts what that
  // process made for it (found by ctx.task_id, which is the same), so that
  // the stage's next steps see its workspace and volumes, and the step it
  // was running can be re-attached (StepContext::reattach). What is missing
  // and can be made empty without losing a step's work may be made; a
  // workspace that is gone is an error. The default: Unimplemented, and
  // the stage is cleaned up instead of resumed.
  virtual absl::Status Resume(const StageContext& ctx) {
    (void)ctx;
    return absl::UnimplementedError(
        "this platform cannot resume a stage after the delegate restarted");
  }
  // Runs one step. The result's id and duration are filled in by the caller.
  virtual StepResult Execute(const StepContext& ctx) = 0;
  // Removes everything Initialize and the steps created. Must not depend on
  // Initialize having succeeded.
  virtual absl::Status Cleanup(const StageContext& ctx) = 0;
};

using ExecutorFactory = std::function<std::unique_ptr<Executor>()>;

// What an executor's start-up hook is told.
struct ExecutorStartup {
  std::string delegate_name;
  EventLog* log = nullptr;  // never null
  // Stages (StageTask::id) an earlier process of this instance left that
  // the manager connection will resume (StageTask::resume): what they made
  // is kept when the rest of what that process left is removed.
  std::vector<std::string> resuming;
};

// What a platform registers beside its factory.
struct ExecutorTraits {
  // What the platform can run at all (volumes, security contexts, capability
  // names), checked against every stage before anything starts
  // (CheckStagePolicy). nullptr: only the rules common to every platform;
  // Executor::Validate checks the rest. REQUIRES: outlives the registry.
  const PlatformProfile* profile = nullptr;
  // Run once by ExecutorRegistry::Start, before the delegate takes stages:
  // for example removing what a crashed earlier run left behind. It reports
  // through startup.log; its failures are its own to log.
  std::function<void(const ExecutorStartup& startup)> on_start = nullptr;
};

// Executors by platform name. Thread-safe.
class DELEGATE_EXPORT ExecutorRegistry {
 public:
  ExecutorRegistry() = default;
  ExecutorRegistry(const ExecutorRegistry&) = delete;
  ExecutorRegistry& operator=(const ExecutorRegistry&) = delete;

  // AlreadyExists when the name is taken; InvalidArgument for an empty name.
  absl::Status Register(std::string name, ExecutorFactory factory,
                        ExecutorTraits traits = {});
  // A new executor, or nullptr when no factory has that name.
  std::unique_ptr<Executor> Create(std::string_view name) const;
  bool Contains(std::string_view name) const;
  // The platform's profile, or nullptr (unregistered, or registered without
  // one).
  const PlatformProfile* Profile(std::string_view name) const;
  // Sorted.
  std::vector<std::string> Names() const;
  // Runs each on_start hook of the executors registered so far, once each
  // over the registry's life, in the order they were registered.
  void Start(const ExecutorStartup& startup);

 private:
  struct Entry {
    ExecutorFactory factory;
    ExecutorTraits traits;
    size_t order = 0;
    bool started = false;
  };
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
};

// Everything that can be checked before a stage runs: its platform is
// registered, every ${{secrets.ID}} is defined, the volume and security policy
// of the platform and of the operator allow it (CheckStagePolicy with the
// platform's registered profile), and the platform's executor accepts it
// (Executor::Validate). InvalidArgument lists every problem, one per line,
// with the stage's secret values masked. Scheduler::Submit runs the same
// check; this is for checking without running (`delegate validate`). When
// the stage is accepted and `notes` is given, it gets what the platform
// accepts without applying it as written (StageNotes, Executor::Notes).
DELEGATE_EXPORT absl::Status ValidateForPlatform(
    const ExecutorRegistry& registry, const Stage& stage,
    const OperatorPolicy& policy = {},
    std::vector<std::string>* notes = nullptr);

}  // namespace delegate

#endif  // DELEGATE_EXECUTOR_H_

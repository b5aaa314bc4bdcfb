// Python's Runtime: what examples/embed/main.cc builds, kept for many
// stages: the configuration, an ExecutorRegistry with the built-in executors
// (and Python ones), and one Scheduler.
#ifndef DELEGATE_PYTHON_RUNTIME_H_
#define DELEGATE_PYTHON_RUNTIME_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "delegate/config.h"
#include "delegate/console_log_sink.h"
#include "delegate/env.h"
#include "delegate/executor.h"
#include "delegate/policy.h"
#include "delegate/scheduler.h"
#include "delegate/stage.h"
#include "gil.h"
#include "pybind11/pybind11.h"
#include "stage_run.h"

namespace delegate::python {

// Settings on top of the environment's (LoadConfig): unset keeps what the
// environment says.
struct RuntimeOptions {
  std::optional<EnvMap> env;  // nullopt: the process environment
  std::optional<int> max_stages;
  std::optional<std::string> workdir;
  std::optional<std::string> name;
};

// The configuration a Runtime or Server runs with: LoadConfig over `env`
// (nullopt: the process's) and the overrides. InvalidArgument naming the
// variable or the option.
absl::StatusOr<DelegateConfig> MakeConfig(const EnvMap& env,
                                          const RuntimeOptions& options,
                                          ConfigNeed need);

// Thread-safe. Every method but RegisterExecutor is called without the GIL.
class Runtime final : public Closable,
                      public std::enable_shared_from_this<Runtime> {
 public:
  static absl::StatusOr<std::shared_ptr<Runtime>> Create(
      RuntimeOptions options);
  // Shuts the scheduler down (cancelling what still runs); releases the
  // GIL for that when the caller holds it. On a scheduler worker that runs
  // a Python executor (the cyclic GC may collect a Runtime there), which
  // the shutdown would wait for, it shuts down on a thread of its own
  // instead and returns at once.
  ~Runtime() override;

  // A Python executor under `name`. REQUIRES: the GIL.
  absl::Status RegisterExecutor(std::string name, pybind11::object factory);
  // ValidateForPlatform: the check Submit makes.
  absl::Status Validate(const Stage& stage) const;
  // Submits the stage under `task_id` (made up when empty; set to the id
  // used). `keep_lines`: its log lines are kept for Python; `echo`: they
  // are also written to the process's stdout.
  absl::StatusOr<std::shared_ptr<RunState>> Start(Stage stage,
                                                  std::string& task_id,
                                                  bool keep_lines, bool echo);
  absl::Status Cancel(std::string_view task_id);
  // Takes no new stages; lets running ones go on for up to `drain`, then
  // cancels them; returns when every one has been cleaned up.
  void Shutdown(absl::Duration drain);
  void Close() override { Shutdown(absl::ZeroDuration()); }

  SchedulerStats stats() const { return core_->scheduler->stats(); }
  std::vector<std::string> executors() const { return core_->registry.Names(); }
  const DelegateConfig& config() const { return core_->config; }

 private:
  // What runs the stages: kept apart so that it can outlive the Runtime
  // while a thread of its own shuts it down (see ~Runtime). Tracked, so
  // that the atexit hook also closes one whose Runtime is gone.
  struct Core final : public Closable {
    Core(DelegateConfig c, OperatorPolicy p)
        : config(std::move(c)), policy(std::move(p)) {}
    void Close() override { scheduler->Shutdown(absl::ZeroDuration()); }

    const DelegateConfig config;
    const OperatorPolicy policy;
    ExecutorRegistry registry;  // outlives the scheduler
    ConsoleLogSink console{stdout};
    std::unique_ptr<Scheduler> scheduler;
  };

  explicit Runtime(std::shared_ptr<Core> core) : core_(std::move(core)) {}

  std::shared_ptr<Core> core_;
};

}  // namespace delegate::python

#endif  // DELEGATE_PYTHON_RUNTIME_H_

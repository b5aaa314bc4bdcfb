#include "runtime.h"

#include <unistd.h>

#include <atomic>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "delegate/builtins.h"
#include "py_executor.h"

namespace delegate::python {

absl::StatusOr<DelegateConfig> MakeConfig(const EnvMap& env,
                                          const RuntimeOptions& options,
                                          ConfigNeed need) {
  absl::StatusOr<DelegateConfig> config = LoadConfig(env, {}, need);
  if (!config.ok()) return config.status();
  if (options.max_stages) {
    if (*options.max_stages < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("max_stages: expected a positive integer, got ",
                       *options.max_stages));
    }
    config->max_stages = options.max_stages;
  }
  if (options.workdir) config->workdir = *options.workdir;
  if (options.name) {
    if (options.name->empty()) {
      return absl::InvalidArgumentError("name: must not be empty");
    }
    config->name = *options.name;
  }
  return config;
}

absl::StatusOr<std::shared_ptr<Runtime>> Runtime::Create(
    RuntimeOptions options) {
  if (PythonClosing()) {
    return absl::UnavailableError("the interpreter is exiting");
  }
  const EnvMap env = options.env ? *options.env : ProcessEnvironment();
  absl::StatusOr<DelegateConfig> config =
      MakeConfig(env, options, ConfigNeed::kLocal);
  if (!config.ok()) return config.status();
  absl::StatusOr<OperatorPolicy> policy = LoadOperatorPolicy(env);
  if (!policy.ok()) return policy.status();
  auto core = std::make_shared<Core>(*std::move(config), *std::move(policy));
  if (absl::Status s = RegisterBuiltins(core->config, env, core->registry,
                                        /*managers=*/nullptr);
      !s.ok()) {
    return s;
  }
  core->scheduler = std::make_unique<Scheduler>(SchedulerOptions{
      .registry = &core->registry,
      .delegate_name = core->config.name,
      .max_stages = core->config.max_stages,
      .policy = core->policy,
  });
  Track(core);
  return std::shared_ptr<Runtime>(new Runtime(std::move(core)));
}

Runtime::~Runtime() {
  if (!core_) return;
  if (OnExecutorThread()) {
    // Shutdown waits for every worker, this one included: a thread of its
    // own does it, and the Core (with the Python references in its
    // registry, dropped without waiting for the GIL) goes with that thread.
    try {
      std::thread([core = std::move(core_)]() mutable {
        core->Close();
        core.reset();
      }).detach();
    } catch (const std::system_error&) {
      // No thread to be had: the atexit hook closes it (it is tracked).
      new std::shared_ptr<Core>(std::move(core_));  // NOLINT: left behind
    }
    return;
  }
  if (PyGILState_Check()) {
    // The scheduler's lock must not be waited for with the GIL, and a
    // Python executor's cleanup needs the GIL to finish.
    WithoutGil([&] { core_->Close(); });
  } else {
    core_->Close();
  }
}

absl::Status Runtime::RegisterExecutor(std::string name,
                                       pybind11::object factory) {
  return RegisterPythonExecutor(core_->registry, std::move(name),
                                std::move(factory));
}

absl::Status Runtime::Validate(const Stage& stage) const {
  return ValidateForPlatform(core_->registry, stage, core_->policy);
}

absl::StatusOr<std::shared_ptr<RunState>> Runtime::Start(Stage stage,
                                                         std::string& task_id,
                                                         bool keep_lines,
                                                         bool echo) {
  static std::atomic<uint64_t> counter{0};
  if (task_id.empty()) {
    task_id = absl::StrCat(stage.name.empty() ? "stage" : stage.name, "-",
                           getpid(), "-", ++counter);
  }
  auto state = std::make_shared<RunState>(keep_lines);
  StageTask task;
  task.id = task_id;
  task.stage = std::move(stage);
  task.observer =
      std::make_shared<RunObserver>(state, echo ? &core_->console : nullptr);
  if (absl::Status s = core_->scheduler->Submit(std::move(task)); !s.ok()) {
    return s;
  }
  return state;
}

absl::Status Runtime::Cancel(std::string_view task_id) {
  return core_->scheduler->Cancel(task_id);
}

void Runtime::Shutdown(absl::Duration drain) {
  core_->scheduler->Shutdown(drain);
}

}  // namespace delegate::python

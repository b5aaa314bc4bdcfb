#include "runtime.h"

#include <unistd.h>

#include <atomic>
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
  std::shared_ptr<Runtime> runtime(
      new Runtime(*std::move(config), *std::move(policy)));
  if (absl::Status s =
          RegisterBuiltins(runtime->config_, env, runtime->registry_,
                           /*managers=*/nullptr);
      !s.ok()) {
    return s;
  }
  runtime->scheduler_ = std::make_unique<Scheduler>(SchedulerOptions{
      .registry = &runtime->registry_,
      .delegate_name = runtime->config_.name,
      .max_stages = runtime->config_.max_stages,
      .policy = runtime->policy_,
  });
  Track(runtime);
  return runtime;
}

Runtime::~Runtime() {
  if (!scheduler_) return;
  const SchedulerStats now = scheduler_->stats();
  if (now.running + now.queued > 0 && PyGILState_Check()) {
    // A Python executor's cleanup needs the GIL to finish.
    WithoutGil([&] { Close(); });
  } else {
    Close();
  }
}

absl::Status Runtime::RegisterExecutor(std::string name,
                                       pybind11::object factory) {
  return RegisterPythonExecutor(registry_, std::move(name), std::move(factory));
}

absl::Status Runtime::Validate(const Stage& stage) const {
  return ValidateForPlatform(registry_, stage, policy_);
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
      std::make_shared<RunObserver>(state, echo ? &console_ : nullptr);
  if (absl::Status s = scheduler_->Submit(std::move(task)); !s.ok()) {
    return s;
  }
  return state;
}

absl::Status Runtime::Cancel(std::string_view task_id) {
  return scheduler_->Cancel(task_id);
}

void Runtime::Shutdown(absl::Duration drain) { scheduler_->Shutdown(drain); }

}  // namespace delegate::python

// A program that embeds libdelegate: it adds an executor of its own (a dry
// run that prints what each step would do), registers it next to the
// built-in ones, loads a stage file, runs the stage and prints the result.
//
//   embed STAGE.yaml        exit 0 when every step succeeded
#include <cstdio>
#include <memory>
#include <string>

#include "delegate/builtins.h"
#include "delegate/config.h"
#include "delegate/console_log_sink.h"
#include "delegate/executor.h"
#include "delegate/scheduler.h"
#include "delegate/stage_file.h"
#include "delegate/stage_run.h"
#include "delegate/version.h"

// platform: dry-run. Runs nothing: each step says what it would run.
class DryRunExecutor : public delegate::Executor {
 public:
  absl::Status Initialize(const delegate::StageContext& ctx) override {
    ctx.output.SystemLine("dry run of stage " + ctx.stage.name);
    return absl::OkStatus();
  }
  delegate::StepResult Execute(const delegate::StepContext& ctx) override {
    for (const std::string& command : ctx.step.commands) {
      ctx.output.Write(delegate::LogStream::kStdout,
                       "would run: " + command + "\n");
    }
    delegate::StepResult result;  // SUCCESS
    result.exit_code = 0;
    for (const std::string& name : ctx.step.outputs) {
      result.outputs[name] = "(dry run)";
    }
    return result;
  }
  absl::Status Cleanup(const delegate::StageContext&) override {
    return absl::OkStatus();
  }
};

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s STAGE.yaml\n", argv[0]);
    return 2;
  }
  std::printf("libdelegate %s\n", std::string(delegate::Version()).c_str());

  // The delegate's settings from the environment, as `delegate exec` reads
  // them, and every built-in executor next to our own.
  const delegate::EnvMap env = delegate::ProcessEnvironment();
  absl::StatusOr<delegate::DelegateConfig> config =
      delegate::LoadConfig(env, {}, delegate::ConfigNeed::kLocal);
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  delegate::ExecutorRegistry executors;
  absl::Status registered = delegate::RegisterBuiltins(*config, env, executors,
                                                       /*managers=*/nullptr);
  if (registered.ok()) {
    registered = executors.Register(
        "dry-run", [] { return std::make_unique<DryRunExecutor>(); });
  }
  if (!registered.ok()) {
    std::fprintf(stderr, "%s\n", std::string(registered.message()).c_str());
    return 2;
  }

  absl::StatusOr<delegate::Stage> stage = delegate::LoadStageFile(argv[1]);
  if (!stage.ok()) {
    std::fprintf(stderr, "%s\n", std::string(stage.status().message()).c_str());
    return 2;
  }

  delegate::Scheduler scheduler({.registry = &executors,
                                 .delegate_name = config->name,
                                 .max_stages = 4});
  delegate::ConsoleLogSink console(stdout);
  delegate::StageTask task;
  task.id = "embed-1";
  task.stage = *std::move(stage);
  task.observer = delegate::ObserveWith({.log = &console});
  delegate::StageRun run(scheduler, std::move(task));
  if (!run.submitted().ok()) {  // every problem with the stage, one a line
    std::fprintf(stderr, "%s\n", std::string(run.submitted().message()).c_str());
    return 2;
  }
  const delegate::StageResult result = run.Wait();
  std::fputs(delegate::FormatSummary(result).c_str(), stdout);
  std::printf("%s\n", delegate::StageResultToJson(result).c_str());
  return result.status == delegate::StepStatus::kSuccess ? 0 : 1;
}

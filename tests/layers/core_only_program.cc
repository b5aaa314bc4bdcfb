// A program that links only delegate::core, as an embedder that wants the
// scheduler and host steps would: it runs a two-step host stage and prints
// its lines and result. layers.core_only checks that it runs and that its
// binary needs no gRPC, protobuf, curl or OpenSSL.
#include <cstdio>
#include <string>

#include "delegate/console_log_sink.h"
#include "delegate/host_executor.h"
#include "delegate/result.h"
#include "delegate/scheduler.h"
#include "delegate/stage_run.h"

int main() {
  delegate::ExecutorRegistry executors;
  if (absl::Status s = delegate::RegisterHostExecutor(executors, {}); !s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return 1;
  }
  delegate::SchedulerOptions options;
  options.registry = &executors;
  delegate::Scheduler scheduler(options);

  delegate::Stage stage;
  stage.name = "core-only";
  stage.platform = "host";
  delegate::Step hello;
  hello.id = "hello";
  hello.commands = {"echo hello from the core"};
  delegate::Step version;
  version.id = "version";
  version.commands = {"echo VERSION=1.2 >> \"$HARNESS_OUTPUT_FILE\""};
  version.outputs = {"VERSION"};
  stage.steps = {hello, version};

  delegate::ConsoleLogSink console(stdout);
  delegate::StageTask task;
  task.id = "core-only-1";
  task.stage = stage;
  task.observer = delegate::ObserveWith({.log = &console});
  delegate::StageRun run(scheduler, std::move(task));
  if (!run.submitted().ok()) {
    std::fprintf(stderr, "%s\n",
                 std::string(run.submitted().message()).c_str());
    return 2;
  }
  const delegate::StageResult result = run.Wait();
  std::fputs(delegate::StageResultToJson(result).c_str(), stdout);
  std::fputs("\n", stdout);
  return result.status == delegate::StepStatus::kSuccess ? 0 : 1;
}

// The delegate's side of StepRunner (proto/delegate/v1/runner.proto): dials
// the runner of a stage task over TLS with the stage's client certificate
// and runs steps through it.
//
// The runner's own certificate is made by the runner when it starts and is
// not verified: the delegate reaches it at the task's private IP, which AWS
// gives to the task's network interface. What it sends there (the step's
// env, secret values included) is encrypted; what authenticates the caller
// to the runner is the client certificate, whose key never leaves the
// delegate.
#ifndef DELEGATE_RUNNER_STEP_RUNNER_CLIENT_H_
#define DELEGATE_RUNNER_STEP_RUNNER_CLIENT_H_

#include <functional>
#include <map>
#include <memory>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "runner/identity.h"

namespace delegate::runner {

// One step, as the runner runs it.
struct RunnerStep {
  std::string container;  // the step container ("step-1")
  std::string step_id;
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;  // the whole env, secrets included
  std::string working_dir;
  absl::Duration stop_grace = absl::Seconds(10);
  std::vector<std::string> mask;  // secret values
  std::string output_file;        // HARNESS_OUTPUT_FILE, or empty
  std::string container_token;    // the container's DELEGATE_STEP_TOKEN
};

struct RunnerStepEnd {
  int exit_code = 0;  // -1 when signalled or not started
  int signal = 0;
  std::string error;  // why it did not start
  std::map<std::string, std::string> outputs;
  std::string outputs_error;  // why the output file could not be read
  // Stopped by `stop` or at the deadline (the exit fields say how it ended
  // when the runner still told it).
  bool stopped = false;
  bool deadline_passed = false;
};

class StepRunnerClient {
 public:
  // `target` is "IP:PORT". Waits up to `connect_timeout` for the channel and
  // for the runner's answer to GetRunnerStatus, so that a refused
  // certificate shows here (Unauthenticated) rather than at the first step.
  static absl::StatusOr<std::unique_ptr<StepRunnerClient>> Connect(
      const std::string& target, const Identity& identity,
      absl::Duration connect_timeout);
  virtual ~StepRunnerClient() = default;

  // The step containers connected to the runner.
  virtual absl::StatusOr<std::vector<std::string>> Containers() = 0;

  // Runs `step`, each piece of output to `on_output` (stream 1 stdout, 2
  // stderr) as it arrives. `stop` or `deadline` cancel the call, which
  // stops the step (SIGTERM, then SIGKILL after stop_grace). Errors: the
  // runner's (NotFound for a container that never connected, Unavailable
  // when the runner or the step's container is gone).
  virtual absl::StatusOr<RunnerStepEnd> Run(
      const RunnerStep& step,
      const std::function<void(int stream, std::string_view data)>& on_output,
      std::stop_token stop, absl::Time deadline) = 0;

  // Ends the runner, and with it the task.
  virtual absl::Status Shutdown() = 0;
};

}  // namespace delegate::runner

#endif  // DELEGATE_RUNNER_STEP_RUNNER_CLIENT_H_

// The runner of a stage task (`delegate runner`): serves StepRunner
// (proto/delegate/v1/runner.proto) over TLS to the one delegate whose client
// certificate it was started with, and runs each step through the agent of
// its step container (agent_link.h). Each step's output also goes, masked
// and prefixed with the step id, to the runner's own output: on ECS that is
// the awslogs driver's, so CloudWatch Logs keeps the record.
#ifndef DELEGATE_RUNNER_STEP_RUNNER_SERVER_H_
#define DELEGATE_RUNNER_STEP_RUNNER_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace delegate::runner {

struct StepRunnerServerOptions {
  // Where the delegate dials in: "0.0.0.0:9079"; port 0 picks one.
  std::string listen = "0.0.0.0:9079";
  // The SHA-256 of the only client certificate accepted (64 hex digits).
  std::string client_sha256;
  // The Unix socket the step containers' agents connect to.
  std::string agent_socket;
  // How long a step waits for its container's agent to connect.
  absl::Duration agent_wait = absl::Seconds(60);
  // With no call for this long, Wait returns (a task whose delegate is gone
  // does not run for ever).
  absl::Duration idle_timeout = absl::Minutes(30);
  // Where the step output lines go (masked, "[STEP] line"); unset: stdout.
  std::function<void(std::string_view line)> record;
};

class StepRunnerServer {
 public:
  static absl::StatusOr<std::unique_ptr<StepRunnerServer>> Start(
      StepRunnerServerOptions options);
  virtual ~StepRunnerServer() = default;

  virtual int port() const = 0;
  // Blocks until Shutdown was called over the channel, the idle timeout
  // passed, or Stop; then stops serving (running steps are killed).
  virtual void Wait() = 0;
  virtual void Stop() = 0;
};

}  // namespace delegate::runner

#endif  // DELEGATE_RUNNER_STEP_RUNNER_SERVER_H_

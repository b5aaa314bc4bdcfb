// A ProcessLauncher whose processes follow a script on a FakeClock, so that
// executor timeouts and signal escalation are tested without real time.
#ifndef DELEGATE_TESTS_FAKES_SCRIPTED_PROCESS_H_
#define DELEGATE_TESTS_FAKES_SCRIPTED_PROCESS_H_

#include <signal.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "delegate/process.h"
#include "tests/fakes/fake_clock.h"

namespace delegate::testing {

struct ProcessScript {
  std::string output;  // written to stdout at start
  // Fake time until the process exits by itself; InfiniteDuration: never.
  absl::Duration runs_for = absl::ZeroDuration();
  int exit_code = 0;
  bool ignores_sigterm = false;
};

class ScriptedLauncher final : public ProcessLauncher {
 public:
  explicit ScriptedLauncher(FakeClock& clock) : clock_(clock) {}

  void set_script(ProcessScript script) { script_ = std::move(script); }

  absl::StatusOr<std::unique_ptr<Process>> Launch(
      const ProcessSpec& spec, OutputCallback on_output) override {
    specs.push_back(spec);
    if (!script_.output.empty()) on_output(LogStream::kStdout, script_.output);
    return std::unique_ptr<Process>(
        new ScriptedProcess(this, clock_, script_, clock_.Now()));
  }

  std::vector<ProcessSpec> specs;
  std::vector<int> signals;  // every signal sent, in order

 private:
  class ScriptedProcess final : public Process {
   public:
    ScriptedProcess(ScriptedLauncher* owner, FakeClock& clock,
                    ProcessScript script, absl::Time start)
        : owner_(owner), clock_(clock), script_(std::move(script)) {
      if (script_.runs_for != absl::InfiniteDuration()) {
        exit_at_ = start + script_.runs_for;
      }
    }
    pid_t pid() const override { return 4242; }
    std::optional<ExitInfo> Wait(absl::Duration timeout) override {
      {
        absl::MutexLock lock(&mu_);
        if (interrupted_) {
          interrupted_ = false;
          return std::nullopt;
        }
      }
      if (exit_) return exit_;
      const absl::Time now = clock_.Now();
      if (exit_at_ <= now + timeout) {
        if (exit_at_ > now) clock_.Advance(exit_at_ - now);
        exit_ = ExitInfo{script_.exit_code, 0};
        return exit_;
      }
      if (timeout != absl::InfiniteDuration()) clock_.Advance(timeout);
      return std::nullopt;
    }
    void Signal(int sig) override {
      owner_->signals.push_back(sig);
      if (exit_) return;
      if (sig == SIGKILL || (sig == SIGTERM && !script_.ignores_sigterm)) {
        exit_ = ExitInfo{-1, sig};
      }
    }
    void Interrupt() override {
      absl::MutexLock lock(&mu_);
      interrupted_ = true;
    }

   private:
    ScriptedLauncher* owner_;
    FakeClock& clock_;
    ProcessScript script_;
    absl::Time exit_at_ = absl::InfiniteFuture();
    std::optional<ExitInfo> exit_;
    absl::Mutex mu_;
    bool interrupted_ = false;
  };

  FakeClock& clock_;
  ProcessScript script_;
};

}  // namespace delegate::testing

#endif  // DELEGATE_TESTS_FAKES_SCRIPTED_PROCESS_H_

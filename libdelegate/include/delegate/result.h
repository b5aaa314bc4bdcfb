// What a stage and its steps came to. Results never hold secret values: the
// scheduler masks errors and outputs before a result leaves it.
#ifndef DELEGATE_RESULT_H_
#define DELEGATE_RESULT_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "delegate/export.h"

namespace delegate {

enum class StepStatus { kSuccess, kFailure, kTimeout, kSkipped, kCancelled };

// "SUCCESS", "FAILURE", "TIMEOUT", "SKIPPED", "CANCELLED".
DELEGATE_EXPORT const char* StepStatusName(StepStatus status);

struct StepResult {
  std::string id;
  StepStatus status = StepStatus::kSuccess;
  std::optional<int> exit_code;  // unset when no process ran or it was killed
  std::string error;             // empty on success; for people, one line
  std::map<std::string, std::string> outputs;
  absl::Duration duration = absl::ZeroDuration();
};

struct StageResult {
  std::string task_id;
  std::string stage;
  // kSuccess, kFailure, kTimeout or kCancelled (never kSkipped).
  StepStatus status = StepStatus::kSuccess;
  std::string error;  // init or cleanup failure, stage timeout, cancel reason
  std::vector<StepResult> steps;
  absl::Duration duration = absl::ZeroDuration();
};

// {"stage": NAME, "status": S, "error": E, "duration_ms": N,
//  "steps": [{"id", "status", "exit_code", "error", "outputs", "duration_ms"}]}
// exit_code is null when unset.
DELEGATE_EXPORT std::string StageResultToJson(const StageResult& result);

// A table for people: one row per step (id, status, exit code, duration,
// error), then the stage's status and duration.
DELEGATE_EXPORT std::string FormatSummary(const StageResult& result);

}  // namespace delegate

#endif  // DELEGATE_RESULT_H_

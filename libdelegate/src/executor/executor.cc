#include "delegate/executor.h"

namespace delegate {

std::optional<StepStatus> StopReason(const StepContext& ctx) {
  if (ctx.stop.stop_requested()) return StepStatus::kCancelled;
  if (ctx.stage.clock.Now() >= ctx.deadline) return StepStatus::kTimeout;
  return std::nullopt;
}

}  // namespace delegate

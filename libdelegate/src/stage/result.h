// Results of stages that did not run, for every place that refuses or drops
// one (the scheduler, a manager connection).
#ifndef DELEGATE_STAGE_RESULT_H_
#define DELEGATE_STAGE_RESULT_H_

#include <string>

#include "delegate/result.h"
#include "delegate/stage.h"

namespace delegate {

// The stage `status` with `why`, each of its steps SKIPPED with `step_why`.
StageResult NotRunResult(std::string task_id, const Stage& stage,
                         StepStatus status, std::string why,
                         const std::string& step_why);

}  // namespace delegate

#endif  // DELEGATE_STAGE_RESULT_H_

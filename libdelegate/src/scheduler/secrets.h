// ${{secrets.ID}} references in step fields.
#ifndef DELEGATE_SCHEDULER_SECRETS_H_
#define DELEGATE_SCHEDULER_SECRETS_H_

#include <map>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "delegate/stage.h"

namespace delegate {

// Replaces each ${{secrets.ID}} (spaces allowed inside the braces) in `text`.
// An unknown id is InvalidArgument "<path>: unknown secret 'ID'; the stage
// defines: A, B" (ids only, never values).
absl::StatusOr<std::string> SubstituteSecrets(
    std::string_view text, const std::map<std::string, std::string>& secrets,
    std::string_view path);

// Turns `stage` into what executors see: in every step, the stage env merged
// under the step's envs, and secrets substituted in envs, commands, entrypoint
// and args. On error `stage` may be partly resolved.
absl::Status ResolveStage(Stage& stage);

}  // namespace delegate

#endif  // DELEGATE_SCHEDULER_SECRETS_H_

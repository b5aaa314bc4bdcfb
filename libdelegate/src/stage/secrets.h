// ${{secrets.ID}} references in step fields.
#ifndef DELEGATE_STAGE_SECRETS_H_
#define DELEGATE_STAGE_SECRETS_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "delegate/stage.h"
#include "logs/masker.h"

namespace delegate {

// Calls `on_reference(id)` for each ${{secrets.ID}} in `text`, in order: "${{",
// anything up to the next "}}", which after trimming starts with "secrets.".
// Other ${{...}} expressions are not references.
void ForEachSecretReference(
    std::string_view text,
    const std::function<void(std::string_view)>& on_reference);

// Replaces each ${{secrets.ID}} (spaces allowed inside the braces) in `text`.
// An unknown id is InvalidArgument "<path>: unknown secret 'ID'; the stage
// defines: A, B" (ids only, never values).
absl::StatusOr<std::string> SubstituteSecrets(
    std::string_view text, const std::map<std::string, std::string>& secrets,
    std::string_view path);

// What is masked in a stage's logs, errors and results: its secret values,
// and registry passwords written in the clear (a reference is masked as the
// secret it names).
std::vector<std::string> SecretValues(const Stage& stage);

// A masker of SecretValues(stage), `more` (the delegate's own credentials)
// and the credentials it has fetched so far (logs::HeldCredentials), or null
// when there are none.
std::shared_ptr<const logs::SecretMasker> MaskerFor(
    const Stage& stage, const std::vector<std::string>& more = {});

// Turns `stage` into what executors see: in every step, the stage env merged
// under the step's envs, and secrets substituted in envs, commands, entrypoint
// and args. On error `stage` may be partly resolved.
absl::Status ResolveStage(Stage& stage);

}  // namespace delegate

#endif  // DELEGATE_STAGE_SECRETS_H_

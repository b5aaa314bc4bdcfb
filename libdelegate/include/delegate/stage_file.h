// Reading a stage from a YAML or JSON document.
#ifndef DELEGATE_STAGE_FILE_H_
#define DELEGATE_STAGE_FILE_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "delegate/export.h"
#include "delegate/stage.h"

namespace delegate {

// Parses a stage document. JSON when the first non-blank character is '{',
// YAML otherwise; the file name plays no part. On failure returns
// InvalidArgument whose message lists every problem found (up to 100), one
// per line in file order, each as
// "<source>:<line>:<col>: <path>: <what is wrong and what is expected>", for
// example "stage.yaml:5:14: steps[2].timeout: expected a duration like 30s,
// 10m or 1h30m, got 'ten'" (":<line>:<col>" is left out where no position is
// known). Secret values never appear in it. Never crashes or hangs, whatever
// the input: nesting (64 levels), nodes (100,000, aliases included) and size
// (64 MiB) are bounded.
DELEGATE_EXPORT absl::StatusOr<Stage> ParseStage(
    std::string_view content, std::string_view source = "stage");

// Reads the file and parses it. NotFound / PermissionDenied name the path.
DELEGATE_EXPORT absl::StatusOr<Stage> LoadStageFile(const std::string& path);

}  // namespace delegate

#endif  // DELEGATE_STAGE_FILE_H_

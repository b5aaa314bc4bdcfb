// Reading a stage from a YAML or JSON document.
#ifndef DELEGATE_STAGE_FILE_H_
#define DELEGATE_STAGE_FILE_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "delegate/stage.h"

namespace delegate {

// Parses a stage document. JSON when the first non-blank character is '{',
// YAML otherwise; the file name plays no part. On failure returns
// InvalidArgument whose message lists every problem found, one per line, each
// as "<source>: <path>: <what is wrong and what is expected>", for example
// "stage.yaml: steps[2].timeout: expected a duration like 30s". Never crashes
// or hangs, whatever the input; nesting and size are bounded.
absl::StatusOr<Stage> ParseStage(std::string_view content,
                                 std::string_view source = "stage");

// Reads the file and parses it. NotFound / PermissionDenied name the path.
absl::StatusOr<Stage> LoadStageFile(const std::string& path);

}  // namespace delegate

#endif  // DELEGATE_STAGE_FILE_H_

// Reading a whole (small) file for a setting, with an error a person can act
// on.
#ifndef DELEGATE_UTIL_FILES_H_
#define DELEGATE_UTIL_FILES_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace delegate {

// The file's bytes, or InvalidArgument "SETTING: cannot read PATH" naming
// the flag or variable that named it. The content never appears in an error
// (it may be a key or a token).
absl::StatusOr<std::string> ReadSettingFile(const std::string& path,
                                            std::string_view setting);

}  // namespace delegate

#endif  // DELEGATE_UTIL_FILES_H_

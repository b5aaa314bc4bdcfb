#ifndef DELEGATE_VERSION_H_
#define DELEGATE_VERSION_H_

#include <string_view>

#include "delegate/export.h"

namespace delegate {

DELEGATE_EXPORT std::string_view Version();  // "0.1.0"
DELEGATE_EXPORT std::string_view
GitCommit();  // short hash of the build's commit, or "unknown"

}  // namespace delegate

#endif  // DELEGATE_VERSION_H_

#include "util/files.h"

#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "util/strings.h"

namespace delegate {

absl::StatusOr<std::string> ReadSettingFile(const std::string& path,
                                            std::string_view setting) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream content;
  content << in.rdbuf();
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat(AbslView(setting), ": cannot read ", path));
  }
  return content.str();
}

}  // namespace delegate

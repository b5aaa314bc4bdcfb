#include "policy/host_paths.h"

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace delegate {

std::string NormalizeHostPath(std::string_view path) {
  if (path.empty() || path.front() != '/') return "";
  std::string norm =
      std::filesystem::path(path).lexically_normal().generic_string();
  // lexically_normal keeps a trailing separator ("/a/b/" stays "/a/b/") and
  // POSIX lets "//" mean something else, so fold both for comparison.
  while (norm.size() > 1 && norm.back() == '/') norm.pop_back();
  while (norm.size() > 1 && norm[0] == '/' && norm[1] == '/') norm.erase(0, 1);
  return norm;
}

bool HostPathAllowed(std::string_view path,
                     const std::vector<std::string>& allowed) {
  const std::string p = NormalizeHostPath(path);
  if (p.empty()) return false;
  for (const std::string& entry : allowed) {
    const std::string prefix = NormalizeHostPath(entry);
    if (prefix.empty()) continue;
    if (prefix == "/" || p == prefix) return true;
    if (p.size() > prefix.size() && p.compare(0, prefix.size(), prefix) == 0 &&
        p[prefix.size()] == '/') {
      return true;
    }
  }
  return false;
}

}  // namespace delegate

// Host path matching for the operator's allow-list, shared by the loader
// (which normalises the entries) and the checker (which matches against them).
#ifndef DELEGATE_POLICY_HOST_PATHS_H_
#define DELEGATE_POLICY_HOST_PATHS_H_

#include <string>
#include <string_view>
#include <vector>

namespace delegate {

// `path` lexically normalised ("." and ".." resolved, repeated and trailing
// slashes dropped) with no I/O, so "/data/../etc/" becomes "/etc". Empty when
// `path` is not absolute.
std::string NormalizeHostPath(std::string_view path);

// Whether `path` is one of `allowed` or lies under one of them, comparing whole
// components: "/data" allows "/data" and "/data/x", not "/database". Entries
// of `allowed` are normalised here too, so callers may pass them raw. A
// relative `path` is never allowed.
bool HostPathAllowed(std::string_view path,
                     const std::vector<std::string>& allowed);

}  // namespace delegate

#endif  // DELEGATE_POLICY_HOST_PATHS_H_

// Volume and security policy: what a platform can run and what the operator
// lets it run. CheckStagePolicy checks a stage, without side effects, against
// the profile of its platform and an operator policy on top, and returns every
// violation at once so that one edit of the stage file can fix them all.
//
// The operator policy only narrows: its checks are added to the platform's,
// never instead of them, so nothing it says can make a stage the platform
// rejects acceptable.
#ifndef DELEGATE_POLICY_H_
#define DELEGATE_POLICY_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "delegate/env.h"
#include "delegate/export.h"
#include "delegate/stage.h"

namespace delegate {

struct DELEGATE_EXPORT PolicyViolation {
  // Path of the offending field in stage-file terms, for example
  // "steps[1].security_context.privileged" or "volumes[0].efs.filesystem_id".
  std::string field;
  // Whose rule: the stage's platform ("ecs-fargate", or a custom executor's
  // name for the rules common to every platform), or "operator".
  std::string platform;
  // What is wrong and, where there is one, what to do instead.
  std::string rule;

  // "FIELD: RULE (platform PLATFORM)".
  std::string ToString() const;

  friend bool operator==(const PolicyViolation&,
                         const PolicyViolation&) = default;
};

// The value of PolicyViolation::platform for the operator's rules.
inline constexpr std::string_view kOperatorPolicyName = "operator";

// Restrictions the operator of a delegate adds to every stage it runs. The
// default restricts nothing.
struct OperatorPolicy {
  // No step may set security_context.privileged to true.
  bool forbid_privileged = false;
  // When not empty, every host_path volume must lie under one of these
  // absolute paths, matched on whole path components after lexical
  // normalisation: "/data" allows "/data" and "/data/x" but neither
  // "/database" nor "/data/../etc". Symlinks are not resolved (the check does
  // no I/O), so list the real directories.
  std::vector<std::string> allowed_host_paths;
  // No step may add a capability (dropping stays allowed).
  bool forbid_capability_add = false;
  // Upper bounds on a step's resources. A step that asks for nothing is within
  // them: the executor's default applies.
  std::optional<double> max_cpus;
  std::optional<int64_t> max_memory_mib;

  friend bool operator==(const OperatorPolicy&,
                         const OperatorPolicy&) = default;
};

// Environment variables read by LoadOperatorPolicy.
inline constexpr std::string_view kPolicyFileVar = "DELEGATE_POLICY_FILE";
inline constexpr std::string_view kPolicyForbidPrivilegedVar =
    "DELEGATE_POLICY_FORBID_PRIVILEGED";
inline constexpr std::string_view kPolicyAllowedHostPathsVar =
    "DELEGATE_POLICY_ALLOWED_HOST_PATHS";
inline constexpr std::string_view kPolicyForbidCapAddVar =
    "DELEGATE_POLICY_FORBID_CAP_ADD";
inline constexpr std::string_view kPolicyMaxCpusVar =
    "DELEGATE_POLICY_MAX_CPUS";
inline constexpr std::string_view kPolicyMaxMemoryMibVar =
    "DELEGATE_POLICY_MAX_MEMORY_MIB";

// Builds the operator policy from these variables:
//   DELEGATE_POLICY_FORBID_PRIVILEGED   true/false (also 1/0, yes/no)
//   DELEGATE_POLICY_ALLOWED_HOST_PATHS  absolute paths separated by commas
//   DELEGATE_POLICY_FORBID_CAP_ADD      true/false (also 1/0, yes/no)
//   DELEGATE_POLICY_MAX_CPUS            a positive number, like 2 or 0.5
//   DELEGATE_POLICY_MAX_MEMORY_MIB      a positive integer
//   DELEGATE_POLICY_FILE                a KEY=VALUE file (ReadEnvFile) with
//                                       the keys above
// A value in `env` wins over the same key in DELEGATE_POLICY_FILE. Values are
// trimmed and an empty value counts as unset. Because a mistyped restriction
// would otherwise be silently ignored, any other DELEGATE_POLICY_* name is an
// error. Errors are one InvalidArgument line naming the variable (and the
// file, for a value from it) and what to set it to.
DELEGATE_EXPORT absl::StatusOr<OperatorPolicy> LoadOperatorPolicy(
    const EnvMap& env);

// What a platform accepts beyond the rules common to every platform (mounts
// name declared volumes, capability names are real, resources are positive).
// Run-as user and group are accepted everywhere. An executor registers its
// platform's profile with it (ExecutorTraits::profile).
struct PlatformProfile {
  std::string_view name = {};   // the Stage::platform value, "ecs-fargate"
  std::string_view title = {};  // for messages, "Fargate"
  // The platform suggested when one of its rules denies something.
  std::string_view instead = {};
  // What to use for EFS when `efs` is false, for example "a container
  // platform (docker)".
  std::string_view efs_instead = {};
  // False for platforms whose steps are host processes: a step has no image,
  // a relative working_dir must stay inside the workspace, and a mount at an
  // absolute path must be the host_path volume's own path.
  bool containers = true;
  bool privileged = true;  // security_context.privileged: true
  bool read_only_root_filesystem = true;
  bool host_path = true;
  // EFS volumes, whose fields must then be well formed (see CheckStagePolicy).
  bool efs = true;
  bool capability_drop = true;
  // When false, only the names in capability_add may be added.
  bool any_capability_add = true;
  std::span<const std::string_view> capability_add = {};
  // Bounds on an empty_dir volume's size_mib, when it gives one.
  std::optional<int64_t> min_empty_dir_mib = std::nullopt;
  std::optional<int64_t> max_empty_dir_mib = std::nullopt;
  // Why the platform accepts an empty_dir's size_mib without enforcing it
  // ("Docker's local volumes have no size limit"), for the note StageNotes
  // gives; empty when size_mib has its effect.
  std::string_view empty_dir_size_unenforced = {};
};

// Every violation of `profile` (the stage's platform's; nullptr for a
// platform without one, whose executor checks the rest in
// Executor::Validate), of the rules common to every platform and of
// `policy`, in stage order (volumes, then steps); where the platform and the
// operator both reject a field, both are reported, the platform's first.
// Empty when the stage is acceptable.
//
// Common to every platform: each volume_mounts[].name names a declared
// volume; capability names are Linux capabilities (NET_ADMIN, SYS_PTRACE, ...)
// or ALL, written in capitals with or without CAP_; resources.cpus and
// resources.memory_mib, when given, are positive.
// On every container platform that accepts EFS: filesystem_id is "fs-" and 8
// or 17 lowercase hex digits; root_directory, when given, is absolute (and
// "/" when there is an access point); access_point_id, when given, is "fsap-"
// and 17 lowercase hex digits; iam and access_point_id need
// transit_encryption.
DELEGATE_EXPORT std::vector<PolicyViolation> CheckStagePolicy(
    const Stage& stage, const OperatorPolicy& policy,
    const PlatformProfile* profile);

// What `profile` accepts in `stage` but does not apply as written, one
// sentence each, naming the field: today an empty_dir's size_mib where the
// platform does not enforce it. `delegate validate` prints them, and a stage
// that runs says them first in its log, so that nothing is silently ignored.
// Empty for a null profile.
DELEGATE_EXPORT std::vector<std::string> StageNotes(
    const Stage& stage, const PlatformProfile* profile);

// OK for no violations; otherwise InvalidArgument with each violation's
// ToString(), one per line.
DELEGATE_EXPORT absl::Status PolicyStatus(
    const std::vector<PolicyViolation>& violations);

}  // namespace delegate

#endif  // DELEGATE_POLICY_H_

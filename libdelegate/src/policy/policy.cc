// CheckStagePolicy against a platform profile. Everything here is pure: no
// I/O, no clock, no process state, so executors and the scheduler can call it
// from any thread and tests need no fakes.
#include "delegate/policy.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "policy/host_paths.h"
#include "util/strings.h"

namespace delegate {
namespace {

namespace fs = std::filesystem;

// include/uapi/linux/capability.h as of Linux 6.x, without CAP_.
constexpr std::array<std::string_view, 41> kLinuxCapabilities = {
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE"};

// The name without a CAP_ prefix; the parser strips it, other sources (a
// Harness task, a gRPC request) may not.
std::string_view BareCapability(std::string_view name) {
  if (name.size() > 4 && name.substr(0, 4) == "CAP_") name.remove_prefix(4);
  return name;
}

bool IsKnownCapability(std::string_view bare) {
  return bare == "ALL" ||
         std::find(kLinuxCapabilities.begin(), kLinuxCapabilities.end(),
                   bare) != kLinuxCapabilities.end();
}

bool IsLowerHex(absl::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// "fs-" and 8 or 17 lowercase hex digits: the old and the current EFS id.
bool IsFilesystemId(absl::string_view id) {
  if (!absl::ConsumePrefix(&id, "fs-")) return false;
  return (id.size() == 8 || id.size() == 17) && IsLowerHex(id);
}

bool IsAccessPointId(absl::string_view id) {
  if (!absl::ConsumePrefix(&id, "fsap-")) return false;
  return id.size() == 17 && IsLowerHex(id);
}

std::string JoinViews(std::span<const std::string_view> names) {
  std::string out;
  for (std::string_view n : names) {
    if (!out.empty()) out += ", ";
    out.append(n.data(), n.size());
  }
  return out;
}

// ------------------------------------------------------------ field paths

// Where a field is, as "steps[2].security_context.add_capability[0]". A chain
// of views on the caller's stack: the string is made only for a violation,
// so checking a stage that has none allocates nothing for its paths. Pass
// one down as an argument; a FieldPath kept in a variable must not have a
// temporary for its parent.
class FieldPath {
 public:
  // The root: a list ("steps", "volumes") and an index into it.
  FieldPath(std::string_view list, size_t index)
      : parent_(nullptr), name_(list), index_(index) {}
  // A field of this one: ".name", or ".name[index]".
  FieldPath Field(std::string_view name) const { return {this, name, kNone}; }
  FieldPath Field(std::string_view name, size_t index) const {
    return {this, name, index};
  }
  FieldPath Index(size_t index) const { return {this, {}, index}; }

  std::string str() const {
    std::string out;
    AppendTo(out);
    return out;
  }

 private:
  static constexpr size_t kNone = static_cast<size_t>(-1);
  FieldPath(const FieldPath* parent, std::string_view name, size_t index)
      : parent_(parent), name_(name), index_(index) {}

  void AppendTo(std::string& out) const {
    if (parent_ != nullptr) {
      parent_->AppendTo(out);
      if (!name_.empty()) out += '.';
    }
    out.append(name_.data(), name_.size());
    if (index_ != kNone) absl::StrAppend(&out, "[", index_, "]");
  }

  const FieldPath* parent_;
  std::string_view name_;
  size_t index_;
};

// ------------------------------------------------------------ checker

// Collects violations for one stage. `platform` is what violations of the
// platform and common rules carry; `profile` is null for a custom platform.
class Checker {
 public:
  Checker(const Stage& stage, const PlatformProfile* profile,
          const OperatorPolicy& policy)
      : stage_(stage), profile_(profile), policy_(policy) {}

  std::vector<PolicyViolation> Run() && {
    for (size_t i = 0; i < stage_.volumes.size(); ++i) {
      CheckVolume(stage_.volumes[i], FieldPath("volumes", i));
    }
    for (size_t i = 0; i < stage_.steps.size(); ++i) {
      CheckStep(stage_.steps[i], FieldPath("steps", i));
    }
    return std::move(out_);
  }

 private:
  void Platform(const FieldPath& field, std::string rule) {
    out_.push_back({field.str(), stage_.platform, std::move(rule)});
  }
  void Operator(const FieldPath& field, std::string rule) {
    out_.push_back(
        {field.str(), std::string(kOperatorPolicyName), std::move(rule)});
  }
  // "; use platform X instead", or nothing when the profile names none.
  std::string Instead() const {
    if (profile_ == nullptr || profile_->instead.empty()) return "";
    return absl::StrCat("; use platform ", AbslView(profile_->instead),
                        " instead");
  }
  // " or use platform X", or nothing: ends a suggestion already made.
  std::string OrInstead() const {
    if (profile_ == nullptr || profile_->instead.empty()) return "";
    return absl::StrCat(" or use platform ", AbslView(profile_->instead));
  }
  std::string Title() const {
    return profile_ == nullptr ? stage_.platform : std::string(profile_->title);
  }

  void CheckVolume(const Volume& volume, const FieldPath& at) {
    if (const auto* empty_dir = std::get_if<EmptyDirVolume>(&volume.source)) {
      CheckEmptyDir(*empty_dir, at.Field("empty_dir"));
    } else if (const auto* host = std::get_if<HostPathVolume>(&volume.source)) {
      CheckHostPath(*host, at.Field("host_path"));
    } else if (const auto* efs = std::get_if<EfsVolume>(&volume.source)) {
      CheckEfs(*efs, at.Field("efs"));
    }
  }

  void CheckEmptyDir(const EmptyDirVolume& v, const FieldPath& at) {
    if (!v.size_mib) return;
    const int64_t size = *v.size_mib;
    if (size <= 0) {
      Platform(at.Field("size_mib"),
               absl::StrCat("size_mib must be positive, got ", size));
      return;
    }
    if (profile_ == nullptr) return;
    const bool too_small =
        profile_->min_empty_dir_mib && size < *profile_->min_empty_dir_mib;
    const bool too_large =
        profile_->max_empty_dir_mib && size > *profile_->max_empty_dir_mib;
    if (too_small || too_large) {
      Platform(
          at.Field("size_mib"),
          absl::StrCat("empty_dir size on ", Title(), " must be between ",
                       profile_->min_empty_dir_mib.value_or(1), " and ",
                       profile_->max_empty_dir_mib.value_or(INT64_MAX),
                       " MiB, got ", size, "; omit size_mib for the default"));
    }
  }

  void CheckHostPath(const HostPathVolume& v, const FieldPath& at) {
    if (profile_ != nullptr && !profile_->host_path) {
      Platform(at,
               absl::StrCat("host_path volumes are not allowed on ", Title(),
                            " (tasks cannot reach the host); "
                            "use an empty_dir or efs volume",
                            OrInstead()));
    }
    if (!policy_.allowed_host_paths.empty() &&
        !HostPathAllowed(v.path, policy_.allowed_host_paths)) {
      Operator(
          at.Field("path"),
          absl::StrCat("host path ", v.path,
                       " is outside the paths the operator allows (",
                       absl::StrJoin(policy_.allowed_host_paths, ", "), ")"));
    }
  }

  void CheckEfs(const EfsVolume& v, const FieldPath& at) {
    if (profile_ == nullptr) return;
    if (!profile_->efs) {
      std::string message =
          absl::StrCat("EFS volumes cannot be mounted on ", Title());
      if (!profile_->efs_instead.empty()) {
        absl::StrAppend(&message, "; use ", AbslView(profile_->efs_instead));
      }
      Platform(at, message);
      return;
    }
    if (!IsFilesystemId(v.filesystem_id)) {
      Platform(at.Field("filesystem_id"),
               absl::StrCat("expected an EFS file system id like fs-0123abcd "
                            "(fs- and 8 or 17 lowercase hex digits), got '",
                            v.filesystem_id, "'"));
    }
    if (!v.root_directory.empty()) {
      if (!absl::StartsWith(v.root_directory, "/")) {
        Platform(at.Field("root_directory"),
                 absl::StrCat("expected an absolute path inside the file "
                              "system, like /data, got '",
                              v.root_directory, "'"));
      } else if (!v.access_point_id.empty() && v.root_directory != "/") {
        // ECS rejects it: the access point fixes the directory.
        Platform(at.Field("root_directory"),
                 "with an access point, root_directory must be / or omitted "
                 "(the access point sets the directory)");
      }
    }
    if (!v.access_point_id.empty()) {
      if (!IsAccessPointId(v.access_point_id)) {
        Platform(at.Field("access_point_id"),
                 absl::StrCat("expected an EFS access point id like "
                              "fsap-0123456789abcdef0 (fsap- and 17 lowercase "
                              "hex digits), got '",
                              v.access_point_id, "'"));
      }
      if (!v.transit_encryption) {
        Platform(at.Field("access_point_id"),
                 "an access point needs transit_encryption: true");
      }
    }
    if (v.iam && !v.transit_encryption) {
      Platform(at.Field("iam"),
               "iam authorization needs transit_encryption: true");
    }
  }

  void CheckStep(const Step& step, const FieldPath& at) {
    const bool host = profile_ != nullptr && !profile_->containers;
    if (host && !step.image.empty()) {
      Platform(at.Field("image"),
               absl::StrCat("platform ", AbslView(profile_->name),
                            " runs steps as host processes; remove the image",
                            OrInstead()));
    }
    CheckSecurityContext(step.security_context, at.Field("security_context"));
    for (size_t m = 0; m < step.volume_mounts.size(); ++m) {
      CheckMount(step.volume_mounts[m], at.Field("volume_mounts", m));
    }
    if (host && !step.working_dir.empty() &&
        !fs::path(step.working_dir).is_absolute()) {
      const std::string norm =
          fs::path(step.working_dir).lexically_normal().generic_string();
      if (norm == ".." || absl::StartsWith(norm, "../")) {
        Platform(at.Field("working_dir"),
                 absl::StrCat(step.working_dir,
                              " leaves the workspace; use a path inside it or "
                              "an absolute one"));
      }
    }
    CheckResources(step.resources, at.Field("resources"));
  }

  void CheckSecurityContext(const SecurityContext& sc, const FieldPath& at) {
    // Names first: a typo is worth reporting whatever the platform allows.
    CheckCapabilityNames(sc.add_capability, at.Field("add_capability"));
    CheckCapabilityNames(sc.drop_capability, at.Field("drop_capability"));

    // Only a request counts: privileged: false asks for nothing.
    const bool privileged = sc.privileged.value_or(false);
    if (profile_ != nullptr) {
      const bool host = !profile_->containers;
      auto deny = [&](std::string_view field, std::string_view what) {
        if (host) {
          Platform(at.Field(field),
                   absl::StrCat("not supported on platform ",
                                AbslView(profile_->name),
                                " (steps are host processes, not containers)",
                                Instead()));
        } else {
          Platform(at.Field(field),
                   absl::StrCat(AbslView(what), " not allowed on ", Title(),
                                Instead()));
        }
      };
      if (privileged && !profile_->privileged) {
        deny("privileged", "privileged containers are");
      }
      if (sc.read_only_root_filesystem.value_or(false) &&
          !profile_->read_only_root_filesystem) {
        deny("read_only_root_filesystem", "a read-only root filesystem is");
      }
      if (!sc.drop_capability.empty() && !profile_->capability_drop) {
        deny("drop_capability", "dropping capabilities is");
      }
      if (!sc.add_capability.empty() && !profile_->any_capability_add) {
        if (host || profile_->capability_add.empty()) {
          deny("add_capability", "adding capabilities is");
        } else {
          for (size_t i = 0; i < sc.add_capability.size(); ++i) {
            const std::string_view bare = BareCapability(sc.add_capability[i]);
            if (!IsKnownCapability(bare)) continue;  // reported above
            const auto& allowed = profile_->capability_add;
            if (std::find(allowed.begin(), allowed.end(), bare) !=
                allowed.end()) {
              continue;
            }
            Platform(
                at.Field("add_capability", i),
                absl::StrCat("adding ", sc.add_capability[i],
                             " is not allowed on ", Title(), "; only ",
                             JoinViews(allowed), " may be added", Instead()));
          }
        }
      }
    }

    if (policy_.forbid_privileged && privileged) {
      Operator(at.Field("privileged"),
               absl::StrCat("privileged containers are forbidden by the "
                            "operator (",
                            AbslView(kPolicyForbidPrivilegedVar), ")"));
    }
    if (policy_.forbid_capability_add && !sc.add_capability.empty()) {
      Operator(at.Field("add_capability"),
               absl::StrCat("adding capabilities is forbidden by the "
                            "operator (",
                            AbslView(kPolicyForbidCapAddVar),
                            "); dropping is allowed"));
    }
  }

  void CheckCapabilityNames(const std::vector<std::string>& names,
                            const FieldPath& at) {
    for (size_t i = 0; i < names.size(); ++i) {
      if (IsKnownCapability(BareCapability(names[i]))) continue;
      Platform(at.Index(i),
               absl::StrCat("unknown capability '", names[i],
                            "'; expected a Linux capability name in capitals "
                            "like NET_ADMIN or SYS_PTRACE, or ALL"));
    }
  }

  void CheckMount(const VolumeMount& mount, const FieldPath& at) {
    const Volume* volume = stage_.FindVolume(mount.name);
    if (volume == nullptr) {
      Platform(at.Field("name"), absl::StrCat("no volume named '", mount.name,
                                              "'; declare it under volumes"));
      return;
    }
    if (profile_ == nullptr || profile_->containers) return;
    // On the host a relative mount becomes a link in the workspace; an
    // absolute one is the host's own directory, which only a host_path
    // volume of exactly that path may name.
    if (!fs::path(mount.path).is_absolute()) return;
    const auto* host = std::get_if<HostPathVolume>(&volume->source);
    if (host == nullptr ||
        NormalizeHostPath(host->path) != NormalizeHostPath(mount.path)) {
      Platform(at.Field("path"),
               absl::StrCat("platform ", AbslView(profile_->name),
                            " cannot mount at the absolute path ", mount.path,
                            "; use a path relative to the workspace (a link "
                            "is made there), the host_path volume's own path, "
                            "or a container platform"));
    }
  }

  void CheckResources(const Resources& r, const FieldPath& at) {
    if (r.cpus) {
      if (!(*r.cpus > 0) || !std::isfinite(*r.cpus)) {
        Platform(at.Field("cpus"),
                 absl::StrCat("cpus must be a positive number, "
                              "got ",
                              *r.cpus));
      } else if (policy_.max_cpus && *r.cpus > *policy_.max_cpus) {
        Operator(at.Field("cpus"),
                 absl::StrCat(*r.cpus,
                              " cpus is more than the operator's cap "
                              "of ",
                              *policy_.max_cpus, " (",
                              AbslView(kPolicyMaxCpusVar), ")"));
      }
    }
    if (r.memory_mib) {
      if (*r.memory_mib <= 0) {
        Platform(
            at.Field("memory_mib"),
            absl::StrCat("memory_mib must be positive, got ", *r.memory_mib));
      } else if (policy_.max_memory_mib &&
                 *r.memory_mib > *policy_.max_memory_mib) {
        Operator(at.Field("memory_mib"),
                 absl::StrCat(*r.memory_mib,
                              " MiB is more than the operator's cap of ",
                              *policy_.max_memory_mib, " MiB (",
                              AbslView(kPolicyMaxMemoryMibVar), ")"));
      }
    }
  }

  const Stage& stage_;
  const PlatformProfile* const profile_;
  const OperatorPolicy& policy_;
  std::vector<PolicyViolation> out_;
};

}  // namespace

std::string PolicyViolation::ToString() const {
  return absl::StrCat(field, ": ", rule, " (platform ", platform, ")");
}

std::vector<PolicyViolation> CheckStagePolicy(const Stage& stage,
                                              const OperatorPolicy& policy,
                                              const PlatformProfile* profile) {
  return Checker(stage, profile, policy).Run();
}

std::vector<std::string> StageNotes(const Stage& stage,
                                    const PlatformProfile* profile) {
  std::vector<std::string> notes;
  if (profile == nullptr || profile->empty_dir_size_unenforced.empty()) {
    return notes;
  }
  for (size_t i = 0; i < stage.volumes.size(); ++i) {
    const auto* e = std::get_if<EmptyDirVolume>(&stage.volumes[i].source);
    if (e == nullptr || !e->size_mib) continue;
    notes.push_back(
        absl::StrCat("volumes[", i, "].empty_dir.size_mib: ", *e->size_mib,
                     " MiB is not enforced on ", AbslView(profile->title), " (",
                     AbslView(profile->empty_dir_size_unenforced),
                     "): the volume can grow until its disk is full"));
  }
  return notes;
}

absl::Status PolicyStatus(const std::vector<PolicyViolation>& violations) {
  if (violations.empty()) return absl::OkStatus();
  std::string message;
  for (const PolicyViolation& v : violations) {
    if (!message.empty()) message += '\n';
    message += v.ToString();
  }
  return absl::InvalidArgumentError(message);
}

}  // namespace delegate

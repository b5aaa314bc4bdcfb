#include "manager/grpc/convert.h"

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <variant>

#include "absl/strings/str_cat.h"
#include "util/strings.h"

namespace delegate::grpcv1 {
namespace {

// google/protobuf/duration.proto and timestamp.proto.
constexpr int64_t kMaxDurationSeconds = 315'576'000'000;  // 10,000 years
constexpr int32_t kMaxNanos = 999'999'999;
constexpr int64_t kMinTimestampSeconds = -62'135'596'800;  // 0001-01-01
constexpr int64_t kMaxTimestampSeconds = 253'402'300'799;  // 9999-12-31

// ------------------------------------------------------------ errors, paths

absl::Status Invalid(std::string_view path, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(AbslView(path), ": ", AbslView(what)));
}

std::string Field(std::string_view path, std::string_view name) {
  if (path.empty()) return std::string(name);
  return absl::StrCat(AbslView(path), ".", AbslView(name));
}

std::string Index(std::string_view path, size_t i) {
  return absl::StrCat(AbslView(path), "[", i, "]");
}

// An enum number this build has no name for: the peer speaks a newer
// delegate.v1.
absl::Status UnknownEnum(std::string_view path, std::string_view type,
                         int value) {
  return Invalid(path,
                 absl::StrCat("unknown ", AbslView(type), " value ", value,
                              "; the sender uses a newer delegate.v1 "
                              "than this build: upgrade it"));
}

// ------------------------------------------------------------ UTF-8

// Length of the valid UTF-8 sequence at s[i] (RFC 3629: no overlong forms,
// no surrogates, at most U+10FFFF), or 0.
size_t Utf8Length(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) {
    return static_cast<unsigned char>(s[i + k]);
  };
  const auto cont = [&](size_t k) {
    return i + k < s.size() && (byte(k) & 0xC0) == 0x80;
  };
  const unsigned char b0 = byte(0);
  if (b0 < 0x80) return 1;
  if (b0 >= 0xC2 && b0 <= 0xDF) return cont(1) ? 2 : 0;
  if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (b0 == 0xE0 && byte(1) < 0xA0) return 0;   // overlong
    if (b0 == 0xED && byte(1) >= 0xA0) return 0;  // surrogate
    return 3;
  }
  if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (b0 == 0xF0 && byte(1) < 0x90) return 0;   // overlong
    if (b0 == 0xF4 && byte(1) >= 0x90) return 0;  // beyond U+10FFFF
    return 4;
  }
  return 0;
}

// `s` with each byte that does not start a valid UTF-8 sequence replaced by
// U+FFFD; `s` itself when it is valid (the common case, one pass).
std::string ValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const size_t n = Utf8Length(s, i);
    if (n == 0) break;
    i += n;
  }
  if (i == s.size()) return std::string(s);
  std::string out(s.substr(0, i));
  while (i < s.size()) {
    const size_t n = Utf8Length(s, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
    } else {
      out.append(s.data() + i, n);
      i += n;
    }
  }
  return out;
}

// Whether `stored` (sanitised when it was set) is `id`.
bool SameId(const std::string& stored, std::string_view id) {
  return stored == id || stored == ValidUtf8(id);
}

// ------------------------------------------------------------ small types

void MapToProto(const std::map<std::string, std::string>& in,
                google::protobuf::Map<std::string, std::string>* out) {
  for (const auto& [k, v] : in) (*out)[k] = v;
}

std::map<std::string, std::string> MapFromProto(
    const google::protobuf::Map<std::string, std::string>& in) {
  return std::map<std::string, std::string>(in.begin(), in.end());
}

std::vector<std::string> ListFromProto(
    const google::protobuf::RepeatedPtrField<std::string>& in) {
  return std::vector<std::string>(in.begin(), in.end());
}

void ListToProto(const std::vector<std::string>& in,
                 google::protobuf::RepeatedPtrField<std::string>* out) {
  out->Reserve(static_cast<int>(in.size()));
  for (const std::string& s : in) out->Add(std::string(s));
}

}  // namespace

// ------------------------------------------------------------ durations, times

google::protobuf::Duration DurationToProto(absl::Duration d) {
  google::protobuf::Duration out;
  if (d >= absl::Seconds(kMaxDurationSeconds) + absl::Nanoseconds(kMaxNanos)) {
    out.set_seconds(kMaxDurationSeconds);
    out.set_nanos(kMaxNanos);
    return out;
  }
  if (d <=
      -(absl::Seconds(kMaxDurationSeconds) + absl::Nanoseconds(kMaxNanos))) {
    out.set_seconds(-kMaxDurationSeconds);
    out.set_nanos(-kMaxNanos);
    return out;
  }
  // Truncates toward zero, so seconds and nanos share a sign as required.
  absl::Duration rem;
  const int64_t seconds = absl::IDivDuration(d, absl::Seconds(1), &rem);
  out.set_seconds(seconds);
  out.set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(rem)));
  return out;
}

absl::StatusOr<absl::Duration> DurationFromProto(
    const google::protobuf::Duration& d, std::string_view path) {
  const int64_t s = d.seconds();
  const int32_t n = d.nanos();
  if (s < -kMaxDurationSeconds || s > kMaxDurationSeconds || n < -kMaxNanos ||
      n > kMaxNanos) {
    return Invalid(path,
                   "not a valid google.protobuf.Duration (seconds beyond "
                   "±315576000000 or nanos beyond ±999999999)");
  }
  if ((s > 0 && n < 0) || (s < 0 && n > 0)) {
    return Invalid(path,
                   "not a valid google.protobuf.Duration: seconds and nanos "
                   "have different signs");
  }
  if (s < 0 || n < 0) {
    return Invalid(path,
                   absl::StrCat("a duration that must not be negative, "
                                "got ",
                                absl::FormatDuration(absl::Seconds(s) +
                                                     absl::Nanoseconds(n))));
  }
  return absl::Seconds(s) + absl::Nanoseconds(n);
}

google::protobuf::Timestamp TimeToProto(absl::Time t) {
  google::protobuf::Timestamp out;
  if (t < absl::FromUnixSeconds(kMinTimestampSeconds)) {
    out.set_seconds(kMinTimestampSeconds);
    return out;
  }
  if (t >= absl::FromUnixSeconds(kMaxTimestampSeconds + 1)) {
    out.set_seconds(kMaxTimestampSeconds);
    out.set_nanos(kMaxNanos);
    return out;
  }
  // Floors, so nanos is in [0, 999999999] also before 1970.
  const int64_t seconds = absl::ToUnixSeconds(t);
  out.set_seconds(seconds);
  out.set_nanos(static_cast<int32_t>(
      absl::ToInt64Nanoseconds(t - absl::FromUnixSeconds(seconds))));
  return out;
}

absl::StatusOr<absl::Time> TimeFromProto(const google::protobuf::Timestamp& t,
                                         std::string_view path) {
  if (t.seconds() < kMinTimestampSeconds ||
      t.seconds() > kMaxTimestampSeconds || t.nanos() < 0 ||
      t.nanos() > kMaxNanos) {
    return Invalid(path,
                   "not a valid google.protobuf.Timestamp (seconds outside "
                   "0001-01-01 to 9999-12-31, or nanos outside [0, "
                   "999999999])");
  }
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

// ------------------------------------------------------------ enums

namespace {

// Each enum maps one to one; its *_UNSPECIFIED reads as a default where the
// contract gives one, and is an error where the field is required.
template <typename Native, typename Proto>
struct EnumMapping {
  std::string_view type;  // for errors: "PullPolicy"
  Proto unspecified;
  std::string_view unspecified_name;
  std::optional<Native> if_unspecified;  // nullopt: required
  std::initializer_list<std::pair<Native, Proto>> pairs;

  Proto ToProto(Native value) const {
    for (const auto& [native, proto] : pairs) {
      if (native == value) return proto;
    }
    return unspecified;
  }
  absl::StatusOr<Native> FromProto(Proto value, std::string_view path) const {
    for (const auto& [native, proto] : pairs) {
      if (proto == value) return native;
    }
    if (value != unspecified) {
      return UnknownEnum(path, type, static_cast<int>(value));
    }
    if (if_unspecified) return *if_unspecified;
    return Invalid(path,
                   absl::StrCat("not set (", AbslView(unspecified_name), ")"));
  }
};

const EnumMapping<PullPolicy, v1::PullPolicy> kPullPolicies = {
    "PullPolicy",
    v1::PULL_POLICY_UNSPECIFIED,
    "PULL_POLICY_UNSPECIFIED",
    PullPolicy::kDefault,
    {{PullPolicy::kDefault, v1::PULL_POLICY_UNSPECIFIED},
     {PullPolicy::kAlways, v1::PULL_POLICY_ALWAYS},
     {PullPolicy::kIfNotPresent, v1::PULL_POLICY_IF_NOT_PRESENT},
     {PullPolicy::kNever, v1::PULL_POLICY_NEVER}}};

const EnumMapping<Priority, v1::Priority> kPriorities = {
    "Priority",
    v1::PRIORITY_UNSPECIFIED,
    "PRIORITY_UNSPECIFIED",
    Priority::kNormal,
    {{Priority::kHigh, v1::PRIORITY_HIGH},
     {Priority::kNormal, v1::PRIORITY_NORMAL},
     {Priority::kLow, v1::PRIORITY_LOW}}};

const EnumMapping<StepStatus, v1::StepStatus> kStepStatuses = {
    "StepStatus",
    v1::STEP_STATUS_UNSPECIFIED,
    "STEP_STATUS_UNSPECIFIED",
    std::nullopt,
    {{StepStatus::kSuccess, v1::STEP_STATUS_SUCCESS},
     {StepStatus::kFailure, v1::STEP_STATUS_FAILURE},
     {StepStatus::kTimeout, v1::STEP_STATUS_TIMEOUT},
     {StepStatus::kSkipped, v1::STEP_STATUS_SKIPPED},
     {StepStatus::kCancelled, v1::STEP_STATUS_CANCELLED}}};

const EnumMapping<LogStream, v1::LogStream> kLogStreams = {
    "LogStream",
    v1::LOG_STREAM_UNSPECIFIED,
    "LOG_STREAM_UNSPECIFIED",
    std::nullopt,
    {{LogStream::kStdout, v1::LOG_STREAM_STDOUT},
     {LogStream::kStderr, v1::LOG_STREAM_STDERR},
     {LogStream::kSystem, v1::LOG_STREAM_SYSTEM}}};

}  // namespace

v1::PullPolicy ToProto(PullPolicy pull) { return kPullPolicies.ToProto(pull); }
absl::StatusOr<PullPolicy> FromProto(v1::PullPolicy pull,
                                     std::string_view path) {
  return kPullPolicies.FromProto(pull, path);
}
v1::Priority ToProto(Priority priority) {
  return kPriorities.ToProto(priority);
}
absl::StatusOr<Priority> FromProto(v1::Priority priority,
                                   std::string_view path) {
  return kPriorities.FromProto(priority, path);
}
v1::StepStatus ToProto(StepStatus status) {
  return kStepStatuses.ToProto(status);
}
absl::StatusOr<StepStatus> FromProto(v1::StepStatus status,
                                     std::string_view path) {
  return kStepStatuses.FromProto(status, path);
}
v1::LogStream ToProto(LogStream stream) { return kLogStreams.ToProto(stream); }
absl::StatusOr<LogStream> FromProto(v1::LogStream stream,
                                    std::string_view path) {
  return kLogStreams.FromProto(stream, path);
}

// ------------------------------------------------------------ stage parts

v1::SecurityContext ToProto(const SecurityContext& context) {
  v1::SecurityContext out;
  if (context.privileged) out.set_privileged(*context.privileged);
  if (context.read_only_root_filesystem) {
    out.set_read_only_root_filesystem(*context.read_only_root_filesystem);
  }
  if (context.run_as_user) out.set_run_as_user(*context.run_as_user);
  if (context.run_as_group) out.set_run_as_group(*context.run_as_group);
  ListToProto(context.add_capability, out.mutable_add_capability());
  ListToProto(context.drop_capability, out.mutable_drop_capability());
  return out;
}

absl::StatusOr<SecurityContext> FromProto(const v1::SecurityContext& context,
                                          std::string_view path) {
  (void)path;  // every SecurityContext proto has a value
  SecurityContext out;
  if (context.has_privileged()) out.privileged = context.privileged();
  if (context.has_read_only_root_filesystem()) {
    out.read_only_root_filesystem = context.read_only_root_filesystem();
  }
  if (context.has_run_as_user()) out.run_as_user = context.run_as_user();
  if (context.has_run_as_group()) out.run_as_group = context.run_as_group();
  out.add_capability = ListFromProto(context.add_capability());
  out.drop_capability = ListFromProto(context.drop_capability());
  return out;
}

v1::Resources ToProto(const Resources& resources) {
  v1::Resources out;
  if (resources.cpus) out.set_cpus(*resources.cpus);
  if (resources.memory_mib) out.set_memory_mib(*resources.memory_mib);
  return out;
}

absl::StatusOr<Resources> FromProto(const v1::Resources& resources,
                                    std::string_view path) {
  (void)path;
  Resources out;
  if (resources.has_cpus()) out.cpus = resources.cpus();
  if (resources.has_memory_mib()) out.memory_mib = resources.memory_mib();
  return out;
}

v1::RegistryCredentials ToProto(const RegistryCredentials& registry) {
  v1::RegistryCredentials out;
  out.set_server(registry.server);
  out.set_username(registry.username);
  out.set_password(registry.password);
  return out;
}

absl::StatusOr<RegistryCredentials> FromProto(
    const v1::RegistryCredentials& registry, std::string_view path) {
  (void)path;
  return RegistryCredentials{registry.server(), registry.username(),
                             registry.password()};
}

v1::VolumeMount ToProto(const VolumeMount& mount) {
  v1::VolumeMount out;
  out.set_name(mount.name);
  out.set_path(mount.path);
  return out;
}

absl::StatusOr<VolumeMount> FromProto(const v1::VolumeMount& mount,
                                      std::string_view path) {
  (void)path;
  return VolumeMount{mount.name(), mount.path()};
}

v1::Volume ToProto(const Volume& volume) {
  v1::Volume out;
  out.set_name(volume.name);
  if (const auto* e = std::get_if<EmptyDirVolume>(&volume.source)) {
    v1::EmptyDirVolume* p = out.mutable_empty_dir();
    if (e->size_mib) p->set_size_mib(*e->size_mib);
  } else if (const auto* h = std::get_if<HostPathVolume>(&volume.source)) {
    v1::HostPathVolume* p = out.mutable_host_path();
    p->set_path(h->path);
    p->set_read_only(h->read_only);
  } else if (const auto* f = std::get_if<EfsVolume>(&volume.source)) {
    v1::EfsVolume* p = out.mutable_efs();
    p->set_filesystem_id(f->filesystem_id);
    p->set_root_directory(f->root_directory);
    p->set_transit_encryption(f->transit_encryption);
    p->set_access_point_id(f->access_point_id);
    p->set_iam(f->iam);
  }
  return out;
}

absl::StatusOr<Volume> FromProto(const v1::Volume& volume,
                                 std::string_view path) {
  Volume out;
  out.name = volume.name();
  switch (volume.source_case()) {
    case v1::Volume::kEmptyDir: {
      EmptyDirVolume e;
      if (volume.empty_dir().has_size_mib()) {
        e.size_mib = volume.empty_dir().size_mib();
      }
      out.source = e;
      break;
    }
    case v1::Volume::kHostPath:
      out.source = HostPathVolume{volume.host_path().path(),
                                  volume.host_path().read_only()};
      break;
    case v1::Volume::kEfs: {
      const v1::EfsVolume& f = volume.efs();
      out.source =
          EfsVolume{f.filesystem_id(), f.root_directory(),
                    f.transit_encryption(), f.access_point_id(), f.iam()};
      break;
    }
    case v1::Volume::SOURCE_NOT_SET:
      return Invalid(path,
                     "the volume has no source: set one of empty_dir, "
                     "host_path or efs");
    default:
      // A source a newer delegate.v1 added: an unknown field here.
      return Invalid(path, "a volume source this build does not know");
  }
  return out;
}

// ------------------------------------------------------------ step, stage

v1::Step ToProto(const Step& step) {
  v1::Step out;
  out.set_id(step.id);
  out.set_name(step.name);
  out.set_image(step.image);
  ListToProto(step.commands, out.mutable_commands());
  ListToProto(step.entrypoint, out.mutable_entrypoint());
  ListToProto(step.args, out.mutable_args());
  MapToProto(step.envs, out.mutable_envs());
  out.set_working_dir(step.working_dir);
  if (step.timeout) *out.mutable_timeout() = DurationToProto(*step.timeout);
  ListToProto(step.outputs, out.mutable_outputs());
  if (!step.security_context.empty()) {
    *out.mutable_security_context() = ToProto(step.security_context);
  }
  for (const VolumeMount& m : step.volume_mounts) {
    *out.add_volume_mounts() = ToProto(m);
  }
  if (step.resources.cpus || step.resources.memory_mib) {
    *out.mutable_resources() = ToProto(step.resources);
  }
  out.set_pull(ToProto(step.pull));
  if (step.registry) *out.mutable_registry() = ToProto(*step.registry);
  out.set_continue_on_error(step.continue_on_error);
  return out;
}

absl::StatusOr<Step> FromProto(const v1::Step& step, std::string_view path) {
  Step out;
  out.id = step.id();
  out.name = step.name();
  out.image = step.image();
  out.commands = ListFromProto(step.commands());
  out.entrypoint = ListFromProto(step.entrypoint());
  out.args = ListFromProto(step.args());
  out.envs = MapFromProto(step.envs());
  out.working_dir = step.working_dir();
  if (step.has_timeout()) {
    absl::StatusOr<absl::Duration> d =
        DurationFromProto(step.timeout(), Field(path, "timeout"));
    if (!d.ok()) return d.status();
    out.timeout = *d;
  }
  out.outputs = ListFromProto(step.outputs());
  if (step.has_security_context()) {
    absl::StatusOr<SecurityContext> c =
        FromProto(step.security_context(), Field(path, "security_context"));
    if (!c.ok()) return c.status();
    out.security_context = *std::move(c);
  }
  const std::string mounts_path = Field(path, "volume_mounts");
  for (int i = 0; i < step.volume_mounts_size(); ++i) {
    absl::StatusOr<VolumeMount> m =
        FromProto(step.volume_mounts(i), Index(mounts_path, i));
    if (!m.ok()) return m.status();
    out.volume_mounts.push_back(*std::move(m));
  }
  if (step.has_resources()) {
    absl::StatusOr<Resources> r =
        FromProto(step.resources(), Field(path, "resources"));
    if (!r.ok()) return r.status();
    out.resources = *r;
  }
  absl::StatusOr<PullPolicy> pull = FromProto(step.pull(), Field(path, "pull"));
  if (!pull.ok()) return pull.status();
  out.pull = *pull;
  if (step.has_registry()) {
    absl::StatusOr<RegistryCredentials> r =
        FromProto(step.registry(), Field(path, "registry"));
    if (!r.ok()) return r.status();
    out.registry = *std::move(r);
  }
  out.continue_on_error = step.continue_on_error();
  return out;
}

v1::Stage ToProto(const Stage& stage) {
  v1::Stage out;
  out.set_name(stage.name);
  out.set_platform(stage.platform);
  MapToProto(stage.env, out.mutable_env());
  MapToProto(stage.secrets, out.mutable_secrets());
  for (const Volume& v : stage.volumes) *out.add_volumes() = ToProto(v);
  for (const Step& s : stage.steps) *out.add_steps() = ToProto(s);
  if (stage.timeout) *out.mutable_timeout() = DurationToProto(*stage.timeout);
  out.set_reuse_containers(stage.reuse_containers);
  for (const std::string& tag : stage.tags) out.add_tags(tag);
  return out;
}

absl::StatusOr<Stage> FromProto(const v1::Stage& stage, std::string_view path) {
  Stage out;
  out.name = stage.name();
  if (!stage.platform().empty()) out.platform = stage.platform();
  out.env = MapFromProto(stage.env());
  out.secrets = MapFromProto(stage.secrets());
  const std::string volumes_path = Field(path, "volumes");
  for (int i = 0; i < stage.volumes_size(); ++i) {
    absl::StatusOr<Volume> v =
        FromProto(stage.volumes(i), Index(volumes_path, i));
    if (!v.ok()) return v.status();
    out.volumes.push_back(*std::move(v));
  }
  const std::string steps_path = Field(path, "steps");
  for (int i = 0; i < stage.steps_size(); ++i) {
    absl::StatusOr<Step> s = FromProto(stage.steps(i), Index(steps_path, i));
    if (!s.ok()) return s.status();
    out.steps.push_back(*std::move(s));
  }
  if (stage.has_timeout()) {
    absl::StatusOr<absl::Duration> d =
        DurationFromProto(stage.timeout(), Field(path, "timeout"));
    if (!d.ok()) return d.status();
    out.timeout = *d;
  }
  out.reuse_containers = stage.reuse_containers();
  out.tags.assign(stage.tags().begin(), stage.tags().end());
  return out;
}

// ------------------------------------------------------------ results

v1::StepResult ToProto(const StepResult& result) {
  v1::StepResult out;
  out.set_id(ValidUtf8(result.id));
  out.set_status(ToProto(result.status));
  if (result.exit_code) out.set_exit_code(*result.exit_code);
  out.set_error(ValidUtf8(result.error));
  for (const auto& [k, v] : result.outputs) {
    (*out.mutable_outputs())[ValidUtf8(k)] = ValidUtf8(v);
  }
  *out.mutable_duration() = DurationToProto(result.duration);
  return out;
}

absl::StatusOr<StepResult> FromProto(const v1::StepResult& result,
                                     std::string_view path) {
  StepResult out;
  out.id = result.id();
  absl::StatusOr<StepStatus> status =
      FromProto(result.status(), Field(path, "status"));
  if (!status.ok()) return status.status();
  out.status = *status;
  if (result.has_exit_code()) out.exit_code = result.exit_code();
  out.error = result.error();
  out.outputs = MapFromProto(result.outputs());
  if (result.has_duration()) {
    absl::StatusOr<absl::Duration> d =
        DurationFromProto(result.duration(), Field(path, "duration"));
    if (!d.ok()) return d.status();
    out.duration = *d;
  }
  return out;
}

v1::StageResult ToProto(const StageResult& result) {
  v1::StageResult out;
  out.set_task_id(ValidUtf8(result.task_id));
  out.set_stage(ValidUtf8(result.stage));
  out.set_status(ToProto(result.status));
  out.set_error(ValidUtf8(result.error));
  for (const StepResult& s : result.steps) *out.add_steps() = ToProto(s);
  *out.mutable_duration() = DurationToProto(result.duration);
  return out;
}

absl::StatusOr<StageResult> FromProto(const v1::StageResult& result,
                                      std::string_view path) {
  StageResult out;
  out.task_id = result.task_id();
  out.stage = result.stage();
  absl::StatusOr<StepStatus> status =
      FromProto(result.status(), Field(path, "status"));
  if (!status.ok()) return status.status();
  out.status = *status;
  out.error = result.error();
  const std::string steps_path = Field(path, "steps");
  for (int i = 0; i < result.steps_size(); ++i) {
    absl::StatusOr<StepResult> s =
        FromProto(result.steps(i), Index(steps_path, i));
    if (!s.ok()) return s.status();
    out.steps.push_back(*std::move(s));
  }
  if (result.has_duration()) {
    absl::StatusOr<absl::Duration> d =
        DurationFromProto(result.duration(), Field(path, "duration"));
    if (!d.ok()) return d.status();
    out.duration = *d;
  }
  return out;
}

// ------------------------------------------------------------ logs

v1::LogLine ToProto(const LogLine& line) {
  v1::LogLine out;
  *out.mutable_time() = TimeToProto(line.time);
  out.set_text(std::string(line.text));
  out.set_partial(line.partial);
  return out;
}

bool AppendToChunk(const LogLine& line, v1::LogChunk* chunk) {
  if (chunk->closed()) return false;
  const uint64_t offset = line.number > 0 ? line.number - 1 : 0;
  if (chunk->lines_size() == 0 && chunk->task_id().empty()) {
    chunk->set_task_id(ValidUtf8(line.task_id));
    chunk->set_step_id(ValidUtf8(line.step_id));
    chunk->set_stream(ToProto(line.stream));
    chunk->set_offset(offset);
  } else if (!SameId(chunk->task_id(), line.task_id) ||
             !SameId(chunk->step_id(), line.step_id) ||
             chunk->stream() != ToProto(line.stream) ||
             chunk->offset() + static_cast<uint64_t>(chunk->lines_size()) !=
                 offset) {
    return false;
  }
  *chunk->add_lines() = ToProto(line);
  return true;
}

absl::StatusOr<std::vector<LogLine>> LogLinesFromProto(
    const v1::LogChunk& chunk, std::string_view path) {
  absl::StatusOr<LogStream> stream =
      FromProto(chunk.stream(), Field(path, "stream"));
  if (!stream.ok()) return stream.status();
  const uint64_t count = static_cast<uint64_t>(chunk.lines_size());
  // Line numbers run to offset + count; they must fit in a uint64_t.
  if (chunk.offset() > std::numeric_limits<uint64_t>::max() - count - 1) {
    return Invalid(Field(path, "offset"),
                   absl::StrCat("too large for ", count, " lines"));
  }
  std::vector<LogLine> out;
  out.reserve(chunk.lines_size());
  const std::string lines_path = Field(path, "lines");
  for (int i = 0; i < chunk.lines_size(); ++i) {
    const v1::LogLine& in = chunk.lines(i);
    LogLine line;
    line.task_id = chunk.task_id();
    line.step_id = chunk.step_id();
    line.stream = *stream;
    if (in.has_time()) {
      absl::StatusOr<absl::Time> t =
          TimeFromProto(in.time(), Field(Index(lines_path, i), "time"));
      if (!t.ok()) return t.status();
      line.time = *t;
    } else {
      line.time = absl::UnixEpoch();
    }
    line.number = chunk.offset() + static_cast<uint64_t>(i) + 1;
    line.text = in.text();
    line.partial = in.partial();
    out.push_back(line);
  }
  return out;
}

}  // namespace delegate::grpcv1

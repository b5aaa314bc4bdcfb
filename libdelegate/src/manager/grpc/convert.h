// The one conversion layer between the library's value types (stage.h,
// result.h, log_sink.h) and the delegate.v1 protos (proto/delegate/v1/).
// Pure functions, no I/O; everything that speaks gRPC converts here.
//
// ToProto cannot fail: every value has a proto. Durations and times beyond
// what google.protobuf.Duration and Timestamp hold (±10,000 years,
// absl::InfiniteDuration, absl::InfiniteFuture) are clamped to their range,
// and sub-nanosecond precision is dropped. The strings of results (ids,
// errors, outputs) are made valid UTF-8, as proto3 requires, by replacing
// each byte that is not with U+FFFD; a stage's strings are copied as they are.
//
// FromProto refuses only what the value types cannot hold: an enum value this
// build does not know (a newer peer), a result or log stream left
// UNSPECIFIED, a volume with no source, a negative or malformed duration, a
// malformed time, a log offset that overflows. Each error is InvalidArgument
// naming the field path ("stage.steps[2].pull: ...") and never holds a string
// read from the input, so no secret reaches a message. It does not validate
// the stage (empty names, unknown volume names, policy): a converted stage
// goes through the same checks as one read from a file (the scheduler's
// Submit, ValidateForPlatform). Unset proto fields take the value types'
// defaults, except that an empty Stage.platform is "host", as in a stage file.
#ifndef DELEGATE_MANAGER_GRPC_CONVERT_H_
#define DELEGATE_MANAGER_GRPC_CONVERT_H_

#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "delegate/log_sink.h"
#include "delegate/result.h"
#include "delegate/stage.h"
#include "delegate/v1/task.pb.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/timestamp.pb.h"

namespace delegate::grpcv1 {

// ------------------------------------------------------------ to proto

v1::Stage ToProto(const Stage& stage);
v1::Step ToProto(const Step& step);
v1::Volume ToProto(const Volume& volume);
v1::VolumeMount ToProto(const VolumeMount& mount);
v1::SecurityContext ToProto(const SecurityContext& context);
v1::Resources ToProto(const Resources& resources);
v1::RegistryCredentials ToProto(const RegistryCredentials& registry);
v1::StepResult ToProto(const StepResult& result);
v1::StageResult ToProto(const StageResult& result);
// The line alone (time, text, partial); its task, step, stream and number
// belong to the LogChunk: see AppendToChunk.
v1::LogLine ToProto(const LogLine& line);

v1::PullPolicy ToProto(PullPolicy pull);
v1::Priority ToProto(Priority priority);
v1::StepStatus ToProto(StepStatus status);
v1::LogStream ToProto(LogStream stream);

google::protobuf::Duration DurationToProto(absl::Duration d);
google::protobuf::Timestamp TimeToProto(absl::Time t);

// ------------------------------------------------------------ from proto

// `path` names the message in error messages; the defaults suit a message at
// the top of a request.
absl::StatusOr<Stage> FromProto(const v1::Stage& stage,
                                std::string_view path = "stage");
absl::StatusOr<Step> FromProto(const v1::Step& step,
                               std::string_view path = "step");
absl::StatusOr<Volume> FromProto(const v1::Volume& volume,
                                 std::string_view path = "volume");
absl::StatusOr<VolumeMount> FromProto(const v1::VolumeMount& mount,
                                      std::string_view path = "volume_mount");
absl::StatusOr<SecurityContext> FromProto(
    const v1::SecurityContext& context,
    std::string_view path = "security_context");
absl::StatusOr<Resources> FromProto(const v1::Resources& resources,
                                    std::string_view path = "resources");
absl::StatusOr<RegistryCredentials> FromProto(
    const v1::RegistryCredentials& registry,
    std::string_view path = "registry");
absl::StatusOr<StepResult> FromProto(const v1::StepResult& result,
                                     std::string_view path = "step_result");
absl::StatusOr<StageResult> FromProto(const v1::StageResult& result,
                                      std::string_view path = "stage_result");

// UNSPECIFIED is kDefault for a pull policy and kNormal for a priority, and
// an error for a step status or a log stream.
absl::StatusOr<PullPolicy> FromProto(v1::PullPolicy pull,
                                     std::string_view path = "pull");
absl::StatusOr<Priority> FromProto(v1::Priority priority,
                                   std::string_view path = "priority");
absl::StatusOr<StepStatus> FromProto(v1::StepStatus status,
                                     std::string_view path = "status");
absl::StatusOr<LogStream> FromProto(v1::LogStream stream,
                                    std::string_view path = "stream");

// Refuses negative durations (none in the task model may be) and malformed
// ones (out of range, seconds and nanos of different signs).
absl::StatusOr<absl::Duration> DurationFromProto(
    const google::protobuf::Duration& d, std::string_view path);
// Refuses times outside 0001-01-01 to 9999-12-31 and nanos outside
// [0, 999999999].
absl::StatusOr<absl::Time> TimeFromProto(const google::protobuf::Timestamp& t,
                                         std::string_view path);

// ------------------------------------------------------------ logs

// Lines are numbered from 1 per (task, step) in LogLine::number and indexed
// from 0 in LogChunk.offset: offset = number - 1.
//
// Adds `line` to `chunk` when it continues it: the same task, step and
// stream, and number == chunk offset + lines + 1. An empty chunk (no lines,
// no task id) takes the line's task, step, stream and offset. Returns false,
// leaving `chunk` as it was, when the line does not continue it (send the
// chunk and start another), or when the chunk is closed.
// REQUIRES: line.number >= 1.
bool AppendToChunk(const LogLine& line, v1::LogChunk* chunk);

// The chunk's lines as LogLines, numbered from chunk.offset() + 1.
// REQUIRES: `chunk` outlives the result (the lines view into it).
absl::StatusOr<std::vector<LogLine>> LogLinesFromProto(
    const v1::LogChunk& chunk, std::string_view path = "log");

}  // namespace delegate::grpcv1

#endif  // DELEGATE_MANAGER_GRPC_CONVERT_H_

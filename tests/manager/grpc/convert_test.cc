#include "manager/grpc/convert.h"

#include <cstdint>
#include <limits>
#include <string>
#include <variant>
#include <vector>

#include "absl/time/time.h"
#include "delegate/v1/runtime.pb.h"
#include "delegate/v1/session.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace delegate::grpcv1 {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

template <typename T>
std::string Msg(const absl::StatusOr<T>& s) {
  return std::string(s.status().message());
}

// ------------------------------------------------------------ equality

// Field by field, so that a field the converter forgets fails by name.
void ExpectSameSecurityContext(const SecurityContext& a,
                               const SecurityContext& b) {
  EXPECT_EQ(a.privileged, b.privileged);
  EXPECT_EQ(a.read_only_root_filesystem, b.read_only_root_filesystem);
  EXPECT_EQ(a.run_as_user, b.run_as_user);
  EXPECT_EQ(a.run_as_group, b.run_as_group);
  EXPECT_EQ(a.add_capability, b.add_capability);
  EXPECT_EQ(a.drop_capability, b.drop_capability);
}

void ExpectSameVolume(const Volume& a, const Volume& b) {
  EXPECT_EQ(a.name, b.name);
  ASSERT_EQ(a.source.index(), b.source.index()) << a.name;
  if (const auto* x = std::get_if<EmptyDirVolume>(&a.source)) {
    EXPECT_EQ(x->size_mib, std::get<EmptyDirVolume>(b.source).size_mib);
  } else if (const auto* x = std::get_if<HostPathVolume>(&a.source)) {
    const auto& y = std::get<HostPathVolume>(b.source);
    EXPECT_EQ(x->path, y.path);
    EXPECT_EQ(x->read_only, y.read_only);
  } else {
    const auto& x1 = std::get<EfsVolume>(a.source);
    const auto& y = std::get<EfsVolume>(b.source);
    EXPECT_EQ(x1.filesystem_id, y.filesystem_id);
    EXPECT_EQ(x1.root_directory, y.root_directory);
    EXPECT_EQ(x1.transit_encryption, y.transit_encryption);
    EXPECT_EQ(x1.access_point_id, y.access_point_id);
    EXPECT_EQ(x1.iam, y.iam);
  }
}

void ExpectSameStep(const Step& a, const Step& b) {
  SCOPED_TRACE("step " + a.id);
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.image, b.image);
  EXPECT_EQ(a.commands, b.commands);
  EXPECT_EQ(a.entrypoint, b.entrypoint);
  EXPECT_EQ(a.args, b.args);
  EXPECT_EQ(a.envs, b.envs);
  EXPECT_EQ(a.working_dir, b.working_dir);
  EXPECT_EQ(a.timeout, b.timeout);
  EXPECT_EQ(a.outputs, b.outputs);
  ExpectSameSecurityContext(a.security_context, b.security_context);
  ASSERT_EQ(a.volume_mounts.size(), b.volume_mounts.size());
  for (size_t i = 0; i < a.volume_mounts.size(); ++i) {
    EXPECT_EQ(a.volume_mounts[i].name, b.volume_mounts[i].name);
    EXPECT_EQ(a.volume_mounts[i].path, b.volume_mounts[i].path);
  }
  EXPECT_EQ(a.resources.cpus, b.resources.cpus);
  EXPECT_EQ(a.resources.memory_mib, b.resources.memory_mib);
  EXPECT_EQ(a.pull, b.pull);
  ASSERT_EQ(a.registry.has_value(), b.registry.has_value());
  if (a.registry) {
    EXPECT_EQ(a.registry->server, b.registry->server);
    EXPECT_EQ(a.registry->username, b.registry->username);
    EXPECT_EQ(a.registry->password, b.registry->password);
  }
  EXPECT_EQ(a.continue_on_error, b.continue_on_error);
}

void ExpectSameStage(const Stage& a, const Stage& b) {
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.platform, b.platform);
  EXPECT_EQ(a.env, b.env);
  EXPECT_EQ(a.secrets, b.secrets);
  ASSERT_EQ(a.volumes.size(), b.volumes.size());
  for (size_t i = 0; i < a.volumes.size(); ++i) {
    ExpectSameVolume(a.volumes[i], b.volumes[i]);
  }
  ASSERT_EQ(a.steps.size(), b.steps.size());
  for (size_t i = 0; i < a.steps.size(); ++i) {
    ExpectSameStep(a.steps[i], b.steps[i]);
  }
  EXPECT_EQ(a.timeout, b.timeout);
  EXPECT_EQ(a.reuse_containers, b.reuse_containers);
  EXPECT_EQ(a.tags, b.tags);
}

void ExpectSameStepResult(const StepResult& a, const StepResult& b) {
  SCOPED_TRACE("step result " + a.id);
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.status, b.status);
  EXPECT_EQ(a.exit_code, b.exit_code);
  EXPECT_EQ(a.error, b.error);
  EXPECT_EQ(a.outputs, b.outputs);
  EXPECT_EQ(a.duration, b.duration);
}

void ExpectSameStageResult(const StageResult& a, const StageResult& b) {
  EXPECT_EQ(a.task_id, b.task_id);
  EXPECT_EQ(a.stage, b.stage);
  EXPECT_EQ(a.status, b.status);
  EXPECT_EQ(a.error, b.error);
  ASSERT_EQ(a.steps.size(), b.steps.size());
  for (size_t i = 0; i < a.steps.size(); ++i) {
    ExpectSameStepResult(a.steps[i], b.steps[i]);
  }
  EXPECT_EQ(a.duration, b.duration);
}

// ------------------------------------------------------------ fixtures

// Every field of every type set, to values other than their defaults.
Stage FullStage() {
  Stage stage;
  stage.name = "build-and-test";
  stage.platform = "docker";
  stage.env = {{"CI", "true"}, {"LANG", "C.UTF-8"}};
  stage.secrets = {{"GH_TOKEN", "s3cr3t-gh"}, {"REGISTRY_PASSWORD", "pw-9"}};
  stage.volumes.push_back({"cache", EmptyDirVolume{1024}});
  stage.volumes.push_back({"scratch", EmptyDirVolume{}});
  stage.volumes.push_back(
      {"sock", HostPathVolume{"/var/run/docker.sock", true}});
  stage.volumes.push_back(
      {"shared", EfsVolume{"fs-12345678", "/cache", true,
                           "fsap-0123456789abcdef0", true}});

  Step compile;
  compile.id = "compile";
  compile.name = "Compile";
  compile.image = "gcc:12";
  compile.commands = {"make -j2", "echo VERSION=1.2 >> $HARNESS_OUTPUT_FILE"};
  compile.envs = {{"TOKEN", "${{secrets.GH_TOKEN}}"}, {"A B", "x"}};
  compile.working_dir = "src";
  compile.timeout = absl::Minutes(10) + absl::Nanoseconds(7);
  compile.outputs = {"VERSION", "SHA"};
  compile.security_context.privileged = false;
  compile.security_context.read_only_root_filesystem = true;
  compile.security_context.run_as_user = 1000;
  compile.security_context.run_as_group = 0;  // set to 0 is not unset
  compile.security_context.add_capability = {"NET_ADMIN", "SYS_PTRACE"};
  compile.security_context.drop_capability = {"ALL"};
  compile.volume_mounts = {{"cache", "/cache"}, {"shared", "/shared"}};
  compile.resources.cpus = 1.5;
  compile.resources.memory_mib = 512;
  compile.pull = PullPolicy::kAlways;
  compile.registry = RegistryCredentials{"registry.example.com:5000", "ci",
                                         "${{secrets.REGISTRY_PASSWORD}}"};
  compile.continue_on_error = true;
  stage.steps.push_back(compile);

  Step run;
  run.id = "run";
  run.image = "busybox";
  run.entrypoint = {"/bin/echo"};
  run.args = {"hello", "world"};
  run.pull = PullPolicy::kIfNotPresent;
  run.registry = RegistryCredentials{};  // set, with every field empty
  stage.steps.push_back(run);

  Step host;
  host.id = "host.step-3";
  host.commands = {"true"};
  host.pull = PullPolicy::kNever;
  host.security_context.run_as_user = 0;
  stage.steps.push_back(host);

  stage.timeout = absl::Minutes(30);
  stage.reuse_containers = true;
  stage.tags = {"linux", "gpu"};
  return stage;
}

StageResult FullResult() {
  StageResult r;
  r.task_id = "task-42";
  r.stage = "build-and-test";
  r.status = StepStatus::kFailure;
  r.error = "step test failed";
  StepResult a;
  a.id = "compile";
  a.status = StepStatus::kSuccess;
  a.exit_code = 0;
  a.outputs = {{"VERSION", "1.2"}, {"SHA", "abc"}};
  a.duration = absl::Milliseconds(1234) + absl::Nanoseconds(5);
  StepResult b;
  b.id = "test";
  b.status = StepStatus::kFailure;
  b.exit_code = -1;
  b.error = "exit code 255";
  b.duration = absl::Seconds(3);
  StepResult c;
  c.id = "slow";
  c.status = StepStatus::kTimeout;  // no exit code: it was killed
  c.error = "timed out after 1s";
  c.duration = absl::Seconds(1);
  StepResult d;
  d.id = "after";
  d.status = StepStatus::kSkipped;
  StepResult e;
  e.id = "cancelled";
  e.status = StepStatus::kCancelled;
  r.steps = {a, b, c, d, e};
  r.duration = absl::Seconds(9) + absl::Microseconds(3);
  return r;
}

// ------------------------------------------------------------ round trips

TEST(ConvertStage, RoundTripEveryField) {
  const Stage stage = FullStage();
  absl::StatusOr<Stage> back = FromProto(ToProto(stage));
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameStage(stage, *back);
}

TEST(ConvertStage, RoundTripThroughBytes) {
  const Stage stage = FullStage();
  const std::string bytes = ToProto(stage).SerializeAsString();
  v1::Stage parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  absl::StatusOr<Stage> back = FromProto(parsed);
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameStage(stage, *back);
}

TEST(ConvertStage, MinimalRoundTrip) {
  Stage stage;
  stage.name = "minimal";
  Step step;
  step.id = "only";
  step.commands = {"true"};
  stage.steps.push_back(step);

  const v1::Stage proto = ToProto(stage);
  // Unset stays unset on the wire: no timeout, no security context, no
  // resources, no registry.
  EXPECT_FALSE(proto.has_timeout());
  EXPECT_FALSE(proto.steps(0).has_timeout());
  EXPECT_FALSE(proto.steps(0).has_security_context());
  EXPECT_FALSE(proto.steps(0).has_resources());
  EXPECT_FALSE(proto.steps(0).has_registry());
  EXPECT_EQ(proto.steps(0).pull(), v1::PULL_POLICY_UNSPECIFIED);

  v1::Stage parsed;
  ASSERT_TRUE(parsed.ParseFromString(proto.SerializeAsString()));
  absl::StatusOr<Stage> back = FromProto(parsed);
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameStage(stage, *back);
  EXPECT_EQ(back->platform, "host");
  EXPECT_FALSE(back->steps[0].timeout.has_value());
  EXPECT_TRUE(back->steps[0].security_context.empty());
  EXPECT_FALSE(back->steps[0].registry.has_value());
}

TEST(ConvertStage, EmptyProtoIsTheDefaultStage) {
  absl::StatusOr<Stage> back = FromProto(v1::Stage());
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameStage(Stage(), *back);
  EXPECT_EQ(back->platform, "host");  // as in a stage file without one
}

TEST(ConvertStage, OptionalFieldsKeepPresence) {
  // false and 0 differ from unset in a security context and in resources.
  SecurityContext sc;
  sc.privileged = false;
  sc.run_as_user = 0;
  const v1::SecurityContext p = ToProto(sc);
  EXPECT_TRUE(p.has_privileged());
  EXPECT_TRUE(p.has_run_as_user());
  EXPECT_FALSE(p.has_read_only_root_filesystem());
  EXPECT_FALSE(p.has_run_as_group());
  absl::StatusOr<SecurityContext> back = FromProto(p);
  ASSERT_TRUE(back.ok());
  ExpectSameSecurityContext(sc, *back);

  Resources r;
  r.memory_mib = 0;
  const v1::Resources rp = ToProto(r);
  EXPECT_FALSE(rp.has_cpus());
  EXPECT_TRUE(rp.has_memory_mib());

  EmptyDirVolume e;
  e.size_mib = 0;
  const v1::Volume vp = ToProto(Volume{"v", e});
  EXPECT_TRUE(vp.empty_dir().has_size_mib());
  EXPECT_FALSE(
      ToProto(Volume{"v", EmptyDirVolume{}}).empty_dir().has_size_mib());
}

TEST(ConvertStage, VolumeSourcesMapToTheOneof) {
  const Stage stage = FullStage();
  const v1::Stage p = ToProto(stage);
  ASSERT_EQ(p.volumes_size(), 4);
  EXPECT_EQ(p.volumes(0).source_case(), v1::Volume::kEmptyDir);
  EXPECT_EQ(p.volumes(0).empty_dir().size_mib(), 1024);
  EXPECT_EQ(p.volumes(2).source_case(), v1::Volume::kHostPath);
  EXPECT_EQ(p.volumes(2).host_path().path(), "/var/run/docker.sock");
  EXPECT_EQ(p.volumes(3).source_case(), v1::Volume::kEfs);
  EXPECT_EQ(p.volumes(3).efs().access_point_id(), "fsap-0123456789abcdef0");
}

TEST(ConvertStage, EnumsMapByName) {
  EXPECT_EQ(ToProto(PullPolicy::kDefault), v1::PULL_POLICY_UNSPECIFIED);
  EXPECT_EQ(ToProto(PullPolicy::kAlways), v1::PULL_POLICY_ALWAYS);
  EXPECT_EQ(ToProto(PullPolicy::kIfNotPresent), v1::PULL_POLICY_IF_NOT_PRESENT);
  EXPECT_EQ(ToProto(PullPolicy::kNever), v1::PULL_POLICY_NEVER);
  EXPECT_EQ(ToProto(Priority::kHigh), v1::PRIORITY_HIGH);
  EXPECT_EQ(ToProto(Priority::kNormal), v1::PRIORITY_NORMAL);
  EXPECT_EQ(ToProto(Priority::kLow), v1::PRIORITY_LOW);
  for (Priority p : {Priority::kHigh, Priority::kNormal, Priority::kLow}) {
    EXPECT_EQ(*FromProto(ToProto(p)), p);
  }
  EXPECT_EQ(*FromProto(v1::PRIORITY_UNSPECIFIED), Priority::kNormal);
  EXPECT_EQ(ToProto(StepStatus::kSuccess), v1::STEP_STATUS_SUCCESS);
  EXPECT_EQ(ToProto(StepStatus::kCancelled), v1::STEP_STATUS_CANCELLED);
  EXPECT_EQ(ToProto(LogStream::kStdout), v1::LOG_STREAM_STDOUT);
  EXPECT_EQ(ToProto(LogStream::kStderr), v1::LOG_STREAM_STDERR);
  EXPECT_EQ(ToProto(LogStream::kSystem), v1::LOG_STREAM_SYSTEM);
}

TEST(ConvertResult, RoundTrip) {
  const StageResult result = FullResult();
  absl::StatusOr<StageResult> back = FromProto(ToProto(result));
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameStageResult(result, *back);
}

TEST(ConvertResult, RoundTripThroughBytes) {
  const StageResult result = FullResult();
  v1::StageResult parsed;
  ASSERT_TRUE(parsed.ParseFromString(ToProto(result).SerializeAsString()));
  EXPECT_TRUE(parsed.steps(0).has_exit_code());  // 0 is set
  EXPECT_EQ(parsed.steps(0).exit_code(), 0);
  EXPECT_FALSE(parsed.steps(2).has_exit_code());
  absl::StatusOr<StageResult> back = FromProto(parsed);
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameStageResult(result, *back);
}

TEST(ConvertResult, StepResultAlone) {
  const StepResult step = FullResult().steps[0];
  absl::StatusOr<StepResult> back = FromProto(ToProto(step));
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameStepResult(step, *back);
}

TEST(ConvertResult, InvalidUtf8BecomesReplacementCharacters) {
  StageResult r;
  r.task_id = "t";
  r.stage = "s";
  r.status = StepStatus::kFailure;
  r.error = "bad \xff byte";
  StepResult s;
  s.id = "x";
  s.status = StepStatus::kFailure;
  s.outputs = {{"OUT", "caf\xc3"}};  // truncated sequence
  r.steps.push_back(s);
  const v1::StageResult p = ToProto(r);
  EXPECT_EQ(p.error(), "bad \xEF\xBF\xBD byte");
  EXPECT_EQ(p.steps(0).outputs().at("OUT"), "caf\xEF\xBF\xBD");
  // So the bytes parse, in C++ and in any other language.
  v1::StageResult parsed;
  EXPECT_TRUE(parsed.ParseFromString(p.SerializeAsString()));
  // Valid UTF-8 passes unchanged.
  r.error = "ünïcödé ✓ 𝄞";
  EXPECT_EQ(ToProto(r).error(), r.error);
}

TEST(ConvertDuration, ClampsAndTruncates) {
  google::protobuf::Duration inf = DurationToProto(absl::InfiniteDuration());
  EXPECT_EQ(inf.seconds(), 315'576'000'000);
  EXPECT_EQ(inf.nanos(), 999'999'999);
  google::protobuf::Duration d =
      DurationToProto(absl::Seconds(3) + absl::Nanoseconds(250));
  EXPECT_EQ(d.seconds(), 3);
  EXPECT_EQ(d.nanos(), 250);
  google::protobuf::Duration neg = DurationToProto(-absl::Milliseconds(1500));
  EXPECT_EQ(neg.seconds(), -1);
  EXPECT_EQ(neg.nanos(), -500'000'000);
  absl::StatusOr<absl::Duration> back =
      DurationFromProto(DurationToProto(absl::Hours(2)), "d");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, absl::Hours(2));
}

TEST(ConvertTime, RoundTripBeforeAndAfterTheEpoch) {
  for (absl::Time t :
       {absl::UnixEpoch(), absl::FromUnixNanos(1'700'000'000'123'456'789),
        absl::FromUnixNanos(-1'500'000'001)}) {
    google::protobuf::Timestamp p = TimeToProto(t);
    EXPECT_GE(p.nanos(), 0);
    absl::StatusOr<absl::Time> back = TimeFromProto(p, "t");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, t);
  }
  EXPECT_TRUE(TimeFromProto(TimeToProto(absl::InfiniteFuture()), "t").ok());
  EXPECT_TRUE(TimeFromProto(TimeToProto(absl::InfinitePast()), "t").ok());
}

// ------------------------------------------------------------ invalid input

TEST(ConvertInvalid, UnknownPullPolicyNamesTheStep) {
  v1::Stage p = ToProto(FullStage());
  p.mutable_steps(2)->set_pull(static_cast<v1::PullPolicy>(9));
  absl::StatusOr<Stage> s = FromProto(p);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), StartsWith("stage.steps[2].pull: unknown PullPolicy "
                                 "value 9"));
}

TEST(ConvertInvalid, UnknownEnumSurvivesTheWireAndIsRefused) {
  // A newer peer's value arrives as a number this build has no name for.
  v1::Stage p = ToProto(FullStage());
  p.mutable_steps(0)->set_pull(static_cast<v1::PullPolicy>(42));
  v1::Stage parsed;
  ASSERT_TRUE(parsed.ParseFromString(p.SerializeAsString()));
  EXPECT_THAT(Msg(FromProto(parsed)),
              StartsWith("stage.steps[0].pull: unknown PullPolicy value 42"));
}

TEST(ConvertInvalid, VolumeWithoutSource) {
  v1::Stage p = ToProto(FullStage());
  p.mutable_volumes(1)->clear_source();
  absl::StatusOr<Stage> s = FromProto(p);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), StartsWith("stage.volumes[1]: the volume has no source"));
  EXPECT_THAT(Msg(s), HasSubstr("empty_dir, host_path or efs"));
}

TEST(ConvertInvalid, NegativeTimeouts) {
  v1::Stage p = ToProto(FullStage());
  p.mutable_steps(1)->mutable_timeout()->set_seconds(-5);
  EXPECT_THAT(Msg(FromProto(p)),
              StartsWith("stage.steps[1].timeout: a duration that must not be "
                         "negative, got -5s"));

  p = ToProto(FullStage());
  p.mutable_timeout()->set_seconds(0);
  p.mutable_timeout()->set_nanos(-1);
  EXPECT_THAT(Msg(FromProto(p)), StartsWith("stage.timeout: "));
}

TEST(ConvertInvalid, MalformedDurations) {
  google::protobuf::Duration d;
  d.set_seconds(1);
  d.set_nanos(-1);
  EXPECT_THAT(Msg(DurationFromProto(d, "x.timeout")),
              StartsWith("x.timeout: not a valid google.protobuf.Duration: "
                         "seconds and nanos have different signs"));
  d.set_seconds(315'576'000'001);
  d.set_nanos(0);
  EXPECT_THAT(Msg(DurationFromProto(d, "x.timeout")),
              StartsWith("x.timeout: not a valid google.protobuf.Duration"));
  d.set_seconds(0);
  d.set_nanos(1'000'000'000);
  EXPECT_FALSE(DurationFromProto(d, "x").ok());
}

TEST(ConvertInvalid, ResultStatusNotSetOrUnknown) {
  v1::StageResult p = ToProto(FullResult());
  p.mutable_steps(1)->set_status(v1::STEP_STATUS_UNSPECIFIED);
  EXPECT_THAT(Msg(FromProto(p)),
              StartsWith("stage_result.steps[1].status: not set"));

  p = ToProto(FullResult());
  p.set_status(static_cast<v1::StepStatus>(17));
  EXPECT_THAT(Msg(FromProto(p)),
              StartsWith("stage_result.status: unknown StepStatus value 17"));

  v1::StepResult step;
  step.set_id("x");
  EXPECT_THAT(Msg(FromProto(step)), StartsWith("step_result.status: not set"));
}

TEST(ConvertInvalid, NegativeResultDuration) {
  v1::StageResult p = ToProto(FullResult());
  p.mutable_steps(3)->mutable_duration()->set_seconds(-1);
  EXPECT_THAT(Msg(FromProto(p)),
              StartsWith("stage_result.steps[3].duration: a duration that "
                         "must not be negative"));
}

TEST(ConvertInvalid, CallerChoosesThePath) {
  v1::Step step;
  step.set_pull(static_cast<v1::PullPolicy>(5));
  EXPECT_THAT(Msg(FromProto(step, "dispatch.stage.steps[7]")),
              StartsWith("dispatch.stage.steps[7].pull: "));
  EXPECT_THAT(Msg(FromProto(step)), StartsWith("step.pull: "));
  EXPECT_THAT(Msg(FromProto(static_cast<v1::Priority>(8))),
              StartsWith("priority: unknown Priority value 8"));
}

TEST(ConvertInvalid, ErrorsHoldNoSecret) {
  v1::Stage p = ToProto(FullStage());
  p.mutable_volumes(0)->clear_source();
  p.mutable_steps(0)->mutable_timeout()->set_seconds(-1);
  const std::string msg = Msg(FromProto(p));
  ASSERT_FALSE(msg.empty());
  EXPECT_THAT(msg, Not(HasSubstr("s3cr3t-gh")));
  EXPECT_THAT(msg, Not(HasSubstr("pw-9")));
}

// ------------------------------------------------------------ logs

LogLine Line(std::string_view task, std::string_view step, LogStream stream,
             uint64_t number, std::string_view text, bool partial = false) {
  LogLine l;
  l.task_id = task;
  l.step_id = step;
  l.stream = stream;
  l.time =
      absl::FromUnixMillis(1'700'000'000'000 + static_cast<int64_t>(number));
  l.number = number;
  l.text = text;
  l.partial = partial;
  return l;
}

TEST(ConvertLog, ChunkTakesConsecutiveLinesOfOneStream) {
  v1::LogChunk chunk;
  EXPECT_TRUE(AppendToChunk(
      Line("t1", "compile", LogStream::kStdout, 5, "first"), &chunk));
  EXPECT_TRUE(AppendToChunk(
      Line("t1", "compile", LogStream::kStdout, 6, "second", true), &chunk));
  EXPECT_EQ(chunk.task_id(), "t1");
  EXPECT_EQ(chunk.step_id(), "compile");
  EXPECT_EQ(chunk.stream(), v1::LOG_STREAM_STDOUT);
  EXPECT_EQ(chunk.offset(), 4u);  // number 5 is the fifth line: index 4
  ASSERT_EQ(chunk.lines_size(), 2);
  EXPECT_EQ(chunk.lines(1).text(), "second");
  EXPECT_TRUE(chunk.lines(1).partial());

  // Another stream, step, task, or a line that is not the next: a new chunk.
  EXPECT_FALSE(AppendToChunk(
      Line("t1", "compile", LogStream::kStderr, 7, "err"), &chunk));
  EXPECT_FALSE(
      AppendToChunk(Line("t1", "test", LogStream::kStdout, 7, "x"), &chunk));
  EXPECT_FALSE(
      AppendToChunk(Line("t2", "compile", LogStream::kStdout, 7, "x"), &chunk));
  EXPECT_FALSE(AppendToChunk(
      Line("t1", "compile", LogStream::kStdout, 9, "gap"), &chunk));
  EXPECT_EQ(chunk.lines_size(), 2);

  chunk.set_closed(true);
  EXPECT_FALSE(AppendToChunk(
      Line("t1", "compile", LogStream::kStdout, 7, "late"), &chunk));
}

TEST(ConvertLog, ChunkRoundTripThroughBytes) {
  const std::string binary("bin\0\xff\xfe", 6);  // not UTF-8: bytes field
  std::vector<LogLine> lines = {
      Line("t1", "", LogStream::kSystem, 1, "initializing"),
      Line("t1", "", LogStream::kSystem, 2, binary),
      Line("t1", "", LogStream::kSystem, 3, ""),
  };
  v1::LogChunk chunk;
  for (const LogLine& l : lines) ASSERT_TRUE(AppendToChunk(l, &chunk));
  EXPECT_EQ(chunk.offset(), 0u);

  v1::LogChunk parsed;
  ASSERT_TRUE(parsed.ParseFromString(chunk.SerializeAsString()));
  absl::StatusOr<std::vector<LogLine>> back = LogLinesFromProto(parsed);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), lines.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ((*back)[i].task_id, lines[i].task_id);
    EXPECT_EQ((*back)[i].step_id, lines[i].step_id);
    EXPECT_EQ((*back)[i].stream, lines[i].stream);
    EXPECT_EQ((*back)[i].time, lines[i].time);
    EXPECT_EQ((*back)[i].number, lines[i].number);
    EXPECT_EQ((*back)[i].text, lines[i].text);
    EXPECT_EQ((*back)[i].partial, lines[i].partial);
  }
}

TEST(ConvertLog, InvalidChunks) {
  v1::LogChunk chunk;
  chunk.set_task_id("t");
  chunk.add_lines()->set_text("x");
  EXPECT_THAT(Msg(LogLinesFromProto(chunk)), StartsWith("log.stream: not set"));

  chunk.set_stream(static_cast<v1::LogStream>(9));
  EXPECT_THAT(Msg(LogLinesFromProto(chunk, "event.log")),
              StartsWith("event.log.stream: unknown LogStream value 9"));

  chunk.set_stream(v1::LOG_STREAM_STDERR);
  chunk.set_offset(std::numeric_limits<uint64_t>::max());
  EXPECT_THAT(Msg(LogLinesFromProto(chunk)), StartsWith("log.offset: "));

  chunk.set_offset(0);
  chunk.mutable_lines(0)->mutable_time()->set_nanos(-1);
  EXPECT_THAT(Msg(LogLinesFromProto(chunk)),
              StartsWith("log.lines[0].time: not a valid "
                         "google.protobuf.Timestamp"));

  // No lines, closed: the end of a log, valid.
  v1::LogChunk end;
  end.set_task_id("t");
  end.set_stream(v1::LOG_STREAM_STDOUT);
  end.set_offset(12);
  end.set_closed(true);
  absl::StatusOr<std::vector<LogLine>> none = LogLinesFromProto(end);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

// ------------------------------------------------------------ the services

TEST(ConvertContract, MessagesCarryTheTaskModel) {
  // The runtime and session messages embed the task types; a stage survives
  // a SubmitStageRequest and a Dispatch on the wire.
  v1::SubmitStageRequest submit;
  submit.set_task_id("task-1");
  *submit.mutable_stage() = ToProto(FullStage());
  submit.set_priority(ToProto(Priority::kHigh));
  v1::SubmitStageRequest submit_back;
  ASSERT_TRUE(submit_back.ParseFromString(submit.SerializeAsString()));
  absl::StatusOr<Stage> s = FromProto(submit_back.stage());
  ASSERT_TRUE(s.ok()) << s.status();
  ExpectSameStage(FullStage(), *s);
  EXPECT_EQ(*FromProto(submit_back.priority()), Priority::kHigh);

  v1::ManagerMessage m;
  v1::Dispatch* d = m.mutable_dispatch();
  d->set_stage_id("stage-1");
  d->set_lease_id("lease-1");
  d->set_fencing_token(7);
  *d->mutable_lease_duration() = DurationToProto(absl::Seconds(30));
  *d->mutable_stage() = ToProto(FullStage());
  d->set_attempt(2);
  v1::ManagerMessage m_back;
  ASSERT_TRUE(m_back.ParseFromString(m.SerializeAsString()));
  ASSERT_EQ(m_back.body_case(), v1::ManagerMessage::kDispatch);
  EXPECT_EQ(m_back.dispatch().fencing_token(), 7u);
  s = FromProto(m_back.dispatch().stage(), "dispatch.stage");
  ASSERT_TRUE(s.ok()) << s.status();
  ExpectSameStage(FullStage(), *s);

  v1::DelegateMessage report;
  v1::StageResultReport* r = report.mutable_stage_result();
  r->mutable_header()->set_stage_id("stage-1");
  r->mutable_header()->set_fencing_token(7);
  r->mutable_header()->set_idempotency_key("stage-1/7/stage");
  *r->mutable_result() = ToProto(FullResult());
  v1::DelegateMessage report_back;
  ASSERT_TRUE(report_back.ParseFromString(report.SerializeAsString()));
  absl::StatusOr<StageResult> result =
      FromProto(report_back.stage_result().result());
  ASSERT_TRUE(result.ok()) << result.status();
  ExpectSameStageResult(FullResult(), *result);

  EXPECT_EQ(static_cast<int>(v1::PROTOCOL_VERSION_1), 1);
}

}  // namespace
}  // namespace delegate::grpcv1

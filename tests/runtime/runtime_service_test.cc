// RuntimeService as a client sees it: a real gRPC server on loopback (or a
// Unix socket), the generated stub over a real channel, and a
// SchedulerStageRunner running host steps.
#include "delegate/runtime_service.h"

#include <grpcpp/grpcpp.h>

#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "delegate/builtin_executors.h"
#include "delegate/v1/runtime.grpc.pb.h"
#include "delegate/version.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/recording_log_sink.h"
#include "tests/fakes/test_ca.h"

namespace delegate {
namespace {

using ::delegate::testing::RecordingLogSink;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

constexpr char kSecret[] = "s3cr3t-value-42";

// "stage_started", "step_started:ID", "log:ID", "step_finished:ID:STATUS",
// "stage_finished:STATUS".
std::string Kind(const v1::StageEvent& e) {
  switch (e.event_case()) {
    case v1::StageEvent::kStageStarted:
      return "stage_started";
    case v1::StageEvent::kStepStarted:
      return "step_started:" + e.step_started().step_id();
    case v1::StageEvent::kLog:
      return "log:" + e.log().step_id();
    case v1::StageEvent::kStepFinished:
      return absl::StrCat("step_finished:", e.step_finished().id(), ":",
                          v1::StepStatus_Name(e.step_finished().status()));
    case v1::StageEvent::kStageFinished:
      return absl::StrCat("stage_finished:",
                          v1::StepStatus_Name(e.stage_finished().status()));
    case v1::StageEvent::EVENT_NOT_SET:
      break;
  }
  return "unset";
}

// The kinds without the log events.
std::vector<std::string> Kinds(const std::vector<v1::StageEvent>& events) {
  std::vector<std::string> out;
  for (const v1::StageEvent& e : events) {
    if (!e.has_log()) out.push_back(Kind(e));
  }
  return out;
}

// The lines of one step's log, in order, without the "+ command" echo of
// the host executor's script.
std::vector<std::string> LogText(const std::vector<v1::StageEvent>& events,
                                 const std::string& step_id) {
  std::vector<std::string> out;
  for (const v1::StageEvent& e : events) {
    if (!e.has_log() || e.log().step_id() != step_id) continue;
    for (const v1::LogLine& line : e.log().lines()) {
      if (!absl::StartsWith(line.text(), "+ ")) out.push_back(line.text());
    }
  }
  return out;
}

std::vector<uint64_t> Sequences(const std::vector<v1::StageEvent>& events) {
  std::vector<uint64_t> out;
  for (const v1::StageEvent& e : events) out.push_back(e.sequence());
  return out;
}

std::vector<uint64_t> OneTo(size_t n) {
  std::vector<uint64_t> out;
  for (uint64_t i = 1; i <= n; ++i) out.push_back(i);
  return out;
}

v1::Step* AddStep(v1::Stage& stage, const std::string& id,
                  const std::string& command) {
  v1::Step* step = stage.add_steps();
  step->set_id(id);
  step->add_commands(command);
  return step;
}

v1::Stage HostStage(const std::string& command) {
  v1::Stage stage;
  stage.set_name("test-stage");
  AddStep(stage, "only", command);
  return stage;
}

struct Watched {
  grpc::Status status;
  std::vector<v1::StageEvent> events;
};

class RuntimeServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    HostExecutorOptions host;
    host.workdir = ::testing::TempDir() + "/runtime-service-test";
    host.grace_period = absl::Seconds(1);
    ASSERT_TRUE(RegisterHostExecutor(executors_, host).ok());
    SchedulerOptions scheduling;
    scheduling.registry = &executors_;
    scheduling.delegate_name = "test-delegate";
    scheduling.max_stages = 1;
    scheduler_ = std::make_unique<Scheduler>(scheduling);
    SchedulerStageRunnerOptions options;
    options.also_log_to = &console_;
    runner_ = std::make_unique<SchedulerStageRunner>(*scheduler_, options);
    StartServer("127.0.0.1:0");
  }

  void StartServer(const std::string& listen,
                   RuntimeServiceOptions service = {}) {
    RuntimeServerOptions options;
    options.listen = listen;
    options.service = service;
    absl::StatusOr<std::unique_ptr<RuntimeServer>> server =
        RuntimeServer::Start(options, *runner_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = v1::RuntimeService::NewStub(grpc::CreateChannel(
        server_->address(), grpc::InsecureChannelCredentials()));
  }

  grpc::Status Submit(const std::string& task_id, const v1::Stage& stage,
                      v1::SubmitStageResponse* response = nullptr) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(10));
    v1::SubmitStageRequest request;
    request.set_task_id(task_id);
    *request.mutable_stage() = stage;
    v1::SubmitStageResponse ignored;
    return stub_->SubmitStage(&context, request,
                              response ? response : &ignored);
  }

  Watched Watch(const std::string& task_id, uint64_t after = 0,
                bool skip_logs = false) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
    v1::WatchStageRequest request;
    request.set_task_id(task_id);
    request.set_after_sequence(after);
    request.set_skip_logs(skip_logs);
    Watched watched;
    auto reader = stub_->WatchStage(&context, request);
    v1::StageEvent event;
    while (reader->Read(&event)) watched.events.push_back(event);
    watched.status = reader->Finish();
    return watched;
  }

  // Submits and watches to the end.
  Watched Run(const std::string& task_id, const v1::Stage& stage) {
    v1::SubmitStageResponse response;
    grpc::Status s = Submit(task_id, stage, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_TRUE(response.created());
    return Watch(task_id);
  }

  grpc::Status Cancel(const std::string& task_id, const std::string& reason,
                      v1::CancelStageResponse* response) {
    grpc::ClientContext context;
    v1::CancelStageRequest request;
    request.set_task_id(task_id);
    request.set_reason(reason);
    return stub_->CancelStage(&context, request, response);
  }

  v1::Capacity Capacity() {
    grpc::ClientContext context;
    v1::Capacity capacity;
    EXPECT_TRUE(stub_->GetCapacity(&context, {}, &capacity).ok());
    return capacity;
  }

  v1::Health Health() {
    grpc::ClientContext context;
    v1::Health health;
    EXPECT_TRUE(stub_->GetHealth(&context, {}, &health).ok());
    return health;
  }

  // Waits for the first step_started of the stage; false after 10 s.
  bool WaitForStepStarted(const std::string& task_id) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(10));
    v1::WatchStageRequest request;
    request.set_task_id(task_id);
    auto reader = stub_->WatchStage(&context, request);
    v1::StageEvent event;
    while (reader->Read(&event)) {
      if (event.has_step_started()) {
        context.TryCancel();
        reader->Finish();
        return true;
      }
    }
    reader->Finish();
    return false;
  }

  ExecutorRegistry executors_;
  RecordingLogSink console_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<SchedulerStageRunner> runner_;
  std::unique_ptr<RuntimeServer> server_;
  std::unique_ptr<v1::RuntimeService::Stub> stub_;
};

TEST_F(RuntimeServiceTest, WatchSeesEveryEventOfAStageInOrder) {
  v1::Stage stage;
  stage.set_name("two-steps");
  AddStep(stage, "hello", "echo hello-world");
  AddStep(stage, "second", "echo one; echo two >&2");

  Watched watched = Run("task-1", stage);

  ASSERT_TRUE(watched.status.ok()) << watched.status.error_message();
  EXPECT_THAT(Kinds(watched.events),
              ElementsAre("stage_started", "step_started:hello",
                          "step_finished:hello:STEP_STATUS_SUCCESS",
                          "step_started:second",
                          "step_finished:second:STEP_STATUS_SUCCESS",
                          "stage_finished:STEP_STATUS_SUCCESS"));
  EXPECT_THAT(LogText(watched.events, "hello"), ElementsAre("hello-world"));
  EXPECT_THAT(LogText(watched.events, "second"), ElementsAre("one", "two"));
  EXPECT_THAT(Sequences(watched.events),
              ElementsAreArray(OneTo(watched.events.size())));
  for (const v1::StageEvent& e : watched.events) {
    EXPECT_EQ(e.task_id(), "task-1");
    EXPECT_TRUE(e.has_time());
  }
  const v1::StageEvent& first = watched.events.front();
  EXPECT_EQ(first.stage_started().stage(), "two-steps");
  EXPECT_EQ(first.stage_started().platform(), "host");
  EXPECT_EQ(first.stage_started().delegate_name(), "test-delegate");
  const v1::StageResult& result = watched.events.back().stage_finished();
  EXPECT_EQ(result.task_id(), "task-1");
  EXPECT_EQ(result.stage(), "two-steps");
  ASSERT_EQ(result.steps_size(), 2);
  EXPECT_EQ(result.steps(0).exit_code(), 0);
  // Log lines between their step's start and finish, each stream apart.
  for (size_t i = 0; i < watched.events.size(); ++i) {
    const v1::StageEvent& e = watched.events[i];
    if (!e.has_log() || e.log().step_id() != "second") continue;
    EXPECT_EQ(e.log().stream(), e.log().lines(0).text() == "two"
                                    ? v1::LOG_STREAM_STDERR
                                    : v1::LOG_STREAM_STDOUT);
  }
  // The console sink got the lines too.
  EXPECT_THAT(console_.TextOf("hello"), ::testing::Contains("hello-world"));
}

TEST_F(RuntimeServiceTest, ManyLinesArriveInOrderWithContiguousOffsets) {
  Watched watched = Run("many-lines", HostStage("seq 1 3000"));

  ASSERT_TRUE(watched.status.ok()) << watched.status.error_message();
  std::vector<std::string> expected;
  for (int i = 1; i <= 3000; ++i) expected.push_back(std::to_string(i));
  EXPECT_THAT(LogText(watched.events, "only"), ElementsAreArray(expected));
  uint64_t next_offset = 0;
  for (const v1::StageEvent& e : watched.events) {
    if (!e.has_log() || e.log().step_id() != "only") continue;
    EXPECT_EQ(e.log().offset(), next_offset);
    next_offset += e.log().lines_size();
  }
  EXPECT_THAT(Sequences(watched.events),
              ElementsAreArray(OneTo(watched.events.size())));
}

TEST_F(RuntimeServiceTest, LinesReachAWatcherWhileTheStepRuns) {
  ASSERT_TRUE(
      Submit("prompt", HostStage("echo early; sleep 2; echo late")).ok());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(30));
  v1::WatchStageRequest request;
  request.set_task_id("prompt");
  auto reader = stub_->WatchStage(&context, request);
  std::optional<absl::Time> early, finished;
  v1::StageEvent event;
  while (reader->Read(&event)) {
    if (!early &&
        LogText({event}, "only") == std::vector<std::string>{"early"}) {
      early = absl::Now();
    }
    if (event.has_step_finished()) finished = absl::Now();
  }
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_TRUE(early.has_value());
  ASSERT_TRUE(finished.has_value());
  EXPECT_GT(*finished - *early, absl::Seconds(1));
}

TEST_F(RuntimeServiceTest, TheJournalKeepsTheLatestEventsOfTheLatestStages) {
  RuntimeServiceOptions small;
  small.events_per_stage = 5;
  small.finished_kept = 1;
  StartServer("127.0.0.1:0", small);
  v1::Stage stage;
  stage.set_name("five-steps");
  for (int i = 0; i < 5; ++i) AddStep(stage, absl::StrCat("s", i), "true");
  ASSERT_TRUE(Run("first", stage).status.ok());

  Watched late = Watch("first");

  ASSERT_TRUE(late.status.ok()) << late.status.error_message();
  ASSERT_EQ(late.events.size(), 5u);
  EXPECT_GT(late.events.front().sequence(), 1u);  // the gap shows
  EXPECT_TRUE(late.events.back().has_stage_finished());
  // A second finished stage pushes the first out: unknown, and new again.
  ASSERT_TRUE(Run("second", HostStage("true")).status.ok());
  EXPECT_EQ(Watch("first").status.error_code(), grpc::StatusCode::NOT_FOUND);
  v1::SubmitStageResponse response;
  ASSERT_TRUE(Submit("first", HostStage("true"), &response).ok());
  EXPECT_TRUE(response.created());
}

TEST_F(RuntimeServiceTest, ResubmittingATaskIdRunsNothingNew) {
  ASSERT_TRUE(Run("again", HostStage("echo first-run")).status.ok());
  // The repeat's stage is not looked at: not even an invalid one.
  v1::SubmitStageResponse response;
  grpc::Status s = Submit("again", v1::Stage(), &response);

  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_FALSE(response.created());
  EXPECT_EQ(response.task_id(), "again");
  EXPECT_EQ(Capacity().completed(), 1u);
  Watched watched = Watch("again");
  EXPECT_THAT(LogText(watched.events, "only"), ElementsAre("first-run"));
}

TEST_F(RuntimeServiceTest, ResubmittingARunningStageAnswersNotCreated) {
  v1::SubmitStageResponse response;
  ASSERT_TRUE(Submit("running", HostStage("sleep 30"), &response).ok());
  ASSERT_TRUE(response.created());
  ASSERT_TRUE(WaitForStepStarted("running"));
  ASSERT_TRUE(Submit("running", HostStage("echo other"), &response).ok());
  EXPECT_FALSE(response.created());
  EXPECT_EQ(Capacity().queued(), 0u);
  EXPECT_EQ(Capacity().running(), 1u);
}

TEST_F(RuntimeServiceTest, InvalidRequestsNameTheField) {
  struct Case {
    std::string task_id;
    v1::Stage stage;
    std::string field;
  };
  std::vector<Case> cases;
  cases.push_back({"", HostStage("true"), "task_id"});
  cases.push_back({"has space", HostStage("true"), "task_id"});
  cases.push_back({std::string(257, 'a'), HostStage("true"), "task_id"});
  {
    v1::Stage stage = HostStage("true");
    stage.add_volumes()->set_name("nothing");  // no source
    cases.push_back({"t1", stage, "stage.volumes[0]"});
  }
  {
    v1::Stage stage = HostStage("true");
    stage.mutable_steps(0)->mutable_timeout()->set_seconds(-5);
    cases.push_back({"t2", stage, "stage.steps[0].timeout"});
  }
  {
    v1::Stage stage = HostStage("true");
    stage.set_platform("no-such-platform");
    cases.push_back({"t3", stage, "stage.platform"});
  }
  {
    v1::Stage stage = HostStage("true");
    stage.mutable_steps(0)->set_id("");
    cases.push_back({"t4", stage, "stage.steps[0].id"});
  }
  {
    v1::Stage stage = HostStage("true");
    AddStep(stage, "only", "true");
    cases.push_back({"t5", stage, "stage.steps[1].id"});
  }
  {
    v1::Stage stage = HostStage("true");
    stage.clear_name();
    cases.push_back({"t6", stage, "stage.name"});
  }
  {
    v1::Stage stage = HostStage("echo ${{secrets.MISSING}}");
    cases.push_back({"t7", stage, "stage.steps[0].commands[0]"});
  }
  for (const Case& c : cases) {
    grpc::Status s = Submit(c.task_id, c.stage);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << c.field << ": " << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(c.field));
  }
  // None was taken: the ids are free, and nothing ran.
  EXPECT_EQ(Capacity().completed(), 0u);
  EXPECT_TRUE(Run("t1", HostStage("true")).status.ok());
}

TEST_F(RuntimeServiceTest, SecretsAreMaskedInLogsAndNeverInAnError) {
  v1::Stage stage = HostStage("echo \"token is $TOKEN\"");
  (*stage.mutable_secrets())["TOKEN"] = kSecret;
  (*stage.mutable_steps(0)->mutable_envs())["TOKEN"] = "${{secrets.TOKEN}}";

  Watched watched = Run("secret", stage);

  EXPECT_THAT(LogText(watched.events, "only"),
              ElementsAre("token is **************"));
  for (const v1::StageEvent& e : watched.events) {
    EXPECT_THAT(e.DebugString(), Not(HasSubstr(kSecret)));
  }
  // An error that would quote the value (the platform it names).
  v1::Stage bad = stage;
  bad.set_platform(kSecret);
  grpc::Status s = Submit("secret-2", bad);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("stage.platform"));
  EXPECT_THAT(s.error_message(), Not(HasSubstr(kSecret)));
  EXPECT_THAT(console_.All(), Not(HasSubstr(kSecret)));
}

TEST_F(RuntimeServiceTest, WatchAfterTheEndReplaysEverything) {
  Watched live = Run("replay", HostStage("echo a; echo b"));
  ASSERT_TRUE(live.status.ok());

  Watched again = Watch("replay");

  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_EQ(Kinds(again.events), Kinds(live.events));
  EXPECT_THAT(LogText(again.events, "only"), ElementsAre("a", "b"));
  EXPECT_EQ(again.events.back().sequence(), live.events.back().sequence());
  EXPECT_THAT(Sequences(again.events),
              ElementsAreArray(OneTo(again.events.size())));
}

TEST_F(RuntimeServiceTest, AfterSequenceResumesWhereTheWatcherWas) {
  Watched all = Run("resume", HostStage("echo a; echo b"));
  ASSERT_GE(all.events.size(), 4u);

  Watched rest = Watch("resume", /*after=*/2);

  ASSERT_TRUE(rest.status.ok());
  ASSERT_FALSE(rest.events.empty());
  EXPECT_EQ(rest.events.front().sequence(), 3u);
  EXPECT_EQ(Kinds(rest.events),
            Kinds({all.events.begin() + 2, all.events.end()}));
  // Past the end: nothing more, and the stream ends OK.
  Watched none = Watch("resume", all.events.back().sequence());
  EXPECT_TRUE(none.status.ok());
  EXPECT_THAT(none.events, IsEmpty());
}

TEST_F(RuntimeServiceTest, SkipLogsLeavesOutLogsButKeepsTheirSequences) {
  Watched all = Run("quiet", HostStage("echo a; echo b"));
  Watched quiet = Watch("quiet", 0, /*skip_logs=*/true);

  ASSERT_TRUE(quiet.status.ok());
  EXPECT_EQ(Kinds(quiet.events), Kinds(all.events));
  for (const v1::StageEvent& e : quiet.events) EXPECT_FALSE(e.has_log());
  std::vector<uint64_t> non_log;
  for (const v1::StageEvent& e : all.events) {
    if (!e.has_log()) non_log.push_back(e.sequence());
  }
  EXPECT_EQ(Sequences(quiet.events), non_log);
}

TEST_F(RuntimeServiceTest, CancelStopsARunningStepQuicklyWithTheReason) {
  v1::Stage stage;
  stage.set_name("long");
  AddStep(stage, "nap", "sleep 30");
  AddStep(stage, "after", "echo never");
  ASSERT_TRUE(Submit("cancel-me", stage).ok());
  ASSERT_TRUE(WaitForStepStarted("cancel-me"));
  const absl::Time start = absl::Now();

  v1::CancelStageResponse response;
  ASSERT_TRUE(Cancel("cancel-me", "stopped by the test", &response).ok());
  EXPECT_TRUE(response.cancelled());
  Watched watched = Watch("cancel-me");

  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  ASSERT_TRUE(watched.status.ok()) << watched.status.error_message();
  EXPECT_THAT(Kinds(watched.events),
              ElementsAre("stage_started", "step_started:nap",
                          "step_finished:nap:STEP_STATUS_CANCELLED",
                          "step_finished:after:STEP_STATUS_SKIPPED",
                          "stage_finished:STEP_STATUS_CANCELLED"));
  EXPECT_EQ(watched.events.back().stage_finished().error(),
            "stopped by the test");
  EXPECT_THAT(LogText(watched.events, "after"), IsEmpty());
  // Once finished, a cancel changes nothing.
  ASSERT_TRUE(Cancel("cancel-me", "again", &response).ok());
  EXPECT_FALSE(response.cancelled());
}

TEST_F(RuntimeServiceTest, CancelOfAQueuedStageFinishesItAtOnce) {
  ASSERT_TRUE(Submit("busy", HostStage("sleep 30")).ok());  // max_stages 1
  ASSERT_TRUE(WaitForStepStarted("busy"));
  v1::Stage waiting = HostStage("echo never");
  (*waiting.mutable_secrets())["S"] = kSecret;
  ASSERT_TRUE(Submit("waiting", waiting).ok());
  EXPECT_EQ(Capacity().queued(), 1u);

  v1::CancelStageResponse response;
  ASSERT_TRUE(
      Cancel("waiting", absl::StrCat("no need for ", kSecret), &response).ok());
  EXPECT_TRUE(response.cancelled());
  Watched watched = Watch("waiting");

  EXPECT_THAT(Kinds(watched.events),
              ElementsAre("step_finished:only:STEP_STATUS_SKIPPED",
                          "stage_finished:STEP_STATUS_CANCELLED"));
  EXPECT_EQ(watched.events.back().stage_finished().error(),
            "no need for **************");
}

TEST_F(RuntimeServiceTest, UnknownTaskIdIsNotFound) {
  Watched watched = Watch("nobody");
  EXPECT_EQ(watched.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(watched.status.error_message(), HasSubstr("task_id"));
  v1::CancelStageResponse response;
  EXPECT_EQ(Cancel("nobody", "", &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(RuntimeServiceTest, CapacityCountsStagesAndNamesPlatforms) {
  v1::Capacity idle = Capacity();
  EXPECT_EQ(idle.max_stages(), 1u);
  EXPECT_THAT(idle.platforms(), ElementsAre("host"));
  EXPECT_EQ(idle.running(), 0u);
  EXPECT_FALSE(idle.draining());

  ASSERT_TRUE(Run("one", HostStage("true")).status.ok());
  ASSERT_TRUE(Submit("two", HostStage("sleep 30")).ok());
  ASSERT_TRUE(WaitForStepStarted("two"));
  ASSERT_TRUE(Submit("three", HostStage("true")).ok());

  v1::Capacity busy = Capacity();
  EXPECT_EQ(busy.completed(), 1u);
  EXPECT_EQ(busy.running(), 1u);
  EXPECT_EQ(busy.queued(), 1u);
}

TEST_F(RuntimeServiceTest, HealthNamesTheDelegateAndTheVersion) {
  v1::Health health = Health();
  EXPECT_EQ(health.state(), v1::Health::STATE_SERVING);
  EXPECT_EQ(health.delegate_name(), "test-delegate");
  EXPECT_EQ(health.version(), Version());
  EXPECT_EQ(health.git_commit(), GitCommit());
  EXPECT_THAT(health.message(), IsEmpty());
}

TEST_F(RuntimeServiceTest, DrainingRefusesNewStages) {
  runner_->Drain(absl::ZeroDuration());

  grpc::Status s = Submit("late", HostStage("true"));

  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
  v1::Health health = Health();
  EXPECT_EQ(health.state(), v1::Health::STATE_DRAINING);
  EXPECT_THAT(health.message(), Not(IsEmpty()));
  EXPECT_TRUE(Capacity().draining());
}

TEST_F(RuntimeServiceTest, ShutdownEndsWatchesWithUnavailable) {
  ASSERT_TRUE(Submit("forever", HostStage("sleep 30")).ok());
  ASSERT_TRUE(WaitForStepStarted("forever"));
  Watched watched;
  std::thread watcher([&] { watched = Watch("forever"); });
  absl::SleepFor(absl::Milliseconds(200));
  const absl::Time start = absl::Now();

  server_->Shutdown();
  watcher.join();

  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_EQ(watched.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << watched.status.error_message();
  EXPECT_FALSE(watched.events.empty());
}

TEST_F(RuntimeServiceTest, ServesOnAUnixSocket) {
  const std::string path = ::testing::TempDir() + "/runtime-service-test.sock";
  StartServer("unix:" + path);
  EXPECT_EQ(server_->address(), "unix:" + path);

  Watched watched = Run("over-unix", HostStage("echo via-unix"));

  ASSERT_TRUE(watched.status.ok()) << watched.status.error_message();
  EXPECT_THAT(LogText(watched.events, "only"), ElementsAre("via-unix"));
}

TEST_F(RuntimeServiceTest, ServesOverTls) {
  absl::StatusOr<std::unique_ptr<testing::TestCa>> ca =
      testing::TestCa::Create();
  ASSERT_TRUE(ca.ok()) << ca.status();
  RuntimeServerOptions options;
  options.listen = "127.0.0.1:0";
  options.tls_cert_file = (*ca)->server().cert_file;
  options.tls_key_file = (*ca)->server().key_file;
  absl::StatusOr<std::unique_ptr<RuntimeServer>> server =
      RuntimeServer::Start(options, *runner_);
  ASSERT_TRUE(server.ok()) << server.status();
  std::ifstream in((*ca)->ca_file());
  std::stringstream ca_pem;
  ca_pem << in.rdbuf();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ca_pem.str();
  auto stub = v1::RuntimeService::NewStub(
      grpc::CreateChannel(absl::StrCat("localhost:", (*server)->port()),
                          grpc::SslCredentials(ssl)));

  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(10));
  v1::Health health;
  grpc::Status s = stub->GetHealth(&context, {}, &health);

  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(health.delegate_name(), "test-delegate");
}

TEST_F(RuntimeServiceTest, UnusableOptionsAreClearErrors) {
  auto start = [&](std::string listen, std::string cert = "",
                   std::string key = "") {
    RuntimeServerOptions options;
    options.listen = std::move(listen);
    options.tls_cert_file = std::move(cert);
    options.tls_key_file = std::move(key);
    return RuntimeServer::Start(std::move(options), *runner_).status();
  };
  for (const char* listen :
       {"nonsense", "127.0.0.1:70000", ":", "unix:", "127.0.0.1:port"}) {
    absl::Status s = start(listen);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << listen << ": " << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("listen")) << listen;
  }
  absl::Status open = start("0.0.0.0:0");
  EXPECT_TRUE(absl::IsInvalidArgument(open)) << open;
  EXPECT_THAT(std::string(open.message()), HasSubstr("TLS"));

  absl::Status in_use = start(server_->address());
  EXPECT_TRUE(absl::IsUnavailable(in_use)) << in_use;
  EXPECT_THAT(std::string(in_use.message()), HasSubstr(server_->address()));

  absl::Status half = start("127.0.0.1:0", "/nonexistent/cert.pem");
  EXPECT_TRUE(absl::IsInvalidArgument(half)) << half;
  EXPECT_THAT(std::string(half.message()), HasSubstr("tls_key_file"));
  absl::Status unreadable =
      start("127.0.0.1:0", "/nonexistent/cert.pem", "/nonexistent/key.pem");
  EXPECT_TRUE(absl::IsInvalidArgument(unreadable)) << unreadable;
  EXPECT_THAT(std::string(unreadable.message()), HasSubstr("tls_cert_file"));
}

}  // namespace
}  // namespace delegate

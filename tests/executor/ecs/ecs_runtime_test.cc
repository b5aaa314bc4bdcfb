// What the ECS executors share across stages, against the strict loopback
// ECS fake: which leftovers of an earlier run Ready removes (more than one
// ListTasks page and one DescribeTasks call of them), what it finds from the
// delegate's own task, and the session's poller following more tasks than
// one DescribeTasks call takes. The stage-level behaviour is in
// tests/integration/ecs_executor_test.cc.
#include "executor/ecs/ecs_runtime.h"

#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "delegate/event_log.h"
#include "delegate/executor.h"
#include "executor/ecs/task_definition.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rapidjson/document.h"
#include "tests/fakes/aws_fake.h"

namespace delegate::ecs {
namespace {

using delegate::testing::ContainerBehaviour;
using delegate::testing::FakeAws;
using delegate::testing::FakeAwsClient;
using delegate::testing::FakeAwsCredential;
using delegate::testing::FakeAwsOptions;
using delegate::testing::FakeContainer;
using delegate::testing::FakeRejection;
using ::testing::AllOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;

const FakeAwsCredential& Key() {
  static const FakeAwsCredential* key = new FakeAwsCredential{
      "AKIDRUNTIME", "runtime-secret", "", absl::InfiniteFuture()};
  return *key;
}

// A task ARN in cluster "ci" that no task has.
constexpr char kDeadInstance[] =
    "arn:aws:ecs:us-east-1:123456789012:task/ci/"
    "0123456789abcdef0123456789abcdef";

std::map<std::string, std::string> Tags(const std::string& delegate,
                                        const std::string& instance,
                                        const std::string& stage) {
  return {
      {kTagDelegate, delegate}, {kTagInstance, instance}, {kTagStage, stage}};
}

std::string TagsJson(const std::map<std::string, std::string>& tags) {
  std::vector<std::string> items;
  for (const auto& [k, v] : tags) {
    items.push_back(absl::StrCat(R"({"key":")", k, R"(","value":")", v, "\"}"));
  }
  return absl::StrCat("[", absl::StrJoin(items, ","), "]");
}

TEST(IsLeftoverTest, SelectsByDelegateInstanceAndStage) {
  auto never = [](const std::string&) { return false; };
  auto always = [](const std::string&) { return true; };
  // This instance's, of any stage.
  EXPECT_TRUE(IsLeftover(Tags("d", "me", "task-1"), "d", "me", "", never));
  // Another delegate's, or untagged: never.
  EXPECT_FALSE(IsLeftover(Tags("e", "me", "task-1"), "d", "me", "", always));
  EXPECT_FALSE(IsLeftover({}, "d", "me", "", always));
  EXPECT_FALSE(IsLeftover({{kTagDelegate, "d"}}, "d", "me", "", always));
  // Another instance's: only when it is gone.
  EXPECT_FALSE(IsLeftover(Tags("d", "you", "task-1"), "d", "me", "", never));
  EXPECT_TRUE(IsLeftover(Tags("d", "you", "task-1"), "d", "me", "", always));
  // With a stage: that stage of this instance only.
  EXPECT_TRUE(
      IsLeftover(Tags("d", "me", "task-1"), "d", "me", "task-1", always));
  EXPECT_FALSE(
      IsLeftover(Tags("d", "me", "task-2"), "d", "me", "task-1", always));
  EXPECT_FALSE(
      IsLeftover(Tags("d", "you", "task-1"), "d", "me", "task-1", always));
  // Tag values are compared as ECS holds them.
  EXPECT_TRUE(IsLeftover(Tags("my delegate_", "host_1", "t"), "my delegate?",
                         "host#1", "", never));
}

TEST(IsKeptForResumeTest, SelectsTheStagesToBeResumedOfThisInstance) {
  const std::set<std::string> resuming = {"task-1", "task?2"};
  EXPECT_TRUE(IsKeptForResume(Tags("d", "me", "task-1"), "me", resuming));
  // Tag values are compared as ECS holds them.
  EXPECT_TRUE(IsKeptForResume(Tags("d", "me", "task_2"), "me", resuming));
  EXPECT_FALSE(IsKeptForResume(Tags("d", "me", "task-3"), "me", resuming));
  // Another instance resumes nothing here.
  EXPECT_FALSE(IsKeptForResume(Tags("d", "you", "task-1"), "me", resuming));
  EXPECT_FALSE(IsKeptForResume({{kTagInstance, "me"}}, "me", resuming));
  EXPECT_FALSE(IsKeptForResume(Tags("d", "me", "task-1"), "me", {}));
}

class EcsRuntimeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeAwsOptions options;
    options.testdata_dir = delegate::testing::AwsTestdataDir();
    options.credentials.push_back(Key());
    options.provisioning_for = absl::Milliseconds(5);
    options.pending_for = absl::Milliseconds(5);
    options.behaviour = [](const FakeContainer&) {
      ContainerBehaviour b;
      b.run_for = absl::Hours(1);
      return b;
    };
    absl::StatusOr<std::unique_ptr<FakeAws>> fake = FakeAws::Start(options);
    ASSERT_TRUE(fake.ok()) << fake.status();
    fake_ = *std::move(fake);
    client_ = std::make_unique<FakeAwsClient>(*fake_, Key());
  }

  void TearDown() override {
    if (!fake_) return;
    for (const FakeRejection& r : fake_->Rejected()) {
      ADD_FAILURE() << "AWS would refuse " << r.operation << ": " << r.code
                    << ": " << r.message;
    }
  }

  EcsExecutorOptions Options() {
    EcsExecutorOptions o;
    o.env = EnvMap{{"AWS_ACCESS_KEY_ID", Key().access_key_id},
                   {"AWS_SECRET_ACCESS_KEY", Key().secret_access_key},
                   {"AWS_REGION", "us-east-1"},
                   {"AWS_ENDPOINT_URL", fake_->url()}};
    o.cluster = "ci";
    o.subnets = {"subnet-0123456789abcdef0"};
    o.instance = "me";
    o.poll_interval = absl::Milliseconds(20);
    return o;
  }

  static rapidjson::Document Json(const http::Response& r) {
    rapidjson::Document doc;
    doc.Parse(r.body.data(), r.body.size());
    EXPECT_EQ(r.status, 200) << r.body;
    return doc;
  }

  // Registers a Fargate task definition and returns its ARN.
  std::string Register(const std::string& family,
                       const std::map<std::string, std::string>& tags) {
    rapidjson::Document doc = Json(client_->Ecs(
        "RegisterTaskDefinition", absl::StrCat(R"({"family":")", family, R"(",
            "requiresCompatibilities":["FARGATE"],"networkMode":"awsvpc",
            "cpu":"256","memory":"512",
            "executionRoleArn":"arn:aws:iam::123456789012:role/ci-exec",
            "containerDefinitions":[{"name":"step","image":"busybox"}],
            "tags":)",
                                               TagsJson(tags), "}")));
    return doc["taskDefinition"]["taskDefinitionArn"].GetString();
  }

  // Runs a task of `definition` in cluster "ci" and returns its ARN.
  std::string Run(const std::string& definition, const std::string& started_by,
                  const std::map<std::string, std::string>& tags) {
    rapidjson::Document doc = Json(client_->Ecs(
        "RunTask",
        absl::StrCat(R"({"cluster":"ci","taskDefinition":")", definition,
                     R"(","launchType":"FARGATE",
            "networkConfiguration":{"awsvpcConfiguration":{
              "subnets":["subnet-0123456789abcdef0"]}},
            "startedBy":")",
                     started_by, R"(","tags":)", TagsJson(tags), "}")));
    return doc["tasks"][0]["taskArn"].GetString();
  }

  std::map<std::string, std::string> DesiredStatus() {
    std::map<std::string, std::string> out;
    for (const delegate::testing::FakeTask& t : fake_->Tasks()) {
      out[t.arn] = t.desired_status;
    }
    return out;
  }

  std::unique_ptr<FakeAws> fake_;
  std::unique_ptr<FakeAwsClient> client_;
};

TEST_F(EcsRuntimeTest, ReadyRemovesWhatAnEarlierRunOfThisInstanceLeft) {
  const std::string mine_def =
      Register(TaskFamily("d"), Tags("d", "me", "task-1"));
  const std::string host_def =
      Register(TaskFamily("d"), Tags("d", "host-b", "task-2"));
  const std::string other_def =
      Register(TaskFamily("e"), Tags("e", "me", "task-1"));
  // More than one ListTasks page and one DescribeTasks call hold.
  std::vector<std::string> mine;
  for (int i = 0; i < 120; ++i) {
    mine.push_back(Run(mine_def, StartedBy("d"), Tags("d", "me", "task-1")));
  }
  // Another delegate's task, whose ARN stands for a live instance of "d".
  const std::string live =
      Run(other_def, StartedBy("e"), Tags("e", "host-c", "task-9"));
  const std::string of_live =
      Run(mine_def, StartedBy("d"), Tags("d", live, "task-3"));
  const std::string of_dead =
      Run(mine_def, StartedBy("d"), Tags("d", kDeadInstance, "task-4"));
  const std::string of_host =
      Run(host_def, StartedBy("d"), Tags("d", "host-b", "task-2"));
  const std::string not_ours =
      Run(mine_def, StartedBy("d"), Tags("e", "me", "task-1"));

  EcsRuntime runtime(Options());
  ReapReport report;
  absl::StatusOr<EcsSession*> session = runtime.Ready("d", &report);
  ASSERT_TRUE(session.ok()) << session.status();

  std::map<std::string, std::string> desired = DesiredStatus();
  for (const std::string& arn : mine) EXPECT_EQ(desired[arn], "STOPPED");
  EXPECT_EQ(desired[of_dead], "STOPPED");
  EXPECT_EQ(desired[of_live], "RUNNING");
  EXPECT_EQ(desired[of_host], "RUNNING");
  EXPECT_EQ(desired[not_ours], "RUNNING");
  EXPECT_EQ(desired[live], "RUNNING");
  std::map<std::string, std::string> definitions;
  for (const delegate::testing::FakeTaskDefinition& d :
       fake_->TaskDefinitions()) {
    definitions[d.arn] = d.status;
  }
  EXPECT_NE(definitions[mine_def], "ACTIVE");
  EXPECT_EQ(definitions[host_def], "ACTIVE");
  EXPECT_EQ(definitions[other_def], "ACTIVE");

  int removed_tasks = 0;
  for (const std::string& what : report.removed) {
    EXPECT_THAT(what, StartsWith("task "));
    removed_tasks += !absl::StartsWith(what, "task definition ");
  }
  EXPECT_EQ(removed_tasks, 121);
  EXPECT_THAT(report.removed,
              Contains(absl::StrCat("task definition ",
                                    mine_def.substr(mine_def.rfind('/') + 1))));
  EXPECT_THAT(report.errors, IsEmpty());

  // Ready again: the same session, without a call.
  const size_t calls = fake_->Calls().size();
  absl::StatusOr<EcsSession*> again = runtime.Ready("d", &report);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, *session);
  EXPECT_EQ(fake_->Calls().size(), calls);
}

TEST_F(EcsRuntimeTest, ReadyKeepsWhatTheStagesToBeResumedMade) {
  const std::string resumed_def =
      Register(TaskFamily("d"), Tags("d", "me", "task-1"));
  const std::string gone_def =
      Register(TaskFamily("d"), Tags("d", "me", "task-2"));
  std::map<std::string, std::string> step = Tags("d", "me", "task-1");
  step[kTagStep] = "build";
  const std::string resumed = Run(resumed_def, StartedBy("d"), step);
  const std::string gone =
      Run(gone_def, StartedBy("d"), Tags("d", "me", "task-2"));
  // The same stage id of a gone instance is not this one's to resume.
  const std::string of_dead =
      Run(resumed_def, StartedBy("d"), Tags("d", kDeadInstance, "task-1"));

  EcsRuntime runtime(Options());
  runtime.KeepForResume({"task-1"});
  ReapReport report;
  absl::StatusOr<EcsSession*> session = runtime.Ready("d", &report);
  ASSERT_TRUE(session.ok()) << session.status();

  std::map<std::string, std::string> desired = DesiredStatus();
  EXPECT_EQ(desired[resumed], "RUNNING");
  EXPECT_EQ(desired[gone], "STOPPED");
  EXPECT_EQ(desired[of_dead], "STOPPED");
  std::map<std::string, std::string> definitions;
  for (const delegate::testing::FakeTaskDefinition& d :
       fake_->TaskDefinitions()) {
    definitions[d.arn] = d.status;
  }
  EXPECT_EQ(definitions[resumed_def], "ACTIVE");
  EXPECT_NE(definitions[gone_def], "ACTIVE");
  EXPECT_THAT(report.removed, Not(Contains(HasSubstr(TaskId(resumed)))));

  // Handed over once.
  KeptStage kept = runtime.TakeKept("task-1");
  EXPECT_THAT(kept.tasks, ElementsAre(resumed));
  EXPECT_THAT(kept.task_definitions, ElementsAre(resumed_def));
  EXPECT_THAT(runtime.TakeKept("task-1").tasks, IsEmpty());
  EXPECT_THAT(runtime.TakeKept("task-2").task_definitions, IsEmpty());

  // The step's task is found by its tags, running or stopped.
  absl::StatusOr<TaskStates> found =
      (*session)->StepTasks("d", "task-1", "build");
  ASSERT_TRUE(found.ok()) << found.status();
  ASSERT_EQ(found->size(), 1u);
  EXPECT_EQ(found->begin()->first, resumed);
  ASSERT_TRUE(
      (*session)->StopTask(resumed, "test over", Options().cluster).ok());
  found = (*session)->StepTasks("d", "task-1", "build");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->size(), 1u);
  found = (*session)->StepTasks("d", "task-1", "test");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_THAT(*found, IsEmpty());
}

TEST_F(EcsRuntimeTest, TheSessionPollsMoreTasksThanOneDescribeTakes) {
  EcsRuntime runtime(Options());
  ReapReport report;
  absl::StatusOr<EcsSession*> session = runtime.Ready("d", &report);
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_THAT(report.removed, IsEmpty());
  const std::string def = Register(TaskFamily("d"), Tags("d", "me", "t"));
  std::vector<std::string> arns;
  for (int i = 0; i < 150; ++i) {
    arns.push_back(Run(def, StartedBy("d"), Tags("d", "me", "t")));
  }
  TaskPoller& poller = (*session)->poller();
  for (const std::string& arn : arns) poller.Watch(arn);
  for (const std::string& arn : arns) {
    TaskState s = poller.WaitForChange(arn, 0, absl::Seconds(30));
    EXPECT_GE(s.version, 1u) << arn;
    EXPECT_THAT(s.missing, IsEmpty());
    EXPECT_FALSE(s.last_status.empty());
  }
  for (const std::string& arn : arns) poller.Unwatch(arn);
  EXPECT_GE(fake_->CallCount("DescribeTasks"), 2);
}

TEST_F(EcsRuntimeTest, ClusterSubnetAndInstanceComeFromTheOwnTask) {
  const std::string metadata =
      fake_->ServeOwnTask("delegates", "FARGATE", "subnet-0aaaaaaaaaaaaaaaa",
                          "sg-0bbbbbbbbbbbbbbbb");
  EcsExecutorOptions options = Options();
  (*options.env)["ECS_CONTAINER_METADATA_URI_V4"] = metadata;
  options.cluster.clear();
  options.subnets.clear();
  options.instance.clear();
  EcsRuntime runtime(std::move(options));
  ReapReport report;
  absl::StatusOr<EcsSession*> session = runtime.Ready("d", &report);
  ASSERT_TRUE(session.ok()) << session.status();
  const EcsSession::Resolved& r = (*session)->resolved();
  EXPECT_EQ(r.region, "us-east-1");
  EXPECT_THAT(r.cluster, HasSubstr("delegates"));
  EXPECT_THAT(r.subnets, ElementsAre("subnet-0aaaaaaaaaaaaaaaa"));
  EXPECT_THAT(r.instance, StartsWith("arn:aws:ecs:us-east-1:123456789012:"
                                     "task/delegates/"));
}

TEST_F(EcsRuntimeTest, WithoutAClusterReadySaysWhatToSetBeforeAnyCall) {
  EcsExecutorOptions options = Options();
  options.cluster.clear();
  EcsRuntime runtime(std::move(options));
  ReapReport report;
  absl::StatusOr<EcsSession*> session = runtime.Ready("d", &report);
  ASSERT_FALSE(session.ok());
  EXPECT_EQ(session.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(session.status().message(), HasSubstr("DELEGATE_ECS_CLUSTER"));
  EXPECT_THAT(fake_->Calls(), IsEmpty());
}

// The start of `delegate server` (ExecutorRegistry::Start) removes what an
// earlier run left, without waiting for the first stage, and says so.
TEST_F(EcsRuntimeTest, RegistryStartRemovesWhatAnEarlierRunLeft) {
  const std::string def = Register(TaskFamily("d"), Tags("d", "me", "task-1"));
  const std::string left = Run(def, StartedBy("d"), Tags("d", "me", "task-1"));
  ExecutorRegistry registry;
  ASSERT_TRUE(RegisterEcsExecutors(registry, Options()).ok());
  absl::Mutex mu;
  std::vector<std::string> events;
  EventLog log([&](std::string_view line) {
    absl::MutexLock lock(&mu);
    events.emplace_back(line);
  });
  registry.Start({.delegate_name = "d", .log = &log, .resuming = {}});
  absl::MutexLock lock(&mu);
  auto reported = [&] { return events.size() >= 2; };
  ASSERT_TRUE(
      mu.AwaitWithTimeout(absl::Condition(&reported), absl::Seconds(30)))
      << absl::StrJoin(events, "\n");
  EXPECT_EQ(DesiredStatus()[left], "STOPPED");
  EXPECT_THAT(events, Contains(AllOf(HasSubstr("removed a leftover"),
                                     HasSubstr("ECS task " + TaskId(left)))));
  EXPECT_THAT(events, Contains(AllOf(HasSubstr("removed a leftover"),
                                     HasSubstr("ECS task definition"))));
}

// Without a cluster and outside ECS, neither the start nor `delegate
// cleanup` calls AWS (a delegate that runs no ECS steps needs no
// credentials).
TEST_F(EcsRuntimeTest, WithoutEcsSetUpNothingCallsAws) {
  EcsExecutorOptions options = Options();
  options.cluster.clear();
  std::vector<std::string> removed;
  EXPECT_TRUE(ReapEcsLeftovers(options, "d", &removed).ok());
  EXPECT_THAT(removed, IsEmpty());
  ExecutorRegistry registry;
  ASSERT_TRUE(RegisterEcsExecutors(registry, options).ok());
  EventLog log([](std::string_view) {});
  registry.Start({.delegate_name = "d", .log = &log, .resuming = {}});
  EXPECT_THAT(fake_->Calls(), IsEmpty());
}

TEST_F(EcsRuntimeTest, CleanupRemovesWhatThisInstanceLeft) {
  const std::string def = Register(TaskFamily("d"), Tags("d", "me", "task-1"));
  const std::string left = Run(def, StartedBy("d"), Tags("d", "me", "task-1"));
  const std::string other =
      Run(def, StartedBy("d"), Tags("d", "host-b", "task-2"));
  std::vector<std::string> removed;
  absl::Status s = ReapEcsLeftovers(Options(), "d", &removed);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_THAT(removed, Contains("ECS task " + TaskId(left)));
  EXPECT_EQ(DesiredStatus()[left], "STOPPED");
  EXPECT_EQ(DesiredStatus()[other], "RUNNING");

  // Set up for ECS but without a region: the error names what to set.
  EcsExecutorOptions bad = Options();
  bad.env->erase("AWS_REGION");
  removed.clear();
  s = ReapEcsLeftovers(bad, "d", &removed);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("AWS_REGION"));
  EXPECT_THAT(removed, IsEmpty());
}

}  // namespace
}  // namespace delegate::ecs

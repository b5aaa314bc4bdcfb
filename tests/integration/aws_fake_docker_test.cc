// The AWS fake in Docker mode: tasks whose containers really run on the
// Docker Engine (the offline busybox test image), their output in
// CloudWatch Logs as the awslogs driver writes it, their exit codes in
// DescribeTasks, and nothing left on the engine afterwards.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rapidjson/document.h"
#include "tests/fakes/aws_fake.h"
#include "tests/fakes/docker_engine.h"

namespace delegate::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;
using ::testing::UnorderedElementsAre;

const FakeAwsCredential kKey{"AKIDDOCKER", "docker-secret", "",
                             absl::InfiniteFuture()};

// A JSON string of `s` (the commands below hold quotes).
std::string Quote(const std::string& s) {
  return "\"" + absl::StrReplaceAll(s, {{"\\", "\\\\"}, {"\"", "\\\""}}) + "\"";
}

class AwsFakeDockerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DELEGATE_CONNECT_TEST_ENGINE_OR_SKIP(engine_);
    FakeAwsOptions options;
    const char* host = getenv("DOCKER_HOST");
    options.docker_host = host && *host ? host : "unix:///var/run/docker.sock";
    options.credentials.push_back(kKey);
    options.provisioning_for = absl::Milliseconds(5);
    options.pending_for = absl::Milliseconds(5);
    absl::StatusOr<std::unique_ptr<FakeAws>> fake = FakeAws::Start(options);
    ASSERT_TRUE(fake.ok()) << fake.status();
    fake_ = *std::move(fake);
    label_ = fake_->docker_label();
    client_ = std::make_unique<FakeAwsClient>(*fake_, kKey);
  }

  void TearDown() override {
    if (!engine_) return;
    client_.reset();
    fake_.reset();
    EXPECT_THAT(Labelled(*engine_, label_), IsEmpty());
  }

  // Registers a Fargate task definition of one essential container "step"
  // that runs `script` with /bin/sh -c; returns its family.
  std::string Register(const std::string& family, const std::string& script,
                       const std::string& container_extra = "",
                       bool create_group = true) {
    return RegisterBody(absl::StrCat(
        R"({"family":")", family, R"(","requiresCompatibilities":["FARGATE"],
        "networkMode":"awsvpc","cpu":"256","memory":"512",
        "executionRoleArn":"arn:aws:iam::123456789012:role/exec",
        "containerDefinitions":[{"name":"step","image":")",
        kTestImage, R"(","entryPoint":["/bin/sh","-c"],"command":[)",
        Quote(script), R"(],"stopTimeout":2,
        "logConfiguration":{"logDriver":"awslogs","options":{
          "awslogs-group":"/ci/docker","awslogs-region":"us-east-1",
          "awslogs-stream-prefix":"ci")",
        create_group ? R"(,"awslogs-create-group":"true")" : "", "}}",
        container_extra, "}],", R"("volumes":[{"name":"workspace"}]})"));
  }

  // Registers `body`; returns its family.
  std::string RegisterBody(const std::string& body) {
    http::Response r = client_->Ecs("RegisterTaskDefinition", body);
    EXPECT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc;
    doc.Parse(r.body.c_str());
    return r.status == 200 ? doc["taskDefinition"]["family"].GetString() : "";
  }

  std::string Run(const std::string& family, bool fargate = true) {
    http::Response r = client_->Ecs(
        "RunTask",
        absl::StrCat(R"({"cluster":"ci","taskDefinition":")", family, "\"",
                     fargate
                         ? R"(,"launchType":"FARGATE","networkConfiguration":{
            "awsvpcConfiguration":{"subnets":["subnet-1"]}})"
                         : R"(,"launchType":"EC2")",
                     "}"));
    EXPECT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc;
    doc.Parse(r.body.c_str());
    return doc["tasks"][0]["taskArn"].GetString();
  }

  // The task once STOPPED.
  rapidjson::Document Stopped(const std::string& arn) {
    rapidjson::Document doc;
    const std::string body = client_->WaitForTask("ci", arn, "STOPPED");
    EXPECT_FALSE(body.empty()) << arn << " did not stop";
    doc.Parse(body.empty() ? R"({"tasks":[{}]})" : body.c_str());
    return doc;
  }

  std::vector<std::string> Lines(const std::string& arn,
                                 const std::string& container = "step") {
    std::vector<std::string> out;
    for (const FakeLogEvent& e : fake_->LogEvents(
             "/ci/docker", absl::StrCat("ci/", container, "/",
                                        arn.substr(arn.rfind('/') + 1)))) {
      out.push_back(e.message);
    }
    return out;
  }

  std::unique_ptr<docker::DockerClient> engine_;
  std::unique_ptr<FakeAws> fake_;
  std::unique_ptr<FakeAwsClient> client_;
  std::string label_;
};

TEST_F(AwsFakeDockerTest, EchoReachesTheLogStream) {
  const std::string arn =
      Run(Register("echo",
                   "echo hello from fargate; echo second line; "
                   "echo to-stderr >&2"));
  rapidjson::Document doc = Stopped(arn);
  const rapidjson::Value& task = doc["tasks"][0];
  EXPECT_STREQ(task["stopCode"].GetString(), "EssentialContainerExited");
  EXPECT_EQ(task["containers"][0]["exitCode"].GetInt(), 0);
  EXPECT_TRUE(task["containers"][0]["runtimeId"].IsString());
  // Docker copies stdout and stderr apart: no order between the two.
  EXPECT_THAT(Lines(arn), UnorderedElementsAre("hello from fargate",
                                               "second line", "to-stderr"));
  EXPECT_THAT(fake_->Rejected(), IsEmpty());
}

TEST_F(AwsFakeDockerTest, ExitCodeOfTheContainer) {
  rapidjson::Document doc = Stopped(Run(Register("exit3", "echo bye; exit 3")));
  EXPECT_EQ(doc["tasks"][0]["containers"][0]["exitCode"].GetInt(), 3);
  EXPECT_STREQ(doc["tasks"][0]["stopCode"].GetString(),
               "EssentialContainerExited");
}

TEST_F(AwsFakeDockerTest, OutputIsStreamedWhileTheTaskRuns) {
  const std::string arn =
      Run(Register("stream", "echo first; sleep 3; echo second"));
  ASSERT_FALSE(client_->WaitForTask("ci", arn, "RUNNING").empty());
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (Lines(arn).empty() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_THAT(Lines(arn), ElementsAre("first"));
  EXPECT_EQ(fake_->Tasks()[0].last_status, "RUNNING");
  Stopped(arn);
  EXPECT_THAT(Lines(arn), ElementsAre("first", "second"));
}

TEST_F(AwsFakeDockerTest, StopTaskKillsTheContainer) {
  const std::string arn = Run(Register("sleep", "sleep 60"));
  ASSERT_FALSE(client_->WaitForTask("ci", arn, "RUNNING").empty());
  const absl::Time stopped_at = absl::Now();
  http::Response r =
      client_->Ecs("StopTask", absl::StrCat(R"({"cluster":"ci","task":")", arn,
                                            R"(","reason":"step cancelled"})"));
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = Stopped(arn);
  EXPECT_LT(absl::Now() - stopped_at, absl::Seconds(15));
  const rapidjson::Value& task = doc["tasks"][0];
  EXPECT_STREQ(task["stopCode"].GetString(), "UserInitiated");
  EXPECT_STREQ(task["stoppedReason"].GetString(), "step cancelled");
  // sh as PID 1 ignores SIGTERM: SIGKILL after stopTimeout.
  EXPECT_EQ(task["containers"][0]["exitCode"].GetInt(), 137);
}

TEST_F(AwsFakeDockerTest, DefinitionReachesTheContainer) {
  const std::string arn = Run(Register(
      "env",
      "echo \"$FOO $TOKEN\"; id -u; pwd; touch /rootfs-file || echo read-only;"
      " grep CapEff /proc/self/status",
      R"(,"environment":[{"name":"FOO","value":"bar"}],
         "secrets":[{"name":"TOKEN","valueFrom":"arn:aws:ssm:us-east-1:123456789012:parameter/t"}],
         "user":"1000:1000","workingDirectory":"/tmp",
         "readonlyRootFilesystem":true,
         "linuxParameters":{"capabilities":{"drop":["ALL"]}})"));
  rapidjson::Document doc = Stopped(arn);
  EXPECT_EQ(doc["tasks"][0]["containers"][0]["exitCode"].GetInt(), 0)
      << ::testing::PrintToString(Lines(arn));
  std::vector<std::string> lines = Lines(arn);
  EXPECT_THAT(lines, Contains("bar fake-secret-from:arn:aws:ssm:us-east-1:"
                              "123456789012:parameter/t"));
  EXPECT_THAT(lines, Contains("1000"));
  EXPECT_THAT(lines, Contains("/tmp"));
  EXPECT_THAT(lines, Contains("read-only"));
  EXPECT_THAT(lines, Contains(StartsWith("CapEff:\t0000000000000000")));
}

TEST_F(AwsFakeDockerTest, VolumesAreSharedAndHostPathsBound) {
  // EC2: Fargate has no host.sourcePath. "writer" is not essential: the task
  // runs until "reader" exits.
  auto container = [](const std::string& name, bool essential,
                      const std::string& script) {
    return absl::StrCat(
        R"({"name":")", name, R"(","image":")", kTestImage,
        R"(","memory":64,"essential":)", essential ? "true" : "false",
        R"(,"entryPoint":["/bin/sh","-c"],"command":[)", Quote(script),
        R"(],"mountPoints":[{"sourceVolume":"shared","containerPath":"/w"},
           {"sourceVolume":"sock","containerPath":"/var/run/docker.sock",
            "readOnly":true}],
        "logConfiguration":{"logDriver":"awslogs","options":{
          "awslogs-group":"/ci/docker","awslogs-region":"us-east-1",
          "awslogs-stream-prefix":"ci","awslogs-create-group":"true"}}})");
  };
  const std::string family = RegisterBody(absl::StrCat(
      R"({"family":"volumes","networkMode":"bridge",
          "volumes":[{"name":"shared"},
                     {"name":"sock","host":{"sourcePath":"/var/run/docker.sock"}}],
          "containerDefinitions":[)",
      container("writer", false, "echo from-writer > /w/f"), ",",
      container("reader", true,
                "for i in 1 2 3 4 5 6 7 8 9 10; do test -f /w/f && break; "
                "sleep 1; done; cat /w/f; test -S /var/run/docker.sock && "
                "echo socket-ok"),
      "]}"));
  const std::string arn = Run(family, /*fargate=*/false);
  rapidjson::Document doc = Stopped(arn);
  EXPECT_STREQ(doc["tasks"][0]["launchType"].GetString(), "EC2");
  EXPECT_FALSE(doc["tasks"][0].HasMember("attachments"));
  EXPECT_THAT(Lines(arn, "reader"), ElementsAre("from-writer", "socket-ok"));
  EXPECT_THAT(fake_->Tasks()[0].exit_codes,
              ElementsAre(std::pair<const std::string, int>("reader", 0),
                          std::pair<const std::string, int>("writer", 0)));
}

TEST_F(AwsFakeDockerTest, MissingLogGroupFailsTheTaskBeforeAnyContainer) {
  const std::string arn =
      Run(Register("nogroup", "echo never", "", /*create_group=*/false));
  rapidjson::Document doc = Stopped(arn);
  const rapidjson::Value& task = doc["tasks"][0];
  EXPECT_STREQ(task["stopCode"].GetString(), "TaskFailedToStart");
  EXPECT_THAT(task["stoppedReason"].GetString(),
              StartsWith("ResourceInitializationError"));
  EXPECT_FALSE(task["containers"][0].HasMember("exitCode"));
  EXPECT_THAT(Labelled(*engine_, label_), IsEmpty());
}

}  // namespace
}  // namespace delegate::testing

// The AWS fake in Docker mode: tasks whose containers really run on the
// Docker Engine (the offline busybox test image), their output in
// CloudWatch Logs as the awslogs driver writes it, their exit codes in
// DescribeTasks, multi-container tasks run as ECS runs them (one network
// namespace and a reachable task IP for awsvpc, dependsOn, essential
// containers, task volumes), and nothing left on the engine afterwards.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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

// A container definition: `name` runs `script` with /bin/sh -c in the test
// image and logs to /ci/docker (stream ci/NAME/TASK); `extra` adds members
// (",..."), e.g. kSharedAtW.
std::string Container(const std::string& name, bool essential,
                      const std::string& script,
                      const std::string& extra = "") {
  return absl::StrCat(R"({"name":")", name, R"(","image":")", kTestImage,
                      R"(","essential":)", essential ? "true" : "false",
                      R"(,"entryPoint":["/bin/sh","-c"],"command":[)",
                      Quote(script),
                      R"(],"stopTimeout":2,
        "logConfiguration":{"logDriver":"awslogs","options":{
          "awslogs-group":"/ci/docker","awslogs-region":"us-east-1",
          "awslogs-stream-prefix":"ci","awslogs-create-group":"true"}})",
                      extra, "}");
}

// The task volume "shared" at /w.
constexpr char kSharedAtW[] =
    R"(,"mountPoints":[{"sourceVolume":"shared","containerPath":"/w"}])";

// `name`'s dependsOn: (container, condition) pairs.
std::string DependsOn(
    const std::vector<std::pair<std::string, std::string>>& on) {
  std::vector<std::string> items;
  for (const auto& [container, condition] : on) {
    items.push_back(absl::StrCat(R"({"containerName":")", container,
                                 R"(","condition":")", condition, R"("})"));
  }
  return absl::StrCat(R"(,"dependsOn":[)", absl::StrJoin(items, ","), "]");
}

// The container `name` of a DescribeTasks task.
const rapidjson::Value& ContainerIn(const rapidjson::Value& task,
                                    const std::string& name) {
  for (const auto& c : task["containers"].GetArray()) {
    if (name == c["name"].GetString()) return c;
  }
  ADD_FAILURE() << "no container " << name;
  static const rapidjson::Value kNone(rapidjson::kObjectType);
  return kNone;
}

// The value of the ElasticNetworkInterface attachment's detail `name`.
std::string AttachmentDetail(const rapidjson::Value& task,
                             const std::string& name) {
  if (!task.HasMember("attachments")) return "";
  for (const auto& a : task["attachments"].GetArray()) {
    if (std::string(a["type"].GetString()) != "ElasticNetworkInterface") {
      continue;
    }
    for (const auto& d : a["details"].GetArray()) {
      if (name == d["name"].GetString()) return d["value"].GetString();
    }
  }
  return "";
}

// What a TCP server at ip:port sends before it closes, connecting again
// while it refuses (it may not listen yet) until `timeout`.
std::string ReadFrom(const std::string& ip, int port,
                     absl::Duration timeout = absl::Seconds(20)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, ip.c_str(), &addr.sin_addr);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      std::string out;
      char buf[256];
      for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) out.append(buf, n);
      close(fd);
      return out;
    }
    close(fd);
    absl::SleepFor(absl::Milliseconds(100));
  }
  return "";
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

  // Registers a Fargate (awsvpc) task definition of `containers`
  // (Container()s) with the name-only volume "shared" and `volumes` more;
  // returns its family.
  std::string RegisterTask(const std::string& family,
                           const std::vector<std::string>& containers,
                           const std::string& volumes = "") {
    return RegisterBody(absl::StrCat(R"({"family":")", family,
                                     R"(","requiresCompatibilities":["FARGATE"],
        "networkMode":"awsvpc","cpu":"256","memory":"512",
        "executionRoleArn":"arn:aws:iam::123456789012:role/exec",
        "volumes":[{"name":"shared"})",
                                     volumes, R"(],"containerDefinitions":[)",
                                     absl::StrJoin(containers, ","), "]}"));
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

  // The task as DescribeTasks shows it.
  rapidjson::Document Describe(const std::string& arn) {
    http::Response r = client_->Ecs(
        "DescribeTasks",
        absl::StrCat(R"({"cluster":"ci","tasks":[")", arn, R"("]})"));
    EXPECT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc;
    doc.Parse(r.body.c_str());
    return doc;
  }

  // DescribeTasks of the task, every 50 ms, until `done` holds for it (a
  // failure after `timeout`).
  rapidjson::Document WaitUntil(
      const std::string& arn,
      const std::function<bool(const rapidjson::Value& task)>& done,
      absl::Duration timeout = absl::Seconds(30)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      rapidjson::Document doc = Describe(arn);
      if (doc.HasMember("tasks") && doc["tasks"].Size() == 1 &&
          done(doc["tasks"][0])) {
        return doc;
      }
      if (absl::Now() > deadline) {
        ADD_FAILURE() << "the task never got there; last seen: "
                      << (doc.HasMember("tasks") ? "" : "nothing");
        return doc;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
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
    return Container(name, essential, script,
                     R"(,"memory":64,
        "mountPoints":[{"sourceVolume":"shared","containerPath":"/w"},
           {"sourceVolume":"sock","containerPath":"/var/run/docker.sock",
            "readOnly":true}])");
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
  // Nothing is left of the task (its pause container went with its
  // DEPROVISIONING); the fake keeps its network for awsvpc tasks.
  EXPECT_THAT(Labelled(*engine_, label_), ElementsAre(StartsWith("network ")));
}

// ---------------------------------------------------- multi-container tasks

TEST_F(AwsFakeDockerTest, AwsvpcContainersShareLocalhost) {
  const std::string arn = Run(RegisterTask(
      "localhost",
      {Container("server", false, "echo hello-over-localhost | nc -l -p 7001"),
       Container("client", true,
                 "i=0; while [ $i -lt 200 ]; do "
                 "nc 127.0.0.1 7001 </dev/null && exit 0; "
                 "sleep 0.1; i=$((i+1)); done; exit 1",
                 DependsOn({{"server", "START"}}))}));
  rapidjson::Document doc = Stopped(arn);
  const rapidjson::Value& task = doc["tasks"][0];
  EXPECT_EQ(ContainerIn(task, "client")["exitCode"].GetInt(), 0);
  EXPECT_THAT(Lines(arn, "client"), Contains("hello-over-localhost"));
  // One task, one address: every container shows the attachment's.
  const std::string ip = AttachmentDetail(task, "privateIPv4Address");
  EXPECT_FALSE(ip.empty());
  for (const char* name : {"server", "client"}) {
    const rapidjson::Value& c = ContainerIn(task, name);
    ASSERT_TRUE(c.HasMember("networkInterfaces")) << name;
    EXPECT_EQ(c["networkInterfaces"][0]["privateIpv4Address"].GetString(), ip)
        << name;
  }
  EXPECT_THAT(fake_->Rejected(), IsEmpty());
}

TEST_F(AwsFakeDockerTest, TheTaskIpIsReachableFromTheTestProcess) {
  const std::string arn = Run(RegisterTask(
      "reachable",
      {Container("server", true, "echo hello-host | nc -l -p 7002")}));
  rapidjson::Document doc = WaitUntil(arn, [](const rapidjson::Value& task) {
    return std::string(task["lastStatus"].GetString()) == "RUNNING";
  });
  const rapidjson::Value& task = doc["tasks"][0];
  EXPECT_STREQ(task["attachments"][0]["status"].GetString(), "ATTACHED");
  const std::string ip = AttachmentDetail(task, "privateIPv4Address");
  ASSERT_FALSE(ip.empty()) << "no privateIPv4Address in the attachment";
  EXPECT_EQ(
      ContainerIn(task, "server")["networkInterfaces"][0]["privateIpv4Address"]
          .GetString(),
      ip);
  EXPECT_EQ(ReadFrom(ip, 7002), "hello-host\n");
  rapidjson::Document stopped = Stopped(arn);
  EXPECT_EQ(ContainerIn(stopped["tasks"][0], "server")["exitCode"].GetInt(), 0);
}

TEST_F(AwsFakeDockerTest, DependsOnOrdersTheStart) {
  // Each container appends its name to /w/order. "app" sees, when it
  // starts: "first" and its COMPLETE and SUCCESS dependents (which start
  // after it), "healthy" (healthy once it wrote its line), and "complete",
  // which "app" waits for only through "late" (START) -> "complete"
  // (COMPLETE, although it exits 3).
  const std::string arn = Run(RegisterTask(
      "order",
      {Container("first", false, "sleep 1; echo first >> /w/order", kSharedAtW),
       Container("complete", false, "echo complete >> /w/order; exit 3",
                 absl::StrCat(kSharedAtW, DependsOn({{"first", "COMPLETE"}}))),
       Container("late", false, "sleep 60",
                 DependsOn({{"complete", "COMPLETE"}})),
       Container("success", false, "echo success >> /w/order",
                 absl::StrCat(kSharedAtW, DependsOn({{"first", "SUCCESS"}}))),
       Container("healthy", false,
                 "sleep 1; echo healthy >> /w/order; touch /w/healthy; "
                 "sleep 60",
                 absl::StrCat(kSharedAtW,
                              R"(,"healthCheck":{
                                "command":["CMD-SHELL","test -f /w/healthy"],
                                "interval":5,"timeout":2,"retries":3})")),
       Container(
           "app", true, "cat /w/order",
           absl::StrCat(kSharedAtW, DependsOn({{"late", "START"},
                                               {"success", "SUCCESS"},
                                               {"healthy", "HEALTHY"}})))}));
  rapidjson::Document doc = Stopped(arn);
  const rapidjson::Value& task = doc["tasks"][0];
  const std::vector<std::string> seen = Lines(arn, "app");
  ASSERT_THAT(seen,
              UnorderedElementsAre("first", "complete", "success", "healthy"));
  auto at = [&](const std::string& name) {
    return std::find(seen.begin(), seen.end(), name) - seen.begin();
  };
  EXPECT_LT(at("first"), at("complete"));
  EXPECT_LT(at("first"), at("success"));
  EXPECT_EQ(ContainerIn(task, "app")["exitCode"].GetInt(), 0);
  EXPECT_EQ(ContainerIn(task, "complete")["exitCode"].GetInt(), 3);
  EXPECT_STREQ(ContainerIn(task, "healthy")["healthStatus"].GetString(),
               "HEALTHY");
  // "app" is essential: when it exits, the task stops the rest.
  EXPECT_STREQ(task["stopCode"].GetString(), "EssentialContainerExited");
  EXPECT_EQ(ContainerIn(task, "late")["exitCode"].GetInt(), 137);
  EXPECT_EQ(ContainerIn(task, "healthy")["exitCode"].GetInt(), 137);
  EXPECT_THAT(fake_->Rejected(), IsEmpty());
}

TEST_F(AwsFakeDockerTest, AFailedSuccessDependencyStopsTheTask) {
  const std::string arn = Run(RegisterTask(
      "init-fails", {Container("init", false, "echo init; exit 1"),
                     Container("app", true, "echo never",
                               DependsOn({{"init", "SUCCESS"}}))}));
  rapidjson::Document doc = Stopped(arn);
  const rapidjson::Value& task = doc["tasks"][0];
  EXPECT_STREQ(task["stopCode"].GetString(), "EssentialContainerExited");
  EXPECT_STREQ(task["stoppedReason"].GetString(),
               "Essential container in task exited");
  EXPECT_EQ(ContainerIn(task, "init")["exitCode"].GetInt(), 1);
  const rapidjson::Value& app = ContainerIn(task, "app");
  EXPECT_EQ(app["exitCode"].GetInt(), 143);
  EXPECT_THAT(
      app["reason"].GetString(),
      StartsWith(absl::StrCat(
          "CannotStartContainerError: dependency graph: failed to "
          "resolve container ordering dependency [init(",
          kTestImage, ") (STOPPED->RUNNING) - Exit: 1] for target [app(")));
  EXPECT_THAT(app["reason"].GetString(),
              HasSubstr("as dependency did not exit successfully."));
  EXPECT_THAT(Lines(arn, "app"), IsEmpty());
}

TEST_F(AwsFakeDockerTest, OnlyAnEssentialContainerExitingStopsTheTask) {
  const std::string arn = Run(RegisterTask(
      "essential",
      {Container("side", false, "exit 5"), Container("init", false, "exit 1"),
       Container("helper", false, "echo never",
                 DependsOn({{"init", "SUCCESS"}})),
       Container("main", true,
                 "until test -f /tmp/go; do sleep 0.1; done; exit 4"),
       Container("other", true, "sleep 60")}));
  // "side" exited, "helper" was stopped for its failed dependency; neither
  // is essential: the task runs on.
  rapidjson::Document doc = WaitUntil(arn, [](const rapidjson::Value& task) {
    return std::string(task["lastStatus"].GetString()) == "RUNNING" &&
           ContainerIn(task, "side").HasMember("exitCode") &&
           ContainerIn(task, "helper").HasMember("exitCode");
  });
  const rapidjson::Value& running = doc["tasks"][0];
  EXPECT_EQ(ContainerIn(running, "side")["exitCode"].GetInt(), 5);
  EXPECT_STREQ(ContainerIn(running, "side")["lastStatus"].GetString(),
               "STOPPED");
  EXPECT_EQ(ContainerIn(running, "helper")["exitCode"].GetInt(), 143);
  EXPECT_THAT(ContainerIn(running, "helper")["reason"].GetString(),
              StartsWith("CannotStartContainerError: dependency graph"));
  EXPECT_STREQ(ContainerIn(running, "main")["lastStatus"].GetString(),
               "RUNNING");
  EXPECT_STREQ(running["desiredStatus"].GetString(), "RUNNING");
  // Now "main" exits.
  docker::DockerClient::ExecSpec touch;
  touch.cmd = {"touch", "/tmp/go"};
  absl::StatusOr<int> touched = engine_->Exec(
      ContainerIn(running, "main")["runtimeId"].GetString(), touch,
      [](LogStream, std::string_view) {}, [] { return false; });
  ASSERT_TRUE(touched.ok()) << touched.status();
  rapidjson::Document stopped = Stopped(arn);
  const rapidjson::Value& task = stopped["tasks"][0];
  EXPECT_STREQ(task["stopCode"].GetString(), "EssentialContainerExited");
  EXPECT_EQ(ContainerIn(task, "main")["exitCode"].GetInt(), 4);
  // sh ignores SIGTERM as PID 1: killed after stopTimeout.
  EXPECT_EQ(ContainerIn(task, "other")["exitCode"].GetInt(), 137);
  EXPECT_EQ(ContainerIn(task, "side")["exitCode"].GetInt(), 5);
}

TEST_F(AwsFakeDockerTest, TaskVolumesAreSharedWithinTheTaskAndEfsAcrossTasks) {
  const std::string mounts =
      R"(,"mountPoints":[{"sourceVolume":"shared","containerPath":"/w"},
                         {"sourceVolume":"efs","containerPath":"/e"}])";
  const std::string family = RegisterTask(
      "volumes-per-task",
      {Container("writer", false, "echo written >> /w/f; echo written >> /e/f",
                 mounts),
       Container("reader", true, "cat /w/f; echo ---; cat /e/f",
                 absl::StrCat(mounts, DependsOn({{"writer", "SUCCESS"}})))},
      R"(,{"name":"efs","efsVolumeConfiguration":{"fileSystemId":"fs-0abc"}})");
  const std::string first = Run(family);
  Stopped(first);
  EXPECT_THAT(Lines(first, "reader"), ElementsAre("written", "---", "written"));
  // The next task has a task volume of its own, and the same file system.
  const std::string second = Run(family);
  Stopped(second);
  EXPECT_THAT(Lines(second, "reader"),
              ElementsAre("written", "---", "written", "written"));
}

}  // namespace
}  // namespace delegate::testing

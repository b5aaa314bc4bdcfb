// Container steps on the real Docker Engine, through the scheduler, as a
// user's stage would run them. The image is the offline busybox one that
// scripts/docker-test-setup.sh builds.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "delegate/builtin_executors.h"
#include "delegate/scheduler.h"
#include "executor/docker/docker_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/docker_engine.h"

namespace delegate {
namespace {

namespace fs = std::filesystem;
using ::delegate::testing::RecordingLogSink;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

using ::delegate::testing::ImageStep;

class DockerExecutorTest : public ::delegate::testing::DockerStageTest {
 protected:
  static Stage Steps(std::vector<std::vector<std::string>> commands) {
    Stage stage;
    stage.name = "docker-it";
    stage.platform = "docker";
    for (size_t i = 0; i < commands.size(); ++i) {
      stage.steps.push_back(
          ImageStep("s" + std::to_string(i), std::move(commands[i])));
    }
    return stage;
  }
};

TEST_F(DockerExecutorTest, StepsShareAWorkspaceAndReportExitCodes) {
  Stage stage = Steps({{"echo built > artifact", "echo out; echo err >&2"},
                       {"cat artifact", "pwd", "exit 5"},
                       {"echo never"}});
  stage.env["CI"] = "true";
  stage.steps[0].envs["MODE"] = "fast";
  stage.steps[0].commands.push_back("echo CI=$CI MODE=$MODE");
  StageResult r = Run(stage);
  EXPECT_EQ(r.status, StepStatus::kFailure);
  EXPECT_EQ(r.steps[0].status, StepStatus::kSuccess);
  EXPECT_EQ(r.steps[0].exit_code, 0);
  EXPECT_EQ(r.steps[1].exit_code, 5);
  EXPECT_EQ(r.steps[1].error, "exit status 5");
  EXPECT_EQ(r.steps[2].status, StepStatus::kSkipped);
  EXPECT_THAT(Text("s0"), HasSubstr("out\n"));
  EXPECT_THAT(Text("s0"), HasSubstr("err\n"));
  EXPECT_THAT(Text("s0"), HasSubstr("CI=true MODE=fast"));
  EXPECT_THAT(Text("s1"), HasSubstr("built\n+ pwd\n/harness\n"));
}

TEST_F(DockerExecutorTest, OutputVariablesComeBackEvenWithAReadOnlyRoot) {
  Stage stage = Steps({{"echo VERSION=2.0 >> $HARNESS_OUTPUT_FILE",
                        "echo OTHER=x >> $DRONE_OUTPUT"}});
  stage.steps[0].outputs = {"VERSION", "MISSING"};
  stage.steps[0].security_context.read_only_root_filesystem = true;
  StageResult r = Run(stage);
  ASSERT_EQ(r.status, StepStatus::kSuccess) << StageResultToJson(r);
  EXPECT_EQ(r.steps[0].outputs,
            (std::map<std::string, std::string>{{"VERSION", "2.0"}}));
  EXPECT_THAT(Text("s0"), HasSubstr("output MISSING was declared"));
}

TEST_F(DockerExecutorTest, RunAsUserAndGroupAreSeenInsideTheStep) {
  Stage stage = Steps({{"id -u", "id -g", "echo mine > owned",
                        "echo V=1 >> $HARNESS_OUTPUT_FILE"}});
  stage.steps[0].security_context.run_as_user = 1000;
  stage.steps[0].security_context.run_as_group = 1001;
  stage.steps[0].outputs = {"V"};
  StageResult r = Run(stage);
  ASSERT_EQ(r.status, StepStatus::kSuccess) << StageResultToJson(r);
  EXPECT_THAT(Text("s0"), HasSubstr("id -u\n1000\n"));
  EXPECT_THAT(Text("s0"), HasSubstr("id -g\n1001\n"));
  EXPECT_EQ(r.steps[0].outputs.at("V"), "1");
}

TEST_F(DockerExecutorTest, ReadOnlyRootFilesystemRefusesWritesToRoot) {
  Stage stage = Steps({{"touch /harness/ok-here", "touch /not-here"}});
  stage.steps[0].security_context.read_only_root_filesystem = true;
  StageResult r = Run(stage);
  EXPECT_EQ(r.status, StepStatus::kFailure);
  // stdout and stderr are separate streams: assert on each line, not their
  // interleaving.
  EXPECT_THAT(Text("s0"), HasSubstr("/not-here: Read-only file system"));
  EXPECT_THAT(Text("s0"), Not(HasSubstr("ok-here: Read-only")));
}

// The bounding set of this process: a privileged container gets at most it.
std::string OwnCapBnd() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "CapBnd:")) return line.substr(8);
  }
  return "";
}

TEST_F(DockerExecutorTest, CapabilityAddAndDropShowInTheCapabilityMask) {
  Stage stage = Steps({{"grep CapEff /proc/self/status"}});
  stage.steps[0].security_context.drop_capability = {"ALL"};
  stage.steps[0].security_context.add_capability = {"NET_ADMIN"};
  StageResult r = Run(stage);
  ASSERT_EQ(r.status, StepStatus::kSuccess) << StageResultToJson(r);
  // NET_ADMIN is capability 12.
  EXPECT_THAT(Text("s0"), HasSubstr("CapEff:\t0000000000001000"));
}

TEST_F(DockerExecutorTest, DefaultCapabilitiesAreDockersNotAll) {
  StageResult r = Run(Steps({{"grep CapEff /proc/self/status"}}));
  ASSERT_EQ(r.status, StepStatus::kSuccess) << StageResultToJson(r);
  EXPECT_THAT(Text("s0"), HasSubstr("CapEff:\t00000000a80425fb"));
}

TEST_F(DockerExecutorTest, PrivilegedStepGetsEveryCapabilityTheHostHas) {
  Stage stage = Steps({{"grep CapEff /proc/self/status"}});
  stage.steps[0].security_context.privileged = true;
  StageResult r = Run(stage);
  const std::string bounding = OwnCapBnd();
  if (bounding == "000001ffffffffff") {
    ASSERT_EQ(r.status, StepStatus::kSuccess) << StageResultToJson(r);
    EXPECT_THAT(Text("s0"), HasSubstr("CapEff:\t000001ffffffffff"));
  } else {
    // This machine withholds a capability from root (for example a VM
    // sandbox), so runc cannot start a privileged container: the step fails
    // with the runtime's words, which shows the request reached it.
    EXPECT_EQ(r.status, StepStatus::kFailure);
    EXPECT_THAT(r.steps[0].error, HasSubstr("caps"));
  }
}

TEST_F(DockerExecutorTest, VolumesAreSharedAndReadOnlyBindsAreReadOnly) {
  const std::string host_dir =
      ::testing::TempDir() + "/docker-bind-" + std::to_string(getpid());
  fs::create_directories(host_dir);
  std::ofstream(host_dir + "/input.txt") << "from the host\n";
  Stage stage = Steps({{"echo cached > /cache/marker", "cat /src/input.txt",
                        "touch /src/nope || echo bind is read-only"},
                       {"cat /cache/marker"}});
  stage.volumes.push_back({"cache", EmptyDirVolume{}});
  HostPathVolume bind;
  bind.path = host_dir;
  bind.read_only = true;
  stage.volumes.push_back({"src", bind});
  stage.steps[0].volume_mounts = {{"cache", "/cache"}, {"src", "/src"}};
  stage.steps[1].volume_mounts = {{"cache", "/cache"}};
  StageResult r = Run(stage);
  ASSERT_EQ(r.status, StepStatus::kSuccess) << StageResultToJson(r);
  EXPECT_THAT(Text("s0"), HasSubstr("from the host"));
  EXPECT_THAT(Text("s0"), HasSubstr("bind is read-only"));
  EXPECT_THAT(Text("s1"), HasSubstr("cached"));
  EXPECT_FALSE(fs::exists(host_dir + "/nope"));
  fs::remove_all(host_dir);
}

TEST_F(DockerExecutorTest, StepsReachEachOtherOnTheStageNetworkByStepId) {
  // The network exists for the stage and carries the step's alias.
  Stage stage = Steps({{"cat /etc/hosts", "hostname -i"}});
  StageResult r = Run(stage);
  ASSERT_EQ(r.status, StepStatus::kSuccess) << StageResultToJson(r);
  EXPECT_THAT(Text("s0"), Not(HasSubstr("172.17.")))
      << "the step ran on the default bridge, not the stage's network";
}

TEST_F(DockerExecutorTest, TimeoutStopsTheContainerAndTheStageCleansUp) {
  Stage stage = Steps({{"echo started", "sleep 300"}, {"echo never"}});
  stage.steps[0].timeout = absl::Seconds(4);
  const absl::Time start = absl::Now();
  StageResult r = Run(stage);
  EXPECT_EQ(r.steps[0].status, StepStatus::kTimeout);
  EXPECT_EQ(r.steps[1].status, StepStatus::kSkipped);
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
  EXPECT_THAT(Text("s0"), HasSubstr("started"));
}

TEST_F(DockerExecutorTest, CancelStopsARunningContainer) {
  StageRun run(
      *scheduler_,
      testing::TaskFor("cancel-me", Steps({{"echo running", "sleep 300"}}),
                       &sink_));
  ASSERT_TRUE(run.submitted().ok());
  for (int i = 0; i < 3000 && !absl::StrContains(Text("s0"), "running"); ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_TRUE(scheduler_->Cancel("cancel-me").ok());
  StageResult r = run.Wait();
  EXPECT_EQ(r.status, StepStatus::kCancelled);
  EXPECT_EQ(r.steps[0].status, StepStatus::kCancelled);
}

TEST_F(DockerExecutorTest, OutOfMemoryIsReportedAsSuch) {
  Stage stage = Steps({{"tail /dev/zero"}});
  stage.steps[0].resources.memory_mib = 16;
  StageResult r = Run(stage);
  EXPECT_EQ(r.status, StepStatus::kFailure);
  EXPECT_THAT(r.steps[0].error, HasSubstr("out of memory"));
  EXPECT_THAT(r.steps[0].error, HasSubstr("16 MiB"));
}

TEST_F(DockerExecutorTest, AnExitOf137WithoutAnOomIsNotCalledOutOfMemory) {
  // 137 is also what a SIGKILL gives; only the Engine's OOM flag or its
  // "oom" event make it out of memory.
  Stage stage = Steps({{"exit 137"}});
  stage.steps[0].resources.memory_mib = 64;
  StageResult r = Run(stage);
  EXPECT_EQ(r.status, StepStatus::kFailure);
  EXPECT_EQ(r.steps[0].exit_code, 137);
  EXPECT_EQ(r.steps[0].error, "exit status 137");
}

TEST_F(DockerExecutorTest, MissingImageWithPullNeverIsAClearError) {
  Stage stage = Steps({{"true"}});
  stage.steps[0].image = "delegate-test/no-such-image:1";
  stage.steps[0].pull = PullPolicy::kNever;
  StageResult r = Run(stage);
  EXPECT_EQ(r.status, StepStatus::kFailure);
  EXPECT_THAT(r.steps[0].error, HasSubstr("delegate-test/no-such-image:1"));
  EXPECT_THAT(r.steps[0].error, HasSubstr("pull: never"));
}

TEST_F(DockerExecutorTest, SecretsAreMaskedInContainerOutput) {
  Stage stage =
      Steps({{"echo \"token=$TOKEN\"", "printf %s \"$TOKEN\" | base64"}});
  stage.secrets["T"] = "container-s3cret-value";
  stage.steps[0].envs["TOKEN"] = "${{secrets.T}}";
  StageResult r = Run(stage);
  ASSERT_EQ(r.status, StepStatus::kSuccess) << StageResultToJson(r);
  EXPECT_THAT(Text("s0"), HasSubstr("token=**************"));
  EXPECT_THAT(sink_.All(), Not(HasSubstr("s3cret")));
}

TEST_F(DockerExecutorTest, ReusedContainerKeepsEachStepsEnvExitCodeAndDir) {
  Stage stage = Steps({{"hostname > /harness/first", "echo MODE=$MODE"},
                       {"test \"$(hostname)\" = \"$(cat /harness/first)\"",
                        "echo MODE=$MODE", "pwd"},
                       {"exit 4"},
                       {"echo V=9 >> $HARNESS_OUTPUT_FILE"}});
  stage.reuse_containers = true;
  stage.steps[0].envs["MODE"] = "one";
  stage.steps[1].envs["MODE"] = "two";
  stage.steps[1].working_dir = "sub/dir";
  stage.steps[2].continue_on_error = true;
  stage.steps[3].outputs = {"V"};
  StageResult r = Run(stage);
  ASSERT_EQ(r.status, StepStatus::kSuccess) << StageResultToJson(r);
  EXPECT_THAT(Text("s0"), HasSubstr("MODE=one"));
  EXPECT_THAT(Text("s1"), HasSubstr("MODE=two"));
  EXPECT_THAT(Text("s1"), HasSubstr("/harness/sub/dir"));
  EXPECT_EQ(r.steps[1].status, StepStatus::kSuccess)
      << "steps with one image did not share a container";
  EXPECT_EQ(r.steps[2].exit_code, 4);
  EXPECT_EQ(r.steps[2].status, StepStatus::kFailure);
  EXPECT_EQ(r.steps[3].outputs.at("V"), "9");
  EXPECT_THAT(sink_.All(), HasSubstr("is shared by the steps like this one"));
}

TEST_F(DockerExecutorTest, ReusedContainerIsReplacedAfterAStepTimesOut) {
  Stage stage = Steps({{"hostname > /harness/first", "sleep 300"},
                       {"test \"$(hostname)\" != \"$(cat /harness/first)\"",
                        "echo fresh container"}});
  stage.reuse_containers = true;
  stage.steps[0].timeout = absl::Seconds(2);
  stage.steps[0].continue_on_error = true;
  StageResult r = Run(stage);
  EXPECT_EQ(r.steps[0].status, StepStatus::kTimeout);
  EXPECT_EQ(r.steps[1].status, StepStatus::kSuccess) << StageResultToJson(r);
  EXPECT_THAT(Text("s1"), HasSubstr("fresh container"));
}

TEST_F(DockerExecutorTest, DockerSocketCanBeMountedForDockerInDocker) {
  // The install guide's Docker-in-Docker on ECS-on-EC2: the engine's socket
  // through a host_path volume.
  Stage stage = Steps({{"test -S /var/run/docker.sock && echo socket-ok"}});
  HostPathVolume sock;
  sock.path = "/var/run/docker.sock";
  stage.volumes.push_back({"docker", sock});
  stage.steps[0].volume_mounts = {{"docker", "/var/run/docker.sock"}};
  StageResult r = Run(stage);
  ASSERT_EQ(r.status, StepStatus::kSuccess) << StageResultToJson(r);
  EXPECT_THAT(Text("s0"), HasSubstr("socket-ok"));
  OperatorPolicy policy;
  policy.allowed_host_paths = {"/srv/cache"};
  absl::Status refused = ValidateForPlatform(registry_, stage, policy);
  EXPECT_THAT(refused.message(), HasSubstr("volumes[0]"));
  EXPECT_THAT(refused.message(), HasSubstr("operator"));
}

TEST_F(DockerExecutorTest, ValidateRefusesStepsWithoutAnImage) {
  Stage stage = Steps({{"true"}});
  stage.steps[0].image.clear();
  absl::Status s = ValidateForPlatform(registry_, stage);
  EXPECT_THAT(s.message(), HasSubstr("steps[0].image"));
}

}  // namespace
}  // namespace delegate

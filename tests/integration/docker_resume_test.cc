// A stage resumed after the delegate restarted, on the real Docker Engine:
// the new process adopts the stage's network and volumes (Executor::Resume)
// and re-attaches to the container of the step that was running
// (StepContext::reattach). The killed process is the real binary, killed
// with SIGKILL mid-step; the new one is an executor driven by hand.
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "delegate/builtin_executors.h"
#include "executor/docker/docker_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/delegate_process.h"
#include "tests/fakes/docker_engine.h"
#include "tests/fakes/hand_run.h"

namespace delegate {
namespace {

namespace fs = std::filesystem;
using ::delegate::testing::DelegateProcess;
using ::delegate::testing::HandRun;
using ::delegate::testing::ImageStep;
using ::delegate::testing::Labelled;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

constexpr const char* kTransaction = "io.libdelegate.transaction=";

class DockerResumeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DELEGATE_CONNECT_TEST_ENGINE_OR_SKIP(client_);
    name_ = "docker-resume-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    dir_ = ::testing::TempDir() + "/" + name_;
    fs::remove_all(dir_);
    fs::create_directories(dir_ + "/work");
    DockerExecutorOptions docker;
    docker.grace_period = absl::Seconds(2);
    ASSERT_TRUE(RegisterDockerExecutor(registry_, docker).ok());
    HostExecutorOptions host;
    host.workdir = dir_ + "/work";
    ASSERT_TRUE(RegisterHostExecutor(registry_, host).ok());
    ASSERT_TRUE(RegisterLocalExecutor(registry_).ok());
  }

  void TearDown() override {
    if (!client_) return;
    // What a failed assertion left goes, so that the next run starts clean.
    (void)ReapDockerLeftovers(DockerExecutorOptions{}, name_);
    fs::remove_all(dir_);
  }

  std::string Label() const { return "io.libdelegate.delegate=" + name_; }

  // Starts `delegate exec` on a docker stage whose first step prints
  // "<marker>-42" (computed, so that the echoed command does not count),
  // and kills it with SIGKILL once it has. Returns the stage's task id,
  // read from its container's labels.
  std::string StartAndKill(const std::string& yaml_steps,
                           const std::string& marker) {
    const std::string file = dir_ + "/stage.yaml";
    std::ofstream(file) << "name: resume\nplatform: docker\nsteps:\n"
                        << yaml_steps;
    DelegateProcess exec(
        {"exec", file},
        {"HARNESS_NAME=" + name_, "HARNESS_WORKDIR=" + dir_ + "/work",
         "DELEGATE_STATE_DIR=" + dir_ + "/state"},
        dir_ + "/exec.log");
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (!absl::StrContains(exec.Output(), marker + "-42") &&
           !exec.Exited() && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    EXPECT_THAT(exec.Output(), HasSubstr(marker + "-42"));
    EXPECT_FALSE(exec.Exited()) << exec.Output();
    kill(exec.pid(), SIGKILL);
    exec.Wait();
    absl::StatusOr<std::vector<docker::Listed>> containers =
        client_->ListLabelled(docker::ObjectKind::kContainer, Label());
    EXPECT_TRUE(containers.ok()) << containers.status();
    if (!containers.ok() || containers->size() != 1) {
      ADD_FAILURE() << "the killed run left no container of its step";
      return "";
    }
    return (*containers)[0].labels["io.libdelegate.task"];
  }

  std::unique_ptr<docker::DockerClient> client_;
  std::string name_;
  std::string dir_;
  ExecutorRegistry registry_;
};

TEST_F(DockerResumeTest, AStepOfAKilledDelegateIsFollowedToItsEnd) {
  const std::string task = StartAndKill(R"yaml(
  - id: build
    image: delegate-test/busybox:latest
    pull: if-not-present
    outputs: [V]
    commands:
      - echo before-$((6*7))
      - sleep 3
      - echo built > /harness/artifact
      - echo V=1 >> $HARNESS_OUTPUT_FILE
      - echo after-$((6*7))
)yaml",
                                        "before");
  ASSERT_FALSE(task.empty());

  Stage stage;
  stage.name = "resume";
  stage.platform = "docker";
  stage.steps = {ImageStep("build", {}), ImageStep("use", {"cat artifact"})};
  stage.steps[0].outputs = {"V"};
  HandRun run(stage, task, name_);
  std::unique_ptr<Executor> resumed = registry_.Create("docker");
  ASSERT_TRUE(resumed->Resume(run.context()).ok()) << run.Text();
  StepResult build = run.Step(*resumed, 0, /*reattach=*/true);
  EXPECT_EQ(build.status, StepStatus::kSuccess) << build.error << run.Text();
  EXPECT_EQ(build.exit_code, 0);
  EXPECT_EQ(build.outputs, (std::map<std::string, std::string>{{"V", "1"}}));
  // Its log from the start: what it printed before the restart too.
  const std::string text = run.Text();
  const size_t reattached = text.find("re-attached to container ");
  ASSERT_NE(reattached, std::string::npos) << text;
  EXPECT_NE(text.find("\nbefore-42\n", reattached), std::string::npos) << text;
  EXPECT_NE(text.find("\nafter-42\n", reattached), std::string::npos) << text;

  // The next step sees what it left in the workspace.
  StepResult use = run.Step(*resumed, 1);
  EXPECT_EQ(use.status, StepStatus::kSuccess) << use.error << run.Text();
  EXPECT_THAT(run.Text(), HasSubstr("\nbuilt\n"));
  EXPECT_TRUE(resumed->Cleanup(run.context()).ok());
  EXPECT_THAT(Labelled(*client_, Label()), IsEmpty());
}

TEST_F(DockerResumeTest, AStepThatEndedWhileTheDelegateWasDownReportsItsExit) {
  const std::string task = StartAndKill(R"yaml(
  - id: fail
    image: delegate-test/busybox:latest
    pull: if-not-present
    outputs: [V]
    commands: ["echo up-$((6*7))", "sleep 1", "echo V=7 >> $HARNESS_OUTPUT_FILE", "exit 3"]
)yaml",
                                        "up");
  ASSERT_FALSE(task.empty());
  // Let it end before anything re-attaches.
  absl::StatusOr<std::vector<docker::Listed>> containers =
      client_->ListLabelled(docker::ObjectKind::kContainer, Label());
  ASSERT_TRUE(containers.ok() && containers->size() == 1);
  const std::string id = (*containers)[0].id;
  for (int i = 0; i < 200 && client_->InspectContainer(id).value().running;
       ++i) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_FALSE(client_->InspectContainer(id).value().running);

  Stage stage;
  stage.name = "resume";
  stage.platform = "docker";
  stage.steps = {ImageStep("fail", {})};
  stage.steps[0].outputs = {"V"};
  HandRun run(stage, task, name_);
  std::unique_ptr<Executor> resumed = registry_.Create("docker");
  ASSERT_TRUE(resumed->Resume(run.context()).ok()) << run.Text();
  StepResult r = run.Step(*resumed, 0, /*reattach=*/true);
  EXPECT_EQ(r.status, StepStatus::kFailure);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.error, "exit status 3");
  EXPECT_EQ(r.outputs.at("V"), "7");
  EXPECT_THAT(run.Text(), HasSubstr("\nup-42\n"));
  EXPECT_TRUE(resumed->Cleanup(run.context()).ok());
  EXPECT_THAT(Labelled(*client_, Label()), IsEmpty());
}

TEST_F(DockerResumeTest, NothingToReattachToOrAWorkspaceGoneIsSaidPlainly) {
  Stage stage;
  stage.name = "resume";
  stage.platform = "docker";
  stage.steps = {ImageStep("compile", {"true"})};
  HandRun run(stage, "gone-1", name_);
  // The killed process set the stage up and had not yet created the step's
  // container.
  std::unique_ptr<Executor> killed = registry_.Create("docker");
  ASSERT_TRUE(killed->Initialize(run.context()).ok());

  std::unique_ptr<Executor> resumed = registry_.Create("docker");
  ASSERT_TRUE(resumed->Resume(run.context()).ok());
  StepResult r = run.Step(*resumed, 0, /*reattach=*/true);
  EXPECT_EQ(r.status, StepStatus::kFailure);
  EXPECT_EQ(r.error,
            "the delegate restarted during step compile before its container "
            "started (or after the container was removed): there is nothing "
            "to re-attach to, and the step's result is unknown");
  EXPECT_THAT(client_->ListContainers(Label()).value(), IsEmpty())
      << "the step was started again";

  // Someone removed the stage's workspace while the delegate was down.
  const std::string transaction = kTransaction + name_ + "/gone-1";
  std::string workspace;
  const std::vector<std::string> volumes =
      client_->ListVolumes(transaction).value();
  for (const std::string& volume : volumes) {
    if (absl::EndsWith(volume, "-workspace")) workspace = volume;
  }
  ASSERT_FALSE(workspace.empty());
  ASSERT_TRUE(client_->RemoveVolume(workspace).ok());
  std::unique_ptr<Executor> again = registry_.Create("docker");
  absl::Status refused = again->Resume(run.context());
  EXPECT_TRUE(absl::IsFailedPrecondition(refused)) << refused;
  EXPECT_THAT(refused.message(), HasSubstr("the stage's workspace volume " +
                                           workspace + " is gone; "));
  EXPECT_TRUE(again->Cleanup(run.context()).ok());
  EXPECT_THAT(Labelled(*client_, Label()), IsEmpty());

  // Everything of it gone: a docker stage's init made it all, so that is
  // no fresh start either.
  std::unique_ptr<Executor> nothing = registry_.Create("docker");
  absl::Status none = nothing->Resume(run.context());
  EXPECT_TRUE(absl::IsNotFound(none)) << none;
  EXPECT_THAT(none.message(), HasSubstr("nothing of the stage is on the "
                                        "Docker Engine"));
  EXPECT_TRUE(nothing->Cleanup(run.context()).ok());
}

TEST_F(DockerResumeTest, SharedContainersOfTheKilledProcessAreReplaced) {
  Stage stage;
  stage.name = "resume";
  stage.platform = "docker";
  stage.reuse_containers = true;
  stage.steps = {ImageStep("mark", {"echo kept > /harness/mark"}),
                 ImageStep("read", {"cat /harness/mark"})};
  HandRun run(stage, "shared-1", name_);
  std::unique_ptr<Executor> killed = registry_.Create("docker");
  ASSERT_TRUE(killed->Initialize(run.context()).ok());
  ASSERT_EQ(run.Step(*killed, 0).status, StepStatus::kSuccess) << run.Text();
  ASSERT_THAT(client_->ListContainers(Label()).value(), Not(IsEmpty()));

  std::unique_ptr<Executor> resumed = registry_.Create("docker");
  ASSERT_TRUE(resumed->Resume(run.context()).ok()) << run.Text();
  EXPECT_THAT(run.Text(), HasSubstr("removed the shared container "));
  EXPECT_THAT(client_->ListContainers(Label()).value(), IsEmpty());
  StepResult mark = run.Step(*resumed, 0, /*reattach=*/true);
  EXPECT_EQ(mark.status, StepStatus::kFailure);
  EXPECT_EQ(mark.error,
            "the delegate restarted during step mark; a step of a shared "
            "container (reuse_containers) cannot be re-attached, and its "
            "result is unknown");
  // A fresh shared container, under a name the killed process had used.
  StepResult read = run.Step(*resumed, 1);
  EXPECT_EQ(read.status, StepStatus::kSuccess) << read.error << run.Text();
  EXPECT_THAT(run.Text(), HasSubstr("\nkept\n"));
  EXPECT_TRUE(resumed->Cleanup(run.context()).ok());
  EXPECT_THAT(Labelled(*client_, Label()), IsEmpty());
}

TEST_F(DockerResumeTest, ALocalStageResumedWithHostStepsOnlyStillCleansDocker) {
  Stage stage;
  stage.name = "resume";
  stage.platform = "local";
  Step host;
  host.id = "after";
  host.commands = {"true"};
  stage.steps = {ImageStep("before", {"true"}), host};
  HandRun run(stage, "local-2", name_);
  // The killed process ran a container step: the stage's network and
  // volumes are on the engine.
  std::unique_ptr<Executor> killed = registry_.Create("local");
  ASSERT_TRUE(killed->Initialize(run.context()).ok());
  ASSERT_EQ(run.Step(*killed, 0).status, StepStatus::kSuccess) << run.Text();
  ASSERT_THAT(Labelled(*client_, Label()), Not(IsEmpty()));
  // After the restart only a host step runs, then the cleanup.
  std::unique_ptr<Executor> resumed = registry_.Create("local");
  ASSERT_TRUE(resumed->Resume(run.context()).ok()) << run.Text();
  EXPECT_EQ(run.Step(*resumed, 1).status, StepStatus::kSuccess) << run.Text();
  EXPECT_TRUE(resumed->Cleanup(run.context()).ok());
  EXPECT_THAT(Labelled(*client_, Label()), IsEmpty());
  EXPECT_TRUE(fs::is_empty(dir_ + "/work"));
}

TEST_F(DockerResumeTest, ALocalStageSetsDockerUpAtItsFirstContainerStep) {
  Stage stage;
  stage.name = "resume";
  stage.platform = "local";
  Step host;
  host.id = "prepare";
  host.commands = {"echo on the host > note"};
  stage.steps = {host, ImageStep("package", {"echo in-a-$((6*7))"}), host};
  stage.steps[2].id = "check";
  stage.steps[2].commands = {"cat note"};
  HandRun run(stage, "local-1", name_);
  // The killed process ran host steps only: nothing of it is on Docker.
  std::unique_ptr<Executor> killed = registry_.Create("local");
  ASSERT_TRUE(killed->Initialize(run.context()).ok());
  ASSERT_EQ(run.Step(*killed, 0).status, StepStatus::kSuccess) << run.Text();
  ASSERT_THAT(Labelled(*client_, Label()), IsEmpty());

  std::unique_ptr<Executor> resumed = registry_.Create("local");
  ASSERT_TRUE(resumed->Resume(run.context()).ok()) << run.Text();
  StepResult prepare = run.Step(*resumed, 0, /*reattach=*/true);
  EXPECT_EQ(prepare.status, StepStatus::kFailure);
  EXPECT_THAT(prepare.error, HasSubstr("host steps stop with the delegate"));
  StepResult package = run.Step(*resumed, 1);
  EXPECT_EQ(package.status, StepStatus::kSuccess)
      << package.error << run.Text();
  EXPECT_THAT(run.Text(), HasSubstr("setting up its network and volumes"));
  EXPECT_THAT(run.Text(), HasSubstr("\nin-a-42\n"));
  StepResult check = run.Step(*resumed, 2);
  EXPECT_EQ(check.status, StepStatus::kSuccess) << check.error << run.Text();
  EXPECT_THAT(run.Text(), HasSubstr("\non the host\n"));
  EXPECT_TRUE(resumed->Cleanup(run.context()).ok());
  EXPECT_THAT(Labelled(*client_, Label()), IsEmpty());
  EXPECT_TRUE(fs::is_empty(dir_ + "/work"));
}

}  // namespace
}  // namespace delegate

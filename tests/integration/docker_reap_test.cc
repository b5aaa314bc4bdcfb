// A delegate killed with SIGKILL in the middle of a docker stage leaves its
// container, network and volumes behind; `delegate cleanup` under the same
// HARNESS_NAME and state directory removes them, and nothing of a run that
// still lives. Runs the real binary on the real Docker Engine.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
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
using ::delegate::testing::Outcome;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

class DockerReapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DELEGATE_CONNECT_TEST_ENGINE_OR_SKIP(client_);
    name_ = "reap-test-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    dir_ = ::testing::TempDir() + "/delegate-reap-" + std::to_string(getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_ + "/work");
  }

  void TearDown() override {
    if (!client_) return;
    // Whatever a failed assertion left running goes, so that the next run
    // starts clean.
    DockerExecutorOptions options;
    options.grace_period = absl::Seconds(1);
    (void)ReapDockerLeftovers(options, name_);
    (void)ReapDockerLeftovers(options, name_ + "-gone");
    fs::remove_all(dir_);
  }

  std::string Label() const { return "io.libdelegate.delegate=" + name_; }

  std::vector<std::string> Env() const {
    return {"HARNESS_NAME=" + name_, "HARNESS_WORKDIR=" + dir_ + "/work",
            "CLEANUP_GRACE_PERIOD_SECONDS=1"};
  }

  std::string Write(const std::string& file, const std::string& content) {
    std::string path = dir_ + "/" + file;
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }

  Outcome Cleanup() {
    DelegateProcess child({"cleanup"}, Env(), dir_ + "/cleanup.log");
    return child.Wait();
  }

  std::unique_ptr<docker::DockerClient> client_;
  std::string name_;
  std::string dir_;
};

TEST_F(DockerReapTest, CleanupRemovesWhatAKilledDelegateLeft) {
  // The marker is computed by the shell, so the echoed command line
  // ("+ echo reap-marker-$((6*7))") does not count as the step's output.
  const std::string file = Write("reap.yaml", R"yaml(name: reap
platform: docker
volumes:
  - {name: cache, empty_dir: {}}
steps:
  - id: sleeper
    image: delegate-test/busybox:latest
    pull: if-not-present
    volume_mounts: [{name: cache, path: /cache}]
    commands: ["echo reap-marker-$((6*7))", "sleep 300"]
)yaml");
  DelegateProcess exec({"exec", file}, Env(), dir_ + "/exec.log");
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (!absl::StrContains(exec.Output(), "reap-marker-42") &&
         !exec.Exited() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_THAT(exec.Output(), HasSubstr("reap-marker-42"))
      << "the step did not start";
  ASSERT_FALSE(exec.Exited()) << exec.Output();

  // Cleanup while the run lives (another delegate of the same name, or an
  // operator) leaves its containers alone.
  const size_t running = client_->ListContainers(Label())->size();
  ASSERT_GT(running, 0u);
  Outcome early = Cleanup();
  EXPECT_EQ(early.exit_code, 0) << early.out;
  EXPECT_THAT(early.out, HasSubstr("0 leftovers removed"));
  EXPECT_EQ(client_->ListContainers(Label())->size(), running);
  EXPECT_FALSE(exec.Exited()) << exec.Output();

  ASSERT_EQ(kill(exec.pid(), SIGKILL), 0);
  Outcome killed = exec.Wait();
  EXPECT_EQ(killed.exit_code, 128 + SIGKILL);

  // No cleanup ran: the stage's container, network and volumes are still
  // there.
  absl::StatusOr<std::vector<std::string>> containers =
      client_->ListContainers(Label());
  absl::StatusOr<std::vector<std::string>> networks =
      client_->ListNetworks(Label());
  absl::StatusOr<std::vector<std::string>> volumes =
      client_->ListVolumes(Label());
  ASSERT_TRUE(containers.ok()) << containers.status();
  ASSERT_TRUE(networks.ok()) << networks.status();
  ASSERT_TRUE(volumes.ok()) << volumes.status();
  EXPECT_THAT(*containers, Not(IsEmpty()));
  EXPECT_THAT(*networks, Not(IsEmpty()));
  EXPECT_THAT(*volumes, Not(IsEmpty()));

  const absl::Time start = absl::Now();
  Outcome o = Cleanup();
  EXPECT_EQ(o.exit_code, 0) << o.out;
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
  EXPECT_THAT(o.out, HasSubstr("removed container "));
  EXPECT_THAT(o.out, HasSubstr("removed network "));
  EXPECT_THAT(o.out, HasSubstr("removed volume "));
  const size_t total = containers->size() + networks->size() + volumes->size();
  EXPECT_THAT(
      o.out, HasSubstr(absl::StrCat(name_, ": ", total, " leftovers removed")));

  EXPECT_THAT(::delegate::testing::Labelled(*client_, Label()), IsEmpty());

  // A second run finds nothing.
  Outcome again = Cleanup();
  EXPECT_EQ(again.exit_code, 0) << again.out;
  EXPECT_THAT(again.out, HasSubstr("0 leftovers removed"));
}

TEST_F(DockerReapTest,
       AServerStartRemovesWhatKilledRunsLeftNotWhatLiveOnesRun) {
  // Two runs of this name: one killed mid-step, one still running.
  auto start = [&](const std::string& id) {
    const std::string file =
        Write(id + ".yaml", absl::StrCat(R"yaml(name: )yaml", id, R"yaml(
platform: docker
steps:
  - id: sleeper
    image: delegate-test/busybox:latest
    pull: if-not-present
    commands: ["echo up-$((6*7))", "sleep 300"]
)yaml"));
    auto run = std::make_unique<DelegateProcess>(
        std::vector<std::string>{"exec", file}, Env(),
        dir_ + "/" + id + ".log");
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (!absl::StrContains(run->Output(), "up-42") && !run->Exited() &&
           absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(50));
    }
    return run;
  };
  auto killed = start("killed");
  ASSERT_THAT(killed->Output(), HasSubstr("up-42"));
  ASSERT_EQ(kill(killed->pid(), SIGKILL), 0);
  killed->Wait();
  auto live = start("live");
  ASSERT_THAT(live->Output(), HasSubstr("up-42"));
  const std::string stage_label = "io.libdelegate.stage=";
  ASSERT_THAT(client_->ListContainers(stage_label + "killed").value(),
              Not(IsEmpty()));
  ASSERT_THAT(client_->ListContainers(stage_label + "live").value(),
              Not(IsEmpty()));

  std::vector<std::string> env = Env();
  env.push_back("HTTPS_BIND=127.0.0.1:0");
  DelegateProcess server(
      {"server", "--manager", "none", "--runtime-listen", "127.0.0.1:0"}, env,
      dir_ + "/server.log");
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (!absl::StrContains(server.Output(), "serving RuntimeService") &&
         !server.Exited() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_THAT(server.Output(), HasSubstr("serving RuntimeService"));
  EXPECT_THAT(server.Output(),
              HasSubstr("removed a leftover of an earlier run"));
  EXPECT_THAT(client_->ListContainers(stage_label + "killed").value(),
              IsEmpty());
  EXPECT_THAT(client_->ListContainers(stage_label + "live").value(),
              Not(IsEmpty()))
      << "the start of a server removed a live run's container";
  EXPECT_FALSE(live->Exited()) << live->Output();
}

TEST_F(DockerReapTest, AStartKeepsWhatTheStagesToBeResumedMade) {
  // What killed processes left: of this instance, a stage the manager will
  // resume (its shared container still running) and one it will not; of a
  // gone instance, a stage under the same id, which is not this
  // instance's to resume.
  const std::string own = "own-" + std::to_string(getpid());
  const std::string gone = "gone-" + std::to_string(getpid());
  DockerExecutorOptions own_options;
  own_options.instance = own;
  DockerExecutorOptions gone_options;
  gone_options.instance = gone;
  ExecutorRegistry own_registry;
  ExecutorRegistry gone_registry;
  ASSERT_TRUE(RegisterDockerExecutor(own_registry, own_options).ok());
  ASSERT_TRUE(RegisterDockerExecutor(gone_registry, gone_options).ok());
  Stage stage;
  stage.name = "reap";
  stage.platform = "docker";
  stage.reuse_containers = true;
  stage.volumes.push_back({"cache", EmptyDirVolume{}});
  Step step;
  step.id = "warm";
  step.image = delegate::testing::kTestImage;
  step.commands = {"echo warm > /harness/warm"};
  stage.steps.push_back(step);
  HandRun resuming(stage, "keep-me", name_);
  HandRun other(stage, "drop-me", name_);
  HandRun gone_one(stage, "keep-me", name_ + "-gone");
  std::vector<std::unique_ptr<Executor>> killed;
  for (auto [registry, run] :
       {std::pair{&own_registry, &resuming}, std::pair{&own_registry, &other},
        std::pair{&gone_registry, &gone_one}}) {
    killed.push_back(registry->Create("docker"));
    ASSERT_TRUE(killed.back()->Initialize(run->context()).ok());
    ASSERT_EQ(run->Step(*killed.back(), 0).status, StepStatus::kSuccess)
        << run->Text();
  }
  const std::string transaction = "io.libdelegate.transaction=";
  const std::vector<std::string> kept =
      ::delegate::testing::Labelled(*client_, transaction + name_ + "/keep-me");
  // A container, the network and three volumes.
  ASSERT_EQ(kept.size(), 5u) << ::testing::PrintToString(kept);

  absl::StatusOr<std::vector<std::string>> removed =
      ReapDockerInstances(own_options, {gone, own}, {"keep-me"});
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(removed->size(), 10u) << ::testing::PrintToString(*removed);
  // In no particular order: the Engine lists volumes as it likes.
  EXPECT_THAT(
      ::delegate::testing::Labelled(*client_, transaction + name_ + "/keep-me"),
      ::testing::UnorderedElementsAreArray(kept));
  EXPECT_THAT(
      ::delegate::testing::Labelled(*client_, transaction + name_ + "/drop-me"),
      IsEmpty());
  EXPECT_THAT(::delegate::testing::Labelled(
                  *client_, transaction + name_ + "-gone/keep-me"),
              IsEmpty());

  // The kept stage goes on.
  std::unique_ptr<Executor> resumed = own_registry.Create("docker");
  ASSERT_TRUE(resumed->Resume(resuming.context()).ok()) << resuming.Text();
  EXPECT_TRUE(resumed->Cleanup(resuming.context()).ok());
  EXPECT_THAT(::delegate::testing::Labelled(*client_, Label()), IsEmpty());
}

TEST_F(DockerReapTest, CleanupWithNothingLeftRemovesNothing) {
  Outcome o = Cleanup();
  EXPECT_EQ(o.exit_code, 0) << o.out;
  EXPECT_THAT(o.out, HasSubstr("0 leftovers removed"));
  EXPECT_THAT(o.out, Not(HasSubstr("removed container")));
}

}  // namespace
}  // namespace delegate

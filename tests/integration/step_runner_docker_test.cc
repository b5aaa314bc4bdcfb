// The static step agent in real step containers of two different kinds on
// the real Docker Engine, driven by the runner over TLS: a busybox-static
// image (no libc at all) and an image of dash and glibc only (no busybox,
// no coreutils). The containers share the workspace and the runner's
// directory as the containers of an ECS stage task do; each keeps its own
// user and read-only root.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runner/identity.h"
#include "runner/step_runner_client.h"
#include "runner/step_runner_server.h"
#include "tests/fakes/docker_engine.h"

namespace delegate::runner {
namespace {

using ::testing::HasSubstr;

constexpr const char* kGlibcImage = "delegate-test/dash-glibc:latest";

class StepRunnerDockerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DELEGATE_CONNECT_TEST_ENGINE_OR_SKIP(engine_);
    char pattern[] = "/tmp/step-runner-docker-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
    chmod(dir_.c_str(), 0755);
    std::filesystem::create_directories(dir_ + "/harness");
    chmod((dir_ + "/harness").c_str(), 0777);
    std::filesystem::copy_file(DELEGATE_STEP_BINARY, dir_ + "/delegate-step");
    chmod((dir_ + "/delegate-step").c_str(), 0755);
    label_ = absl::StrCat("delegate.test.step-runner=", getpid());

    absl::StatusOr<Identity> me = MakeIdentity("delegate");
    ASSERT_TRUE(me.ok()) << me.status();
    identity_ = *me;
    StepRunnerServerOptions options;
    options.listen = "127.0.0.1:0";
    options.client_sha256 = identity_.sha256;
    options.agent_socket = dir_ + "/runner.sock";
    options.agent_wait = absl::Seconds(30);
    options.record = [](std::string_view) {};
    absl::StatusOr<std::unique_ptr<StepRunnerServer>> server =
        StepRunnerServer::Start(std::move(options));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    absl::StatusOr<std::unique_ptr<StepRunnerClient>> client =
        StepRunnerClient::Connect(absl::StrCat("127.0.0.1:", server_->port()),
                                  identity_, absl::Seconds(10));
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  void TearDown() override {
    client_.reset();
    if (server_) {
      server_->Stop();
      server_->Wait();
    }
    if (engine_) {
      absl::StatusOr<std::vector<std::string>> left =
          engine_->ListContainers(label_);
      if (left.ok()) {
        for (const std::string& id : *left) {
          (void)engine_->RemoveContainer(id, true);
        }
      }
    }
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // A step container as a stage task has it: the agent as its entry point,
  // the runner's directory and the workspace mounted, no network.
  void StartStepContainer(const std::string& name, const std::string& image,
                          const std::string& user, bool read_only_root) {
    docker::ContainerSpec spec;
    spec.name = absl::StrCat("step-runner-", getpid(), "-", name);
    spec.image = image;
    spec.entrypoint = {"/delegate/delegate-step", "--socket",
                       "/delegate/runner.sock", "--name", name};
    spec.user = user;
    spec.read_only_rootfs = read_only_root;
    spec.network = "none";
    spec.labels = {{"delegate.test.step-runner", std::to_string(getpid())}};
    spec.mounts = {
        {docker::Mount::Type::kBind, dir_, "/delegate", true},
        {docker::Mount::Type::kBind, dir_ + "/harness", "/harness", false}};
    absl::StatusOr<std::string> id = engine_->CreateContainer(spec);
    ASSERT_TRUE(id.ok()) << id.status();
    ASSERT_TRUE(engine_->StartContainer(*id).ok());
  }

  absl::StatusOr<RunnerStepEnd> Run(const std::string& container,
                                    const std::string& script,
                                    std::string* out) {
    RunnerStep step;
    step.container = container;
    step.step_id = container;
    step.argv = {"sh", "-c", script};
    step.env = {{"PATH", "/bin"}};
    step.working_dir = "/harness";
    return client_->Run(
        step,
        [out](int, std::string_view data) {
          out->append(data.data(), data.size());
        },
        {}, absl::Now() + absl::Seconds(60));
  }

  std::unique_ptr<docker::DockerClient> engine_;
  std::string dir_;
  std::string label_;
  Identity identity_;
  std::unique_ptr<StepRunnerServer> server_;
  std::unique_ptr<StepRunnerClient> client_;
};

TEST_F(StepRunnerDockerTest, TwoKindsOfImageShareTheWorkspaceThroughTheRunner) {
  StartStepContainer("step-1", delegate::testing::kTestImage, "", true);
  StartStepContainer("step-2", kGlibcImage, "1000:1000", false);

  std::string out;
  absl::StatusOr<RunnerStepEnd> first =
      Run("step-1", "echo built-by-one > artifact.txt; id -u; touch /x", &out);
  ASSERT_TRUE(first.ok()) << first.status();
  // Its root is read-only; the workspace is not.
  EXPECT_EQ(first->exit_code, 1);
  EXPECT_THAT(out, HasSubstr("0\n"));
  EXPECT_THAT(out, HasSubstr("Read-only file system"));

  out.clear();
  // dash's builtins alone: the image has nothing else.
  absl::StatusOr<RunnerStepEnd> second =
      Run("step-2",
          "read line < artifact.txt; echo \"two read: $line\"; "
          "echo two > by-two.txt; exit 4",
          &out);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->exit_code, 4);
  EXPECT_EQ(out, "two read: built-by-one\n");
  // It ran as its container's user.
  struct stat st;
  ASSERT_EQ(stat((dir_ + "/harness/by-two.txt").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 1000u);
}

// The agent is the container's PID 1: what a step started in a session of
// its own (out of its process group) ends with the step too.
TEST_F(StepRunnerDockerTest, WhatAStepDetachedEndsWithItInTheContainer) {
  StartStepContainer("step-1", delegate::testing::kTestImage, "", false);
  std::string out;
  absl::StatusOr<RunnerStepEnd> first = Run(
      "step-1",
      "setsid sleep 300 & sleep 0.2; pidof sleep >/dev/null && echo up", &out);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(out, "up\n");
  out.clear();
  absl::StatusOr<RunnerStepEnd> second =
      Run("step-1", "pidof sleep || echo none", &out);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(out, "none\n");
}

}  // namespace
}  // namespace delegate::runner

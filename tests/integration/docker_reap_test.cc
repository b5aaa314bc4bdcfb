// A delegate killed with SIGKILL in the middle of a docker stage leaves its
// container, network and volumes behind; `delegate cleanup` under the same
// HARNESS_NAME removes them. Runs the real binary on the real Docker Engine.
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

namespace delegate {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

struct Outcome {
  int exit_code = -1;
  std::string out;  // stdout and stderr together
};

// The binary with `args`, extra `env` on top of ours, output to a file.
class Child {
 public:
  Child(const std::vector<std::string>& args,
        const std::vector<std::string>& env, const std::string& log)
      : log_(log) {
    pid_ = fork();
    if (pid_ == 0) {
      int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      for (const std::string& kv : env) putenv(strdup(kv.c_str()));
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(DELEGATE_BINARY));
      for (const std::string& a : args) argv.push_back(strdup(a.c_str()));
      argv.push_back(nullptr);
      execv(DELEGATE_BINARY, argv.data());
      _exit(127);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  pid_t pid() const { return pid_; }

  Outcome Wait() {
    int status = 0;
    waitpid(pid_, &status, 0);
    reaped_ = true;
    Outcome o;
    o.exit_code =
        WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    o.out = Output();
    return o;
  }

  // True when the child has exited (and is reaped).
  bool Exited() {
    if (reaped_) return true;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) reaped_ = true;
    return reaped_;
  }

  std::string Output() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  pid_t pid_;
  bool reaped_ = false;
  std::string log_;
};

class DockerReapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto endpoint = docker::ParseDockerHost(
        getenv("DOCKER_HOST") ? getenv("DOCKER_HOST") : "");
    ASSERT_TRUE(endpoint.ok());
    auto client = docker::DockerClient::Connect(*endpoint, absl::Seconds(5));
    if (!client.ok()) {
      if (getenv("DELEGATE_REQUIRE_DOCKER")) {
        FAIL() << client.status();
      }
      GTEST_SKIP() << "no Docker Engine (" << client.status()
                   << "); run scripts/docker-test-setup.sh";
    }
    client_ = *std::move(client);
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
    Child child({"cleanup"}, Env(), dir_ + "/cleanup.log");
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
  Child exec({"exec", file}, Env(), dir_ + "/exec.log");
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (!absl::StrContains(exec.Output(), "reap-marker-42") &&
         !exec.Exited() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_THAT(exec.Output(), HasSubstr("reap-marker-42"))
      << "the step did not start";
  ASSERT_FALSE(exec.Exited()) << exec.Output();

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

  EXPECT_THAT(*client_->ListContainers(Label()), IsEmpty());
  EXPECT_THAT(*client_->ListNetworks(Label()), IsEmpty());
  EXPECT_THAT(*client_->ListVolumes(Label()), IsEmpty());

  // A second run finds nothing.
  Outcome again = Cleanup();
  EXPECT_EQ(again.exit_code, 0) << again.out;
  EXPECT_THAT(again.out, HasSubstr("0 leftovers removed"));
}

TEST_F(DockerReapTest, CleanupWithNothingLeftRemovesNothing) {
  Outcome o = Cleanup();
  EXPECT_EQ(o.exit_code, 0) << o.out;
  EXPECT_THAT(o.out, HasSubstr("0 leftovers removed"));
  EXPECT_THAT(o.out, Not(HasSubstr("removed container")));
}

}  // namespace
}  // namespace delegate

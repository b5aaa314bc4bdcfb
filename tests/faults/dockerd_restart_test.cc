// The fault suite (ctest label "faults"): the Docker Engine restarted in the
// middle of a docker step of `delegate exec`, the way `systemctl restart
// docker` does it (SIGTERM, then a new dockerd). The step must fail saying
// that the engine stopped, the later step must be skipped, and cleanup must
// wait for the engine and then remove everything the stage made.
//
// The engine is a dockerd of the test's own (its own socket, data and exec
// roots, in a network namespace of its own), so that stopping it disturbs
// no other test; the test image is copied into it from the shared engine.
// It needs root, as dockerd does. The namespace matters: a dockerd started
// again deletes the default bridge it finds in its store by the name
// docker0, which in the host's namespace is the shared engine's.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "http/http_client.h"
#include "tests/fakes/delegate_process.h"
#include "tests/fakes/docker_engine.h"

namespace delegate {
namespace {

using ::delegate::testing::DelegateProcess;
using ::testing::HasSubstr;
using ::testing::Not;

// A dockerd of the test's own under `dir`, in a network namespace of its
// own (unshare --net), started and stopped at will.
class PrivateDockerd {
 public:
  explicit PrivateDockerd(std::string dir) : dir_(std::move(dir)) {}
  ~PrivateDockerd() { Stop(); }

  std::string socket() const { return dir_ + "/docker.sock"; }
  std::string host() const { return "unix://" + socket(); }

  // Starts it and waits until it answers.
  absl::Status Start() {
    pid_ = fork();
    if (pid_ == 0) {
      const std::string log = dir_ + "/dockerd.log";
      FILE* f = freopen(log.c_str(), "a", stdout);
      (void)f;
      dup2(1, 2);
      const std::string sock = "unix://" + socket();
      const std::string data = dir_ + "/data", exec = dir_ + "/exec",
                        pidfile = dir_ + "/docker.pid";
      // A short shutdown: the step's shell ignores SIGTERM as PID 1.
      execlp("unshare", "unshare", "--net", "dockerd", "-H", sock.c_str(),
             "--data-root", data.c_str(), "--exec-root", exec.c_str(),
             "--pidfile", pidfile.c_str(), "--shutdown-timeout", "2",
             static_cast<char*>(nullptr));
      _exit(127);
    }
    if (pid_ < 0) return absl::InternalError("fork");
    const absl::Time until = absl::Now() + absl::Seconds(60);
    while (absl::Now() < until) {
      auto endpoint = docker::ParseDockerHost(host());
      if (endpoint.ok()) {
        auto client =
            docker::DockerClient::Connect(*endpoint, absl::Seconds(1));
        if (client.ok()) return absl::OkStatus();
      }
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return absl::UnavailableError("dockerd exited; see " + dir_ +
                                      "/dockerd.log");
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
    return absl::DeadlineExceededError("dockerd did not answer in 60 s");
  }

  // SIGTERM, as a service manager stops it, and waits for it to exit.
  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
  }

 private:
  std::string dir_;
  pid_t pid_ = -1;
};

// Copies `image` from the shared engine into the one at `to` (GET
// /images/NAME/get, POST /images/load).
absl::Status CopyImage(const std::string& image, const std::string& to_socket) {
  const char* env_host = getenv("DOCKER_HOST");
  auto from = docker::ParseDockerHost(env_host ? env_host : "");
  if (!from.ok()) return from.status();
  http::HttpClient http(1);
  http::Request get;
  get.url = absl::StrCat(from->base_url, "/images/", image, "/get");
  get.unix_socket = from->unix_socket;
  absl::StatusOr<http::Response> saved = http.Perform(get);
  if (!saved.ok()) return saved.status();
  if (saved->status != 200) {
    return absl::InternalError(absl::StrCat("save: HTTP ", saved->status));
  }
  http::Request load;
  load.method = "POST";
  load.url = "http://localhost/images/load?quiet=1";
  load.unix_socket = to_socket;
  load.headers.push_back({"Content-Type", "application/x-tar"});
  load.body = std::move(saved->body);
  absl::StatusOr<http::Response> loaded = http.Perform(load);
  if (!loaded.ok()) return loaded.status();
  if (loaded->status != 200) {
    return absl::InternalError(
        absl::StrCat("load: HTTP ", loaded->status, ": ", loaded->body));
  }
  return absl::OkStatus();
}

TEST(DockerdRestartTest,
     TheStepFailsSayingSoAndCleanupEndsOnceTheEngineIsBack) {
  {
    std::unique_ptr<docker::DockerClient> shared;
    DELEGATE_CONNECT_TEST_ENGINE_OR_SKIP(shared);
  }
  if (geteuid() != 0) {
    if (testing::DockerRequired()) FAIL() << "needs root to run a dockerd";
    GTEST_SKIP() << "needs root to run a dockerd of its own";
  }
  // Short: the socket's path must fit in sun_path.
  const std::string dir = absl::StrCat("/tmp/dockerd-restart-", getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir + "/work");
  auto dockerd = std::make_unique<PrivateDockerd>(dir);
  ASSERT_TRUE(dockerd->Start().ok()) << "see " << dir << "/dockerd.log";
  ASSERT_TRUE(CopyImage(testing::kTestImage, dockerd->socket()).ok());

  const std::string name = absl::StrCat("dockerd-restart-", getpid());
  const std::string file = dir + "/stage.yaml";
  std::ofstream(file) << absl::StrCat(R"(name: restart
platform: docker
volumes:
  - {name: cache, empty_dir: {}}
steps:
  - id: long
    image: )",
                                      testing::kTestImage, R"(
    pull: never
    volume_mounts: [{name: cache, path: /cache}]
    commands: ["echo started", "sleep 60", "echo never"]
  - id: after
    image: )",
                                      testing::kTestImage, R"(
    pull: never
    commands: ["echo after"]
)");
  DelegateProcess run({"exec", file},
                      {"DOCKER_HOST=" + dockerd->host(), "HARNESS_NAME=" + name,
                       "HARNESS_WORKDIR=" + dir + "/work",
                       "DELEGATE_STATE_DIR=" + dir + "/state"},
                      dir + "/delegate.log");
  const absl::Time until = absl::Now() + absl::Seconds(60);
  while (!absl::StrContains(run.Output(), "long | started") && !run.Exited() &&
         absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_THAT(run.Output(), HasSubstr("long | started"));

  const absl::Time restart = absl::Now();
  dockerd->Stop();
  absl::SleepFor(absl::Seconds(2));
  ASSERT_TRUE(dockerd->Start().ok()) << "see " << dir << "/dockerd.log";
  const absl::Duration down = absl::Now() - restart;
  testing::Outcome o = run.Wait();
  const absl::Duration total = absl::Now() - restart;

  EXPECT_EQ(o.exit_code, 1) << o.out;
  // The step says why it failed; the next one did not run.
  EXPECT_THAT(o.out, HasSubstr("the Docker Engine stopped during the step"));
  EXPECT_THAT(o.out, HasSubstr("skipped: step long failed"));
  EXPECT_THAT(o.out, Not(HasSubstr("never")));
  EXPECT_THAT(o.out, Not(HasSubstr("after | after")));
  // Cleanup waited for the engine, then removed everything.
  EXPECT_THAT(o.out, HasSubstr("waiting up to 1m for it to come back"));
  EXPECT_THAT(o.out, HasSubstr("the Docker Engine answers again"));
  EXPECT_THAT(o.out, HasSubstr("stage restart: FAILURE"));
  EXPECT_THAT(o.out, Not(HasSubstr("(cleanup:"))) << "cleanup failed";
  auto endpoint = docker::ParseDockerHost(dockerd->host());
  ASSERT_TRUE(endpoint.ok());
  auto engine = docker::DockerClient::Connect(*endpoint);
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::vector<std::string> left =
      testing::Labelled(**engine, "io.libdelegate.delegate=" + name);
  EXPECT_THAT(left, ::testing::IsEmpty());
  printf(
      "faults: dockerd restarted mid-step: down for %s; the delegate ended "
      "%s after the restart began; %zu docker objects left\n",
      absl::FormatDuration(down).c_str(), absl::FormatDuration(total).c_str(),
      left.size());

  dockerd.reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace delegate

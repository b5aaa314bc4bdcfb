// The runner of an ECS stage task and its client, on this machine: the real
// gRPC server over TLS on loopback, the real static delegate-step agents as
// processes, real step processes. What ECS adds (the task, its containers
// and volumes) is in the ECS stage tests.
#include "delegate/step_runner.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runner/identity.h"
#include "runner/step_runner_client.h"
#include "runner/step_runner_server.h"
#include "tests/fakes/process_probe.h"

namespace delegate::runner {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

class StepRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/step-runner-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
    absl::StatusOr<Identity> me = MakeIdentity("delegate");
    ASSERT_TRUE(me.ok()) << me.status();
    identity_ = *me;
  }

  void TearDown() override {
    client_.reset();
    if (server_) {
      server_->Stop();
      server_->Wait();
    }
    for (pid_t pid : agents_) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    std::filesystem::remove_all(dir_);
  }

  void StartServer(absl::Duration agent_wait = absl::Seconds(10)) {
    StepRunnerServerOptions options;
    options.listen = "127.0.0.1:0";
    options.client_sha256 = identity_.sha256;
    options.agent_socket = dir_ + "/runner.sock";
    options.agent_wait = agent_wait;
    options.record = [this](std::string_view line) {
      absl::MutexLock lock(&mu_);
      recorded_.emplace_back(line);
    };
    absl::StatusOr<std::unique_ptr<StepRunnerServer>> server =
        StepRunnerServer::Start(std::move(options));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  // A step container's agent, as a process of this machine; `token`: its
  // DELEGATE_STEP_TOKEN.
  void StartAgent(const std::string& name, const std::string& token = "") {
    const std::string socket = dir_ + "/runner.sock";
    pid_t pid = fork();
    if (pid == 0) {
      if (!token.empty()) setenv("DELEGATE_STEP_TOKEN", token.c_str(), 1);
      execl(DELEGATE_STEP_BINARY, DELEGATE_STEP_BINARY, "--socket",
            socket.c_str(), "--name", name.c_str(), nullptr);
      _exit(127);
    }
    agents_.push_back(pid);
  }

  // The server, the agent of one step container, and a client.
  void StartWithAgent(const std::string& container) {
    StartServer();
    StartAgent(container);
    Connect();
  }

  void Connect() {
    absl::StatusOr<std::unique_ptr<StepRunnerClient>> client =
        StepRunnerClient::Connect(Target(), identity_, absl::Seconds(10));
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  std::string Target() const {
    return absl::StrCat("127.0.0.1:", server_->port());
  }

  RunnerStep Shell(const std::string& script) {
    RunnerStep step;
    step.container = "step-1";
    step.step_id = "s1";
    step.argv = {"/bin/sh", "-c", script};
    step.env = {{"PATH", "/usr/bin:/bin"}};
    step.working_dir = dir_ + "/work";
    step.stop_grace = absl::Seconds(2);
    return step;
  }

  // Runs `step`, keeping what arrived on each stream.
  absl::StatusOr<RunnerStepEnd> Run(
      const RunnerStep& step, std::stop_token stop = {},
      absl::Time deadline = absl::InfiniteFuture()) {
    return client_->Run(
        step,
        [this](int stream, std::string_view data) {
          (stream == 2 ? err_ : out_).append(data.data(), data.size());
        },
        stop, deadline);
  }

  std::vector<std::string> Recorded() {
    absl::MutexLock lock(&mu_);
    return recorded_;
  }

  std::string dir_;
  Identity identity_;
  std::unique_ptr<StepRunnerServer> server_;
  std::unique_ptr<StepRunnerClient> client_;
  std::vector<pid_t> agents_;
  std::string out_, err_;
  absl::Mutex mu_;
  std::vector<std::string> recorded_ ABSL_GUARDED_BY(mu_);
};

TEST_F(StepRunnerTest, AStepRunsInItsContainerAndItsOutputAndExitComeBack) {
  StartWithAgent("step-1");
  RunnerStep step = Shell("");
  step.env["GREETING"] = "hello";
  step.argv = {"sh", "-c",
               "echo out-$((6*7)); echo err-line >&2; pwd; echo $GREETING; "
               "exit 3"};
  absl::StatusOr<RunnerStepEnd> end = Run(step);
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_EQ(end->exit_code, 3);
  EXPECT_EQ(end->signal, 0);
  EXPECT_FALSE(end->stopped);
  // argv[0] is found in the step's PATH; the working dir is made.
  EXPECT_EQ(out_, absl::StrCat("out-42\n", dir_, "/work\nhello\n"));
  EXPECT_EQ(err_, "err-line\n");
  EXPECT_THAT(Recorded(), Contains("[s1] out-42"));
  EXPECT_THAT(Recorded(), Contains("[s1] err-line"));
  absl::StatusOr<std::vector<std::string>> containers = client_->Containers();
  ASSERT_TRUE(containers.ok()) << containers.status();
  EXPECT_THAT(*containers, ElementsAre("step-1"));
}

TEST_F(StepRunnerTest, ConsecutiveStepsReuseTheContainerAndShareFiles) {
  StartServer();
  StartAgent("step-1");
  StartAgent("step-2");
  Connect();
  ASSERT_TRUE(Run(Shell("echo from-one > shared.txt")).ok());
  RunnerStep second = Shell("cat shared.txt");
  second.container = "step-2";
  second.step_id = "s2";
  absl::StatusOr<RunnerStepEnd> end = Run(second);
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_EQ(end->exit_code, 0);
  EXPECT_EQ(out_, "from-one\n");
}

TEST_F(StepRunnerTest, AStepThatCannotStartSaysWhy) {
  StartWithAgent("step-1");
  RunnerStep step = Shell("");
  step.argv = {"/no/such/program"};
  absl::StatusOr<RunnerStepEnd> end = Run(step);
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_EQ(end->exit_code, -1);
  EXPECT_THAT(end->error,
              HasSubstr("exec: /no/such/program: No such file or directory"));
}

TEST_F(StepRunnerTest, OutputVariablesComeBack) {
  StartWithAgent("step-1");
  RunnerStep step = Shell(
      "echo VERSION=1.2.3 >> $HARNESS_OUTPUT_FILE; "
      "echo 'export COMMIT=abc' >> $HARNESS_OUTPUT_FILE");
  step.output_file = dir_ + "/outputs-s1";
  step.env["HARNESS_OUTPUT_FILE"] = step.output_file;
  absl::StatusOr<RunnerStepEnd> end = Run(step);
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_EQ(end->exit_code, 0);
  EXPECT_EQ(end->outputs, (std::map<std::string, std::string>{
                              {"COMMIT", "abc"}, {"VERSION", "1.2.3"}}));
}

// The client gets the output as written (the delegate masks it on its way
// to the manager); the runner's own record, bound for CloudWatch Logs, is
// masked.
TEST_F(StepRunnerTest, SecretValuesAreMaskedInTheRunnersRecord) {
  StartWithAgent("step-1");
  RunnerStep step = Shell("echo token=$TOKEN");
  step.env["TOKEN"] = "s3cr3t-t0ken-value";
  step.mask = {"s3cr3t-t0ken-value"};
  ASSERT_TRUE(Run(step).ok());
  EXPECT_EQ(out_, "token=s3cr3t-t0ken-value\n");
  EXPECT_THAT(Recorded(), ElementsAre("[s1] token=**************"));
}

TEST_F(StepRunnerTest, StopEndsTheStepAndWhatItStartedInTheBackground) {
  StartWithAgent("step-1");
  const std::string pids = dir_ + "/pids";
  std::stop_source stop;
  std::thread stopper([&] {
    for (int i = 0; i < 500 && delegate::testing::PidsIn(pids).size() < 2;
         ++i) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    stop.request_stop();
  });
  absl::StatusOr<RunnerStepEnd> end =
      Run(Shell(absl::StrCat("sleep 300 & echo $! >> ", pids, "; echo $$ >> ",
                             pids, "; wait")),
          stop.get_token());
  stopper.join();
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_TRUE(end->stopped);
  EXPECT_EQ(end->signal, SIGTERM);
  std::vector<pid_t> started = delegate::testing::PidsIn(pids);
  ASSERT_EQ(started.size(), 2u);
  for (pid_t pid : started) {
    EXPECT_TRUE(delegate::testing::AwaitGone(pid)) << pid << " outlived";
  }
  // The container takes the next step.
  out_.clear();
  absl::StatusOr<RunnerStepEnd> next = Run(Shell("echo next"));
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(out_, "next\n");
}

TEST_F(StepRunnerTest, AStepThatIgnoresSigtermIsKilledAfterTheGrace) {
  StartWithAgent("step-1");
  RunnerStep step =
      Shell("trap '' TERM; echo ready; while :; do sleep 1; done");
  step.stop_grace = absl::Milliseconds(300);
  absl::StatusOr<RunnerStepEnd> end =
      Run(step, {}, absl::Now() + absl::Seconds(1));
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_TRUE(end->deadline_passed);
  EXPECT_EQ(end->signal, SIGKILL);
  EXPECT_EQ(out_, "ready\n");
}

TEST_F(StepRunnerTest, WhatAStepLeftRunningEndsWithIt) {
  StartWithAgent("step-1");
  const std::string pid_file = dir_ + "/bg.pid";
  absl::StatusOr<RunnerStepEnd> end =
      Run(Shell(absl::StrCat("sleep 301 & echo $! > ", pid_file)));
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_EQ(end->exit_code, 0);
  std::vector<pid_t> left = delegate::testing::PidsIn(pid_file);
  ASSERT_EQ(left.size(), 1u);
  EXPECT_TRUE(delegate::testing::AwaitGone(left[0]));
}

// A step of one container cannot pose as another container's agent to get
// that container's steps (and their secrets): the step goes only to the
// agent with the container's token, and the agent's token is not in the
// env of the steps it runs.
TEST_F(StepRunnerTest, OnlyTheAgentWithTheContainersTokenGetsItsSteps) {
  StartServer();
  StartAgent("step-1", "token-of-one");
  StartAgent("step-2", "token-of-two");
  Connect();
  // The real step-2 is connected; then a step of step-1 starts, out of its
  // process group, an agent that says it is step-2, with a guessed token.
  RunnerStep impostor = Shell(absl::StrCat(
      "echo token=$DELEGATE_STEP_TOKEN; DELEGATE_STEP_TOKEN=guess setsid ",
      DELEGATE_STEP_BINARY, " --socket ", dir_,
      "/runner.sock --name step-2 >/dev/null 2>&1 & sleep 0.5"));
  impostor.container_token = "token-of-one";
  ASSERT_TRUE(Run(impostor).ok());
  EXPECT_EQ(out_, "token=\n");
  out_.clear();
  RunnerStep secret = Shell("echo $SECRET; echo $PPID");
  secret.container = "step-2";
  secret.container_token = "token-of-two";
  secret.env["SECRET"] = "for-step-two-only";
  absl::StatusOr<RunnerStepEnd> end = Run(secret);
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_EQ(end->exit_code, 0);
  // It ran under the real agent of step-2, a child of this test.
  EXPECT_EQ(out_, absl::StrCat("for-step-two-only\n", agents_.back(), "\n"));
}

// The runner reads a step's output file itself: a FIFO or a link to
// something else is refused, not waited on or followed.
TEST_F(StepRunnerTest, AnOutputFileThatIsNotARegularFileIsRefused) {
  StartWithAgent("step-1");
  for (const char* make : {"mkfifo", "ln -s /etc/passwd"}) {
    RunnerStep step = Shell(absl::StrCat("rm -f ", dir_, "/out; ", make, " ",
                                         dir_, "/out; echo ran"));
    step.output_file = dir_ + "/out";
    absl::StatusOr<RunnerStepEnd> end =
        Run(step, {}, absl::Now() + absl::Seconds(20));
    ASSERT_TRUE(end.ok()) << end.status();
    EXPECT_FALSE(end->deadline_passed) << make;
    EXPECT_EQ(end->exit_code, 0);
    EXPECT_TRUE(end->outputs.empty());
    EXPECT_THAT(end->outputs_error, HasSubstr("HARNESS_OUTPUT_FILE")) << make;
    std::filesystem::remove(dir_ + "/out");
  }
}

TEST_F(StepRunnerTest, AClientWithoutTheStagesCertificateIsRefused) {
  StartServer();
  absl::StatusOr<Identity> stranger = MakeIdentity("delegate");
  ASSERT_TRUE(stranger.ok());
  absl::StatusOr<std::unique_ptr<StepRunnerClient>> client =
      StepRunnerClient::Connect(Target(), *stranger, absl::Seconds(10));
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kUnauthenticated)
      << client.status();
  EXPECT_THAT(client.status().message(), Not(HasSubstr(identity_.sha256)));
}

TEST_F(StepRunnerTest, AContainerThatNeverConnectsIsNotFound) {
  StartServer(absl::Milliseconds(300));
  Connect();
  RunnerStep step = Shell("true");
  step.container = "step-9";
  absl::StatusOr<RunnerStepEnd> end = Run(step);
  ASSERT_FALSE(end.ok());
  EXPECT_EQ(end.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(end.status().message(),
              HasSubstr("step container step-9 is not connected"));
}

TEST_F(StepRunnerTest, AStepContainerThatDiesFailsItsStep) {
  StartWithAgent("step-1");
  std::thread killer([&] {
    absl::SleepFor(absl::Milliseconds(500));
    kill(agents_[0], SIGKILL);
  });
  absl::StatusOr<RunnerStepEnd> end = Run(Shell("sleep 30"));
  killer.join();
  ASSERT_FALSE(end.ok());
  EXPECT_EQ(end.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(end.status().message(), HasSubstr("step-1 went away"));
}

// `delegate runner` as the task's runner container runs it: the agent is
// put into the shared directory, the health check passes once the socket
// is there, and Shutdown ends it.
TEST_F(StepRunnerTest, ServeStepRunnerPutsTheAgentInPlaceAndShutsDown) {
  EXPECT_FALSE(CheckStepRunner({{"DELEGATE_RUNNER_DIR", dir_}}).ok());
  // A free port: bound, read, released.
  int probe = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t size = sizeof(addr);
  ASSERT_EQ(bind(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(getsockname(probe, reinterpret_cast<sockaddr*>(&addr), &size), 0);
  const int port = ntohs(addr.sin_port);
  close(probe);
  const EnvMap env = {
      {"DELEGATE_RUNNER_DIR", dir_},
      {"DELEGATE_RUNNER_LISTEN", absl::StrCat("127.0.0.1:", port)},
      {"DELEGATE_RUNNER_CLIENT_SHA256", identity_.sha256},
      {"DELEGATE_STEP_AGENT", DELEGATE_STEP_BINARY}};
  absl::Status served;
  std::thread runner(
      [&] { served = ServeStepRunner(env, "/nowhere/delegate"); });
  for (int i = 0; i < 250 && !CheckStepRunner(env).ok(); ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(CheckStepRunner(env).ok());
  struct stat st;
  ASSERT_EQ(stat((dir_ + "/delegate-step").c_str(), &st), 0);
  EXPECT_TRUE(st.st_mode & S_IXOTH);
  absl::StatusOr<std::unique_ptr<StepRunnerClient>> client =
      StepRunnerClient::Connect(absl::StrCat("127.0.0.1:", port), identity_,
                                absl::Seconds(10));
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE((*client)->Shutdown().ok());
  runner.join();
  EXPECT_TRUE(served.ok()) << served;

  // Without the client's fingerprint it refuses to start, naming it.
  EnvMap bad = env;
  bad.erase("DELEGATE_RUNNER_CLIENT_SHA256");
  absl::Status refused = ServeStepRunner(bad, "/nowhere/delegate");
  EXPECT_THAT(refused.message(), HasSubstr("DELEGATE_RUNNER_CLIENT_SHA256"));
}

}  // namespace
}  // namespace delegate::runner

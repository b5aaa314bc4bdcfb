// The `delegate` binary as a user runs it: exit codes, what it prints, the
// result file, signals.
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "http/http_server.h"
#include "rapidjson/document.h"
#include "tests/fakes/delegate_process.h"
#include "tests/fakes/process_probe.h"

namespace {

namespace fs = std::filesystem;
using ::delegate::testing::DelegateProcess;
using ::delegate::testing::Outcome;
using ::testing::HasSubstr;
using ::testing::Not;

// Waits up to 10 s for `text` in what the delegate printed.
void AwaitOutput(const DelegateProcess& child, absl::string_view text) {
  for (int i = 0; i < 5000 && !absl::StrContains(child.Output(), text); ++i) {
    absl::SleepFor(absl::Milliseconds(2));
  }
}

class DelegateBinaryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        ::testing::TempDir() + "/delegate-binary-" + std::to_string(getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_ + "/work");
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& content) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }

  Outcome Run(const std::vector<std::string>& args,
              std::vector<std::string> env = {}) {
    env.push_back("HARNESS_WORKDIR=" + dir_ + "/work");
    DelegateProcess child(args, env, dir_ + "/log");
    return child.Wait();
  }

  // Stage directories under the work dir (the state directory,
  // .delegate-state, is not one).
  size_t StageDirs() {
    size_t n = 0;
    for (auto& e : fs::directory_iterator(dir_ + "/work")) {
      n += e.path().filename().string()[0] != '.';
    }
    return n;
  }

  std::string dir_;
};

TEST_F(DelegateBinaryTest, SampleStageFromTheRepositoryRuns) {
  const std::string result = dir_ + "/result.json";
  Outcome o =
      Run({"exec", std::string(DELEGATE_SOURCE_DIR) + "/examples/hello.yaml",
           "--result", result});
  EXPECT_EQ(o.exit_code, 0) << o.out;
  EXPECT_THAT(o.out, HasSubstr("stage hello: SUCCESS"));
  EXPECT_THAT(o.out, Not(HasSubstr("not-a-real-token-123")));
  std::ifstream in(result);
  std::stringstream ss;
  ss << in.rdbuf();
  rapidjson::Document doc;
  doc.Parse(ss.str().c_str());
  ASSERT_FALSE(doc.HasParseError()) << ss.str();
  EXPECT_STREQ(doc["stage"].GetString(), "hello");
  EXPECT_STREQ(doc["status"].GetString(), "SUCCESS");
  ASSERT_TRUE(doc["steps"].IsArray());
  EXPECT_EQ(doc["steps"].Size(), 3u);
  const auto& build = doc["steps"][0];
  EXPECT_STREQ(build["id"].GetString(), "build");
  EXPECT_EQ(build["exit_code"].GetInt(), 0);
  EXPECT_TRUE(
      absl::StartsWith(build["outputs"]["VERSION"].GetString(), "1.2."));
  EXPECT_TRUE(build["duration_ms"].IsInt64());
  EXPECT_EQ(StageDirs(), 0u);
}

TEST_F(DelegateBinaryTest, FailingStepExitsOneAndReportsIt) {
  const std::string file = Write("fail.yaml", R"(name: f
steps:
  - {id: ok, commands: ["true"]}
  - {id: broken, commands: ["echo about to fail", "exit 3"]}
  - {id: after, commands: ["true"]}
)");
  const std::string result = dir_ + "/r.json";
  Outcome o = Run({"exec", file, "--result", result});
  EXPECT_EQ(o.exit_code, 1) << o.out;
  EXPECT_THAT(o.out, HasSubstr("broken | about to fail"));
  std::ifstream in(result);
  std::stringstream ss;
  ss << in.rdbuf();
  rapidjson::Document doc;
  doc.Parse(ss.str().c_str());
  ASSERT_FALSE(doc.HasParseError());
  EXPECT_STREQ(doc["status"].GetString(), "FAILURE");
  EXPECT_STREQ(doc["steps"][1]["status"].GetString(), "FAILURE");
  EXPECT_EQ(doc["steps"][1]["exit_code"].GetInt(), 3);
  EXPECT_STREQ(doc["steps"][1]["error"].GetString(), "exit status 3");
  EXPECT_STREQ(doc["steps"][2]["status"].GetString(), "SKIPPED");
  EXPECT_TRUE(doc["steps"][2]["exit_code"].IsNull());
}

TEST_F(DelegateBinaryTest, InvalidStageExitsTwoNamingFileAndField) {
  const std::string file = Write("bad.yaml", R"(name: b
steps:
  - {id: a, commands: ["true"], timeout: ten}
)");
  Outcome o = Run({"exec", file});
  EXPECT_EQ(o.exit_code, 2) << o.out;
  EXPECT_THAT(o.out, HasSubstr("bad.yaml"));
  EXPECT_THAT(o.out, HasSubstr("steps[0].timeout"));
  EXPECT_THAT(o.out, HasSubstr("expected a duration like 30s"));
  EXPECT_EQ(StageDirs(), 0u);
}

TEST_F(DelegateBinaryTest, EmptyAndJunkFilesExitTwo) {
  EXPECT_EQ(Run({"exec", Write("empty.yaml", "")}).exit_code, 2);
  EXPECT_EQ(Run({"validate", Write("junk.bin", std::string("\0\xff\xfe{[", 5))})
                .exit_code,
            2);
  Outcome missing = Run({"exec", dir_ + "/nope.yaml"});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_THAT(missing.out, HasSubstr("nope.yaml"));
}

TEST_F(DelegateBinaryTest, ValidateReportsEveryPlatformProblemAndRunsNothing) {
  const std::string marker = dir_ + "/ran";
  const std::string file = Write("v.yaml", absl::StrCat(R"(name: v
steps:
  - id: a
    image: alpine
    commands: ["touch )",
                                                        marker, R"("]
    security_context: {privileged: true}
)"));
  Outcome o = Run({"validate", file});
  EXPECT_EQ(o.exit_code, 2) << o.out;
  EXPECT_THAT(o.out, HasSubstr("steps[0].image"));
  EXPECT_THAT(o.out, HasSubstr("steps[0].security_context.privileged"));
  EXPECT_EQ(Run({"exec", file}).exit_code, 2);
  EXPECT_FALSE(fs::exists(marker));
}

// A size the platform does not enforce is accepted, and said: by validate,
// and first in the stage's log when it runs.
TEST_F(DelegateBinaryTest, AnUnenforcedEmptyDirSizeIsSaidNotIgnored) {
  const std::string file = Write("sized.yaml", R"(name: sized
platform: host
volumes:
  - {name: cache, empty_dir: {size_mib: 64}}
steps:
  - {id: a, commands: ["echo ran"], volume_mounts: [{name: cache, path: cache}]}
)");
  const std::string note =
      "note: volumes[0].empty_dir.size_mib: 64 MiB is not enforced on host "
      "(a directory on the host has no size limit)";
  Outcome validated = Run({"validate", file});
  EXPECT_EQ(validated.exit_code, 0) << validated.out;
  EXPECT_THAT(validated.out, HasSubstr(note));
  Outcome ran = Run({"exec", file});
  EXPECT_EQ(ran.exit_code, 0) << ran.out;
  EXPECT_THAT(ran.out, HasSubstr(note));
  EXPECT_LT(ran.out.find(note), ran.out.find("ran"));
}

TEST_F(DelegateBinaryTest, ValidateAcceptsAGoodFile) {
  Outcome o = Run(
      {"validate", std::string(DELEGATE_SOURCE_DIR) + "/examples/hello.yaml"});
  EXPECT_EQ(o.exit_code, 0) << o.out;
  EXPECT_THAT(o.out, HasSubstr("valid"));
}

TEST_F(DelegateBinaryTest, VersionPrintsVersionAndCommit) {
  Outcome o = Run({"version"});
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_THAT(o.out, HasSubstr("delegate 0.1.0 (commit "));
}

TEST_F(DelegateBinaryTest, TokenNeverAppearsInConfigHelpOrErrors) {
  const std::string token = "d3adb33fd3adb33fd3adb33fd3adb33f";
  Outcome dump =
      Run({"config"}, {"HARNESS_TOKEN=" + token, "HARNESS_ACCOUNT_ID=acct1"});
  EXPECT_EQ(dump.exit_code, 0) << dump.out;
  EXPECT_THAT(dump.out, HasSubstr("token = <set>"));
  EXPECT_THAT(dump.out, Not(HasSubstr(token)));
  Outcome help = Run({"--help"}, {"HARNESS_TOKEN=" + token});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, Not(HasSubstr(token)));
  Outcome bad = Run({"config"}, {"HARNESS_TOKEN=" + token, "MAX_STAGES=ten"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_THAT(bad.out, HasSubstr("MAX_STAGES"));
  EXPECT_THAT(bad.out, Not(HasSubstr(token)));
  const std::string env_file =
      Write("delegate.env", "HARNESS_NAME=from-file\nTOKEN=" + token + "\n");
  Outcome from_file = Run({"config", "--env-file", env_file});
  EXPECT_THAT(from_file.out, HasSubstr("from-file"));
  EXPECT_THAT(from_file.out, Not(HasSubstr(token)));
}

TEST_F(DelegateBinaryTest, TokenAStepComesByIsMaskedInLogAndResult) {
  const std::string token = "d3adb33fd3adb33fd3adb33fd3adb33f";
  // The token pasted into a stage (the delegate does not know it as one of
  // the stage's secrets), printed plain and base64-encoded.
  const std::string file = Write("leak.yaml", R"(name: leak
env: {LEAK: )" + token + R"(}
steps:
  - id: echo
    commands:
      - echo "plain $LEAK"
      - printf '%s' "$LEAK" | base64
      - echo "V=$LEAK" >> $HARNESS_OUTPUT_FILE
    outputs: [V]
)");
  const std::string result = dir_ + "/r.json";
  Outcome o =
      Run({"exec", file, "--result", result}, {"HARNESS_TOKEN=" + token});
  EXPECT_EQ(o.exit_code, 0) << o.out;
  EXPECT_THAT(o.out, HasSubstr("plain **************"));
  EXPECT_THAT(o.out, Not(HasSubstr(token)));
  EXPECT_THAT(o.out,
              Not(HasSubstr("ZDNhZGIzM2ZkM2FkYjMzZmQzYWRiMzNmZDNhZGIzM2Y")));
  std::ifstream in(result);
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_THAT(ss.str(), HasSubstr("\"V\":\"**************\""));
  EXPECT_THAT(ss.str(), Not(HasSubstr(token)));
}

TEST_F(DelegateBinaryTest, PasswordInTheManagerUrlIsStarredInConfigAndLog) {
  // A manager that refuses the token: the server logs "connecting", then
  // gives up at once.
  auto manager = delegate::http::HttpServer::Start(
      {}, [](const delegate::http::ServerRequest&) {
        delegate::http::ServerResponse resp;
        resp.status = 401;
        return resp;
      });
  ASSERT_TRUE(manager.ok()) << manager.status();
  std::string url = (*manager)->url();
  url.insert(url.find("://") + 3, "user:url-pw-5150@");
  const std::vector<std::string> env = {
      "HARNESS_URL=" + url, "HARNESS_ACCOUNT_ID=acct1",
      "HARNESS_TOKEN=d3adb33fd3adb33fd3adb33fd3adb33f",
      "HTTPS_BIND=127.0.0.1:0"};
  Outcome dump = Run({"config"}, env);
  EXPECT_EQ(dump.exit_code, 0) << dump.out;
  EXPECT_THAT(dump.out, HasSubstr("manager_url = http://user:***@"));
  EXPECT_THAT(dump.out, Not(HasSubstr("url-pw-5150")));
  Outcome served = Run({"server"}, env);
  EXPECT_EQ(served.exit_code, 1) << served.out;
  EXPECT_THAT(served.out, HasSubstr("connecting"));
  EXPECT_THAT(served.out, HasSubstr("user:***@"));
  EXPECT_THAT(served.out, Not(HasSubstr("url-pw-5150")));
}

TEST_F(DelegateBinaryTest, RelativeWorkdirIsMadeAbsoluteAndHostStepsRun) {
  const std::string file = Write("rel.yaml", R"(name: rel
steps:
  - id: out
    working_dir: sub
    commands:
      - echo "V=ok" >> "$HARNESS_OUTPUT_FILE"
      - echo "W=$PWD" >> $DRONE_OUTPUT
    outputs: [V, W]
)");
  const std::string result = dir_ + "/r.json";
  // The delegate started in dir_, with HARNESS_WORKDIR relative to it.
  char cwd[4096];
  ASSERT_NE(getcwd(cwd, sizeof(cwd)), nullptr);
  ASSERT_EQ(chdir(dir_.c_str()), 0);
  Outcome config, ran;
  {
    DelegateProcess child({"config"}, {"HARNESS_WORKDIR=./rel/../work"},
                          dir_ + "/log");
    config = child.Wait();
  }
  {
    DelegateProcess child({"exec", file, "--result", result},
                          {"HARNESS_WORKDIR=work"}, dir_ + "/log");
    ran = child.Wait();
  }
  ASSERT_EQ(chdir(cwd), 0);
  const std::string absolute = fs::path(dir_ + "/work").lexically_normal();
  EXPECT_THAT(config.out,
              HasSubstr("workdir = " + absolute + " (HARNESS_WORKDIR)\n"));
  EXPECT_EQ(ran.exit_code, 0) << ran.out;
  std::ifstream in(result);
  std::stringstream ss;
  ss << in.rdbuf();
  rapidjson::Document doc;
  doc.Parse(ss.str().c_str());
  ASSERT_FALSE(doc.HasParseError()) << ss.str();
  EXPECT_STREQ(doc["steps"][0]["outputs"]["V"].GetString(), "ok");
  EXPECT_TRUE(absl::StartsWith(doc["steps"][0]["outputs"]["W"].GetString(),
                               absolute + "/"));
  EXPECT_EQ(StageDirs(), 0u);
}

// A step that says whether the /proc entries of its keeper (its parent) and
// of the delegate (the keeper's parent) are readable and whether they hold
// `needle`; the needle never appears in the step's own output, which is
// masked.
std::string ProcProbeStage(const std::string& needle) {
  std::string commands = "      - D=$(cut -d' ' -f4 /proc/$PPID/stat)\n";
  for (const char* who : {"keeper", "delegate"}) {
    const std::string pid = std::string(who) == "keeper" ? "$PPID" : "$D";
    absl::StrAppend(&commands, "      - if cat /proc/", pid,
                    "/environ > env.bin 2>/dev/null; then echo ", who,
                    " READABLE; else echo ", who, " DENIED; fi\n",
                    "      - if grep -q -a \"", needle,
                    "\" env.bin 2>/dev/null; then echo ", who,
                    " FOUND; else echo ", who, " ABSENT; fi\n");
  }
  return absl::StrCat("name: probe\nsteps:\n  - id: probe\n    commands:\n",
                      commands);
}

TEST_F(DelegateBinaryTest, StepCannotReadTheTokenFromTheDelegatesEnviron) {
  const std::string token = "d3adb33fd3adb33fd3adb33fd3adb33f";
  const std::string file = Write("probe.yaml", ProcProbeStage("d3adb33f"));
  for (const std::string& var :
       {"HARNESS_TOKEN", "TOKEN", "DELEGATE_TOKEN", "HARNESS_DELEGATE_TOKEN"}) {
    Outcome o = Run({"exec", file}, {var + "=" + token});
    EXPECT_EQ(o.exit_code, 0) << o.out;
    // Run as root here, the step may read the entry; the token is gone.
    EXPECT_THAT(o.out, HasSubstr("probe | keeper ABSENT")) << var << "\n"
                                                           << o.out;
    EXPECT_THAT(o.out, HasSubstr("probe | delegate ABSENT")) << o.out;
    EXPECT_THAT(o.out, Not(HasSubstr(token)));
  }
  // From a file, the token is never in the environment at all.
  const std::string token_file = Write("token", token + "\n");
  Outcome dump = Run({"config"}, {"HARNESS_TOKEN_FILE=" + token_file});
  EXPECT_THAT(dump.out, HasSubstr("token = <set> (HARNESS_TOKEN_FILE)"));
  Outcome bad = Run({"config"}, {"HARNESS_TOKEN_FILE=" + dir_ + "/nope"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_THAT(bad.out, HasSubstr("HARNESS_TOKEN_FILE: cannot read the token"));
}

TEST_F(DelegateBinaryTest, StepOfTheSameUserCannotReadTheDelegatesProcEntries) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run the delegate as 65534";
  const uid_t nobody = 65534;
  const std::string file = Write("probe.yaml", ProcProbeStage("PATH="));
  fs::permissions(dir_, fs::perms::all);
  fs::permissions(dir_ + "/work", fs::perms::all);
  const std::string log = dir_ + "/log";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    setenv("HARNESS_WORKDIR", (dir_ + "/work").c_str(), 1);
    if (setgroups(0, nullptr) != 0 || setgid(nobody) != 0 ||
        setuid(nobody) != 0) {
      _exit(126);
    }
    execl(DELEGATE_BINARY, DELEGATE_BINARY, "exec", file.c_str(), nullptr);
    _exit(127);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  std::ifstream in(log);
  std::stringstream out;
  out << in.rdbuf();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << out.str();
  // Same uid, but the delegate is not dumpable: its environ is root's.
  EXPECT_THAT(out.str(), HasSubstr("probe | keeper DENIED")) << out.str();
  EXPECT_THAT(out.str(), HasSubstr("probe | keeper ABSENT"));
  EXPECT_THAT(out.str(), HasSubstr("probe | delegate DENIED"));
  EXPECT_THAT(out.str(), HasSubstr("probe | delegate ABSENT"));
}

TEST_F(DelegateBinaryTest,
       SigkillDuringAHostStepKillsItsProcessesAndCleanupFindsItsWorkspace) {
  const std::string pids = dir_ + "/pids";
  const std::string file = Write(
      "killed.yaml", absl::StrCat(R"(name: killed
steps:
  - id: wait
    commands: ["echo $$ >> )",
                                  pids, R"(", "setsid sleep 305 & echo $! >> )",
                                  pids, R"(", "echo waiting", "sleep 306"]
)"));
  DelegateProcess child({"exec", file}, {"HARNESS_WORKDIR=" + dir_ + "/work"},
                        dir_ + "/log");
  AwaitOutput(child, "waiting");
  ASSERT_THAT(child.Output(), HasSubstr("waiting"));
  kill(child.pid(), SIGKILL);
  child.Wait();
  const std::vector<pid_t> step_pids = delegate::testing::PidsIn(pids);
  ASSERT_EQ(step_pids.size(), 2u);
  // The keepers notice at once; killing and reaping takes a moment.
  for (pid_t pid : step_pids) {
    EXPECT_TRUE(delegate::testing::AwaitGone(pid))
        << pid << " outlived the delegate";
  }
  // Its workspace is left; `delegate cleanup` finds it by the run's
  // instance, and a live run's workspace stays.
  const std::string live_file = Write("live.yaml", R"(name: live
steps:
  - {id: wait, commands: ["echo live", "sleep 300"]}
)");
  DelegateProcess live({"exec", live_file},
                       {"HARNESS_WORKDIR=" + dir_ + "/work"},
                       dir_ + "/live.log");
  AwaitOutput(live, "live");
  ASSERT_EQ(StageDirs(), 2u);
  Outcome cleanup = Run({"cleanup"});
  EXPECT_EQ(cleanup.exit_code, 0) << cleanup.out;
  EXPECT_THAT(cleanup.out, HasSubstr("removed workspace "));
  EXPECT_THAT(cleanup.out, HasSubstr("/work/delegate-"));
  EXPECT_THAT(cleanup.out, HasSubstr("-killed-"));
  EXPECT_THAT(cleanup.out, HasSubstr(": 1 leftovers removed"));
  EXPECT_EQ(StageDirs(), 1u) << "the live run's workspace went too";
  EXPECT_FALSE(live.Exited());
}

TEST_F(DelegateBinaryTest, SigtermDuringAStageDrainsThenCleansUp) {
  const std::string pidfile = dir_ + "/step.pid";
  const std::string file = Write(
      "long.yaml", absl::StrCat(R"(name: long
steps:
  - id: wait
    commands: ["echo $$ > )",
                                pidfile, R"(", "echo waiting", "sleep 300"]
  - id: after
    commands: ["true"]
)"));
  const std::string result = dir_ + "/r.json";
  DelegateProcess child(
      {"exec", file, "--result", result, "--drain-timeout", "200ms"},
      {"HARNESS_WORKDIR=" + dir_ + "/work", "CLEANUP_GRACE_PERIOD_SECONDS=1"},
      dir_ + "/log");
  AwaitOutput(child, "waiting");
  ASSERT_THAT(child.Output(), HasSubstr("waiting"));
  EXPECT_EQ(StageDirs(), 1u);
  kill(child.pid(), SIGTERM);
  Outcome o = child.Wait();
  EXPECT_EQ(o.exit_code, 1) << o.out;
  EXPECT_THAT(o.out, HasSubstr("finishing the stage"));
  EXPECT_THAT(o.out, HasSubstr("CANCELLED"));
  pid_t step_pid = 0;
  std::ifstream(pidfile) >> step_pid;
  ASSERT_GT(step_pid, 0);
  EXPECT_FALSE(delegate::testing::Running(step_pid))
      << "the step outlived the delegate";
  EXPECT_EQ(StageDirs(), 0u) << "cleanup did not run";
  std::ifstream in(result);
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_THAT(ss.str(), HasSubstr("\"status\":\"CANCELLED\""));
  EXPECT_THAT(ss.str(), HasSubstr("shutting down"));
}

TEST_F(DelegateBinaryTest, SigtermLetsAStageThatFinishesInTimeSucceed) {
  const std::string file = Write("short.yaml", R"(name: short
steps:
  - {id: a, commands: ["echo started", "sleep 0.5", "echo finished"]}
)");
  DelegateProcess child({"exec", file, "--drain-timeout", "30s"},
                        {"HARNESS_WORKDIR=" + dir_ + "/work"}, dir_ + "/log");
  AwaitOutput(child, "started");
  kill(child.pid(), SIGTERM);
  Outcome o = child.Wait();
  EXPECT_EQ(o.exit_code, 0) << o.out;
  EXPECT_THAT(o.out, HasSubstr("a | finished"));
  EXPECT_EQ(StageDirs(), 0u);
}

}  // namespace

namespace {

TEST_F(DelegateBinaryTest, ValidateChecksFargateRulesAndOperatorPolicy) {
  const std::string file = Write("fargate.yaml", R"(name: f
platform: ecs-fargate
volumes:
  - {name: scratch, empty_dir: {size_mib: 1024}}
  - {name: sock, host_path: {path: /var/run/docker.sock}}
steps:
  - id: a
    image: busybox
    commands: ["true"]
    security_context: {privileged: true, add_capability: [NET_ADMIN]}
    volume_mounts: [{name: scratch, path: /scratch}]
)");
  Outcome o = Run({"validate", file});
  EXPECT_EQ(o.exit_code, 2) << o.out;
  EXPECT_THAT(o.out, HasSubstr("steps[0].security_context.privileged"));
  EXPECT_THAT(o.out, HasSubstr("add_capability"));
  EXPECT_THAT(o.out, HasSubstr("volumes[0].empty_dir.size_mib"));
  EXPECT_THAT(o.out, HasSubstr("volumes[1]"));
  EXPECT_THAT(o.out, HasSubstr("ecs-fargate"));

  const std::string docker = Write("docker.yaml", R"(name: d
platform: docker
steps:
  - id: a
    image: busybox
    commands: ["true"]
    security_context: {privileged: true}
)");
  EXPECT_EQ(Run({"validate", docker}).exit_code, 0);
  Outcome narrowed =
      Run({"validate", docker}, {"DELEGATE_POLICY_FORBID_PRIVILEGED=true"});
  EXPECT_EQ(narrowed.exit_code, 2) << narrowed.out;
  EXPECT_THAT(narrowed.out, HasSubstr("steps[0].security_context.privileged"));
  EXPECT_THAT(narrowed.out, HasSubstr("operator"));
  Outcome bad = Run({"validate", docker}, {"DELEGATE_POLICY_MAX_CPUS=lots"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_THAT(bad.out, HasSubstr("DELEGATE_POLICY_MAX_CPUS"));
}

}  // namespace

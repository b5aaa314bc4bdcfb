// The fault suite (ctest label "faults"): `delegate server` SIGKILLed again
// and again at random points while the reference manager sends it Harness
// stages of host and docker steps, each time started again with the same
// environment. Real processes, the real Docker Engine, the reference
// manager. At the end it prints its figures and asserts the zeros:
// every stage ended, no step ran twice, no process of a killed stage runs,
// nothing is left on the engine or in the work directory, and the journal
// opened at every start.
//
// DELEGATE_FAULT_KILLS sets the number of kills (default 100).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rapidjson/document.h"
#include "reference_manager.h"
#include "tests/fakes/delegate_process.h"
#include "tests/fakes/docker_engine.h"
#include "tests/fakes/process_probe.h"
#include "tests/fakes/test_ca.h"

namespace delegate {
namespace {

using ::delegate::reference::ManagerOptions;
using ::delegate::reference::ReferenceManager;
using ::delegate::testing::DelegateProcess;
using ::delegate::testing::TestCa;

constexpr char kAccount[] = "acct-faults";
constexpr char kToken[] = "5d0c3c2c6cc1a4c0f7b5a1e2d3c4b5a6";

int KillsWanted() {
  int n = 100;
  const char* v = getenv("DELEGATE_FAULT_KILLS");
  if (v != nullptr && absl::SimpleAtoi(v, &n) && n > 0) return n;
  return 100;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(DelegateKillTest, SigkillsAtRandomPointsLoseNoStageAndLeaveNothing) {
  std::unique_ptr<docker::DockerClient> engine;
  {
    auto connected = testing::ConnectTestEngine();
    if (connected.ok()) {
      engine = *std::move(connected);
    } else if (testing::DockerRequired()) {
      FAIL() << connected.status();
    }
  }
  const std::string dir =
      absl::StrCat(::testing::TempDir(), "/faults-", getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir + "/certs");
  std::filesystem::create_directories(dir + "/work");
  auto ca = TestCa::Create();
  ASSERT_TRUE(ca.ok()) << ca.status();
  std::filesystem::copy_file((*ca)->ca_file(), dir + "/certs/ca.crt");

  ManagerOptions options;
  options.account_id = kAccount;
  options.token = SecretString(kToken);
  options.tls = http::ServerTlsOptions{(*ca)->server().cert_file,
                                       (*ca)->server().key_file, ""};
  // A killed delegate's stages end soon after it stops polling.
  options.lost_after = absl::Seconds(1);
  auto manager = ReferenceManager::Start(options);
  ASSERT_TRUE(manager.ok()) << manager.status();

  const std::string name = absl::StrCat("faults-", getpid());
  const std::vector<std::string> env = {
      "HARNESS_ACCOUNT_ID=" + std::string(kAccount),
      "HARNESS_TOKEN=" + std::string(kToken),
      "HARNESS_URL=" + (*manager)->url(),
      "HARNESS_NAME=" + name,
      "HARNESS_CERTS_DIR=" + dir + "/certs",
      "HARNESS_WORKDIR=" + dir + "/work",
      "POLL_INTERVAL_MILLISECS=50",
      "HTTPS_BIND=127.0.0.1:0",
      "CLEANUP_GRACE_PERIOD_SECONDS=1"};
  const std::string runs = dir + "/runs";
  const std::string pids = dir + "/pids";

  std::mt19937 random(::testing::UnitTest::GetInstance()->random_seed());
  std::vector<std::string> stages;
  // What each stage's step logs must hold once it succeeded: by stage id,
  // (step index, text) pairs.
  std::map<std::string, std::vector<std::pair<int, std::string>>> expected;
  auto submit = [&] {
    const int n = static_cast<int>(stages.size());
    const std::string id = absl::StrCat("s", n);
    const int sleep_ms = std::uniform_int_distribution<int>(0, 600)(random);
    std::string second;
    if (engine != nullptr && n % 3 == 2) {
      // Long enough for some kills to land while its container runs: the
      // restarted delegate re-attaches to it.
      second =
          absl::StrCat(R"({"id":"b","image":")", testing::kTestImage,
                       R"(","pull":"Never","run":{"commands":["echo )", id,
                       R"(/b", "sleep 0.5", "echo )", id, R"(/b done"]}})");
    } else {
      second = absl::StrCat(R"({"id":"b","run":{"commands":["echo )", id,
                            "/b >> ", runs, R"("]}})");
    }
    const std::string spec = absl::StrCat(
        R"({"id":")", id,
        R"(","logs":true,"steps":[{"id":"a","run":{"commands":["echo )", id,
        "/a >> ", runs, R"(", "echo $$ >> )", pids,
        R"(", "setsid sleep 301 & echo $! >> )", pids, R"(", "sleep )",
        sleep_ms / 1000.0, R"("]}},)", second, "]}");
    auto submitted = (*manager)->SubmitStage(spec);
    ASSERT_TRUE(submitted.ok()) << submitted.status();
    stages.push_back(*submitted);
    // The first command's trace line and the last's; the docker step's
    // output, or the host step's trace line.
    expected[*submitted] = {
        {0, absl::StrCat("echo ", id, "/a >> ", runs)},
        {0, absl::StrCat("sleep ", sleep_ms / 1000.0)},
        {1, second.find("image") != std::string::npos
                ? absl::StrCat(id, "/b done")
                : absl::StrCat("echo ", id, "/b >> ", runs)}};
  };
  auto open_stages = [&] {
    int open = 0;
    for (const std::string& id : stages) {
      const std::string json = (*manager)->StageJson(id).value_or("");
      open += absl::StrContains(json, "\"status\":\"QUEUED\"") ||
              absl::StrContains(json, "\"status\":\"RUNNING\"");
    }
    return open;
  };

  // Stages a restart resumed, and steps it re-attached to.
  int resumed = 0, reattached = 0;
  auto count_recovery = [&](const std::string& out) {
    for (size_t at = 0;
         (at = out.find("resumed a stage", at)) != std::string::npos; ++at) {
      ++resumed;
    }
    for (size_t at = 0;
         (at = out.find("re-attaching to the step", at)) != std::string::npos;
         ++at) {
      ++reattached;
    }
  };
  const int kills = KillsWanted();
  int journal_opened = 0;
  for (int i = 0; i < kills; ++i) {
    while (open_stages() < 2) submit();
    DelegateProcess delegate({"server"}, env, dir + "/delegate.log");
    const absl::Time until = absl::Now() + absl::Seconds(30);
    while (!absl::StrContains(delegate.Output(), "\"msg\":\"connected\"") &&
           !delegate.Exited() && absl::Now() < until) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    if (!absl::StrContains(delegate.Output(), "\"msg\":\"connected\"")) {
      kill(delegate.pid(), SIGKILL);
      testing::Outcome o = delegate.Wait();
      FAIL() << "start " << i + 1 << " did not connect; exit " << o.exit_code
             << ", output:\n"
             << o.out;
    }
    ++journal_opened;
    // Somewhere in registering, initializing, running or answering.
    absl::SleepFor(
        absl::Milliseconds(std::uniform_int_distribution<int>(0, 700)(random)));
    kill(delegate.pid(), SIGKILL);
    count_recovery(delegate.Wait().out);
  }

  // A last start finishes or fails what is left; then it drains.
  DelegateProcess last({"server"}, env, dir + "/delegate.log");
  // Connected first: a SIGTERM before its signal handling is set up would
  // simply end it.
  const absl::Time connect_until = absl::Now() + absl::Seconds(30);
  while (!absl::StrContains(last.Output(), "\"msg\":\"connected\"") &&
         !last.Exited() && absl::Now() < connect_until) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  const absl::Time until = absl::Now() + absl::Seconds(60);
  while (open_stages() > 0 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  kill(last.pid(), SIGTERM);
  testing::Outcome drained = last.Wait();
  EXPECT_EQ(drained.exit_code, 0) << drained.out;
  count_recovery(drained.out);
  ++journal_opened;

  // Figures.
  int lost = 0, succeeded = 0, failed = 0;
  size_t log_bytes_lost = 0;
  int repeated_lines = 0;
  for (const std::string& id : stages) {
    const std::string json = (*manager)->StageJson(id).value_or("");
    if (absl::StrContains(json, "\"status\":\"SUCCESS\"")) {
      ++succeeded;
      // A stage that succeeded, whatever restarts it saw: its steps' logs
      // are whole.
      // Lines a re-attached step's log holds twice: at most those of the
      // one write the killed delegate had not recorded as delivered.
      for (int step = 0; step < 2; ++step) {
        std::map<std::string, int> seen;
        for (const std::string& line :
             (*manager)->LogLines(absl::StrCat(id, "/step-", step))) {
          if (!absl::StrContains(line, "re-attached") && ++seen[line] == 2) {
            ++repeated_lines;
          }
        }
      }
      for (const auto& [step, text] : expected[id]) {
        const std::string log = absl::StrJoin(
            (*manager)->LogLines(absl::StrCat(id, "/step-", step)), "\n");
        if (!absl::StrContains(log, text)) {
          log_bytes_lost += text.size();
          ADD_FAILURE() << "stage " << id << " step " << step << ": no \""
                        << text << "\" in its log:\n"
                        << log;
        }
      }
    } else if (absl::StrContains(json, "\"status\":\"FAILURE\"")) {
      ++failed;
    } else {
      ++lost;
    }
  }
  std::map<std::string, int> ran;
  {
    std::istringstream in(ReadFile(runs));
    for (std::string line; std::getline(in, line);) ++ran[line];
  }
  int duplicates = 0;
  for (const auto& [step, times] : ran) duplicates += times > 1;
  int orphans = 0;
  for (pid_t pid : testing::PidsIn(pids)) {
    if (testing::AwaitGone(pid, absl::Seconds(2))) continue;
    // pid_max may be 32768: a pid recorded a minute ago may be another
    // process's now. Ours run in a workspace under this test's directory.
    std::string environ = ReadFile("/proc/" + std::to_string(pid) + "/environ");
    const std::string work =
        std::filesystem::path(dir + "/work").lexically_normal().string();
    if (!absl::StrContains(environ, "HARNESS_WORKSPACE=" + work + "/")) {
      continue;
    }
    ++orphans;
    // Which process, and under whom, for the report.
    std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
    std::string cmdline = ReadFile("/proc/" + std::to_string(pid) + "/cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    ADD_FAILURE() << "orphan " << pid << ": " << cmdline << " (" << stat << ")";
  }
  int workspaces = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir + "/work")) {
    workspaces += e.path().filename().string()[0] != '.';
  }
  // A create a killed delegate had in flight can complete on the engine
  // after the next start removed that instance's leftovers: such objects
  // are counted, and `delegate cleanup` must remove them.
  int late = 0, containers = 0;
  if (engine != nullptr) {
    const std::string label = "io.libdelegate.delegate=" + name;
    late = static_cast<int>(testing::Labelled(*engine, label).size());
    if (late > 0) {
      DelegateProcess cleanup({"cleanup"}, env, dir + "/cleanup.log");
      cleanup.Wait();
    }
    containers = static_cast<int>(testing::Labelled(*engine, label).size());
  }
  printf(
      "faults: %d kills of delegate server; journal opened %d/%d; %d stages "
      "resumed, %d running steps re-attached; %zu stages "
      "(%d succeeded, %d failed, %d lost results); %d steps ran twice; %d "
      "orphan processes; %d workspaces left; %d docker objects created after "
      "the restart's reap, %d left after delegate cleanup; %zu log bytes "
      "lost of the stages that succeeded, %d log lines repeated\n",
      kills, journal_opened, kills + 1, resumed, reattached, stages.size(),
      succeeded, failed, lost, duplicates, orphans, workspaces, late,
      containers, log_bytes_lost, repeated_lines);
  EXPECT_EQ(journal_opened, kills + 1);
  EXPECT_EQ(lost, 0) << "stages that never ended";
  EXPECT_EQ(duplicates, 0) << "steps that ran twice";
  EXPECT_EQ(orphans, 0) << "processes of killed stages still running";
  EXPECT_EQ(workspaces, 0) << "stage directories left";
  EXPECT_EQ(containers, 0) << "containers, networks or volumes left";
  EXPECT_GT(succeeded, 0) << "no stage ever finished: the kills came too soon";
  for (pid_t pid : testing::PidsIn(pids)) kill(pid, SIGKILL);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace delegate

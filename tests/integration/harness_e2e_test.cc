// The delegate binary against the reference Harness manager over TLS on
// loopback: whole stages through register, runner-events, task payloads,
// task-response and the log service, and the faults a real deployment meets.
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "http/http_client.h"
#include "rapidjson/document.h"
#include "reference_manager.h"
#include "tests/fakes/delegate_process.h"
#include "tests/fakes/docker_engine.h"
#include "tests/fakes/manager_process.h"
#include "tests/fakes/process_probe.h"
#include "tests/fakes/test_ca.h"

namespace delegate {
namespace {

using ::delegate::reference::Faults;
using ::delegate::reference::ManagerOptions;
using ::delegate::reference::ReferenceManager;
using ::delegate::testing::DelegateProcess;
using ::delegate::testing::TestCa;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kAccount[] = "acct-e2e";
constexpr char kToken[] = "98d8fedb04c574e68939164bf463e73d";

// How many times `needle` occurs in `text`.
size_t CountOf(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos;
       at = text.find(needle, at + needle.size())) {
    ++n;
  }
  return n;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class HarnessE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "/harness-e2e-", getpid(), "-",
                        ::testing::UnitTest::GetInstance()->random_seed(), "-",
                        counter_++);
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_ + "/certs");
    std::filesystem::create_directories(dir_ + "/work");
    auto ca = TestCa::Create();
    ASSERT_TRUE(ca.ok()) << ca.status();
    ca_ = *std::move(ca);
    std::filesystem::copy_file(ca_->ca_file(), dir_ + "/certs/ca.crt");
    std::ofstream(dir_ + "/token") << kToken << "\n";
  }
  void TearDown() override {
    delegate_.reset();
    manager_.reset();
    std::filesystem::remove_all(dir_);
  }

  ManagerOptions Options() {
    ManagerOptions o;
    o.account_id = kAccount;
    o.token = SecretString(kToken);
    o.tls = http::ServerTlsOptions{ca_->server().cert_file,
                                   ca_->server().key_file, ""};
    return o;
  }
  void StartManager(ManagerOptions o) {
    auto m = ReferenceManager::Start(std::move(o));
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = *std::move(m);
    url_ = manager_->url();
  }

  std::vector<std::string> DelegateEnv(const std::string& name = "e2e") {
    return {"HARNESS_ACCOUNT_ID=" + std::string(kAccount),
            "HARNESS_TOKEN=" + std::string(kToken),
            "HARNESS_URL=" + url_,
            "HARNESS_NAME=" + name,
            "HARNESS_TAGS=e2e,linux",
            "HARNESS_CERTS_DIR=" + dir_ + "/certs",
            "HARNESS_WORKDIR=" + dir_ + "/work",
            "POLL_INTERVAL_MILLISECS=50",
            "HTTPS_BIND=127.0.0.1:0",
            "CLEANUP_GRACE_PERIOD_SECONDS=1"};
  }
  void StartDelegate(std::vector<std::string> env) {
    delegate_ = std::make_unique<DelegateProcess>(
        std::vector<std::string>{"server"}, env, dir_ + "/delegate.log");
  }

  // Waits for a line of the delegate's log that contains `text`.
  bool WaitForLog(const std::string& text,
                  absl::Duration timeout = absl::Seconds(20)) {
    const absl::Time until = absl::Now() + timeout;
    while (absl::Now() < until) {
      if (absl::StrContains(delegate_->Output(), text)) return true;
      if (delegate_->Exited())
        return absl::StrContains(delegate_->Output(), text);
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  std::string Submit(const std::string& spec) {
    absl::StatusOr<std::string> id = manager_->SubmitStage(spec);
    EXPECT_TRUE(id.ok()) << id.status();
    return id.value_or("");
  }
  // The stage's JSON once it has finished (or after `timeout`).
  rapidjson::Document WaitStage(const std::string& id,
                                absl::Duration timeout = absl::Seconds(60)) {
    const absl::Time until = absl::Now() + timeout;
    rapidjson::Document d;
    while (true) {
      absl::StatusOr<std::string> json = manager_->StageJson(id);
      d.Parse(json.value_or("{}").c_str());
      const std::string status =
          d.HasMember("status") ? d["status"].GetString() : "";
      if (status == "SUCCESS" || status == "FAILURE" || absl::Now() > until) {
        return d;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
  }
  std::string Admin(const std::string& method, const std::string& path,
                    const std::string& body = "") {
    http::HttpClient client;
    http::Request req;
    req.method = method;
    req.url = url_ + path;
    req.body = body;
    req.tls.ca_file = ca_->ca_file();
    auto resp = client.Perform(req);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? resp->body : "";
  }
  int OpsPort() {
    std::smatch m;
    const std::string out = delegate_->Output();
    if (std::regex_search(out, m,
                          std::regex("127\\.0\\.0\\.1:([0-9]+)/health"))) {
      return std::stoi(m[1]);
    }
    return 0;
  }
  std::pair<int, std::string> Ops(const std::string& path) {
    http::HttpClient client;
    http::Request req;
    req.url = absl::StrCat("http://127.0.0.1:", OpsPort(), path);
    auto resp = client.Perform(req);
    if (!resp.ok()) return {0, std::string(resp.status().message())};
    return {resp->status, resp->body};
  }

  static inline int counter_ = 0;
  std::string dir_;
  std::unique_ptr<TestCa> ca_;
  std::unique_ptr<ReferenceManager> manager_;
  std::string url_;
  std::unique_ptr<DelegateProcess> delegate_;
};

// A stage of host steps, as JSON the reference manager turns into tasks.
std::string HostStage(const std::string& id, const std::string& extra = "") {
  return absl::StrCat(
      R"({"id":")", id, R"(","logs":true,"secrets":{"pw":"hunter2-secret"},)",
      R"("steps":[)",
      R"({"id":"greet","run":{"commands":["echo hello from greet","echo pw=${{secrets.pw}}"]}},)",
      R"({"id":"out","run":{"commands":["echo VERSION=1.2.3 > \"$HARNESS_OUTPUT_FILE\""]},"output_vars":["VERSION"]})",
      extra, "]}");
}

TEST_F(HarnessE2eTest, RunsAStageEndToEndWithLogsSecretsAndOutputs) {
  StartManager(Options());
  StartDelegate(DelegateEnv());
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\"")) << delegate_->Output();
  const std::string id = Submit(HostStage("build-1"));
  rapidjson::Document stage = WaitStage(id);
  ASSERT_STREQ(stage["status"].GetString(), "SUCCESS")
      << ReadFile(dir_ + "/delegate.log");
  const auto& tasks = stage["tasks"];
  ASSERT_EQ(tasks.Size(), 4u);
  EXPECT_STREQ(tasks[0]["type"].GetString(), "local_init");
  EXPECT_STREQ(tasks[3]["type"].GetString(), "local_cleanup");
  for (const auto& t : tasks.GetArray()) {
    EXPECT_EQ(t["responses"].GetInt(), 1) << t["id"].GetString();
    EXPECT_STREQ(t["code"].GetString(), "OK");
  }
  EXPECT_STREQ(tasks[2]["data"]["output_vars"]["VERSION"].GetString(), "1.2.3");

  // The step's output reached the log service, masked.
  const std::string logs = Admin("GET", "/admin/logs?key=build-1/step-0");
  EXPECT_THAT(logs, HasSubstr("hello from greet"));
  EXPECT_THAT(logs, HasSubstr("pw=***"));
  EXPECT_THAT(logs, Not(HasSubstr("hunter2-secret")));
  EXPECT_THAT(delegate_->Output(), Not(HasSubstr("hunter2-secret")));
  EXPECT_THAT(delegate_->Output(), Not(HasSubstr(kToken)));

  // Registration as §4.1 describes it.
  const std::string delegates = Admin("GET", "/admin/delegates");
  EXPECT_THAT(delegates, HasSubstr("\"runner\":true"));
  EXPECT_THAT(delegates, HasSubstr("\"tags\":[\"e2e\",\"linux\"]"));

  // The ops endpoints.
  EXPECT_EQ(Ops("/health").first, 200);
  EXPECT_EQ(Ops("/ready").first, 200);
  auto [code, metrics] = Ops("/metrics");
  EXPECT_EQ(code, 200);
  EXPECT_THAT(
      metrics,
      HasSubstr("io_harness_task_completed_total{account_id=\"acct-e2e\",task_"
                "type=\"local_execute\",runner_name=\"e2e\"} 2"));
  EXPECT_THAT(metrics, HasSubstr("io_harness_tasks_currently_executing"));

  kill(delegate_->pid(), SIGTERM);
  auto outcome = delegate_->Wait();
  EXPECT_EQ(outcome.exit_code, 0) << outcome.out;
  EXPECT_THAT(outcome.out, HasSubstr("\"msg\":\"unregistered\""));
  EXPECT_THAT(Admin("GET", "/admin/delegates"),
              HasSubstr("\"registered\":false"));
}

TEST_F(HarnessE2eTest, AFailingStepIsReportedAndTheStageStillCleansUp) {
  StartManager(Options());
  StartDelegate(DelegateEnv());
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\""));
  const std::string id = Submit(R"({"id":"fails","steps":[
      {"id":"bad","run":{"commands":["echo about to fail","exit 7"]}},
      {"id":"never","run":{"commands":["echo not reached"]}}]})");
  rapidjson::Document stage = WaitStage(id);
  ASSERT_STREQ(stage["status"].GetString(), "FAILURE");
  const auto& tasks = stage["tasks"];
  ASSERT_EQ(tasks.Size(), 3u);  // init, bad, cleanup
  EXPECT_STREQ(tasks[1]["data"]["command_execution_status"].GetString(),
               "FAILURE");
  EXPECT_THAT(tasks[1]["data"]["error_message"].GetString(),
              HasSubstr("exit status 7"));
  EXPECT_STREQ(tasks[2]["type"].GetString(), "local_cleanup");
  EXPECT_STREQ(tasks[2]["data"]["command_execution_status"].GetString(),
               "SUCCESS");
}

// PARALLEL_WORKERS is a limit, not a count: an idle delegate holds no task
// worker (it held 100 threads before), and workers come when stages do.
TEST_F(HarnessE2eTest, AnIdleDelegateHoldsNoTaskWorkers) {
  StartManager(Options());
  std::vector<std::string> env = DelegateEnv();
  env.push_back("PARALLEL_WORKERS=100");
  StartDelegate(env);
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\""));
  auto threads = [this] {
    std::ifstream status(absl::StrCat("/proc/", delegate_->pid(), "/status"));
    std::string line;
    while (std::getline(status, line)) {
      if (absl::StartsWith(line, "Threads:")) {
        return std::stoi(line.substr(8));
      }
    }
    return -1;
  };
  // The main thread, the signal watcher, the ops server, the heartbeat, the
  // poll loop.
  EXPECT_LE(threads(), 8);
  rapidjson::Document stage = WaitStage(Submit(HostStage("after-idle")));
  EXPECT_STREQ(stage["status"].GetString(), "SUCCESS");
  EXPECT_GT(threads(), 0);
}

TEST_F(HarnessE2eTest, AWrongTokenStopsWithOneClearErrorAndNoRetryStorm) {
  StartManager(Options());
  std::vector<std::string> env = DelegateEnv();
  env[1] = "HARNESS_TOKEN=00000000000000000000000000000001";
  StartDelegate(env);
  const absl::Time start = absl::Now();
  while (!delegate_->Exited() && absl::Now() - start < absl::Seconds(20)) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  auto outcome = delegate_->Wait();
  EXPECT_EQ(outcome.exit_code, 1) << outcome.out;
  EXPECT_THAT(outcome.out, HasSubstr("HARNESS_TOKEN"));
  EXPECT_THAT(outcome.out, HasSubstr(kAccount));
  EXPECT_THAT(outcome.out, Not(HasSubstr("00000000000000000000000000000001")));
  EXPECT_THAT(outcome.out, Not(HasSubstr("retrying")));
  EXPECT_EQ(Admin("GET", "/admin/delegates"), "[]");
}

TEST_F(HarnessE2eTest, WithoutTheManagersCaTheDelegateRefusesToConnect) {
  StartManager(Options());
  std::vector<std::string> env = DelegateEnv();
  env[5] = "HARNESS_CERTS_DIR=" + dir_ + "/work";  // no CA there
  StartDelegate(env);
  ASSERT_TRUE(WaitForLog("register failed; retrying"));
  EXPECT_THAT(delegate_->Output(), HasSubstr("certificate"));
  EXPECT_EQ(Ops("/ready").first, 503);
  EXPECT_EQ(Admin("GET", "/admin/delegates"), "[]");
}

TEST_F(HarnessE2eTest, MutualTlsWithAClientCertificate) {
  ManagerOptions o = Options();
  o.tls->client_ca_file = ca_->ca_file();
  StartManager(o);
  std::vector<std::string> env = DelegateEnv();
  env.push_back("HARNESS_CLIENT_CERT_FILE=" + ca_->client().cert_file);
  env.push_back("HARNESS_CLIENT_KEY_FILE=" + ca_->client().key_file);
  StartDelegate(env);
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\"")) << delegate_->Output();
  const std::string id = Submit(HostStage("mtls"));
  EXPECT_STREQ(WaitStage(id)["status"].GetString(), "SUCCESS");
}

TEST_F(HarnessE2eTest, ManagerErrorsAndTimeoutsAreRetriedAndNoResponseIsLost) {
  StartManager(Options());
  std::vector<std::string> env = DelegateEnv();
  env.push_back("DELEGATE_MANAGER_TIMEOUT_SECS=1");
  StartDelegate(env);
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\""));
  Faults faults;
  faults.fail_next = 6;
  faults.fail_status = 503;
  faults.delay = absl::Milliseconds(1500);  // past the 1 s call timeout
  faults.delay_next = 4;
  manager_->SetFaults(faults);
  const std::string id = Submit(HostStage("flaky"));
  rapidjson::Document stage = WaitStage(id);
  ASSERT_STREQ(stage["status"].GetString(), "SUCCESS") << delegate_->Output();
  for (const auto& t : stage["tasks"].GetArray()) {
    EXPECT_GE(t["responses"].GetInt(), 1) << t["id"].GetString();
  }
  EXPECT_THAT(delegate_->Output(), HasSubstr("poll failed"));
}

TEST_F(HarnessE2eTest, ATaskDeliveredTwiceRunsOnce) {
  StartManager(Options());
  StartDelegate(DelegateEnv());
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\""));
  Faults faults;
  faults.duplicate_events = true;
  manager_->SetFaults(faults);
  const std::string marker = dir_ + "/runs.txt";
  const std::string id = Submit(absl::StrCat(
      R"({"id":"twice","steps":[{"id":"count","run":{"commands":["echo ran >> )",
      marker, R"(","sleep 0.3"]}}]})"));
  rapidjson::Document stage = WaitStage(id);
  ASSERT_STREQ(stage["status"].GetString(), "SUCCESS");
  EXPECT_EQ(ReadFile(marker), "ran\n");
  for (const auto& t : stage["tasks"].GetArray()) {
    EXPECT_EQ(t["responses"].GetInt(), 1) << t["type"].GetString();
  }
}

TEST_F(HarnessE2eTest, UnknownTaskTypesAnswerFailedNamingTheType) {
  StartManager(Options());
  StartDelegate(DelegateEnv());
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\""));
  const std::string id = Submit(R"({"id":"vm","type":"vm_init","data":{}})");
  rapidjson::Document stage = WaitStage(id);
  ASSERT_STREQ(stage["status"].GetString(), "FAILURE");
  const auto& t = stage["tasks"][0];
  EXPECT_STREQ(t["code"].GetString(), "FAILED");
  EXPECT_THAT(t["error"].GetString(), HasSubstr("'vm_init' is not supported"));
  EXPECT_THAT(t["data"]["error_message"].GetString(), HasSubstr("vm_init"));
}

TEST_F(HarnessE2eTest, AnUnusablePayloadIsAnsweredFailedOnceNotFetchedForever) {
  StartManager(Options());
  StartDelegate(DelegateEnv());
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\""));
  const std::string id =
      Submit(R"({"id":"junk","type":"my/cgi_task","data":"not-an-object"})");
  rapidjson::Document stage = WaitStage(id);
  ASSERT_STREQ(stage["status"].GetString(), "FAILURE");
  const auto& t = stage["tasks"][0];
  EXPECT_STREQ(t["code"].GetString(), "FAILED");
  EXPECT_THAT(t["error"].GetString(), HasSubstr("payload is not usable"));
  EXPECT_EQ(t["deliveries"].GetInt(), 1);
  EXPECT_EQ(t["responses"].GetInt(), 1);
}

TEST_F(HarnessE2eTest,
       AManagerThatForgetsTheDelegateGetsItBackAndItsStagesEnd) {
  // The manager restarted without its state: the heartbeat's 404 makes the
  // delegate register again, poll under its new id, and cancel (and clean
  // up) the stage the manager no longer knows, so a drain is not held up.
  StartManager(Options());
  StartDelegate(DelegateEnv());
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\""));
  const int port = manager_->port();
  Submit(
      R"({"id":"lost","steps":[{"id":"long","run":{"commands":["sleep 60"]}}]})");
  ASSERT_TRUE(WaitForLog("stage initialized"));
  manager_.reset();
  ManagerOptions o = Options();
  o.port = port;
  StartManager(o);
  ASSERT_TRUE(WaitForLog("registering again", absl::Seconds(30)));
  ASSERT_TRUE(WaitForLog("\"stage\":\"lost\",\"status\":\"CANCELLED\"",
                         absl::Seconds(30)))
      << delegate_->Output();
  EXPECT_STREQ(WaitStage(Submit(HostStage("after")))["status"].GetString(),
               "SUCCESS");
  kill(delegate_->pid(), SIGTERM);
  auto outcome = delegate_->Wait();
  EXPECT_EQ(outcome.exit_code, 0) << outcome.out;
}

TEST_F(HarnessE2eTest, ASecondSigtermCancelsTheOpenStagesAndExits) {
  StartManager(Options());
  StartDelegate(DelegateEnv());
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\""));
  const std::string id = Submit(
      R"({"id":"stuck","steps":[{"id":"long","run":{"commands":["sleep 60"]}}]})");
  ASSERT_TRUE(WaitForLog("stage initialized"));
  absl::SleepFor(absl::Milliseconds(200));
  kill(delegate_->pid(), SIGTERM);
  ASSERT_TRUE(WaitForLog("draining"));
  kill(delegate_->pid(), SIGTERM);
  const absl::Time start = absl::Now();
  auto outcome = delegate_->Wait();
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
  EXPECT_EQ(outcome.exit_code, 0) << outcome.out;
  EXPECT_THAT(outcome.out, HasSubstr("drain cut short"));
  EXPECT_THAT(outcome.out, HasSubstr("\"msg\":\"unregistered\""));
}

TEST_F(HarnessE2eTest, InlineTaskDataIsAcceptedToo) {
  ManagerOptions o = Options();
  o.base64_data = false;
  StartManager(o);
  StartDelegate(DelegateEnv());
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\""));
  EXPECT_STREQ(WaitStage(Submit(HostStage("inline")))["status"].GetString(),
               "SUCCESS");
}

TEST_F(HarnessE2eTest, SigtermMidStageFinishesTheStageThenUnregisters) {
  StartManager(Options());
  StartDelegate(DelegateEnv());
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\""));
  const std::string id = Submit(R"({"id":"long","steps":[
      {"id":"slow","run":{"commands":["sleep 1.5","echo slept"]}},
      {"id":"after","run":{"commands":["echo after the signal"]}}]})");
  ASSERT_TRUE(WaitForLog("stage initialized"));
  absl::SleepFor(absl::Milliseconds(300));
  kill(delegate_->pid(), SIGTERM);
  // A new stage is left for other delegates while this one drains (once it
  // says so: a poll already under way when the signal came may still take
  // one).
  ASSERT_TRUE(WaitForLog("draining: taking no new stages"));
  const std::string later = Submit(HostStage("later"));
  rapidjson::Document stage = WaitStage(id);
  EXPECT_STREQ(stage["status"].GetString(), "SUCCESS") << delegate_->Output();
  auto outcome = delegate_->Wait();
  EXPECT_EQ(outcome.exit_code, 0) << outcome.out;
  EXPECT_THAT(outcome.out, HasSubstr("draining"));
  EXPECT_THAT(outcome.out, HasSubstr("\"msg\":\"unregistered\""));
  EXPECT_STREQ(WaitStage(later, absl::Milliseconds(1))["status"].GetString(),
               "QUEUED");
}

TEST_F(HarnessE2eTest, IdleWaitKeepsTheDelegateRegisteredBeforeItStops) {
  StartManager(Options());
  std::vector<std::string> env = DelegateEnv();
  env.push_back("IDLE_WAIT_SECS_BEFORE_STOP=1");
  StartDelegate(env);
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\""));
  const absl::Time signalled = absl::Now();
  kill(delegate_->pid(), SIGTERM);
  ASSERT_TRUE(WaitForLog("idle; waiting before stopping"));
  EXPECT_THAT(Admin("GET", "/admin/delegates"),
              HasSubstr("\"registered\":true"));
  auto outcome = delegate_->Wait();
  EXPECT_EQ(outcome.exit_code, 0) << outcome.out;
  EXPECT_GE(absl::Now() - signalled, absl::Seconds(1));
  EXPECT_THAT(Admin("GET", "/admin/delegates"),
              HasSubstr("\"registered\":false"));
}

TEST_F(HarnessE2eTest, TheManagerRestartingMidStageLosesNothing) {
  // The manager as a separate process with its state on disk, killed while
  // a step runs and started again on the same port.
  const std::string state = dir_ + "/manager-state.json";
  const std::vector<std::string> args = {
      "--account",    kAccount,
      "--token-file", dir_ + "/token",
      "--tls-cert",   ca_->server().cert_file,
      "--tls-key",    ca_->server().key_file,
      "--state",      state};
  auto first = std::make_unique<testing::ManagerProcess>(
      REFERENCE_MANAGER_BINARY, args, 0, dir_ + "/manager.out");
  ASSERT_FALSE(first->url().empty());
  const int port = first->port();
  url_ = first->url();
  StartDelegate(DelegateEnv());
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\""));
  const std::string marker = dir_ + "/runs.txt";
  // The slow step prints while the manager is down: its lines wait in the
  // delegate and reach the restarted manager's log service.
  const std::string spec = absl::StrCat(
      R"({"id":"restart","logs":true,"steps":[{"id":"slow","run":{"commands":["echo ran >> )",
      marker,
      R"(","for i in 1 2 3 4 5 6 7 8; do echo line $i; sleep 0.25; done"]}},)",
      R"({"id":"next","run":{"commands":["echo next"]}}]})");
  ASSERT_THAT(Admin("POST", "/admin/stages", spec), HasSubstr("restart"));
  for (int i = 0; i < 500 && ReadFile(marker).empty(); ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(ReadFile(marker), "ran\n");
  first->Kill(SIGKILL);
  // The step ends while the manager is down: 3 s here; the fault suite runs
  // this test again with DELEGATE_MANAGER_OUTAGE_SECONDS=60.
  int outage_seconds = 3;
  if (const char* v = getenv("DELEGATE_MANAGER_OUTAGE_SECONDS")) {
    outage_seconds = std::max(1, atoi(v));
  }
  absl::SleepFor(absl::Seconds(outage_seconds));
  testing::ManagerProcess restarted(REFERENCE_MANAGER_BINARY, args, port,
                                    dir_ + "/manager.out");
  ASSERT_FALSE(restarted.url().empty());
  std::string json;
  const absl::Time until = absl::Now() + absl::Seconds(60);
  while (absl::Now() < until) {
    json = Admin("GET", "/admin/stages/restart");
    if (absl::StrContains(json, "\"status\":\"SUCCESS\"") ||
        absl::StrContains(json, "\"status\":\"FAILURE\"")) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  // Every line of the slow step, each once, although the manager was down
  // for most of them and forgot nothing it had taken.
  std::string logs;
  for (int i = 0; i < 500; ++i) {
    logs = Admin("GET", "/admin/logs?key=restart/step-0");
    if (absl::StrContains(logs, "line 8")) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  restarted.Kill(SIGTERM);
  EXPECT_THAT(json, HasSubstr("\"status\":\"SUCCESS\"")) << delegate_->Output();
  EXPECT_EQ(ReadFile(marker), "ran\n");  // the slow step ran once
  EXPECT_THAT(json, Not(HasSubstr("\"responses\":0")));
  for (int i = 1; i <= 8; ++i) {
    const std::string line = absl::StrCat("\"line ", i, "\\n\"");
    EXPECT_EQ(CountOf(logs, line), 1u) << line << " in " << logs;
  }
}

TEST_F(HarnessE2eTest, AFlakyLogServiceStillGetsEveryLineOnce) {
  StartManager(Options());
  Faults faults;
  faults.log_fail_percent = 30;  // before or after taking the call
  manager_->SetFaults(faults);
  StartDelegate(DelegateEnv());
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\""));
  const std::string id = Submit(
      R"({"id":"flaky","logs":true,"steps":[{"id":"count","run":{"commands":)"
      R"(["for i in $(seq 1 300); do echo line-$i; done; sleep 1.5",)"
      R"("for i in $(seq 301 400); do echo line-$i; done"]}}]})");
  rapidjson::Document stage = WaitStage(id, absl::Seconds(60));
  EXPECT_STREQ(stage["status"].GetString(), "SUCCESS") << delegate_->Output();
  // The step's result did not wait for its log; the log comes whole.
  std::string logs;
  for (int i = 0; i < 3000; ++i) {
    logs = Admin("GET", "/admin/logs?key=flaky/step-0");
    if (CountOf(logs, "line-") >= 400) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  rapidjson::Document lines;
  lines.Parse(logs.c_str());
  ASSERT_TRUE(lines.IsArray()) << logs;
  std::vector<std::string> got;
  for (const auto& l : lines.GetArray()) {
    const std::string text = l.GetString();
    if (absl::StartsWith(text, "line-")) got.push_back(text);
  }
  std::vector<std::string> want;
  for (int i = 1; i <= 400; ++i) want.push_back(absl::StrCat("line-", i, "\n"));
  EXPECT_EQ(got, want) << "lines lost, repeated or out of order";
  EXPECT_THAT(delegate_->Output(), HasSubstr("log service write failed"));
}

TEST_F(HarnessE2eTest, AFullStateDiskRefusesNewStagesAndFinishesOpenOnes) {
  const std::string state = dir_ + "/state";
  std::filesystem::create_directories(state);
  if (mount("tmpfs", state.c_str(), "tmpfs", 0, "size=256k") != 0) {
    GTEST_SKIP() << "cannot mount a small tmpfs here: " << strerror(errno);
  }
  struct Unmount {
    std::string path;
    ~Unmount() { umount2(path.c_str(), MNT_DETACH); }
  } unmount{state};
  StartManager(Options());
  std::vector<std::string> env = DelegateEnv();
  env.push_back("DELEGATE_STATE_DIR=" + state);
  StartDelegate(env);
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\""));
  const std::string go = dir_ + "/go";
  const std::string open_id = Submit(absl::StrCat(
      R"({"id":"open","steps":[{"id":"wait","run":{"commands":["echo waiting; while [ ! -e )",
      go, R"( ]; do sleep 0.05; done"]}}]})"));
  ASSERT_TRUE(WaitForLog("waiting"));
  {
    // The disk fills up while the stage runs.
    std::ofstream fill(state + "/fill", std::ios::binary);
    const std::string block(4096, 'x');
    while (fill.write(block.data(), block.size())) {
    }
  }
  // The journal's last page may still hold a few records: stages are taken
  // until it is full, then refused.
  std::string error;
  int taken = 0;
  for (int i = 0; i < 40 && error.empty(); ++i) {
    const std::string id = Submit(
        absl::StrCat(R"({"id":"after-)", i,
                     R"(","steps":[{"id":"a","run":{"commands":["true"]}}]})"));
    rapidjson::Document d = WaitStage(id, absl::Seconds(30));
    if (std::string(d["status"].GetString()) == "SUCCESS") {
      ++taken;
    } else {
      ASSERT_GE(d["tasks"].GetArray().Size(), 1u);
      error = d["tasks"][0]["error"].GetString();
    }
  }
  EXPECT_THAT(error, HasSubstr("takes no new stages")) << taken << " taken";
  EXPECT_THAT(error, HasSubstr("No space left on device"));
  EXPECT_THAT(error, HasSubstr("DELEGATE_STATE_DIR"));
  // The open stage goes on to the end.
  std::ofstream(go) << "go";
  rapidjson::Document open = WaitStage(open_id, absl::Seconds(30));
  EXPECT_STREQ(open["status"].GetString(), "SUCCESS") << delegate_->Output();
}

// What the restarted delegate finds: its stage as it left it, the stage's
// workspace gone, or a manager that found it lost meanwhile.
enum class AfterKill { kResumable, kWorkspaceGone, kLost };
class HarnessKillTest : public HarnessE2eTest,
                        public ::testing::WithParamInterface<AfterKill> {};
INSTANTIATE_TEST_SUITE_P(Restart, HarnessKillTest,
                         ::testing::Values(AfterKill::kResumable,
                                           AfterKill::kWorkspaceGone,
                                           AfterKill::kLost));

TEST_P(HarnessKillTest, ADelegateKilledMidStepAnswersOnceAfterItsRestart) {
  const AfterKill after = GetParam();
  ManagerOptions options = Options();
  if (after == AfterKill::kLost) options.lost_after = absl::Seconds(1);
  StartManager(options);
  StartDelegate(DelegateEnv());
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\""));
  const std::string registered = Admin("GET", "/admin/delegates");
  const std::string pids = dir_ + "/pids";
  const std::string id = Submit(absl::StrCat(
      R"({"id":"killed","steps":[{"id":"long","run":{"commands":["echo $$ >> )",
      pids, R"(", "setsid sleep 307 & echo $! >> )", pids,
      R"(", "echo started", "sleep 300"]}},)",
      R"({"id":"never","run":{"commands":["echo never"]}}]})"));
  ASSERT_TRUE(WaitForLog("started"));
  kill(delegate_->pid(), SIGKILL);
  delegate_->Wait();

  // The step's processes died with the delegate.
  const std::vector<pid_t> step_pids = testing::PidsIn(pids);
  ASSERT_EQ(step_pids.size(), 2u);
  for (pid_t pid : step_pids) {
    EXPECT_TRUE(testing::AwaitGone(pid)) << pid << " outlived the delegate";
  }
  // Its workspace is still there until the delegate comes back.
  auto stage_dirs = [&] {
    size_t n = 0;
    for (auto& e : std::filesystem::directory_iterator(dir_ + "/work")) {
      n += e.path().filename().string()[0] != '.';
    }
    return n;
  };
  EXPECT_EQ(stage_dirs(), 1u);
  if (after == AfterKill::kWorkspaceGone) {
    for (auto& e : std::filesystem::directory_iterator(dir_ + "/work")) {
      if (e.path().filename().string()[0] == '.') continue;
      std::filesystem::remove_all(e.path());
    }
  }
  if (after == AfterKill::kLost) {
    // The manager ends the stage, and will give the delegate a new id.
    for (int i = 0;
         i < 500 &&
         !absl::StrContains(Admin("GET", "/admin/delegates"), "\"lost\":true");
         ++i) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    ASSERT_THAT(Admin("GET", "/admin/delegates"), HasSubstr("\"lost\":true"));
  }

  // The restarted delegate resumes the stage (the same delegate to the
  // manager) and answers the step within seconds: a host step cannot be
  // re-attached, it stopped with the delegate. Without the workspace the
  // stage cannot be resumed, and a manager that lost the delegate no
  // longer holds it: the step is answered FAILED and the stage cleaned up.
  const absl::Time restarted = absl::Now();
  StartDelegate(DelegateEnv());
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\""));
  ASSERT_TRUE(WaitForLog(after == AfterKill::kResumable
                             ? "re-attaching to the step"
                             : "answering a task the delegate was"));
  EXPECT_THAT(delegate_->Output(),
              HasSubstr(after == AfterKill::kResumable ? "resumed a stage"
                        : after == AfterKill::kLost
                            ? "the manager gave this delegate a new id"
                            : "cannot resume a stage"));
  // The step: answered once, failed, saying why.
  rapidjson::Document stage;
  for (int i = 0; i < 500; ++i) {
    stage = WaitStage(id, absl::Seconds(30));
    if (stage["tasks"].GetArray().Size() >= 2 &&
        stage["tasks"][1]["responses"].GetInt() > 0) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));  // a lost stage ended before
  }
  EXPECT_LT(absl::Now() - restarted, absl::Seconds(5));
  EXPECT_STREQ(stage["status"].GetString(), "FAILURE") << delegate_->Output();
  const auto& tasks = stage["tasks"].GetArray();
  ASSERT_GE(tasks.Size(), 2u);
  EXPECT_STREQ(tasks[1]["type"].GetString(), "local_execute");
  EXPECT_EQ(tasks[1]["responses"].GetInt(), 1);
  if (after == AfterKill::kResumable) {
    EXPECT_STREQ(tasks[1]["data"]["command_execution_status"].GetString(),
                 "FAILURE");
    EXPECT_THAT(tasks[1]["data"]["error_message"].GetString(),
                HasSubstr("the delegate restarted during step long"));
  } else if (after == AfterKill::kWorkspaceGone) {
    EXPECT_STREQ(tasks[1]["code"].GetString(), "FAILED");
    EXPECT_THAT(tasks[1]["error"].GetString(),
                HasSubstr("the delegate restarted during step long"));
  } else {
    // The manager failed it first; the delegate's answer is recorded.
    EXPECT_STREQ(tasks[1]["code"].GetString(), "FAILED");
    EXPECT_THAT(tasks[1]["error"].GetString(), HasSubstr("was lost"));
  }
  // The step after it never ran.
  for (const auto& t : tasks) {
    EXPECT_NE(t["step"].GetInt(), 1) << "the next step was queued";
  }
  EXPECT_THAT(delegate_->Output(), Not(HasSubstr("never")));
  // The stage's cleanup removed its workspace.
  for (int i = 0; i < 500 && stage_dirs() > 0; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(stage_dirs(), 0u) << "the killed run's workspace was left";
  const std::string delegates = Admin("GET", "/admin/delegates");
  if (after == AfterKill::kLost) {
    EXPECT_EQ(CountOf(delegates, "\"id\""), CountOf(registered, "\"id\"") + 1)
        << "a new delegate id";
  } else {
    // One delegate, the same before and after.
    EXPECT_EQ(CountOf(delegates, "\"id\""), CountOf(registered, "\"id\""));
    EXPECT_THAT(delegates, HasSubstr("\"lost\":false"));
  }
}

TEST_F(HarnessE2eTest, AContainerStepOutlivesADelegateKillAndIsReattached) {
  std::unique_ptr<docker::DockerClient> docker_client;
  DELEGATE_CONNECT_TEST_ENGINE_OR_SKIP(docker_client);
  ManagerOptions options = Options();
  options.base64_data = false;  // the secrets in the payloads in the clear
  StartManager(options);
  std::vector<std::string> env = DelegateEnv("e2e-reattach");
  env.push_back("DELEGATE_STATE_DIR=" + dir_ + "/state");
  StartDelegate(env);
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\""));
  const std::string id = Submit(absl::StrCat(
      R"({"id":"reattach","logs":true,"secrets":{"pw":"hunter2-secret"},)",
      R"("steps":[{"id":"build","image":")", testing::kTestImage,
      R"(","pull":"Never","run":{"commands":["echo started pw=${{secrets.pw}}",)",
      R"("sleep 4","echo finished","echo made > /harness/made.txt",)",
      R"("echo WORD=done > $HARNESS_OUTPUT_FILE"]},"output_vars":["WORD"]},)",
      R"({"id":"check","image":")", testing::kTestImage,
      R"(","pull":"Never","run":{"commands":["cat /harness/made.txt"]}}]})"));
  auto logged = [&](const std::string& key, const std::string& text) {
    for (const std::string& line : manager_->LogLines(key)) {
      if (absl::StrContains(line, text)) return true;
    }
    return false;
  };
  for (int i = 0; i < 1000 && !logged(id + "/step-0", "started"); ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(logged(id + "/step-0", "started")) << delegate_->Output();
  const std::string registered = Admin("GET", "/admin/delegates");
  // The journal holds the running step's payload, and the stage's init's,
  // with the secret: sealed.
  const std::string journal = ReadFile(dir_ + "/state/harness-tasks.journal");
  EXPECT_THAT(journal, HasSubstr(id));  // the stage key, in the clear
  EXPECT_THAT(journal, Not(HasSubstr("hunter2")));
  kill(delegate_->pid(), SIGKILL);
  delegate_->Wait();
  // The container runs on without the delegate.
  EXPECT_EQ(
      testing::Labelled(*docker_client, "io.libdelegate.delegate=e2e-reattach")
          .size(),
      4u)  // the container, the network, two volumes
      << "what the stage made";

  const absl::Time restarted = absl::Now();
  StartDelegate(env);
  ASSERT_TRUE(WaitForLog("re-attaching to the step"));
  EXPECT_LT(absl::Now() - restarted, absl::Seconds(5));
  EXPECT_THAT(delegate_->Output(), HasSubstr("resumed a stage"));

  rapidjson::Document stage = WaitStage(id, absl::Seconds(60));
  ASSERT_STREQ(stage["status"].GetString(), "SUCCESS") << delegate_->Output();
  const auto& tasks = stage["tasks"].GetArray();
  ASSERT_EQ(tasks.Size(), 4u);  // init, build, check, cleanup
  // The step the delegate was running when it was killed: answered once,
  // with its own result and output, by the same delegate.
  EXPECT_STREQ(tasks[1]["type"].GetString(), "local_execute");
  EXPECT_EQ(tasks[1]["responses"].GetInt(), 1);
  EXPECT_STREQ(tasks[1]["code"].GetString(), "OK");
  EXPECT_STREQ(tasks[1]["data"]["output_vars"]["WORD"].GetString(), "done");
  // The next step saw what it wrote to the workspace.
  EXPECT_STREQ(tasks[2]["code"].GetString(), "OK");
  EXPECT_TRUE(logged(id + "/step-1", "made")) << delegate_->Output();
  // Its log went on after the restart; the secret stayed masked.
  EXPECT_TRUE(logged(id + "/step-0", "finished"));
  for (const std::string& line : manager_->LogLines(id + "/step-0")) {
    EXPECT_THAT(line, Not(HasSubstr("hunter2")));
  }
  // One delegate, the same before and after the kill.
  EXPECT_EQ(CountOf(Admin("GET", "/admin/delegates"), "\"id\""),
            CountOf(registered, "\"id\""));
  // Cleanup removed everything; the journal holds no secret in the clear.
  EXPECT_THAT(
      testing::Labelled(*docker_client, "io.libdelegate.delegate=e2e-reattach"),
      ::testing::IsEmpty());
  EXPECT_THAT(ReadFile(dir_ + "/state/harness-tasks.journal"),
              Not(HasSubstr("hunter2")));
}

TEST_F(HarnessE2eTest, ContainerAndHostStepsShareOneStage) {
  std::unique_ptr<docker::DockerClient> docker_client;
  DELEGATE_CONNECT_TEST_ENGINE_OR_SKIP(docker_client);
  StartManager(Options());
  StartDelegate(DelegateEnv("e2e-docker"));
  ASSERT_TRUE(WaitForLog("\"msg\":\"connected\""));
  const std::string id = Submit(absl::StrCat(
      R"({"id":"mixed","steps":[)", R"({"id":"in-container","image":")",
      testing::kTestImage,
      R"(","pull":"Never","run":{"commands":["echo inside; cat /etc/hostname >/dev/null"]}},)",
      R"({"id":"on-host","run":{"commands":["echo on the host"]}}]})"));
  rapidjson::Document stage = WaitStage(id, absl::Seconds(120));
  EXPECT_STREQ(stage["status"].GetString(), "SUCCESS") << delegate_->Output();
  EXPECT_THAT(delegate_->Output(), HasSubstr("inside"));
  EXPECT_THAT(delegate_->Output(), HasSubstr("on the host"));
  // Cleanup removed the stage's containers and network.
  EXPECT_THAT(
      testing::Labelled(*docker_client, "io.libdelegate.delegate=e2e-docker"),
      ::testing::IsEmpty());
}

}  // namespace
}  // namespace delegate

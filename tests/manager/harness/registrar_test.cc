#include "manager/harness/registrar.h"

#include <atomic>
#include <deque>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "http/http_server.h"

namespace delegate::harness {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kToken[] = "98d8fedb04c574e68939164bf463e73d";

// A manager on loopback: register answers the next id of `ids` (the last
// one again when they run out), heartbeat the next status of `heartbeats`
// (200 when they run out). It records each call's body, and holds a
// heartbeat back until it may answer it (AnswerHeartbeats).
class FakeManager {
 public:
  FakeManager(std::vector<std::string> ids, std::deque<int> heartbeats)
      : ids_(std::move(ids)), heartbeats_(std::move(heartbeats)) {
    auto s = http::HttpServer::Start(
        {}, [this](const http::ServerRequest& r) { return Answer(r); });
    EXPECT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
  }
  ~FakeManager() {
    AnswerHeartbeats(std::numeric_limits<int>::max());
    server_.reset();
  }
  // Answers heartbeats up to the `n`th; later ones wait. Every one is
  // answered until this is called.
  void AnswerHeartbeats(int n) {
    absl::MutexLock lock(&mu_);
    answerable_ = n;
  }
  std::string url() const { return server_->url(); }
  // "register BODY" and "heartbeat BODY", in order.
  std::vector<std::string> calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  int Count(const std::string& what) {
    int n = 0;
    for (const std::string& c : calls()) n += absl::StartsWith(c, what);
    return n;
  }

 private:
  http::ServerResponse Answer(const http::ServerRequest& r) {
    absl::MutexLock lock(&mu_);
    http::ServerResponse resp;
    if (absl::StrContains(r.path, "/register")) {
      calls_.push_back("register " + r.body);
      const std::string id = ids_[std::min(registered_++, ids_.size() - 1)];
      resp.body = R"({"resource":{"delegateId":")" + id + R"("}})";
    } else if (absl::StrContains(r.path, "/heartbeat")) {
      calls_.push_back("heartbeat " + r.body);
      const int n = ++heartbeats_seen_;
      auto answerable = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return n <= answerable_;
      };
      mu_.Await(absl::Condition(&answerable));
      if (!heartbeats_.empty()) {
        resp.status = heartbeats_.front();
        heartbeats_.pop_front();
      }
      resp.body = "{}";
    } else {
      resp.status = 404;
    }
    return resp;
  }

  absl::Mutex mu_;
  const std::vector<std::string> ids_;
  size_t registered_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<int> heartbeats_ ABSL_GUARDED_BY(mu_);
  int heartbeats_seen_ ABSL_GUARDED_BY(mu_) = 0;
  int answerable_ ABSL_GUARDED_BY(mu_) = std::numeric_limits<int>::max();
  std::vector<std::string> calls_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<http::HttpServer> server_;
};

class HarnessRegistrarTest : public ::testing::Test {
 protected:
  HarnessRegistrarTest() {
    config_.account_id = "acct";
    config_.name = "runner-1";
    config_.max_stages = 4;
    metrics_.Define("io_harness_runner_error_count", Metrics::Kind::kCounter,
                    "", {"account_id", "runner_name"});
    metrics_.Define("io_harness_runner_heartbeat_failure_count",
                    Metrics::Kind::kCounter, "", {"account_id", "runner_name"});
  }

  // A manager answering `ids` and `heartbeats` (see FakeManager), and a
  // registrar registered with it.
  void Connect(std::vector<std::string> ids, std::deque<int> heartbeats,
               absl::Duration heartbeat_interval = absl::Milliseconds(5)) {
    manager_ =
        std::make_unique<FakeManager>(std::move(ids), std::move(heartbeats));
    client_ = std::make_unique<HarnessClient>(manager_->url(), "acct",
                                              SecretString(kToken), Transport{},
                                              http_, Clock::Real());
    registrar_ = std::make_unique<Registrar>(config_, log_, metrics_,
                                             heartbeat_interval);
    absl::Status s = registrar_->Register(*client_, [] { return false; });
    EXPECT_TRUE(s.ok()) << s;
  }
  double HeartbeatFailures() const {
    return metrics_.Value("io_harness_runner_heartbeat_failure_count",
                          RunnerLabels(config_));
  }

  // Runs the heartbeat loop on a thread until `done` holds (or 5 s pass),
  // then stops it. Returns how often `forgotten` was called.
  int Heartbeat(const std::function<bool()>& done, bool draining = false) {
    std::atomic<int> forgotten{0};
    std::thread loop([&] {
      registrar_->HeartbeatLoop(
          *client_, [draining] { return draining; }, [&] { ++forgotten; });
    });
    const absl::Time give_up = absl::Now() + absl::Seconds(5);
    while (!done() && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(2));
    }
    EXPECT_TRUE(done()) << "timed out";
    registrar_->Stop();
    loop.join();
    return forgotten.load();
  }
  // Until the manager has seen `n` heartbeats.
  std::function<bool()> Heartbeats(int n) {
    return [this, n] { return manager_->Count("heartbeat") >= n; };
  }

  DelegateConfig config_;
  Metrics metrics_;
  EventLog log_{[](std::string_view) {}};
  http::HttpClient http_;
  std::unique_ptr<FakeManager> manager_;
  std::unique_ptr<HarnessClient> client_;
  std::unique_ptr<Registrar> registrar_;
};

TEST_F(HarnessRegistrarTest, RegisterSendsTheCapacityAndHeartbeatsSendNull) {
  EXPECT_FALSE(Registrar(config_, log_, metrics_).InGoodStanding());
  Connect({"d-1"}, {});
  EXPECT_EQ(registrar_->delegate_id(), "d-1");
  EXPECT_EQ(registrar_->Info().delegate_id, "d-1");
  EXPECT_TRUE(registrar_->InGoodStanding());
  Heartbeat(Heartbeats(2));
  std::vector<std::string> calls = manager_->calls();
  ASSERT_GE(calls.size(), 3u);
  EXPECT_THAT(calls[0], HasSubstr(R"("capacityConfig":{"maxStages":4})"));
  EXPECT_THAT(calls[0], Not(HasSubstr(R"("delegateId")")));
  EXPECT_THAT(calls[1], HasSubstr(R"("capacityConfig":{"maxStages":null})"));
  EXPECT_THAT(calls[1], HasSubstr(R"("delegateId":"d-1")"));
  // Stopped: no longer in good standing.
  EXPECT_FALSE(registrar_->InGoodStanding());
}

TEST_F(HarnessRegistrarTest, AForgottenDelegateRegistersAgainUnderANewId) {
  Connect({"d-1", "d-2"}, {404});
  EXPECT_EQ(Heartbeat(Heartbeats(2)), 1);
  EXPECT_EQ(registrar_->delegate_id(), "d-2");
  EXPECT_EQ(manager_->Count("register"), 2);
  EXPECT_THAT(manager_->calls().back(), HasSubstr(R"("delegateId":"d-2")"));
  EXPECT_EQ(HeartbeatFailures(), 0);
}

TEST_F(HarnessRegistrarTest, RegisteringAgainUnderTheSameIdLosesNoStage) {
  Connect({"d-1"}, {404});
  EXPECT_EQ(Heartbeat(Heartbeats(2)), 0);
  EXPECT_EQ(manager_->Count("register"), 2);
  EXPECT_EQ(registrar_->delegate_id(), "d-1");
}

TEST_F(HarnessRegistrarTest, WhileDrainingAForgottenDelegateDoesNotRegister) {
  Connect({"d-1"}, {404});
  EXPECT_EQ(Heartbeat(Heartbeats(2), /*draining=*/true), 0);
  EXPECT_EQ(manager_->Count("register"), 1);
  EXPECT_EQ(HeartbeatFailures(), 1);
}

TEST_F(HarnessRegistrarTest, ThreeFailedHeartbeatsInARowLoseGoodStanding) {
  Connect({"d-1"}, {503, 503, 503}, absl::Milliseconds(1));
  // Each check is made while the next heartbeat is held back, so that the
  // standing is the one the earlier heartbeats left.
  manager_->AnswerHeartbeats(1);
  std::vector<bool> standing;
  Heartbeat([&] {
    const int sent = manager_->Count("heartbeat");
    if (sent <= 4 && static_cast<int>(standing.size()) == sent - 2) {
      standing.push_back(registrar_->InGoodStanding());
      manager_->AnswerHeartbeats(sent < 4 ? sent
                                          : std::numeric_limits<int>::max());
    } else if (sent >= 5 && standing.size() == 3) {
      standing.push_back(registrar_->InGoodStanding());
    }
    return standing.size() == 4;
  });
  // After 1, 2 and 3 failures in a row, then after a heartbeat answered OK.
  EXPECT_EQ(standing, std::vector<bool>({true, true, false, true}));
  EXPECT_EQ(HeartbeatFailures(), 3);
}

}  // namespace
}  // namespace delegate::harness

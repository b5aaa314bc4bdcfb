// The Harness Delegate 3.x runner loop: register, heartbeat every 10 s, poll
// runner-events, fetch each task once, route it (local_init, local_execute,
// local_cleanup into the scheduler as one fed stage per transaction;
// secret/static), answer task-response, and drain on request. The parts it
// drives live beside it: registrar.h (registration and heartbeat),
// answer_cache.h (answers kept for re-deliveries).
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "delegate/harness.h"
#include "delegate/scheduler.h"
#include "logs/masker.h"
#include "manager/harness/answer_cache.h"
#include "manager/harness/harness_client.h"
#include "manager/harness/log_stream.h"
#include "manager/harness/payloads.h"
#include "manager/harness/registrar.h"
#include "manager/harness/token.h"
#include "util/strings.h"

namespace delegate {
namespace harness {
namespace {

constexpr const char* kSupportedTypes =
    "local_init, local_execute, local_cleanup, secret/static";

// Makes the directories a stage's local_init asks for.
absl::Status MakeHostDirs(const std::vector<HostDir>& dirs) {
  for (const HostDir& dir : dirs) {
    if (!dir.create) continue;
    std::error_code ec;
    std::filesystem::create_directories(dir.path, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("creating ", dir.path, ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

// Removes a stage's host directory, refusing paths no stage should own.
absl::Status RemoveHostDir(const std::string& raw) {
  std::filesystem::path p = std::filesystem::path(raw).lexically_normal();
  const std::string s = p.string();
  if (!p.is_absolute() || p == p.root_path() || s.size() < 5) {
    return absl::InvalidArgumentError(
        absl::StrCat("not removing '", raw, "': not a stage directory"));
  }
  std::error_code ec;
  std::filesystem::remove_all(p, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("removing ", s, ": ", ec.message()));
  }
  return absl::OkStatus();
}

class HarnessConnection final : public ManagerConnection {
 public:
  HarnessConnection(ManagerEnvironment env, SecretString token,
                    std::string manager_url)
      : env_(std::move(env)),
        token_(std::move(token)),
        manager_url_(std::move(manager_url)) {
    const LabelValues none;
    Metrics& m = env_.metrics;
    const std::vector<std::string> task_labels = {"account_id", "task_type",
                                                  "runner_name"};
    m.Define("io_harness_task_completed_total", Metrics::Kind::kCounter,
             "Tasks answered OK.", task_labels);
    m.Define("io_harness_task_failed_total", Metrics::Kind::kCounter,
             "Tasks answered FAILED, or whose step failed.", task_labels);
    m.Define("io_harness_task_timeout_total", Metrics::Kind::kCounter,
             "Tasks whose step timed out.", task_labels);
    m.Define("io_harness_tasks_currently_executing", Metrics::Kind::kGauge,
             "Tasks being run now.", task_labels);
    m.Define("io_harness_task_execution_time", Metrics::Kind::kHistogram,
             "Seconds from fetching a task to its response.", task_labels,
             {0.01, 0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600});
    m.Define("io_harness_runner_heartbeat_failure_count",
             Metrics::Kind::kCounter, "Heartbeats that failed.",
             {"account_id", "runner_name"});
    m.Define("io_harness_runner_error_count", Metrics::Kind::kCounter,
             "Failed calls to the manager.", {"account_id", "runner_name"});
    m.Define("io_harness_resource_consumption_above_threshold",
             Metrics::Kind::kGauge,
             "1 when the delegate refuses work for lack of resources (never "
             "set: capacity is MAX_STAGES).",
             {"account_id", "runner_name"});
    m.Set("io_harness_resource_consumption_above_threshold",
          RunnerLabels(env_.config), 0);
  }

  // Its stages are cancelled and waited for (group_ goes first).
  ~HarnessConnection() override { Drain(); }

  absl::Status Run() override;
  // A second Drain stops waiting for the open stages: they are cancelled
  // and cleaned up, and the delegate unregisters.
  void Drain() override {
    {
      std::lock_guard lock(mu_);
      if (draining_) forced_ = true;
      draining_ = true;
    }
    cv_.notify_all();
  }
  // Not while draining: a readiness probe should stop routing to it.
  bool Ready() const override {
    return !Draining() && registrar_.InGoodStanding();
  }

 private:
  // The scheduler's side of one stage: its lines go to the log stream of
  // the task running for it, and its end is logged.
  class StageObserverImpl final : public StageObserver {
   public:
    StageObserverImpl(HarnessConnection& connection, std::string key)
        : router(connection.env_.console),
          log_(connection.env_.log),
          key_(std::move(key)) {}
    void Append(const LogLine& line) override { router.Append(line); }
    void Done(const StageResult& result) override {
      log_.Info("stage ended", {{"stage", key_},
                                {"status", StepStatusName(result.status)},
                                {"error", result.error}});
    }
    StageLogRouter router;

   private:
    EventLog& log_;
    const std::string key_;
  };
  struct Transaction {
    std::string scheduler_id;
    std::shared_ptr<StageFeed> feed;
    std::vector<HostDir> dirs;
    std::shared_ptr<StageObserverImpl> observer;
  };
  struct Answer {
    std::string type;
    bool ok = true;
    std::string error;
    std::string data_json;
  };

  LabelValues TaskLabels(const std::string& type) const {
    return {env_.config.account_id, type, env_.config.name};
  }
  // Stages still open on this delegate. One that ended here without a
  // local_cleanup (init failed, cancelled, timed out, idle) no longer counts;
  // its entry stays so that a late cleanup still removes its directories.
  size_t OpenStagesLocked() const {
    size_t open = 0;
    for (const auto& [key, txn] : transactions_) open += !txn.feed->ended();
    return open;
  }
  void CancelOpenStages(std::string_view why) {
    std::vector<std::pair<std::string, std::string>> open;
    {
      std::lock_guard lock(mu_);
      for (const auto& [key, txn] : transactions_) {
        if (!txn.feed->ended()) open.emplace_back(key, txn.scheduler_id);
      }
    }
    for (const auto& [key, id] : open) {
      env_.log.Warn("cancelling a stage", {{"stage", key}, {"why", why}});
      (void)group_.Cancel(id);
    }
  }
  bool Draining() const {
    std::lock_guard lock(mu_);
    return draining_;
  }

  void WorkerLoop();
  void Handle(const RunnerEvent& event);
  Answer Route(TaskRequest& request);
  Answer HandleInit(const TaskRequest& request, const std::string& data,
                    const std::vector<std::string>& masks);
  Answer HandleExecute(const TaskRequest& request, const std::string& data,
                       const std::vector<std::string>& masks);
  Answer HandleCleanup(const TaskRequest& request, const std::string& data);
  void SendAnswer(const std::string& task_id, const std::string& body);
  std::shared_ptr<LogServiceStream> OpenLog(const TaskLogger& logger) {
    if (logger.address.empty()) return nullptr;
    return logs_->Open(logger);
  }

  ManagerEnvironment env_;
  const SecretString token_;
  const std::string manager_url_;
  // One idle connection per worker, so that busy workers do not reconnect.
  http::HttpClient http_{
      static_cast<size_t>(std::max(32, env_.config.parallel_workers + 8))};
  std::unique_ptr<HarnessClient> client_;
  std::unique_ptr<LogService> logs_;
  Registrar registrar_{env_.config, env_.log, env_.metrics};
  AnswerCache answers_{env_.clock,
                       AnswerCache::ResendAfter(env_.config.poll_interval)};

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool draining_ = false;                            // guarded by mu_
  bool forced_ = false;                              // guarded by mu_
  bool stop_threads_ = false;                        // guarded by mu_
  std::deque<RunnerEvent> work_;                     // guarded by mu_
  std::map<std::string, bool> in_flight_;            // task ids; guarded by mu_
  std::map<std::string, Transaction> transactions_;  // guarded by mu_
  uint64_t next_stage_ = 0;                          // guarded by mu_
  int busy_workers_ = 0;                             // guarded by mu_
  // Last: destroyed first, it cancels and waits for the stages, whose
  // observers use the event log.
  StageGroup group_{env_.scheduler};
};

absl::Status HarnessConnection::Run() {
  absl::StatusOr<Transport> transport = TransportFromConfig(env_.config);
  if (!transport.ok()) return transport.status();
  client_ =
      std::make_unique<HarnessClient>(manager_url_, env_.config.account_id,
                                      token_, *transport, http_, env_.clock);
  logs_ = std::make_unique<LogService>(http_, *transport, env_.log);

  env_.log.Info("connecting", {{"manager", manager_url_},
                               {"account_id", env_.config.account_id},
                               {"name", env_.config.name}});
  if (absl::Status s =
          registrar_.Register(*client_, [this] { return Draining(); });
      !s.ok()) {
    if (absl::IsCancelled(s)) {
      env_.log.Info("stopped before connecting");
      return absl::OkStatus();
    }
    env_.log.Error("cannot connect", {{"error", s.message()}});
    return s;
  }
  env_.log.Info("connected", {{"delegate_id", registrar_.delegate_id()},
                              {"manager", manager_url_},
                              {"name", env_.config.name},
                              {"tags", absl::StrJoin(env_.config.tags, ",")}});

  std::thread heartbeat([this] {
    registrar_.HeartbeatLoop(
        *client_, [this] { return Draining(); },
        // Cancelled so that they are cleaned up now, not after the idle
        // timeout.
        [this] { CancelOpenStages("the manager lost them"); });
  });
  std::vector<std::thread> workers;
  const int worker_count = std::max(1, env_.config.parallel_workers);
  for (int i = 0; i < worker_count; ++i) {
    workers.emplace_back([this] { WorkerLoop(); });
  }

  // The poll loop. While draining it goes on polling for the steps and
  // cleanups of open stages, and leaves new stages to other delegates.
  int failures = 0;
  absl::Time idle_since = absl::InfiniteFuture();
  bool drain_logged = false;
  while (true) {
    bool draining;
    {
      std::lock_guard lock(mu_);
      draining = draining_;
    }
    if (draining) {
      if (!drain_logged) {
        drain_logged = true;
        size_t open;
        {
          std::lock_guard lock(mu_);
          open = OpenStagesLocked();
        }
        env_.log.Info("draining: taking no new stages",
                      {{"open_stages", absl::StrCat(open)}});
      }
      bool idle;
      bool forced;
      {
        std::lock_guard lock(mu_);
        forced = forced_;
        idle = OpenStagesLocked() == 0 && in_flight_.empty() && work_.empty();
      }
      if (forced) {
        env_.log.Warn("drain cut short: cancelling the open stages");
        break;
      }
      if (!idle) {
        idle_since = absl::InfiniteFuture();
      } else if (idle_since == absl::InfiniteFuture()) {
        idle_since = absl::Now();
        if (env_.config.idle_wait_before_stop > absl::ZeroDuration()) {
          env_.log.Info("idle; waiting before stopping",
                        {{"wait", absl::FormatDuration(
                                      env_.config.idle_wait_before_stop)}});
        }
      }
      if (idle &&
          absl::Now() - idle_since >= env_.config.idle_wait_before_stop) {
        break;
      }
    }
    // The id may change when the heartbeat had to register again.
    absl::StatusOr<std::vector<RunnerEvent>> events =
        client_->PollEvents(registrar_.delegate_id());
    absl::Duration wait = env_.config.poll_interval;
    if (!events.ok()) {
      ++failures;
      env_.metrics.Add("io_harness_runner_error_count",
                       RunnerLabels(env_.config));
      // Back off while the manager is unreachable, up to 30 s, and say so
      // once per outage rather than every poll.
      wait = std::min(absl::Seconds(30),
                      env_.config.poll_interval * (1 << std::min(failures, 5)));
      if (failures == 1 || failures % 20 == 0) {
        env_.log.Warn("poll failed", {{"error", events.status().message()},
                                      {"failures", absl::StrCat(failures)}});
      }
    } else {
      if (failures > 0) {
        env_.log.Info("poll recovered", {{"failures", absl::StrCat(failures)}});
      }
      failures = 0;
      for (const RunnerEvent& event : *events) {
        std::unique_lock lock(mu_);
        if (in_flight_.count(event.task_id)) continue;
        // A task answered before is queued too: its worker sends the
        // recorded answer again (Handle), without blocking the poll. Listed
        // again right after its answer went out, it is left alone: the
        // manager has not caught up yet.
        const AnswerCache::Listing listing = answers_.Classify(event.task_id);
        if (listing == AnswerCache::Listing::kJustAnswered) continue;
        if (listing == AnswerCache::Listing::kNew && draining_ &&
            event.task_type == "local_init") {
          continue;
        }
        // Back-pressure: with every worker busy, wait rather than fetch.
        cv_.wait(lock, [&] {
          return stop_threads_ || work_.size() + busy_workers_ <
                                      static_cast<size_t>(worker_count);
        });
        in_flight_[event.task_id] = true;
        work_.push_back(event);
        cv_.notify_all();
      }
    }
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, absl::ToChronoMilliseconds(wait),
                 [&] { return draining_ != draining; });
  }

  // Open stages (only after a forced drain) are cancelled and cleaned up
  // first: their workers wait for them.
  group_.CancelAll(Scheduler::CancelKind::kShutdown);
  group_.WaitUntilEmpty();
  {
    std::lock_guard lock(mu_);
    stop_threads_ = true;
  }
  cv_.notify_all();
  registrar_.Stop();
  for (std::thread& t : workers) t.join();
  heartbeat.join();

  RetryPolicy policy;
  absl::Status bye =
      Retry(policy, [&] { return client_->Unregister(registrar_.Info()); }, {});
  if (bye.ok()) {
    env_.log.Info("unregistered", {{"delegate_id", registrar_.delegate_id()}});
  } else {
    env_.log.Warn("unregister failed", {{"error", bye.message()}});
  }
  return absl::OkStatus();
}

void HarnessConnection::WorkerLoop() {
  std::unique_lock lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stop_threads_ || !work_.empty(); });
    if (work_.empty()) return;
    RunnerEvent event = std::move(work_.front());
    work_.pop_front();
    ++busy_workers_;
    lock.unlock();
    Handle(event);
    lock.lock();
    --busy_workers_;
    in_flight_.erase(event.task_id);
    cv_.notify_all();
  }
}

void HarnessConnection::Handle(const RunnerEvent& event) {
  // Delivered again after it was answered: the manager may have lost the
  // answer. Send it again rather than run the task twice.
  if (std::optional<std::string> body = answers_.Find(event.task_id)) {
    SendAnswer(event.task_id, *body);
    return;
  }
  const std::string delegate_id = registrar_.delegate_id();
  std::vector<TaskRequest> requests;
  RetryPolicy policy;
  absl::Status fetched =
      Retry(policy,
            [&] {
              absl::StatusOr<std::vector<TaskRequest>> got = client_->Acquire(
                  event.task_id, delegate_id, env_.config.name);
              if (!got.ok()) return got.status();
              requests = *std::move(got);
              return absl::OkStatus();
            },
            {});
  if (absl::IsInvalidArgument(fetched)) {
    // The payload itself is unusable: fetching it again would not help, so
    // answer FAILED (with the event's type) rather than leave it to be
    // delivered on every poll.
    env_.metrics.Add("io_harness_task_failed_total",
                     TaskLabels(event.task_type));
    const std::string error =
        absl::StrCat("the task's payload is not usable: ", fetched.message());
    env_.log.Warn("task failed", {{"task_id", event.task_id},
                                  {"type", event.task_type},
                                  {"error", error}});
    SendAnswer(event.task_id, TaskResponseBody(event.task_id, event.task_type,
                                               false, error, ""));
    return;
  }
  if (!fetched.ok()) {
    env_.metrics.Add("io_harness_runner_error_count",
                     RunnerLabels(env_.config));
    env_.log.Warn("fetching the task failed; it stays with the manager",
                  {{"task_id", event.task_id}, {"error", fetched.message()}});
    return;
  }
  for (TaskRequest& request : requests) {
    request.task.id = event.task_id;  // as the runner does (§5.2)
    const absl::Time start = absl::Now();
    const std::string type = request.task.type;
    env_.metrics.Add("io_harness_tasks_currently_executing", TaskLabels(type),
                     1);
    Answer answer = Route(request);
    env_.metrics.Add("io_harness_tasks_currently_executing", TaskLabels(type),
                     -1);
    env_.metrics.Observe("io_harness_task_execution_time", TaskLabels(type),
                         absl::ToDoubleSeconds(absl::Now() - start));
    const bool step_timeout =
        answer.data_json.find("\"command_execution_status\":\"TIMEOUT\"") !=
        std::string::npos;
    const bool step_failed =
        answer.data_json.find("\"command_execution_status\":\"FAILURE\"") !=
        std::string::npos;
    if (step_timeout) {
      env_.metrics.Add("io_harness_task_timeout_total", TaskLabels(type));
    }
    env_.metrics.Add(answer.ok && !step_failed && !step_timeout
                         ? "io_harness_task_completed_total"
                         : "io_harness_task_failed_total",
                     TaskLabels(type));
    if (!answer.ok) {
      env_.log.Warn("task failed", {{"task_id", event.task_id},
                                    {"type", type},
                                    {"error", answer.error}});
    }
    SendAnswer(event.task_id, TaskResponseBody(event.task_id, type, answer.ok,
                                               answer.error, answer.data_json));
  }
}

void HarnessConnection::SendAnswer(const std::string& task_id,
                                   const std::string& body) {
  answers_.Record(task_id, body);
  RetryPolicy policy;
  policy.max_elapsed = absl::Minutes(10);
  const std::string delegate_id = registrar_.delegate_id();
  absl::Status s = Retry(
      policy, [&] { return client_->SendResponse(task_id, delegate_id, body); },
      [this] {
        std::lock_guard lock(mu_);
        return forced_;
      },
      [&](const absl::Status& error, absl::Duration) {
        env_.metrics.Add("io_harness_runner_error_count",
                         RunnerLabels(env_.config));
        env_.log.Warn("sending the task response failed; retrying",
                      {{"task_id", task_id}, {"error", error.message()}});
      });
  if (!s.ok()) {
    env_.log.Error(
        "task response not delivered; it is sent again if the "
        "manager delivers the task again",
        {{"task_id", task_id}, {"error", s.message()}});
    return;
  }
  answers_.Accepted(task_id);
}

HarnessConnection::Answer HarnessConnection::Route(TaskRequest& request) {
  Answer answer;
  answer.type = request.task.type;
  std::vector<std::string> masks = request.task.logger.masks;
  absl::StatusOr<std::map<std::string, std::string>> secrets =
      ResolveRequestSecrets(request);
  if (!secrets.ok()) {
    answer.ok = false;
    answer.error = std::string(secrets.status().message());
    return answer;
  }
  for (const auto& [id, value] : *secrets) masks.push_back(value);
  absl::StatusOr<std::string> data =
      SubstituteSecrets(request.task.data_json, *secrets);
  if (!data.ok()) {
    answer.ok = false;
    answer.error = std::string(data.status().message());
    return answer;
  }
  const std::string& type = request.task.type;
  if (type == "local_init") {
    answer = HandleInit(request, *data, masks);
  } else if (type == "local_execute") {
    answer = HandleExecute(request, *data, masks);
  } else if (type == "local_cleanup") {
    answer = HandleCleanup(request, *data);
  } else if (type == "secret/static") {
    absl::StatusOr<std::string> value = StaticSecretResponseData(request.task);
    if (value.ok()) {
      answer.data_json = *value;
    } else {
      answer.ok = false;
      answer.error = std::string(value.status().message());
    }
  } else {
    answer.ok = false;
    answer.error = absl::StrCat("task type '", type,
                                "' is not supported by this delegate; it runs ",
                                kSupportedTypes);
  }
  answer.type = type;
  if (!masks.empty()) {
    logs::SecretMasker masker(masks);
    answer.error = masker.Mask(answer.error);
    // A secret task's answer is the secret: the manager asked for it.
    if (type != "secret/static")
      answer.data_json = masker.Mask(answer.data_json);
  }
  return answer;
}

HarnessConnection::Answer HarnessConnection::HandleInit(
    const TaskRequest& request, const std::string& data,
    const std::vector<std::string>& masks) {
  Answer answer;
  const std::string delegate_id = registrar_.delegate_id();
  absl::StatusOr<InitPayload> p = ParseInitPayload(data);
  if (!p.ok()) {
    answer.ok = false;
    answer.error = std::string(p.status().message());
    answer.data_json = InitResponseData(false, answer.error, delegate_id);
    return answer;
  }
  {
    std::lock_guard lock(mu_);
    if (draining_) {
      answer.ok = false;
      answer.error = "the delegate is shutting down and takes no new stages";
      answer.data_json = InitResponseData(false, answer.error, delegate_id);
      return answer;
    }
    auto it = transactions_.find(p->transaction_key);
    if (it != transactions_.end() && !it->second.feed->ended()) {
      // The same stage initialized again (a retried init): it is ready.
      answer.data_json = InitResponseData(true, "", delegate_id);
      return answer;
    }
  }
  Stage stage = p->stage;
  for (size_t i = 0; i < masks.size(); ++i) {
    stage.secrets[absl::StrCat("__task_secret_", i)] = masks[i];
  }
  auto initialized = std::make_shared<std::promise<absl::Status>>();
  std::future<absl::Status> init_done = initialized->get_future();
  auto feed = std::make_shared<StageFeed>(
      [initialized](const absl::Status& s) { initialized->set_value(s); });
  const std::string key = p->transaction_key;
  auto observer = std::make_shared<StageObserverImpl>(*this, key);
  StageTask task;
  {
    std::lock_guard lock(mu_);
    // Checked again: two init tasks of one stage may have got this far at
    // once, and only one may open it.
    auto it = transactions_.find(p->transaction_key);
    if (it != transactions_.end() && !it->second.feed->ended()) {
      answer.data_json = InitResponseData(true, "", delegate_id);
      return answer;
    }
    task.id = absl::StrCat(p->transaction_key, "#", ++next_stage_);
    transactions_[p->transaction_key] = {task.id, feed, p->host_dirs, observer};
  }
  const std::string task_id = task.id;
  task.stage = std::move(stage);
  task.feed = feed;
  task.observer = observer;
  std::shared_ptr<LogServiceStream> log = OpenLog(request.task.logger);
  if (log) observer->router.Route("", log);
  // Submit checks the stage (secrets, policy, the executor) before anything
  // of it exists: a refused stage gets no directories either. They are
  // needed by the steps only, which come after this task's answer.
  absl::Status s = group_.Submit(std::move(task));
  std::string refused;
  if (!s.ok()) {
    refused = absl::StrCat("local_init: ", s.message());
  } else if (absl::Status made = MakeHostDirs(p->host_dirs); !made.ok()) {
    refused = absl::StrCat("local_init: ", made.message());
    (void)group_.Cancel(task_id);
    (void)init_done.get();  // the stage ends without running a step
  }
  if (!refused.empty()) {
    std::lock_guard lock(mu_);
    auto it = transactions_.find(key);
    if (it != transactions_.end() && it->second.feed == feed) {
      transactions_.erase(it);
    }
    answer.error = refused;
    answer.data_json = InitResponseData(false, answer.error, delegate_id);
    if (log) {
      observer->router.Unroute("");
      log->Close();
    }
    return answer;
  }
  s = init_done.get();
  if (log) {
    observer->router.Unroute("");
    log->Close();
  }
  env_.log.Info(s.ok() ? "stage initialized" : "stage initialize failed",
                {{"stage", key}, {"error", s.message()}});
  // Like lite-engine: a failed setup is an OK task whose body says FAILURE.
  answer.error = s.ok() ? "" : std::string(s.message());
  answer.data_json = InitResponseData(s.ok(), answer.error, delegate_id);
  return answer;
}

HarnessConnection::Answer HarnessConnection::HandleExecute(
    const TaskRequest& request, const std::string& data,
    const std::vector<std::string>& masks) {
  Answer answer;
  absl::StatusOr<ExecutePayload> p = ParseExecutePayload(data);
  if (!p.ok()) {
    answer.ok = false;
    answer.error = std::string(p.status().message());
    return answer;
  }
  std::shared_ptr<StageFeed> feed;
  std::shared_ptr<StageObserverImpl> observer;
  {
    std::lock_guard lock(mu_);
    auto it = transactions_.find(p->transaction_key);
    if (it != transactions_.end()) {
      feed = it->second.feed;
      observer = it->second.observer;
    }
  }
  StepResult failed;
  failed.id = p->step.id;
  failed.status = StepStatus::kFailure;
  if (!feed) {
    answer.ok = false;
    answer.error = absl::StrCat(
        "stage ", p->transaction_key,
        " is not open on this delegate: its local_init must run here first");
    failed.error = answer.error;
    answer.data_json = ExecutionResponseData(failed);
    return answer;
  }
  std::vector<std::string> step_masks = p->masks;
  step_masks.insert(step_masks.end(), masks.begin(), masks.end());
  std::shared_ptr<LogServiceStream> log = OpenLog(request.task.logger);
  if (log) observer->router.Route(p->step.id, log);
  auto promise = std::make_shared<std::promise<StepResult>>();
  std::future<StepResult> done = promise->get_future();
  const std::string step_id = p->step.id;
  absl::Status pushed =
      feed->Push(std::move(p->step), std::move(step_masks),
                 [promise](const StepResult& r) { promise->set_value(r); });
  StepResult r;
  if (pushed.ok()) {
    r = done.get();
  } else {
    r = failed;
    r.error =
        absl::StrCat("stage ", p->transaction_key, ": ", pushed.message());
  }
  if (log) {
    observer->router.Unroute(step_id);
    log->Close();
  }
  answer.data_json = ExecutionResponseData(r);
  return answer;
}

HarnessConnection::Answer HarnessConnection::HandleCleanup(
    const TaskRequest& request, const std::string& data) {
  Answer answer;
  absl::StatusOr<CleanupPayload> p = ParseCleanupPayload(data);
  if (!p.ok()) {
    answer.ok = false;
    answer.error = std::string(p.status().message());
    answer.data_json = CleanupResponseData(false, answer.error);
    return answer;
  }
  std::optional<Transaction> txn;
  {
    std::lock_guard lock(mu_);
    auto it = transactions_.find(p->transaction_key);
    if (it != transactions_.end()) txn = it->second;
  }
  std::vector<std::string> problems;
  // Only directories this stage's local_init declared are removed: a
  // cleanup payload cannot make the delegate delete other host paths.
  std::vector<std::string> remove;
  if (txn) {
    std::shared_ptr<LogServiceStream> log = OpenLog(request.task.logger);
    if (log) txn->observer->router.Route("", log);
    auto promise = std::make_shared<std::promise<absl::Status>>();
    std::future<absl::Status> cleaned = promise->get_future();
    txn->feed->Close(
        [promise](const absl::Status& s) { promise->set_value(s); });
    absl::Status s = cleaned.get();
    if (log) {
      txn->observer->router.Unroute("");
      log->Close();
    }
    if (!s.ok()) problems.push_back(std::string(s.message()));
    for (const HostDir& dir : txn->dirs) {
      const bool listed = std::find(p->host_paths.begin(), p->host_paths.end(),
                                    dir.path) != p->host_paths.end();
      if (dir.remove || listed) remove.push_back(dir.path);
    }
    std::lock_guard lock(mu_);
    auto it = transactions_.find(p->transaction_key);
    if (it != transactions_.end() && it->second.feed == txn->feed) {
      transactions_.erase(it);
    }
  }
  if (!txn && !p->host_paths.empty()) {
    env_.log.Warn(
        "cleanup of a stage this delegate does not know: its host "
        "directories are left in place",
        {{"stage", p->transaction_key},
         {"paths", absl::StrJoin(p->host_paths, ",")}});
  }
  std::sort(remove.begin(), remove.end());
  remove.erase(std::unique(remove.begin(), remove.end()), remove.end());
  for (const std::string& path : remove) {
    if (absl::Status s = RemoveHostDir(path); !s.ok()) {
      problems.push_back(std::string(s.message()));
    }
  }
  cv_.notify_all();  // the drain waits for open stages
  answer.error = absl::StrJoin(problems, "; ");
  answer.data_json = CleanupResponseData(problems.empty(), answer.error);
  return answer;
}

}  // namespace
}  // namespace harness

absl::Status RegisterHarnessManager(ManagerRegistry& registry) {
  return registry.Register(
      "harness",
      [](ManagerEnvironment env)
          -> absl::StatusOr<std::unique_ptr<ManagerConnection>> {
        absl::StatusOr<SecretString> token =
            harness::NormalizeDelegateToken(env.config.token);
        if (!token.ok()) return token.status();
        std::string url =
            env.address.empty() ? env.config.manager_url : env.address;
        if (url.empty()) {
          return absl::InvalidArgumentError(
              "HARNESS_URL: set it to the Harness manager URL, like "
              "https://app.harness.io");
        }
        if (env.config.account_id.empty()) {
          return absl::InvalidArgumentError(
              "HARNESS_ACCOUNT_ID: set it to the account id from Harness");
        }
        return std::unique_ptr<ManagerConnection>(
            new harness::HarnessConnection(std::move(env), *std::move(token),
                                           std::move(url)));
      });
}

}  // namespace delegate

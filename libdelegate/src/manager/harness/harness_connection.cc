// The Harness Delegate 3.x runner loop: register, heartbeat every 10 s, poll
// runner-events, fetch each task once, route it (local_init, local_execute,
// local_cleanup into the scheduler as one fed stage per transaction;
// secret/static), answer task-response, and drain on request. The parts it
// drives live beside it: registrar.h (registration and heartbeat),
// stage_transactions.h (the local stages), answer_cache.h (answers kept for
// re-deliveries).
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "delegate/harness.h"
#include "delegate/scheduler.h"
#include "logs/masker.h"
#include "manager/harness/answer_cache.h"
#include "manager/harness/harness_client.h"
#include "manager/harness/local_payloads.h"
#include "manager/harness/log_stream.h"
#include "manager/harness/payloads.h"
#include "manager/harness/registrar.h"
#include "manager/harness/sealed.h"
#include "manager/harness/stage_transactions.h"
#include "manager/harness/task_journal.h"
#include "manager/harness/token.h"
#include "util/url.h"

namespace delegate {
namespace harness {
namespace {

// How long a task worker waits for a task before it stops.
constexpr absl::Duration kIdleWorkerLifetime = absl::Seconds(60);

constexpr const char* kSupportedTypes =
    "local_init, local_execute, local_cleanup, secret/static";

// The key task payloads are sealed under in the journal: without the
// delegate's token they cannot be read.
constexpr const char* kJournalSealPurpose = "libdelegate harness journal v1";

// What the journal records of a local_* task's payload: the transaction
// key and (local_execute) the step id; empty when not one, or unusable.
struct StageRef {
  std::string key;
  std::string step_id;
};
StageRef StageRefOf(const std::string& type, const std::string& data) {
  if (type == "local_init") {
    if (auto p = ParseInitPayload(data); p.ok()) {
      return {p->transaction_key, ""};
    }
  } else if (type == "local_execute") {
    if (auto p = ParseExecutePayload(data); p.ok()) {
      return {p->transaction_key, p->step_id};
    }
  } else if (type == "local_cleanup") {
    if (auto p = ParseCleanupPayload(data); p.ok()) {
      return {p->transaction_key, ""};
    }
  }
  return {};
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

  // Its stages are cancelled and waited for (stages_ goes first).
  ~HarnessConnection() override { Drain(); }

  absl::Status Run() override;
  std::vector<std::string> StagesToResume() override;
  // A second Drain stops waiting for the open stages: they are cancelled
  // and cleaned up, and the delegate unregisters.
  void Drain() override {
    {
      absl::MutexLock lock(&mu_);
      if (draining_) forced_ = true;
      draining_ = true;
    }
    stages_.RefuseNewStages();
  }
  // Not while draining: a readiness probe should stop routing to it.
  bool Ready() const override {
    return !Draining() && registrar_.InGoodStanding();
  }

 private:
  LabelValues TaskLabels(const std::string& type) const {
    return {env_.config.account_id, type, env_.config.name};
  }
  bool Draining() const {
    absl::MutexLock lock(&mu_);
    return draining_;
  }

  // A task worker more; joins the workers that retired.
  void SpawnWorkerLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void JoinExitedWorkers() ABSL_LOCKS_EXCLUDED(mu_);
  void WorkerLoop() ABSL_LOCKS_EXCLUDED(mu_);
  void Handle(const RunnerEvent& event);
  // A task's data with its secrets substituted, and the values to mask.
  struct Resolved {
    std::string data;
    std::vector<std::string> masks;
  };
  absl::StatusOr<Resolved> Resolve(TaskRequest& request);
  // `reattach`: a local_execute an earlier process was running, whose log
  // stream had taken `skip_output_lines` lines of its output.
  TaskAnswer Route(TaskRequest& request, bool reattach = false,
                   uint64_t skip_output_lines = 0);
  // The log stream `logger` names; a running task's tells the journal how
  // far its output got.
  std::shared_ptr<LogServiceStream> OpenLog(const TaskLogger& logger,
                                            bool existing);
  // A task's journal payload: the acquire response, sealed.
  absl::StatusOr<TaskRequest> Unseal(const std::string& task_id,
                                     const std::string& sealed) const;
  void SendAnswer(const std::string& task_id, const std::string& body);
  // Opens the task journal (when the program holds an instance lease).
  absl::Status OpenJournal();
  // The answers an earlier process of this instance left to give: the tasks
  // it was running (FAILED, naming the step), recorded now so that a task
  // delivered again is answered rather than run, and the answers the
  // manager had not taken. (task id, body) each.
  std::vector<std::pair<std::string, std::string>> AnswersTheLastRunLeft(
      const std::set<std::string>& reattaching);
  // Resumes the stages an earlier process of this instance had open
  // (StagesToResume found them), and returns the steps to re-attach: the
  // interrupted local_execute tasks of those that resumed.
  struct Reattach {
    TaskRequest request;
    uint64_t log_lines = 0;  // of its output its log stream had taken
  };
  std::vector<Reattach> ResumeStages();
  // Runs a re-attached step to its end and answers its task.
  void RunReattached(Reattach step);

  // An open stage of an earlier process, its init as that process ran it.
  struct Resumable {
    std::string key;
    std::string init_task_id;
    TaskRequest init;
  };

  ManagerEnvironment env_;
  const SecretString token_;
  const std::string manager_url_;
  // One idle connection per worker, so that busy workers do not reconnect.
  http::HttpClient http_{
      static_cast<size_t>(std::max(32, env_.config.parallel_workers + 8))};
  // Set by Run before any other thread starts.
  std::unique_ptr<HarnessClient> client_;
  std::unique_ptr<LogService> logs_;
  // Set by Run before any other thread starts; null without a state
  // directory of this instance's own.
  // Shared with the log streams' callbacks, which the log service's
  // flusher may call after the connection is gone.
  std::shared_ptr<TaskJournal> journal_;
  bool journal_opened_ = false;  // OpenJournal ran
  absl::Status journal_status_;  // what it said
  const SealKey seal_ = SealKey::Derive(token_.reveal(), kJournalSealPurpose);
  // Found by StagesToResume; Run resumes them.
  std::vector<Resumable> resumable_;
  // Threads of re-attached steps; joined by Run.
  std::vector<std::thread> reattached_;
  // The running local_execute tasks by the key of their log stream.
  absl::Mutex log_tasks_mu_;
  std::map<std::string, std::string> log_tasks_ ABSL_GUARDED_BY(log_tasks_mu_);
  Registrar registrar_{env_.config, env_.log, env_.metrics};
  AnswerCache answers_{env_.clock,
                       AnswerCache::ResendAfter(env_.config.poll_interval)};

  // Taken before the locks of stages_ and answers_.
  mutable absl::Mutex mu_;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool forced_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_threads_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<RunnerEvent> work_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, bool> in_flight_ ABSL_GUARDED_BY(mu_);  // task ids
  int busy_workers_ ABSL_GUARDED_BY(mu_) = 0;
  int idle_workers_ ABSL_GUARDED_BY(mu_) = 0;
  // The task workers by thread id, and those that retired, to join.
  std::map<std::thread::id, std::thread> workers_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> exited_workers_ ABSL_GUARDED_BY(mu_);
  // Stages abandoned when the manager forgot the delegate; joined by Run.
  std::vector<std::thread> abandoning_ ABSL_GUARDED_BY(mu_);
  // Last: destroyed first, it cancels and waits for the stages, whose
  // observers use the event log and the log service.
  StageTransactions stages_{env_.scheduler, env_.log, env_.console,
                            [this](const TaskLogger& logger, bool existing) {
                              return OpenLog(logger, existing);
                            }};
};

absl::Status HarnessConnection::Run() {
  absl::StatusOr<Transport> transport = TransportFromConfig(env_.config);
  if (!transport.ok()) return transport.status();
  client_ =
      std::make_unique<HarnessClient>(manager_url_, env_.config.account_id,
                                      token_, *transport, http_, env_.clock);
  logs_ = std::make_unique<LogService>(http_, *transport, env_.log);
  if (absl::Status s = OpenJournal(); !s.ok()) return s;
  // The same delegate to the manager as before the restart: the stages it
  // held there are still its own.
  if (journal_ && !journal_->delegate_id().empty()) {
    registrar_.RememberId(journal_->delegate_id());
  }
  if (journal_) {
    stages_.OnStageClosed(
        [journal = journal_](const std::string& key, const std::string& init) {
          (void)journal->StageClosed(key, init);
        });
  }

  env_.log.Info("connecting", {{"manager", RedactUrl(manager_url_)},
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
                              {"manager", RedactUrl(manager_url_)},
                              {"name", env_.config.name},
                              {"tags", absl::StrJoin(env_.config.tags, ",")}});

  // Heartbeats go on while the stages are resumed.
  std::thread heartbeat([this] {
    registrar_.HeartbeatLoop(
        *client_, [this] { return Draining(); },
        // Cancelled so that they are cleaned up now, not after the idle
        // timeout; on a thread of their own, so that heartbeats go on
        // while the cleanups take their time.
        [this] {
          if (journal_) (void)journal_->Registered(registrar_.delegate_id());
          absl::MutexLock lock(&mu_);
          abandoning_.emplace_back(
              [this] { stages_.AbandonOpen("the manager lost them"); });
        });
  });
  // Before the first poll: a step of a resumed stage may come at once.
  std::vector<Reattach> reattach = ResumeStages();
  if (journal_) {
    if (absl::Status s = journal_->Registered(registrar_.delegate_id());
        !s.ok()) {
      env_.log.Warn("cannot record the delegate id in the journal",
                    {{"error", s.message()}});
    }
  }
  std::set<std::string> reattaching;
  for (const Reattach& r : reattach) reattaching.insert(r.request.task.id);
  std::vector<std::pair<std::string, std::string>> left =
      AnswersTheLastRunLeft(reattaching);
  {
    // A delivery before the answer went out is left alone: it would send
    // the answer twice.
    absl::MutexLock lock(&mu_);
    for (const auto& [task_id, body] : left) in_flight_[task_id] = true;
  }
  std::thread recovery([this, left = std::move(left)] {
    for (const auto& [task_id, body] : left) {
      SendAnswer(task_id, body);
      absl::MutexLock lock(&mu_);
      in_flight_.erase(task_id);
    }
  });
  for (Reattach& r : reattach) {
    {
      absl::MutexLock lock(&mu_);
      // A delivery meanwhile is left alone.
      in_flight_[r.request.task.id] = true;
    }
    reattached_.emplace_back(
        [this, r = std::move(r)]() mutable { RunReattached(std::move(r)); });
  }
  // Workers start when tasks come and stop after a while without one: an
  // idle delegate holds none (PARALLEL_WORKERS is a limit, not a count).
  const int worker_count = std::max(1, env_.config.parallel_workers);

  // The poll loop. While draining it goes on polling for the steps and
  // cleanups of open stages, and leaves new stages to other delegates.
  int failures = 0;
  absl::Time idle_since = absl::InfiniteFuture();
  bool drain_logged = false;
  while (true) {
    const bool draining = Draining();
    if (draining) {
      if (!drain_logged) {
        drain_logged = true;
        env_.log.Info("draining: taking no new stages",
                      {{"open_stages", absl::StrCat(stages_.OpenStages())}});
      }
      bool idle;
      bool forced;
      {
        absl::MutexLock lock(&mu_);
        forced = forced_;
        idle = stages_.OpenStages() == 0 && in_flight_.empty() && work_.empty();
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
        absl::MutexLock lock(&mu_);
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
        auto worker_free = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stop_threads_ || work_.size() + busy_workers_ <
                                      static_cast<size_t>(worker_count);
        };
        mu_.Await(absl::Condition(&worker_free));
        in_flight_[event.task_id] = true;
        work_.push_back(event);
        if (work_.size() > static_cast<size_t>(idle_workers_) &&
            workers_.size() < static_cast<size_t>(worker_count)) {
          SpawnWorkerLocked();
        }
      }
    }
    absl::MutexLock lock(&mu_);
    auto drain_changed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return draining_ != draining;
    };
    mu_.AwaitWithTimeout(absl::Condition(&drain_changed), wait);
  }

  // Open stages (only after a forced drain) are cancelled and cleaned up
  // first: their workers wait for them.
  stages_.Shutdown();
  {
    absl::MutexLock lock(&mu_);
    stop_threads_ = true;
  }
  registrar_.Stop();
  {
    absl::MutexLock lock(&mu_);
    auto all_exited = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return workers_.empty();
    };
    mu_.Await(absl::Condition(&all_exited));
  }
  JoinExitedWorkers();
  heartbeat.join();
  recovery.join();
  for (std::thread& t : reattached_) t.join();
  {
    std::vector<std::thread> abandoning;
    {
      absl::MutexLock lock(&mu_);
      abandoning.swap(abandoning_);
    }
    for (std::thread& t : abandoning) t.join();
  }

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

void HarnessConnection::SpawnWorkerLocked() {
  std::vector<std::thread> exited;
  exited.swap(exited_workers_);
  for (std::thread& t : exited) t.join();  // they hold no lock: quick
  std::thread t([this] { WorkerLoop(); });
  const std::thread::id id = t.get_id();
  workers_.emplace(id, std::move(t));
}

void HarnessConnection::JoinExitedWorkers() {
  std::vector<std::thread> exited;
  {
    absl::MutexLock lock(&mu_);
    exited.swap(exited_workers_);
  }
  for (std::thread& t : exited) t.join();
}

void HarnessConnection::WorkerLoop() {
  mu_.Lock();
  while (true) {
    auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stop_threads_ || !work_.empty();
    };
    ++idle_workers_;
    const bool woken =
        mu_.AwaitWithTimeout(absl::Condition(&has_work), kIdleWorkerLifetime);
    --idle_workers_;
    if (work_.empty()) {
      if (stop_threads_ || !woken) break;
      continue;
    }
    RunnerEvent event = std::move(work_.front());
    work_.pop_front();
    ++busy_workers_;
    mu_.Unlock();
    Handle(event);
    mu_.Lock();
    --busy_workers_;
    in_flight_.erase(event.task_id);
  }
  // Retired: the next spawn, or Run at its end, joins the thread.
  auto self = workers_.find(std::this_thread::get_id());
  exited_workers_.push_back(std::move(self->second));
  workers_.erase(self);
  mu_.Unlock();
}

void HarnessConnection::Handle(const RunnerEvent& event) {
  // Delivered again after it was answered: the manager may have lost the
  // answer. Send it again rather than run the task twice.
  if (std::optional<std::string> body = answers_.Find(event.task_id)) {
    SendAnswer(event.task_id, *body);
    return;
  }
  // Answered by an earlier process of this instance.
  if (journal_) {
    if (std::optional<std::string> body = journal_->AnswerOf(event.task_id)) {
      SendAnswer(event.task_id, *body);
      return;
    }
  }
  const std::string delegate_id = registrar_.delegate_id();
  std::vector<TaskRequest> requests;
  std::string raw;  // the acquire response, for the journal
  RetryPolicy policy;
  absl::Status fetched =
      Retry(policy,
            [&] {
              absl::StatusOr<std::vector<TaskRequest>> got =
                  client_->Acquire(event.task_id, delegate_id, env_.config.name,
                                   journal_ ? &raw : nullptr);
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
    const StageRef ref =
        journal_ ? StageRefOf(type, request.task.data_json) : StageRef{};
    if (journal_) {
      // Recorded before it runs: if the process dies now, the next one
      // answers it. With what a restart needs to resume the stage: the
      // init, and the step that runs. Sealed: the payload holds the task's
      // secrets.
      const bool keep = !ref.key.empty() && requests.size() == 1 &&
                        (type == "local_init" || type == "local_execute");
      absl::Status s =
          journal_->Started(event.task_id, type, ref.step_id, ref.key,
                            keep ? seal_.Seal(raw, event.task_id) : "");
      if (!s.ok()) {
        env_.log.Warn("cannot record the task in the journal",
                      {{"task_id", event.task_id}, {"error", s.message()}});
        if (type == "local_init") {
          // No new stage without a record of it; the open ones go on.
          SendAnswer(event.task_id,
                     TaskResponseBody(
                         event.task_id, type, false,
                         absl::StrCat("this delegate takes no new stages: it "
                                      "cannot record them in its journal (",
                                      s.message(),
                                      "); free space in DELEGATE_STATE_DIR"),
                         ""));
          continue;
        }
      }
    }
    env_.metrics.Add("io_harness_tasks_currently_executing", TaskLabels(type),
                     1);
    TaskAnswer answer = Route(request);
    env_.metrics.Add("io_harness_tasks_currently_executing", TaskLabels(type),
                     -1);
    if (journal_ && answer.opened_stage) {
      // With the answer: once the manager knows the stage is ready, a
      // restart resumes it.
      if (absl::Status s = journal_->StageOpened(ref.key, event.task_id);
          !s.ok()) {
        env_.log.Warn("cannot record the open stage in the journal",
                      {{"stage", ref.key}, {"error", s.message()}});
      }
    }
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
  if (journal_) {
    if (absl::Status s = journal_->Answered(task_id, body); !s.ok()) {
      env_.log.Warn("cannot record the answer in the journal",
                    {{"task_id", task_id}, {"error", s.message()}});
    }
  }
  RetryPolicy policy;
  policy.max_elapsed = absl::Minutes(10);
  const std::string delegate_id = registrar_.delegate_id();
  absl::Status s = Retry(
      policy, [&] { return client_->SendResponse(task_id, delegate_id, body); },
      [this] {
        absl::MutexLock lock(&mu_);
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
  if (journal_) (void)journal_->Delivered(task_id);
}

absl::Status HarnessConnection::OpenJournal() {
  if (journal_opened_) return journal_status_;
  journal_opened_ = true;
  journal_status_ = [&]() -> absl::Status {
    if (env_.config.instance.empty()) return absl::OkStatus();
    const std::string path =
        absl::StrCat(env_.config.StateDir(), "/harness-tasks.journal");
    absl::StatusOr<std::unique_ptr<TaskJournal>> journal =
        TaskJournal::Open(path);
    if (!journal.ok()) {
      env_.log.Error("cannot open the task journal",
                     {{"error", journal.status().message()}});
      return journal.status();
    }
    journal_ = *std::move(journal);
    if (journal_->torn_bytes() > 0) {
      env_.log.Warn(
          "the journal's last record was cut short when the "
          "delegate stopped; it is dropped",
          {{"path", path}, {"bytes", absl::StrCat(journal_->torn_bytes())}});
    }
    return absl::OkStatus();
  }();
  return journal_status_;
}

std::vector<std::string> HarnessConnection::StagesToResume() {
  std::vector<std::string> ids;
  if (!OpenJournal().ok() || !journal_) return ids;
  for (const TaskJournal::OpenStage& open : journal_->open_stages()) {
    absl::StatusOr<TaskRequest> init =
        Unseal(open.init_task_id, open.init_payload);
    if (!init.ok()) {
      env_.log.Warn(
          "cannot resume a stage an earlier run left open; what it made is "
          "removed",
          {{"stage", open.key}, {"error", init.status().message()}});
      (void)journal_->StageClosed(open.key, open.init_task_id);
      continue;
    }
    ids.push_back(absl::StrCat(open.key, "#", open.init_task_id));
    resumable_.push_back({open.key, open.init_task_id, *std::move(init)});
  }
  return ids;
}

absl::StatusOr<TaskRequest> HarnessConnection::Unseal(
    const std::string& task_id, const std::string& sealed) const {
  if (sealed.empty()) {
    return absl::NotFoundError("the journal holds no payload for the task");
  }
  absl::StatusOr<std::string> raw = seal_.Open(sealed, task_id);
  if (!raw.ok()) {
    return absl::DataLossError(absl::StrCat(
        "its payload in the journal does not open: ", raw.status().message(),
        "; was the delegate restarted with another DELEGATE_TOKEN?"));
  }
  absl::StatusOr<std::vector<TaskRequest>> requests =
      ParseAcquireResponse(*raw);
  if (!requests.ok()) return requests.status();
  if (requests->size() != 1) {
    return absl::DataLossError("the journal's payload holds no single task");
  }
  TaskRequest request = std::move(requests->front());
  request.task.id = task_id;  // as when it ran
  return request;
}

std::vector<HarnessConnection::Reattach> HarnessConnection::ResumeStages() {
  std::vector<Reattach> reattach;
  if (!journal_) return reattach;
  // The steps the earlier process was running, by stage.
  std::map<std::string, const TaskJournal::Interrupted*> running;
  for (const TaskJournal::Interrupted& t : journal_->interrupted()) {
    // The first: a stage runs one step at a time, and the steps queued
    // behind it (parallel steps) never started.
    if (t.type == "local_execute" && !t.stage_key.empty()) {
      running.emplace(t.stage_key, &t);
    }
  }
  // A manager that gave this delegate another id than before no longer
  // knows it: no task of those stages will come. They are resumed only to
  // be cleaned up, and the steps they ran answered FAILED.
  const bool forgotten = journal_->delegate_id() != registrar_.delegate_id();
  for (Resumable& stage : resumable_) {
    const absl::Time start = absl::Now();
    absl::StatusOr<Resolved> init = Resolve(stage.init);
    absl::Status resumed =
        init.ok() ? stages_.Resume(init->data, init->masks, stage.init_task_id)
                  : init.status();
    if (!resumed.ok()) {
      env_.log.Warn("cannot resume a stage an earlier run left open",
                    {{"stage", stage.key}, {"error", resumed.message()}});
      (void)journal_->StageClosed(stage.key, stage.init_task_id);
      continue;
    }
    env_.log.Info("resumed a stage an earlier run left open",
                  {{"stage", stage.key},
                   {"took", absl::FormatDuration(absl::Trunc(
                                absl::Now() - start, absl::Milliseconds(1)))}});
    if (forgotten) {
      stages_.Abandon(stage.key,
                      "the manager gave this delegate a new id after its "
                      "restart: it no longer holds the stage");
      continue;
    }
    auto it = running.find(stage.key);
    if (it == running.end()) continue;
    absl::StatusOr<TaskRequest> step =
        Unseal(it->second->task_id, it->second->payload);
    if (!step.ok()) {
      // Answered FAILED with the others (AnswersTheLastRunLeft).
      env_.log.Warn("cannot re-attach the step a stage was running",
                    {{"stage", stage.key},
                     {"task_id", it->second->task_id},
                     {"error", step.status().message()}});
      continue;
    }
    reattach.push_back({*std::move(step), it->second->log_lines});
  }
  resumable_.clear();
  return reattach;
}

void HarnessConnection::RunReattached(Reattach step) {
  TaskRequest& request = step.request;
  const std::string task_id = request.task.id;
  const std::string type = request.task.type;
  env_.log.Info("re-attaching to the step the delegate was running",
                {{"task_id", task_id},
                 {"log_lines_delivered", absl::StrCat(step.log_lines)}});
  TaskAnswer answer = Route(request, /*reattach=*/true, step.log_lines);
  if (!answer.ok) {
    env_.log.Warn(
        "task failed",
        {{"task_id", task_id}, {"type", type}, {"error", answer.error}});
  }
  SendAnswer(task_id, TaskResponseBody(task_id, type, answer.ok, answer.error,
                                       answer.data_json));
  absl::MutexLock lock(&mu_);
  in_flight_.erase(task_id);
}

std::vector<std::pair<std::string, std::string>>
HarnessConnection::AnswersTheLastRunLeft(
    const std::set<std::string>& reattaching) {
  std::vector<std::pair<std::string, std::string>> left;
  if (!journal_) return left;
  for (const TaskJournal::Interrupted& t : journal_->interrupted()) {
    if (reattaching.count(t.task_id)) continue;
    std::string during;
    if (t.type == "local_execute") {
      during = absl::StrCat("step ", t.step_id.empty() ? "?" : t.step_id);
    } else if (t.type == "local_init") {
      during = "the stage's initialization";
    } else if (t.type == "local_cleanup") {
      during = "the stage's cleanup";
    } else {
      during = absl::StrCat("task ", t.type);
    }
    const std::string error =
        absl::StrCat("the delegate restarted during ", during,
                     "; what it ran was stopped and what it made removed");
    env_.log.Warn("answering a task the delegate was running when it stopped",
                  {{"task_id", t.task_id}, {"type", t.type}, {"error", error}});
    env_.metrics.Add("io_harness_task_failed_total", TaskLabels(t.type));
    std::string body = TaskResponseBody(t.task_id, t.type, false, error, "");
    answers_.Record(t.task_id, body);
    (void)journal_->Answered(t.task_id, body);
    left.emplace_back(t.task_id, std::move(body));
  }
  for (const auto& [task_id, body] : journal_->undelivered()) {
    env_.log.Info("sending again an answer the manager had not taken",
                  {{"task_id", task_id}});
    answers_.Record(task_id, body);
    left.emplace_back(task_id, body);
  }
  return left;
}

absl::StatusOr<HarnessConnection::Resolved> HarnessConnection::Resolve(
    TaskRequest& request) {
  Resolved out;
  out.masks = request.task.logger.masks;
  absl::StatusOr<std::map<std::string, std::string>> secrets =
      ResolveRequestSecrets(request);
  if (!secrets.ok()) return secrets.status();
  for (const auto& [id, value] : *secrets) out.masks.push_back(value);
  absl::StatusOr<std::string> data =
      SubstituteSecrets(request.task.data_json, *secrets);
  if (!data.ok()) return data.status();
  out.data = *std::move(data);
  return out;
}

std::shared_ptr<LogServiceStream> HarnessConnection::OpenLog(
    const TaskLogger& logger, bool existing) {
  std::shared_ptr<LogServiceStream> stream = logs_->Open(logger, existing);
  if (!journal_) return stream;
  std::string task_id;
  {
    absl::MutexLock lock(&log_tasks_mu_);
    auto it = log_tasks_.find(logger.key);
    if (it == log_tasks_.end()) return stream;
    task_id = it->second;
  }
  stream->OnOutputHandled([journal = journal_, task_id](uint64_t lines) {
    (void)journal->LogLinesHandled(task_id, lines);
  });
  return stream;
}

TaskAnswer HarnessConnection::Route(TaskRequest& request, bool reattach,
                                    uint64_t skip_output_lines) {
  TaskAnswer answer;
  absl::StatusOr<Resolved> resolved = Resolve(request);
  if (!resolved.ok()) {
    answer.ok = false;
    answer.error = std::string(resolved.status().message());
    return answer;
  }
  const std::string* data = &resolved->data;
  std::vector<std::string>& masks = resolved->masks;
  const std::string& type = request.task.type;
  if (type == "local_init") {
    answer = stages_.Init(request.task.logger, *data, masks,
                          registrar_.delegate_id(), request.task.id);
  } else if (type == "local_execute") {
    const std::string& log_key = request.task.logger.key;
    const bool tracked = journal_ && !log_key.empty();
    if (tracked) {
      absl::MutexLock lock(&log_tasks_mu_);
      log_tasks_[log_key] = request.task.id;
    }
    answer = stages_.Execute(request.task.logger, *data, masks, reattach,
                             skip_output_lines);
    if (tracked) {
      absl::MutexLock lock(&log_tasks_mu_);
      log_tasks_.erase(log_key);
    }
  } else if (type == "local_cleanup") {
    answer = stages_.Cleanup(request.task.logger, *data);
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
  if (!masks.empty()) {
    logs::SecretMasker masker(masks);
    answer.error = masker.Mask(answer.error);
    // A secret task's answer is the secret: the manager asked for it.
    if (type != "secret/static")
      answer.data_json = masker.Mask(answer.data_json);
  }
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

// The delegate's side of DelegateSession (proto/delegate/v1/session.proto):
// `delegate server --manager grpc://HOST:PORT`.
//
// One stream per connection. The thread that called Run reads; a writer
// thread per stream is the only one that writes, and each wake it writes
// everything that is due in one batch (buffer hints, so one flush): pending
// messages (credit, renewals, pongs), then for each stage with news its log
// chunks and its unacknowledged reports. Stage threads (the scheduler's) only
// record what happened under the lock.
//
// What the delegate keeps per stage (StageRun) until the manager has accepted
// the stage's result: the lease, the reports not yet acknowledged, and each
// step's log lines from the manager's last LogAck on. A new stream resends all
// of it (Hello.held_leases, then the reports, then the logs from the acked
// offsets), so nothing is lost or kept twice across a reconnect.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "delegate/manager.h"
#include "delegate/scheduler.h"
#include "delegate/v1/session.grpc.pb.h"
#include "delegate/version.h"
#include "http/tls_config.h"
#include "manager/grpc/convert.h"
#include "manager/grpc/session_batch.h"
#include "stage/result.h"
#include "util/files.h"
#include "util/strings.h"

namespace delegate {
namespace grpcv1 {
namespace {

constexpr uint32_t kProtocolVersion = v1::PROTOCOL_VERSION_1;
// Most lines in one LogChunk.
constexpr size_t kMaxChunkLines = 1000;
// How often leases are looked at (renewals, expiry).
constexpr absl::Duration kLeaseScan = absl::Milliseconds(50);
constexpr absl::Duration kFirstBackoff = absl::Milliseconds(200);
constexpr absl::Duration kMaxBackoff = absl::Seconds(30);
// A manager that does not answer Hello, or does not end the stream after the
// delegate closed its side, is given up on after this.
constexpr absl::Duration kHandshakeTimeout = absl::Seconds(10);
constexpr absl::Duration kCloseTimeout = absl::Seconds(5);
// After a second Drain, results the manager has not acknowledged are given
// up on after this.
constexpr absl::Duration kForcedAckWait = absl::Seconds(5);
// Step reports wait this long before they go out: a stage that ends by then
// sends its result alone (it holds every step's result), so a burst of short
// stages costs one report each, not three.
constexpr absl::Duration kProgressDelay = absl::Milliseconds(10);
// The writer's batching under load (see WriterLoop).
constexpr absl::Duration kBusy = absl::Milliseconds(1);
constexpr absl::Duration kLinger = absl::Microseconds(100);

struct BufferedLine {
  absl::Time time;
  std::string text;
  LogStream stream = LogStream::kStdout;
  bool partial = false;
};

// One step's log (or the stage's own, with an empty step id) from the
// manager's last acknowledgement on.
struct LogBuffer {
  uint64_t base = 0;  // the index of lines.front()
  uint64_t sent = 0;  // lines below this went out on the current stream
  std::deque<BufferedLine> lines;
  bool closed = false;      // the step writes no more
  bool close_sent = false;  // a chunk with `closed` went out on this stream
  uint64_t end() const { return base + lines.size(); }
};

struct Report {
  enum class Kind { kStepStarted, kStepResult, kStageResult };
  Kind kind;
  std::string key;
  v1::DelegateMessage message;
  bool sent = false;  // on the current stream
  absl::Time due;     // not sent before this
};

// A stage the delegate holds a lease for, or still runs after losing it.
struct StageRun {
  std::string stage_id;
  std::string lease_id;
  uint64_t token = 0;
  std::string scheduler_id;  // STAGE_ID#TOKEN: unique per dispatch
  absl::Duration lease_duration;
  absl::Time lease_end;   // by the delegate's clock
  absl::Time next_renew;  // when the next LeaseRenew is due
  bool running = true;    // the scheduler has not called on_done yet
  bool lost = false;      // the lease is gone: nothing more is reported
  bool result_accepted = false;
  bool dirty = false;  // in SessionConnection::dirty_
  std::string cancel_reason;
  std::list<Report> reports;  // not yet acknowledged, in the order made
  std::map<std::string, LogBuffer, std::less<>> logs;  // by step id
};

using RunPtr = std::shared_ptr<StageRun>;
using Stream =
    grpc::ClientReaderWriter<v1::DelegateMessage, v1::ManagerMessage>;

// The target and credentials from a grpc:// or grpcs:// address.
struct Target {
  std::string address;  // HOST:PORT
  std::shared_ptr<grpc::ChannelCredentials> credentials;
};

absl::StatusOr<Target> ParseTarget(const std::string& url,
                                   const DelegateConfig& config) {
  Target target;
  bool tls = false;
  std::string_view rest = url;
  if (rest.starts_with("grpc://")) {
    rest.remove_prefix(7);
  } else if (rest.starts_with("grpcs://")) {
    rest.remove_prefix(8);
    tls = true;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--manager: expected grpc://HOST:PORT or grpcs://HOST:PORT, got '", url,
        "'"));
  }
  while (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  const size_t colon = rest.rfind(':');
  int port = 0;
  if (rest.empty() || colon == std::string_view::npos || colon == 0 ||
      !absl::SimpleAtoi(AbslView(rest.substr(colon + 1)), &port) || port <= 0 ||
      port > 65535 || rest.find('/') != std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--manager: expected grpc://HOST:PORT (a host and a port from 1 to "
        "65535, nothing after them), got '",
        url, "'"));
  }
  target.address = std::string(rest);
  if (!tls) {
    target.credentials = grpc::InsecureChannelCredentials();
    return target;
  }
  absl::StatusOr<http::TlsOptions> tls_files = TlsFromConfig(config);
  if (!tls_files.ok()) return tls_files.status();
  if (tls_files->client_cert.empty() != tls_files->client_key.empty()) {
    return absl::InvalidArgumentError(
        "HARNESS_CLIENT_CERT_FILE and HARNESS_CLIENT_KEY_FILE go together: "
        "set both or neither");
  }
  grpc::SslCredentialsOptions ssl;
  for (const std::string& file : tls_files->extra_ca_files) {
    absl::StatusOr<std::string> pem =
        ReadSettingFile(file, "HARNESS_CERTS_DIR");
    if (!pem.ok()) return pem.status();
    absl::StrAppend(&ssl.pem_root_certs, *pem, "\n");
  }
  if (!tls_files->client_cert.empty()) {
    absl::StatusOr<std::string> cert =
        ReadSettingFile(tls_files->client_cert, "HARNESS_CLIENT_CERT_FILE");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key =
        ReadSettingFile(tls_files->client_key, "HARNESS_CLIENT_KEY_FILE");
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *std::move(cert);
    ssl.pem_private_key = *std::move(key);
  }
  target.credentials = grpc::SslCredentials(ssl);
  return target;
}

std::string ReportKey(const StageRun& run, std::string_view what,
                      std::string_view step_id = {}) {
  return step_id.empty()
             ? absl::StrCat(run.stage_id, "/", run.token, "/", AbslView(what))
             : absl::StrCat(run.stage_id, "/", run.token, "/", AbslView(what),
                            "/", AbslView(step_id));
}

void FillHeader(const StageRun& run, const std::string& key,
                v1::ReportHeader* header) {
  header->set_stage_id(run.stage_id);
  header->set_lease_id(run.lease_id);
  header->set_fencing_token(run.token);
  header->set_idempotency_key(key);
}

class SessionConnection final : public ManagerConnection {
 public:
  SessionConnection(ManagerEnvironment env, Target target)
      : env_(std::move(env)),
        target_(std::move(target)),
        capacity_(static_cast<uint32_t>(std::max(
            1,
            env_.config.max_stages.value_or(env_.config.parallel_workers)))) {
    Metrics& m = env_.metrics;
    m.Define("delegate_session_connected", Metrics::Kind::kGauge,
             "1 while the DelegateSession stream is up.", {"runner_name"});
    m.Define("delegate_session_reconnects_total", Metrics::Kind::kCounter,
             "Streams that ended and were dialled again.", {"runner_name"});
    m.Define("delegate_session_dispatches_total", Metrics::Kind::kCounter,
             "Stages received from the manager.", {"runner_name"});
    m.Define("delegate_session_leases_lost_total", Metrics::Kind::kCounter,
             "Stages stopped because their lease lapsed or was taken back.",
             {"runner_name"});
    m.Set("delegate_session_connected", {env_.config.name}, 0);
  }

  // Its stages are cancelled and waited for (group_ goes first).
  ~SessionConnection() override { Drain(); }

  absl::Status Run() override;

  // A second call cancels the running stages.
  void Drain() override {
    std::vector<std::string> cancels;
    {
      std::lock_guard lock(mu_);
      if (draining_) {
        if (!forced_) forced_at_ = env_.clock.Now();
        forced_ = true;
        for (auto& [id, run] : runs_) {
          if (run->running) cancels.push_back(id);
        }
      }
      draining_ = true;
      Wake();
    }
    Cancel(cancels);
  }

  bool Ready() const override {
    std::lock_guard lock(mu_);
    return connected_ && !draining_;
  }

 private:
  class RunObserver;
  // A line of `run`'s log, from the scheduler.
  void AppendLine(const RunPtr& run, const LogLine& line);
  void CloseLog(const RunPtr& run, std::string_view step_id);
  void StepStarted(const RunPtr& run, const Step& step);
  void StepDone(const RunPtr& run, const StepResult& result);
  void StageDone(const RunPtr& run, const StageResult& done);
  // Cancels this connection's stages and waits for their cleanup.
  void StopStages() {
    group_.CancelAll(Scheduler::CancelKind::kShutdown);
    group_.WaitUntilEmpty();
  }
  // One stream, from Hello to its end. Returns why the session cannot go on
  // (a HelloReject that retrying will not fix), OK otherwise.
  absl::Status Session(bool* established);
  void WriterLoop(Stream* stream, grpc::ClientContext* context);
  // REQUIRES: mu_ held. Appends what is due to `out`.
  void CollectLocked(absl::Time now, std::vector<v1::DelegateMessage>* out);
  void CollectRunLocked(StageRun& run, std::vector<v1::DelegateMessage>* out,
                        absl::Time now);
  // LeaseRenews for the leases due one.
  void RenewalsLocked(absl::Time now, std::vector<v1::DelegateMessage>* out);
  // Lease expiry by the delegate's clock, a quiet manager, a handshake or a
  // close that takes too long: what must happen whatever the stream does.
  void TickerLoop();
  void Handle(const v1::ManagerMessage& message);
  // A dispatched stage as a scheduler task (nullopt: nothing to run; a stage
  // that cannot run is reported so). SubmitDispatched queues a batch of them
  // at once.
  std::optional<StageTask> PrepareDispatch(const v1::Dispatch& dispatch);
  void SubmitDispatched(std::vector<StageTask> tasks);
  // Reports the stage FAILURE without running it (its steps skipped, when
  // `stage` is given).
  void NotRun(const RunPtr& run, std::string why, const Stage* stage = nullptr);
  // REQUIRES: mu_ held.
  void AddReportLocked(const RunPtr& run, Report::Kind kind, std::string key,
                       v1::DelegateMessage message);
  void LoseLocked(const RunPtr& run, std::string_view why,
                  std::vector<std::string>* cancels);
  void MaybeRetireLocked(const RunPtr& run);
  // The manager keeps a step's lines below ack.offset: they are dropped
  // (and resent from there when it keeps fewer than went out). An ack that
  // is not for a current lease's step is ignored.
  void ApplyLogAckLocked(const v1::LogAck& ack);
  // A stage stopped running: its slot goes back to the manager.
  void SlotFreedLocked();
  void MarkDirty(const RunPtr& run) {
    if (!run->dirty) {
      run->dirty = true;
      dirty_.push_back(run);
    }
    Wake();
  }
  void Wake() {
    if (writer_waiting_) cv_.notify_all();
  }
  // Cancels scheduler stages; REQUIRES: mu_ not held (a queued stage's
  // Done runs on this thread).
  void Cancel(const std::vector<std::string>& scheduler_ids) {
    for (const std::string& id : scheduler_ids) (void)group_.Cancel(id);
  }
  bool DrainedLocked() const { return draining_ && runs_.empty(); }
  void Dial() {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    // Each channel gets a unique subchannel pool: a new one really dials.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    stub_ = v1::DelegateSession::NewStub(
        grpc::CreateCustomChannel(target_.address, target_.credentials, args));
  }
  LabelValues Labels() const { return {env_.config.name}; }

  ManagerEnvironment env_;
  const Target target_;
  const uint32_t capacity_;
  std::unique_ptr<v1::DelegateSession::Stub> stub_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool writer_waiting_ = false;  // guarded by mu_
  bool draining_ = false;        // guarded by mu_
  bool forced_ = false;          // guarded by mu_
  bool connected_ = false;       // guarded by mu_
  bool stream_up_ = false;       // guarded by mu_: the writer may write
  bool closing_ = false;         // guarded by mu_: WritesDone was sent
  bool stop_ticker_ = false;     // guarded by mu_
  absl::Time dialled_at_;        // guarded by mu_: when Hello went out
  absl::Time closing_at_;        // guarded by mu_
  absl::Time forced_at_;         // guarded by mu_
  grpc::ClientContext* context_ = nullptr;            // guarded by mu_
  absl::Duration ping_interval_ = absl::Seconds(10);  // guarded by mu_
  absl::Time last_heard_;                             // guarded by mu_
  absl::Time last_sent_;                              // guarded by mu_
  absl::Time next_scan_;                              // guarded by mu_
  absl::Time drained_at_ = absl::InfiniteFuture();    // guarded by mu_
  uint64_t ping_nonce_ = 0;                           // guarded by mu_
  std::string last_error_;  // guarded by mu_: why the last dial failed
  uint32_t credit_ = 0;     // guarded by mu_: slots to grant on this stream
  std::vector<v1::DelegateMessage> outbox_;  // guarded by mu_
  std::vector<RunPtr> dirty_;                // guarded by mu_
  // Runs with step reports that become due, in due order.
  std::deque<std::pair<absl::Time, RunPtr>> delayed_;  // guarded by mu_
  // By scheduler id (STAGE_ID#TOKEN), and the current run of each stage.
  absl::flat_hash_map<std::string, RunPtr> runs_;      // guarded by mu_
  absl::flat_hash_map<std::string, RunPtr> by_stage_;  // guarded by mu_
  absl::flat_hash_map<std::string, RunPtr> by_key_;    // guarded by mu_
  // Last: destroyed first, it cancels and waits for the stages, whose
  // observers use everything above.
  StageGroup group_{env_.scheduler};
};

// The scheduler's side of a dispatched stage: its lines go to the run's
// buffers, its progress and result become reports.
class SessionConnection::RunObserver final : public StageObserver {
 public:
  RunObserver(SessionConnection* connection, RunPtr run)
      : connection_(connection), run_(std::move(run)) {}
  void Append(const LogLine& line) override {
    connection_->AppendLine(run_, line);
  }
  void Close(std::string_view, std::string_view step_id) override {
    connection_->CloseLog(run_, step_id);
  }
  void StepStarted(const Step& step, size_t) override {
    connection_->StepStarted(run_, step);
  }
  void StepDone(const StepResult& result) override {
    connection_->StepDone(run_, result);
  }
  void Done(const StageResult& result) override {
    connection_->StageDone(run_, result);
  }

 private:
  SessionConnection* const connection_;
  const RunPtr run_;
};

absl::Status SessionConnection::Run() {
  Dial();

  env_.log.Info("connecting", {{"manager", env_.address},
                               {"protocol", "delegate.v1.DelegateSession"},
                               {"name", env_.config.name}});
  std::thread ticker([this] { TickerLoop(); });
  struct StopTicker {
    SessionConnection* self;
    std::thread* thread;
    ~StopTicker() {
      {
        std::lock_guard lock(self->mu_);
        self->stop_ticker_ = true;
      }
      self->cv_.notify_all();
      thread->join();
    }
  } stop_ticker{this, &ticker};
  absl::Duration backoff = kFirstBackoff;
  std::mt19937_64 jitter(std::random_device{}());
  bool outage_logged = false;
  while (true) {
    bool established = false;
    absl::Status s = Session(&established);
    if (!s.ok()) {
      env_.log.Error("cannot connect", {{"error", s.message()}});
      StopStages();
      return s;
    }
    std::unique_lock lock(mu_);
    if (closing_ || (DrainedLocked() && !established)) break;
    if (established) {
      backoff = kFirstBackoff;
      outage_logged = false;
      env_.metrics.Add("delegate_session_reconnects_total", Labels());
    } else {
      // The backoff is ours: a fresh channel does not wait out gRPC's own
      // reconnect backoff of the one that failed.
      Dial();
      if (!outage_logged) {
        outage_logged = true;
        env_.log.Warn("manager unreachable; retrying with backoff",
                      {{"manager", env_.address}, {"error", last_error_}});
      }
    }
    // Wait out the backoff; leases still run down meanwhile.
    const absl::Duration wait =
        backoff * (0.5 + std::uniform_real_distribution<>(0, 0.5)(jitter));
    const absl::Time until = env_.clock.Now() + wait;
    while (!DrainedLocked()) {
      const absl::Time now = env_.clock.Now();
      if (now >= until) break;
      cv_.wait_for(
          lock, absl::ToChronoMilliseconds(std::min(until - now, kLeaseScan)));
    }
    if (DrainedLocked()) break;
    backoff = std::min(backoff * 2, kMaxBackoff);
  }
  env_.log.Info("disconnected: drained", {{"manager", env_.address}});
  StopStages();
  return absl::OkStatus();
}

absl::Status SessionConnection::Session(bool* established) {
  grpc::ClientContext context;
  std::unique_ptr<Stream> stream = stub_->Connect(&context);
  v1::DelegateMessage hello_message;
  {
    std::lock_guard lock(mu_);
    context_ = &context;
    dialled_at_ = env_.clock.Now();
    v1::Hello& hello = *hello_message.mutable_hello();
    hello.set_protocol_version(kProtocolVersion);
    hello.set_delegate_name(env_.config.name);
    hello.set_delegate_version(
        absl::StrCat(AbslView(Version()), " (", AbslView(GitCommit()), ")"));
    for (const std::string& name : env_.executors.Names()) {
      hello.add_executors(name);
    }
    for (const std::string& tag : env_.config.tags) hello.add_tags(tag);
    hello.set_max_stages(env_.config.max_stages.value_or(0));
    for (const auto& [id, run] : runs_) {
      if (run->lost) continue;
      v1::HeldLease& held = *hello.add_held_leases();
      held.set_stage_id(run->stage_id);
      held.set_lease_id(run->lease_id);
      held.set_fencing_token(run->token);
      held.set_running(run->running);
    }
  }
  auto end_stream = [&]() {
    {
      std::lock_guard lock(mu_);
      context_ = nullptr;
      connected_ = false;
      stream_up_ = false;
      env_.metrics.Set("delegate_session_connected", Labels(), 0);
    }
    return stream->Finish();
  };

  v1::ManagerMessage first;
  if (!stream->Write(hello_message) || !stream->Read(&first)) {
    grpc::Status status = end_stream();  // unreachable, or not a manager
    std::lock_guard lock(mu_);
    last_error_ = status.error_message();
    return absl::OkStatus();
  }
  if (first.has_hello_reject()) {
    const v1::HelloReject& reject = first.hello_reject();
    context.TryCancel();  // the manager ends it; do not wait on that
    (void)end_stream();
    std::vector<std::string> versions;
    for (uint32_t v : reject.supported_versions()) {
      versions.push_back(absl::StrCat(v));
    }
    const std::string why = absl::StrCat(
        "the manager at ", env_.address, " refused the session (",
        v1::HelloReject::Reason_Name(reject.reason()), "): ", reject.message());
    switch (reject.reason()) {
      case v1::HelloReject::REASON_VERSION_MISMATCH:
        return absl::FailedPreconditionError(absl::StrCat(
            why, "; this delegate speaks DelegateSession protocol version ",
            kProtocolVersion, ", the manager speaks ",
            versions.empty() ? "none it named" : absl::StrJoin(versions, ", "),
            ": upgrade the older side"));
      case v1::HelloReject::REASON_INVALID_HELLO:
        return absl::InvalidArgumentError(why);
      default:  // a duplicate name or a manager that takes no one now: retry
        env_.log.Warn("session refused; retrying", {{"error", why}});
        return absl::OkStatus();
    }
  }
  if (!first.has_hello_ack()) {
    context.TryCancel();
    (void)end_stream();
    env_.log.Warn("the manager's first message was not HelloAck; retrying",
                  {{"manager", env_.address}});
    return absl::OkStatus();
  }

  std::vector<std::string> cancels;
  {
    std::lock_guard lock(mu_);
    const v1::HelloAck& ack = first.hello_ack();
    const absl::Time now = env_.clock.Now();
    absl::StatusOr<absl::Duration> ping =
        DurationFromProto(ack.ping_interval(), "hello_ack.ping_interval");
    ping_interval_ =
        ping.ok() && *ping > absl::ZeroDuration() ? *ping : absl::Seconds(10);
    absl::flat_hash_map<std::string, bool> answered;
    for (const v1::LeaseRenewed& resumed : ack.resumed()) {
      auto it = by_stage_.find(resumed.stage_id());
      if (it == by_stage_.end() ||
          it->second->token != resumed.fencing_token()) {
        continue;
      }
      StageRun& run = *it->second;
      absl::StatusOr<absl::Duration> d =
          DurationFromProto(resumed.lease_duration(), "lease_duration");
      if (d.ok()) run.lease_duration = *d;
      run.lease_end = now + run.lease_duration;
      run.next_renew = now + run.lease_duration / 3;
      answered[run.scheduler_id] = true;
    }
    for (const v1::LeaseLost& lost : ack.lost()) {
      auto it = by_stage_.find(lost.stage_id());
      if (it != by_stage_.end() && it->second->token == lost.fencing_token()) {
        LoseLocked(it->second, lost.message(), &cancels);
      }
    }
    std::vector<RunPtr> unanswered;  // LoseLocked may erase from runs_
    for (auto& [id, run] : runs_) {
      if (!run->lost && !answered.contains(id)) unanswered.push_back(run);
    }
    for (const RunPtr& run : unanswered) {
      LoseLocked(run, "the manager did not resume its lease", &cancels);
    }
    for (auto& [id, run] : runs_) {  // resend what the manager lacks
      if (run->lost) continue;
      for (auto& [step, buf] : run->logs) {
        buf.sent = buf.base;  // log_acks below move it up to what it keeps
        buf.close_sent = false;
      }
      for (Report& r : run->reports) r.sent = false;
      MarkDirty(run);
    }
    for (const v1::LogAck& log_ack : ack.log_acks()) {
      ApplyLogAckLocked(log_ack);
    }
    // A slot is busy while a stage runs, lease or not.
    size_t busy = 0;
    for (const auto& [id, run] : runs_) busy += run->running ? 1 : 0;
    credit_ = draining_ || busy >= capacity_
                  ? 0
                  : static_cast<uint32_t>(capacity_ - busy);
    outbox_.clear();
    connected_ = true;
    stream_up_ = true;
    last_heard_ = now;
    last_sent_ = now;
    next_scan_ = now;
    *established = true;
    env_.metrics.Set("delegate_session_connected", Labels(), 1);
    env_.log.Info("connected", {{"manager", env_.address},
                                {"session", ack.session_id()},
                                {"resumed", absl::StrCat(ack.resumed_size())},
                                {"name", env_.config.name}});
  }
  Cancel(cancels);

  std::thread writer([&] { WriterLoop(stream.get(), &context); });
  v1::ManagerMessage message;
  while (stream->Read(&message)) {
    if (!message.has_batch()) {
      Handle(message);
      continue;
    }
    // The stages of one batch go to the scheduler together, in order with
    // what else the batch holds.
    std::vector<StageTask> tasks;
    for (const v1::ManagerMessage& m : message.batch().messages()) {
      if (m.has_dispatch()) {
        if (std::optional<StageTask> t = PrepareDispatch(m.dispatch())) {
          tasks.push_back(*std::move(t));
        }
        continue;
      }
      SubmitDispatched(std::move(tasks));
      tasks.clear();
      if (!m.has_batch()) Handle(m);
    }
    SubmitDispatched(std::move(tasks));
  }
  {
    std::lock_guard lock(mu_);
    stream_up_ = false;
    cv_.notify_all();
  }
  writer.join();
  grpc::Status status = end_stream();
  std::lock_guard lock(mu_);
  if (!closing_) {
    env_.log.Warn("disconnected; reconnecting",
                  {{"manager", env_.address},
                   {"status", status.error_message().empty()
                                  ? std::string("the stream ended")
                                  : status.error_message()}});
  }
  return absl::OkStatus();
}

void SessionConnection::WriterLoop(Stream* stream,
                                   grpc::ClientContext* context) {
  std::vector<v1::DelegateMessage> batch;
  absl::Time previous_write = absl::InfinitePast();
  while (true) {
    bool writes_done = false;
    // Under load (writes less than kBusy apart), let the next batch gather
    // for kLinger: one wake and one flush then carry many messages. An idle
    // writer writes at once.
    const absl::Time now = env_.clock.Now();
    if (now - previous_write < kBusy) absl::SleepFor(kLinger);
    previous_write = now;
    {
      std::unique_lock lock(mu_);
      while (true) {
        if (!stream_up_) return;
        const absl::Time now = env_.clock.Now();
        CollectLocked(now, &batch);
        if (!batch.empty()) break;
        if (DrainedLocked()) {
          if (drained_at_ == absl::InfiniteFuture()) drained_at_ = now;
          if (now >= drained_at_ + env_.config.idle_wait_before_stop) {
            closing_ = true;
            closing_at_ = now;
            writes_done = true;
            break;
          }
        }
        absl::Duration wait = kLeaseScan;
        if (!delayed_.empty()) {
          wait = std::clamp(delayed_.front().first - now,
                            absl::Microseconds(100), kLeaseScan);
        }
        writer_waiting_ = true;
        cv_.wait_for(lock, absl::ToChronoMicroseconds(wait));
        writer_waiting_ = false;
      }
      last_sent_ = env_.clock.Now();
    }
    if (!batch.empty()) {
      if (!stream->Write(PackBatch(batch))) {
        // The reader sees the end too and reconnects.
        context->TryCancel();
        return;
      }
    }
    if (writes_done) {
      env_.log.Info("drained: closing the session",
                    {{"manager", env_.address}});
      stream->WritesDone();
      return;
    }
  }
}

void SessionConnection::CollectLocked(absl::Time now,
                                      std::vector<v1::DelegateMessage>* out) {
  for (v1::DelegateMessage& m : outbox_) out->push_back(std::move(m));
  outbox_.clear();
  if (now >= next_scan_) {
    next_scan_ = now + kLeaseScan;
    RenewalsLocked(now, out);
    if (now - last_sent_ >= ping_interval_ && out->empty()) {
      out->emplace_back().mutable_ping()->set_nonce(++ping_nonce_);
      *out->back().mutable_ping()->mutable_time() = TimeToProto(now);
    }
  }
  while (!delayed_.empty() && delayed_.front().first <= now) {
    MarkDirty(delayed_.front().second);
    delayed_.pop_front();
  }
  std::vector<RunPtr> dirty;
  dirty.swap(dirty_);
  for (const RunPtr& run : dirty) {
    run->dirty = false;
    if (!run->lost) CollectRunLocked(*run, out, now);
  }
  if (credit_ > 0 && !draining_) {
    out->emplace_back().mutable_credit()->set_slots(credit_);
  }
  credit_ = 0;
}

void SessionConnection::CollectRunLocked(StageRun& run,
                                         std::vector<v1::DelegateMessage>* out,
                                         absl::Time now) {
  // Logs first: the manager has a step's lines before its result.
  for (auto& [step_id, buf] : run.logs) {
    // A chunk of this step from `offset`, in a new message.
    auto new_chunk = [&](uint64_t offset) -> v1::LogChunk& {
      v1::LogChunkReport& report = *out->emplace_back().mutable_log();
      report.set_lease_id(run.lease_id);
      report.set_fencing_token(run.token);
      v1::LogChunk& chunk = *report.mutable_chunk();
      chunk.set_task_id(run.stage_id);
      chunk.set_step_id(step_id);
      chunk.set_offset(offset);
      return chunk;
    };
    while (buf.sent < buf.end()) {
      v1::LogChunk& chunk = new_chunk(buf.sent);
      const LogStream stream = buf.lines[buf.sent - buf.base].stream;
      chunk.set_stream(ToProto(stream));
      while (buf.sent < buf.end() &&
             static_cast<size_t>(chunk.lines_size()) < kMaxChunkLines) {
        const BufferedLine& line = buf.lines[buf.sent - buf.base];
        if (line.stream != stream) break;
        v1::LogLine& l = *chunk.add_lines();
        *l.mutable_time() = TimeToProto(line.time);
        l.set_text(line.text);
        l.set_partial(line.partial);
        ++buf.sent;
      }
      if (buf.closed && buf.sent == buf.end()) {
        chunk.set_closed(true);
        buf.close_sent = true;
      }
    }
    if (buf.closed && !buf.close_sent) {
      v1::LogChunk& chunk = new_chunk(buf.end());
      chunk.set_stream(v1::LOG_STREAM_SYSTEM);
      chunk.set_closed(true);
      buf.close_sent = true;
    }
  }
  // A stage result holds every step's result: the step reports not yet
  // sent would tell the manager nothing new.
  const bool finished = !run.reports.empty() &&
                        run.reports.back().kind == Report::Kind::kStageResult;
  for (auto it = run.reports.begin(); it != run.reports.end();) {
    if (it->sent) {
      ++it;
      continue;
    }
    if (finished && it->kind != Report::Kind::kStageResult) {
      by_key_.erase(it->key);
      it = run.reports.erase(it);
      continue;
    }
    if (it->due > now) {  // a later delayed_ entry brings it
      ++it;
      continue;
    }
    out->push_back(it->message);
    it->sent = true;
    ++it;
  }
}

void SessionConnection::RenewalsLocked(absl::Time now,
                                       std::vector<v1::DelegateMessage>* out) {
  for (const auto& [id, run] : runs_) {
    if (run->lost || run->result_accepted || now >= run->lease_end) continue;
    if (now >= run->next_renew && stream_up_) {
      v1::LeaseRenew& renew = *out->emplace_back().mutable_lease_renew();
      renew.set_stage_id(run->stage_id);
      renew.set_lease_id(run->lease_id);
      renew.set_fencing_token(run->token);
      run->next_renew = now + run->lease_duration / 3;
    }
  }
}

void SessionConnection::TickerLoop() {
  std::unique_lock lock(mu_);
  while (!stop_ticker_) {
    cv_.wait_for(lock, absl::ToChronoMilliseconds(kLeaseScan));
    const absl::Time now = env_.clock.Now();
    std::vector<std::string> cancels;
    std::vector<RunPtr> expired;
    for (const auto& [id, run] : runs_) {
      if (!run->lost && !run->result_accepted && now >= run->lease_end) {
        expired.push_back(run);
      }
    }
    for (const RunPtr& run : expired) {
      LoseLocked(run, "its lease lapsed without a renewal from the manager",
                 &cancels);
    }
    if (forced_ && now - forced_at_ >= kForcedAckWait) {
      // Second SIGTERM: stop waiting for acknowledgements.
      std::vector<RunPtr> waiting;
      for (const auto& [id, run] : runs_) {
        if (!run->running && !run->lost) waiting.push_back(run);
      }
      for (const RunPtr& run : waiting) {
        LoseLocked(run, "the delegate is stopping", &cancels);
      }
    }
    if (context_ != nullptr) {
      const char* why = nullptr;
      if (connected_ && now - last_heard_ > 3 * ping_interval_) {
        why = "the manager went quiet; reconnecting";
      } else if (!connected_ && now - dialled_at_ > kHandshakeTimeout) {
        why = "the manager did not answer Hello; reconnecting";
      } else if (!connected_ && DrainedLocked()) {
        why = "drained while connecting";
      } else if (closing_ && now - closing_at_ > kCloseTimeout) {
        why = "the manager did not end the closed session";
      }
      if (why != nullptr) {
        env_.log.Warn(why, {{"manager", env_.address}});
        context_->TryCancel();
        context_ = nullptr;  // once per stream
      }
    }
    if (!cancels.empty()) {
      lock.unlock();
      Cancel(cancels);
      lock.lock();
    }
  }
}

void SessionConnection::AddReportLocked(const RunPtr& run, Report::Kind kind,
                                        std::string key,
                                        v1::DelegateMessage message) {
  if (run->lost) return;
  by_key_[key] = run;
  const absl::Time now = env_.clock.Now();
  const bool progress = kind != Report::Kind::kStageResult;
  const absl::Time due = progress ? now + kProgressDelay : now;
  run->reports.push_back(
      Report{kind, std::move(key), std::move(message), false, due});
  if (progress) {
    delayed_.emplace_back(due, run);
  } else {
    MarkDirty(run);
  }
}

void SessionConnection::LoseLocked(const RunPtr& run, std::string_view why,
                                   std::vector<std::string>* cancels) {
  if (run->lost) return;
  run->lost = true;
  for (const Report& r : run->reports) by_key_.erase(r.key);
  run->reports.clear();
  run->logs.clear();
  env_.metrics.Add("delegate_session_leases_lost_total", Labels());
  env_.log.Warn("lease lost: stopping the stage",
                {{"stage", run->stage_id},
                 {"fencing_token", absl::StrCat(run->token)},
                 {"why", why}});
  if (run->running) {
    cancels->push_back(run->scheduler_id);
  } else {
    MaybeRetireLocked(run);
  }
}

void SessionConnection::ApplyLogAckLocked(const v1::LogAck& ack) {
  auto it = by_stage_.find(ack.stage_id());
  if (it == by_stage_.end() || it->second->token != ack.fencing_token()) {
    return;
  }
  auto buf = it->second->logs.find(ack.step_id());
  if (buf == it->second->logs.end()) return;
  LogBuffer& b = buf->second;
  while (b.base < ack.offset() && !b.lines.empty()) {  // kept: drop them
    b.lines.pop_front();
    ++b.base;
  }
  // Resend from what the manager keeps when that is below what went out
  // (it refused a gap); never from below what is still held.
  const uint64_t resend = std::max(std::min(b.sent, ack.offset()), b.base);
  if (resend < b.sent) {
    b.sent = resend;
    b.close_sent = false;
    MarkDirty(it->second);
  }
  b.sent = std::max(b.sent, b.base);
}

void SessionConnection::MaybeRetireLocked(const RunPtr& run) {
  if (run->running || !(run->lost || run->result_accepted)) return;
  if (runs_.erase(run->scheduler_id) == 0) return;
  auto it = by_stage_.find(run->stage_id);
  if (it != by_stage_.end() && it->second == run) by_stage_.erase(it);
  for (const Report& r : run->reports) by_key_.erase(r.key);
}

void SessionConnection::SlotFreedLocked() {
  if (!draining_ && stream_up_) {
    ++credit_;
    Wake();
  }
}

void SessionConnection::Handle(const v1::ManagerMessage& message) {
  std::vector<std::string> cancels;
  std::unique_lock lock(mu_);
  last_heard_ = env_.clock.Now();
  switch (message.body_case()) {
    case v1::ManagerMessage::kDispatch: {
      lock.unlock();
      std::optional<StageTask> task = PrepareDispatch(message.dispatch());
      if (task) {
        std::vector<StageTask> tasks;
        tasks.push_back(*std::move(task));
        SubmitDispatched(std::move(tasks));
      }
      return;
    }
    case v1::ManagerMessage::kLeaseRenewed: {
      const v1::LeaseRenewed& renewed = message.lease_renewed();
      auto it = by_stage_.find(renewed.stage_id());
      if (it == by_stage_.end() || it->second->lease_id != renewed.lease_id() ||
          it->second->lost) {
        break;
      }
      absl::StatusOr<absl::Duration> d =
          DurationFromProto(renewed.lease_duration(), "lease_duration");
      if (d.ok()) it->second->lease_duration = *d;
      it->second->lease_end = last_heard_ + it->second->lease_duration;
      break;
    }
    case v1::ManagerMessage::kLeaseLost: {
      const v1::LeaseLost& lost = message.lease_lost();
      auto it = by_stage_.find(lost.stage_id());
      if (it != by_stage_.end() && it->second->token == lost.fencing_token()) {
        LoseLocked(it->second,
                   absl::StrCat(v1::LeaseLost::Reason_Name(lost.reason()), ": ",
                                lost.message()),
                   &cancels);
      }
      break;
    }
    case v1::ManagerMessage::kAck: {
      const v1::Ack& ack = message.ack();
      auto it = by_key_.find(ack.idempotency_key());
      if (it == by_key_.end()) break;  // a repeat
      RunPtr run = it->second;
      by_key_.erase(it);
      Report::Kind kind = Report::Kind::kStepStarted;
      for (auto r = run->reports.begin(); r != run->reports.end(); ++r) {
        if (r->key == ack.idempotency_key()) {
          kind = r->kind;
          run->reports.erase(r);
          break;
        }
      }
      if (!ack.accepted()) {
        env_.log.Warn("the manager refused a report",
                      {{"stage", run->stage_id},
                       {"key", ack.idempotency_key()},
                       {"refusal", v1::Ack::Refusal_Name(ack.refusal())},
                       {"message", ack.message()}});
        if (ack.refusal() == v1::Ack::REFUSAL_STALE_FENCING_TOKEN ||
            ack.refusal() == v1::Ack::REFUSAL_UNKNOWN_LEASE) {
          LoseLocked(run, "the manager refused its report", &cancels);
        }
      }
      if (kind == Report::Kind::kStageResult) {
        run->result_accepted = true;
        MaybeRetireLocked(run);
      }
      break;
    }
    case v1::ManagerMessage::kCancel: {
      const v1::Cancel& cancel = message.cancel();
      auto it = by_stage_.find(cancel.stage_id());
      if (it == by_stage_.end() || !it->second->running ||
          (!cancel.lease_id().empty() &&
           cancel.lease_id() != it->second->lease_id)) {
        break;
      }
      it->second->cancel_reason =
          cancel.reason().empty() ? "cancelled" : cancel.reason();
      cancels.push_back(it->second->scheduler_id);
      break;
    }
    case v1::ManagerMessage::kLogAck:
      ApplyLogAckLocked(message.log_ack());
      break;
    case v1::ManagerMessage::kPing: {
      v1::DelegateMessage& pong = outbox_.emplace_back();
      pong.mutable_pong()->set_nonce(message.ping().nonce());
      Wake();
      break;
    }
    case v1::ManagerMessage::kPong:
      break;
    default:
      env_.log.Warn("unexpected message from the manager; ignored",
                    {{"kind", absl::StrCat(message.body_case())}});
      break;
  }
  lock.unlock();
  Cancel(cancels);
}

std::optional<StageTask> SessionConnection::PrepareDispatch(
    const v1::Dispatch& dispatch) {
  auto run = std::make_shared<StageRun>();
  run->stage_id = dispatch.stage_id();
  run->lease_id = dispatch.lease_id();
  run->token = dispatch.fencing_token();
  run->scheduler_id = absl::StrCat(run->stage_id, "#", run->token);
  absl::StatusOr<absl::Duration> lease =
      DurationFromProto(dispatch.lease_duration(), "dispatch.lease_duration");
  run->lease_duration =
      lease.ok() && *lease > absl::ZeroDuration() ? *lease : absl::Seconds(30);
  absl::StatusOr<Stage> stage = FromProto(dispatch.stage(), "dispatch.stage");
  std::vector<std::string> cancels;
  {
    std::lock_guard lock(mu_);
    if (closing_ || forced_ || runs_.contains(run->scheduler_id)) {
      // Not run (the stream is closing, or a repeat): the slot stays free;
      // the manager re-queues what a closed session held.
      if (!closing_ && !forced_) SlotFreedLocked();
      return std::nullopt;
    }
    env_.metrics.Add("delegate_session_dispatches_total", Labels());
    const absl::Time now = env_.clock.Now();
    run->lease_end = now + run->lease_duration;
    run->next_renew = now + run->lease_duration / 3;
    auto previous = by_stage_.find(run->stage_id);
    if (previous != by_stage_.end() && !previous->second->lost) {
      LoseLocked(previous->second, "the stage was dispatched again", &cancels);
    }
    runs_[run->scheduler_id] = run;
    by_stage_[run->stage_id] = run;
  }
  Cancel(cancels);
  if (!stage.ok()) {
    NotRun(run, std::string(stage.status().message()));
    return std::nullopt;
  }
  StageTask task;
  task.id = run->scheduler_id;
  task.stage = *std::move(stage);
  task.observer = std::make_shared<RunObserver>(this, run);
  return task;
}

void SessionConnection::AppendLine(const RunPtr& run, const LogLine& line) {
  std::lock_guard lock(mu_);
  if (run->lost) return;
  auto buf = run->logs.find(line.step_id);
  if (buf == run->logs.end()) {
    buf = run->logs.emplace(std::string(line.step_id), LogBuffer{}).first;
  }
  buf->second.lines.push_back(BufferedLine{line.time, std::string(line.text),
                                           line.stream, line.partial});
  MarkDirty(run);
}

void SessionConnection::CloseLog(const RunPtr& run, std::string_view step_id) {
  std::lock_guard lock(mu_);
  if (run->lost) return;
  auto buf = run->logs.find(step_id);
  if (buf == run->logs.end()) return;  // no lines: nothing to close
  buf->second.closed = true;
  MarkDirty(run);
}

void SessionConnection::StepStarted(const RunPtr& run, const Step& step) {
  v1::DelegateMessage m;
  std::lock_guard lock(mu_);
  const std::string key = ReportKey(*run, "started", step.id);
  v1::StepStartedReport& report = *m.mutable_step_started();
  FillHeader(*run, key, report.mutable_header());
  report.set_step_id(step.id);
  *report.mutable_time() = TimeToProto(env_.clock.Now());
  AddReportLocked(run, Report::Kind::kStepStarted, key, std::move(m));
}

void SessionConnection::StepDone(const RunPtr& run, const StepResult& result) {
  v1::DelegateMessage m;
  *m.mutable_step_result()->mutable_result() = ToProto(result);
  std::lock_guard lock(mu_);
  const std::string key = ReportKey(*run, "step", result.id);
  FillHeader(*run, key, m.mutable_step_result()->mutable_header());
  AddReportLocked(run, Report::Kind::kStepResult, key, std::move(m));
}

void SessionConnection::StageDone(const RunPtr& run, const StageResult& done) {
  StageResult result = done;
  result.task_id = run->stage_id;
  std::lock_guard lock(mu_);
  run->running = false;
  SlotFreedLocked();
  if (result.status == StepStatus::kCancelled && !run->cancel_reason.empty()) {
    result.error = run->cancel_reason;
  }
  if (run->lost) {
    MaybeRetireLocked(run);
    return;
  }
  v1::DelegateMessage m;
  const std::string key = ReportKey(*run, "stage");
  FillHeader(*run, key, m.mutable_stage_result()->mutable_header());
  *m.mutable_stage_result()->mutable_result() = ToProto(result);
  AddReportLocked(run, Report::Kind::kStageResult, key, std::move(m));
}

void SessionConnection::NotRun(const RunPtr& run, std::string why,
                               const Stage* stage) {
  StageResult result =
      stage ? NotRunResult(run->stage_id, *stage, StepStatus::kFailure, why,
                           "skipped: " + why)
            : NotRunResult(run->stage_id, Stage{}, StepStatus::kFailure,
                           std::move(why), "");
  std::lock_guard lock(mu_);
  run->running = false;
  SlotFreedLocked();
  v1::DelegateMessage m;
  const std::string key = ReportKey(*run, "stage");
  FillHeader(*run, key, m.mutable_stage_result()->mutable_header());
  *m.mutable_stage_result()->mutable_result() = ToProto(result);
  AddReportLocked(run, Report::Kind::kStageResult, key, std::move(m));
}

void SessionConnection::SubmitDispatched(std::vector<StageTask> tasks) {
  if (tasks.empty()) return;
  // What a refused stage's result names: its id and its steps' ids.
  std::vector<std::pair<std::string, Stage>> outlines;
  outlines.reserve(tasks.size());
  for (const StageTask& t : tasks) {
    Stage outline;
    outline.name = t.stage.name;
    for (const Step& step : t.stage.steps)
      outline.steps.emplace_back().id = step.id;
    outlines.emplace_back(t.id, std::move(outline));
  }
  std::vector<absl::Status> statuses = group_.SubmitAll(std::move(tasks));
  for (size_t i = 0; i < statuses.size(); ++i) {
    if (statuses[i].ok()) continue;
    RunPtr run;
    {
      std::lock_guard lock(mu_);
      auto it = runs_.find(outlines[i].first);
      if (it != runs_.end()) run = it->second;
    }
    if (run) {
      NotRun(run, std::string(statuses[i].message()), &outlines[i].second);
    }
  }
}

}  // namespace
}  // namespace grpcv1

absl::Status RegisterGrpcManager(ManagerRegistry& registry) {
  auto factory = [](ManagerEnvironment env)
      -> absl::StatusOr<std::unique_ptr<ManagerConnection>> {
    absl::StatusOr<grpcv1::Target> target =
        grpcv1::ParseTarget(env.address, env.config);
    if (!target.ok()) return target.status();
    return std::unique_ptr<ManagerConnection>(
        new grpcv1::SessionConnection(std::move(env), *std::move(target)));
  };
  if (absl::Status s = registry.Register("grpc", factory); !s.ok()) return s;
  return registry.Register("grpcs", factory);
}

}  // namespace delegate

// The delegate's side of DelegateSession (proto/delegate/v1/session.proto):
// `delegate server --manager grpc://HOST:PORT`.
//
// One stream per connection. The thread that called Run reads; a writer
// thread per stream is the only one that writes, and each wake it writes
// everything that is due in one batch (buffer hints, so one flush): pending
// messages (pongs, renewals, a ping), then what the ledger has due (each
// stage's log chunks and unacknowledged reports, credit). Stage threads (the
// scheduler's) only record what happened in the ledger, under the lock.
//
// What the delegate keeps per stage until the manager has accepted the
// stage's result is the ledger's (session_ledger.h). A new stream resends all
// of it (Hello.held_leases, then the reports, then the logs from the acked
// offsets), so nothing is lost or kept twice across a reconnect.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "delegate/manager.h"
#include "delegate/scheduler.h"
#include "delegate/v1/session.grpc.pb.h"
#include "delegate/version.h"
#include "http/tls_config.h"
#include "manager/grpc/convert.h"
#include "manager/grpc/session_batch.h"
#include "manager/grpc/session_ledger.h"
#include "stage/result.h"
#include "util/files.h"
#include "util/strings.h"
#include "util/url.h"

namespace delegate {
namespace grpcv1 {
namespace {

constexpr uint32_t kProtocolVersion = v1::PROTOCOL_VERSION_1;
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
// The writer's batching under load (see WriterLoop).
constexpr absl::Duration kBusy = absl::Milliseconds(1);
constexpr absl::Duration kLinger = absl::Microseconds(100);

using RunPtr = SessionLedger::RunPtr;
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

class SessionConnection final : public ManagerConnection {
 public:
  SessionConnection(ManagerEnvironment env, Target target,
                    std::unique_ptr<LogSpool> spool,
                    std::unique_ptr<SessionJournal> journal)
      : env_(std::move(env)),
        target_(std::move(target)),
        spool_(std::move(spool)),
        journal_(std::move(journal)),
        ledger_(static_cast<uint32_t>(
                    std::max(1, env_.config.max_stages.value_or(
                                    env_.config.parallel_workers))),
                env_.log, *spool_) {
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
    // What an earlier process was running when it died is reported on the
    // first stream, once.
    absl::MutexLock lock(&mu_);
    ledger_.SetJournal(journal_.get());
    for (const SessionJournal::Interrupted& run : journal_->interrupted()) {
      ledger_.Adopt(run, env_.clock.Now());
    }
  }

  // Its stages are cancelled and waited for (group_ goes first).
  ~SessionConnection() override { Drain(); }

  absl::Status Run() override;

  // A second call cancels the running stages.
  void Drain() override ABSL_LOCKS_EXCLUDED(mu_) {
    std::vector<std::string> cancels;
    {
      absl::MutexLock lock(&mu_);
      if (draining_) {
        if (!forced_) forced_at_ = env_.clock.Now();
        forced_ = true;
        cancels = ledger_.RunningTaskIds();
      }
      draining_ = true;
      ledger_.StopGranting();
      Wake();
    }
    Cancel(cancels);
  }

  bool Ready() const override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return connected_ && !draining_;
  }

 private:
  class RunObserver;
  // What the scheduler reports of `run`, into the ledger.
  void AppendLine(const RunPtr& run, const LogLine& line)
      ABSL_LOCKS_EXCLUDED(mu_);
  void CloseLog(const RunPtr& run, std::string_view step_id)
      ABSL_LOCKS_EXCLUDED(mu_);
  void StepStarted(const RunPtr& run, const Step& step)
      ABSL_LOCKS_EXCLUDED(mu_);
  void StepDone(const RunPtr& run, const StepResult& result)
      ABSL_LOCKS_EXCLUDED(mu_);
  void StageDone(const RunPtr& run, const StageResult& done)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Cancels this connection's stages and waits for their cleanup.
  void StopStages() {
    group_.CancelAll(Scheduler::CancelKind::kShutdown);
    group_.WaitUntilEmpty();
  }
  // One stream, from Hello to its end. Returns why the session cannot go on
  // (a HelloReject that retrying will not fix), OK otherwise.
  absl::Status Session(bool* established) ABSL_LOCKS_EXCLUDED(mu_);
  void WriterLoop(Stream* stream, grpc::ClientContext* context)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Appends what is due to `out`: the pending messages, renewals and a ping
  // when a lease scan is due, then the ledger's.
  void CollectLocked(absl::Time now, std::vector<v1::DelegateMessage>* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Lease expiry by the delegate's clock, a quiet manager, a handshake or a
  // close that takes too long: what must happen whatever the stream does.
  void TickerLoop() ABSL_LOCKS_EXCLUDED(mu_);
  void Handle(const v1::ManagerMessage& message) ABSL_LOCKS_EXCLUDED(mu_);
  // Every message but a Dispatch (or a batch).
  SessionLedger::Stops HandleLocked(const v1::ManagerMessage& message)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A dispatched stage as a scheduler task (nullopt: nothing to run; a stage
  // that cannot run is reported so). SubmitDispatched queues a batch of them
  // at once.
  // Writes what the ledger recorded in the session journal; warns once when
  // it cannot.
  void FlushJournal() ABSL_LOCKS_EXCLUDED(mu_);
  std::optional<StageTask> PrepareDispatch(const v1::Dispatch& dispatch)
      ABSL_LOCKS_EXCLUDED(mu_);
  void SubmitDispatched(std::vector<StageTask> tasks) ABSL_LOCKS_EXCLUDED(mu_);
  // Reports the stage FAILURE without running it (its steps skipped, when
  // `stage` is given).
  void NotRun(const RunPtr& run, std::string why, const Stage* stage = nullptr)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Counts the leases `stops` lost and cancels its stages.
  void Apply(const SessionLedger::Stops& stops) ABSL_LOCKS_EXCLUDED(mu_) {
    if (stops.leases_lost > 0) {
      env_.metrics.Add("delegate_session_leases_lost_total", Labels(),
                       stops.leases_lost);
    }
    Cancel(stops.cancels);
  }
  // Something is due: the writer collects it now, not at its next timeout.
  void Wake() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writer_waiting_) cv_.SignalAll();
  }
  // Cancels scheduler stages without the lock: a queued stage's Done runs
  // on this thread.
  void Cancel(const std::vector<std::string>& task_ids)
      ABSL_LOCKS_EXCLUDED(mu_) {
    for (const std::string& id : task_ids) (void)group_.Cancel(id);
  }
  bool DrainedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return draining_ && ledger_.empty();
  }
  // Called by the Run thread only, the one that uses stub_.
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
  std::unique_ptr<v1::DelegateSession::Stub> stub_;

  mutable absl::Mutex mu_;
  // The writer, the ticker and Run's backoff wait on it.
  absl::CondVar cv_;
  bool writer_waiting_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool forced_ ABSL_GUARDED_BY(mu_) = false;
  bool connected_ ABSL_GUARDED_BY(mu_) = false;
  bool stream_up_ ABSL_GUARDED_BY(mu_) = false;  // the writer may write
  bool closing_ ABSL_GUARDED_BY(mu_) = false;    // WritesDone was sent
  bool stop_ticker_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time dialled_at_ ABSL_GUARDED_BY(mu_);  // when Hello went out
  absl::Time closing_at_ ABSL_GUARDED_BY(mu_);
  absl::Time forced_at_ ABSL_GUARDED_BY(mu_);
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
  absl::Duration ping_interval_ ABSL_GUARDED_BY(mu_) = absl::Seconds(10);
  absl::Time last_heard_ ABSL_GUARDED_BY(mu_);
  absl::Time last_sent_ ABSL_GUARDED_BY(mu_);
  absl::Time next_scan_ ABSL_GUARDED_BY(mu_);
  absl::Time drained_at_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  uint64_t ping_nonce_ ABSL_GUARDED_BY(mu_) = 0;
  std::string last_error_ ABSL_GUARDED_BY(mu_);  // why the last dial failed
  std::vector<v1::DelegateMessage> outbox_ ABSL_GUARDED_BY(mu_);
  const std::unique_ptr<LogSpool> spool_;
  const std::unique_ptr<SessionJournal> journal_;
  std::atomic<bool> journal_failing_{false};
  absl::Time journal_flushed_ = absl::InfinitePast();  // the ticker's
  SessionLedger ledger_ ABSL_GUARDED_BY(mu_);
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

  env_.log.Info("connecting", {{"manager", RedactUrl(env_.address)},
                               {"protocol", "delegate.v1.DelegateSession"},
                               {"name", env_.config.name}});
  std::thread ticker([this] { TickerLoop(); });
  struct StopTicker {
    SessionConnection* self;
    std::thread* thread;
    ~StopTicker() {
      {
        absl::MutexLock lock(&self->mu_);
        self->stop_ticker_ = true;
      }
      self->cv_.SignalAll();
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
    absl::MutexLock lock(&mu_);
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
        env_.log.Warn(
            "manager unreachable; retrying with backoff",
            {{"manager", RedactUrl(env_.address)}, {"error", last_error_}});
      }
    }
    // Wait out the backoff; leases still run down meanwhile.
    const absl::Duration wait =
        backoff * (0.5 + std::uniform_real_distribution<>(0, 0.5)(jitter));
    const absl::Time until = env_.clock.Now() + wait;
    while (!DrainedLocked()) {
      const absl::Time now = env_.clock.Now();
      if (now >= until) break;
      cv_.WaitWithTimeout(&mu_, std::min(until - now, kLeaseScan));
    }
    if (DrainedLocked()) break;
    backoff = std::min(backoff * 2, kMaxBackoff);
  }
  env_.log.Info("disconnected: drained",
                {{"manager", RedactUrl(env_.address)}});
  StopStages();
  return absl::OkStatus();
}

absl::Status SessionConnection::Session(bool* established) {
  grpc::ClientContext context;
  std::unique_ptr<Stream> stream = stub_->Connect(&context);
  v1::DelegateMessage hello_message;
  {
    absl::MutexLock lock(&mu_);
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
    ledger_.HeldLeases(&hello);
  }
  auto end_stream = [&]() ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
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
    absl::MutexLock lock(&mu_);
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
                  {{"manager", RedactUrl(env_.address)}});
    return absl::OkStatus();
  }

  SessionLedger::Stops stops;
  {
    absl::MutexLock lock(&mu_);
    const v1::HelloAck& ack = first.hello_ack();
    const absl::Time now = env_.clock.Now();
    absl::StatusOr<absl::Duration> ping =
        DurationFromProto(ack.ping_interval(), "hello_ack.ping_interval");
    ping_interval_ =
        ping.ok() && *ping > absl::ZeroDuration() ? *ping : absl::Seconds(10);
    stops = ledger_.Resume(ack, now);
    outbox_.clear();
    connected_ = true;
    stream_up_ = true;
    last_heard_ = now;
    last_sent_ = now;
    next_scan_ = now;
    *established = true;
    env_.metrics.Set("delegate_session_connected", Labels(), 1);
    env_.log.Info("connected", {{"manager", RedactUrl(env_.address)},
                                {"session", ack.session_id()},
                                {"resumed", absl::StrCat(ack.resumed_size())},
                                {"name", env_.config.name}});
  }
  Apply(stops);

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
    absl::MutexLock lock(&mu_);
    stream_up_ = false;
    cv_.SignalAll();
  }
  writer.join();
  grpc::Status status = end_stream();
  absl::MutexLock lock(&mu_);
  if (!closing_) {
    env_.log.Warn("disconnected; reconnecting",
                  {{"manager", RedactUrl(env_.address)},
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
      absl::MutexLock lock(&mu_);
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
        // Until the next step report falls due, and a lease scan at most.
        const absl::Duration wait = std::clamp(
            ledger_.NextDue() - now, absl::Microseconds(100), kLeaseScan);
        writer_waiting_ = true;
        cv_.WaitWithTimeout(&mu_, wait);
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
                    {{"manager", RedactUrl(env_.address)}});
      stream->WritesDone();
      return;
    }
  }
}

void SessionConnection::FlushJournal() {
  absl::Status s = journal_->Flush();
  if (s.ok() || journal_failing_.exchange(true)) return;  // said once
  env_.log.Warn(
      "cannot write the session journal; a stage running when the delegate "
      "stops would not be reported after its restart",
      {{"error", s.message()}});
}

void SessionConnection::CollectLocked(absl::Time now,
                                      std::vector<v1::DelegateMessage>* out) {
  for (v1::DelegateMessage& m : outbox_) out->push_back(std::move(m));
  outbox_.clear();
  if (now >= next_scan_) {
    next_scan_ = now + kLeaseScan;
    ledger_.Renewals(now, out);
    if (now - last_sent_ >= ping_interval_ && out->empty()) {
      out->emplace_back().mutable_ping()->set_nonce(++ping_nonce_);
      *out->back().mutable_ping()->mutable_time() = TimeToProto(now);
    }
  }
  ledger_.Collect(now, out);
}

void SessionConnection::TickerLoop() {
  while (true) {
    SessionLedger::Stops expired;
    SessionLedger::Stops given_up;
    {
      absl::MutexLock lock(&mu_);
      if (stop_ticker_) return;
      cv_.WaitWithTimeout(&mu_, kLeaseScan);
      const absl::Time now = env_.clock.Now();
      expired = ledger_.ExpireLeases(now);
      if (forced_ && now - forced_at_ >= kForcedAckWait) {
        // Second SIGTERM: stop waiting for acknowledgements.
        given_up = ledger_.GiveUpWaiting();
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
          env_.log.Warn(why, {{"manager", RedactUrl(env_.address)}});
          context_->TryCancel();
          context_ = nullptr;  // once per stream
        }
      }
    }
    Apply(expired);
    Apply(given_up);
    // Steps started and runs retired go to disk with the next dispatch, or
    // here, at most every kLeaseScan: losing them with the process only
    // names a step less precisely, or has the next process report a stage
    // the manager has settled (it answers with its first answer).
    const absl::Time now = env_.clock.Now();
    if (now - journal_flushed_ >= kLeaseScan) {
      journal_flushed_ = now;
      FlushJournal();
    }
  }
}

void SessionConnection::Handle(const v1::ManagerMessage& message) {
  if (message.has_dispatch()) {
    {
      absl::MutexLock lock(&mu_);
      last_heard_ = env_.clock.Now();
    }
    std::optional<StageTask> task = PrepareDispatch(message.dispatch());
    if (task) {
      std::vector<StageTask> tasks;
      tasks.push_back(*std::move(task));
      SubmitDispatched(std::move(tasks));
    }
    return;
  }
  SessionLedger::Stops stops;
  {
    absl::MutexLock lock(&mu_);
    last_heard_ = env_.clock.Now();
    stops = HandleLocked(message);
  }
  Apply(stops);
}

SessionLedger::Stops SessionConnection::HandleLocked(
    const v1::ManagerMessage& message) {
  switch (message.body_case()) {
    case v1::ManagerMessage::kLeaseRenewed:
      ledger_.Renewed(message.lease_renewed(), last_heard_);
      break;
    case v1::ManagerMessage::kLeaseLost:
      return ledger_.LeaseLost(message.lease_lost());
    case v1::ManagerMessage::kAck:
      return ledger_.Ack(message.ack());
    case v1::ManagerMessage::kCancel:
      return ledger_.Cancel(message.cancel());
    case v1::ManagerMessage::kLogAck:
      if (ledger_.LogAck(message.log_ack())) Wake();
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
  return {};
}

std::optional<StageTask> SessionConnection::PrepareDispatch(
    const v1::Dispatch& dispatch) {
  absl::StatusOr<Stage> stage = FromProto(dispatch.stage(), "dispatch.stage");
  RunPtr run;
  SessionLedger::Stops stops;
  {
    absl::MutexLock lock(&mu_);
    // Not run while the stream closes: the manager re-queues what a closed
    // session held.
    if (closing_ || forced_) return std::nullopt;
    run = ledger_.Dispatch(dispatch, env_.clock.Now(), &stops);
    if (run == nullptr) {  // a repeat: its slot is granted again
      Wake();
      return std::nullopt;
    }
    env_.metrics.Add("delegate_session_dispatches_total", Labels());
  }
  Apply(stops);
  if (!stage.ok()) {
    NotRun(run, std::string(stage.status().message()));
    return std::nullopt;
  }
  StageTask task;
  task.id = SessionLedger::TaskId(*run);
  task.stage = *std::move(stage);
  task.observer = std::make_shared<RunObserver>(this, run);
  return task;
}

void SessionConnection::AppendLine(const RunPtr& run, const LogLine& line) {
  absl::MutexLock lock(&mu_);
  if (ledger_.AppendLine(run, line)) Wake();
}

void SessionConnection::CloseLog(const RunPtr& run, std::string_view step_id) {
  absl::MutexLock lock(&mu_);
  if (ledger_.CloseLog(run, step_id)) Wake();
}

void SessionConnection::StepStarted(const RunPtr& run, const Step& step) {
  absl::MutexLock lock(&mu_);
  ledger_.StepStarted(run, step.id, env_.clock.Now());
}

void SessionConnection::StepDone(const RunPtr& run, const StepResult& result) {
  v1::StepResult converted = ToProto(result);
  absl::MutexLock lock(&mu_);
  ledger_.StepDone(run, std::move(converted), env_.clock.Now());
}

void SessionConnection::StageDone(const RunPtr& run, const StageResult& done) {
  StageResult result = done;
  absl::MutexLock lock(&mu_);
  if (ledger_.StageDone(run, std::move(result), env_.clock.Now())) Wake();
}

void SessionConnection::NotRun(const RunPtr& run, std::string why,
                               const Stage* stage) {
  // The ledger sets the result's task id.
  StageResult result = stage ? NotRunResult("", *stage, StepStatus::kFailure,
                                            why, "skipped: " + why)
                             : NotRunResult("", Stage{}, StepStatus::kFailure,
                                            std::move(why), "");
  absl::MutexLock lock(&mu_);
  if (ledger_.StageDone(run, std::move(result), env_.clock.Now())) Wake();
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
  // Their dispatches on disk first: a process that dies while they run
  // leaves the next one the journal to report them by.
  FlushJournal();
  std::vector<absl::Status> statuses = group_.SubmitAll(std::move(tasks));
  for (size_t i = 0; i < statuses.size(); ++i) {
    if (statuses[i].ok()) continue;
    RunPtr run;
    {
      absl::MutexLock lock(&mu_);
      run = ledger_.Find(outlines[i].first);
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
    // Step output waits here for the manager's confirmation.
    absl::StatusOr<std::unique_ptr<LogSpool>> spool =
        LogSpool::Open(env.config.StateDir() + "/log-spool",
                       static_cast<uint64_t>(env.config.log_spool_mib) << 20);
    if (!spool.ok()) return spool.status();
    // The stages it holds, for the next process should this one die.
    absl::StatusOr<std::unique_ptr<grpcv1::SessionJournal>> journal =
        grpcv1::SessionJournal::Open(env.config.StateDir() +
                                     "/session-runs.journal");
    if (!journal.ok()) return journal.status();
    if ((*journal)->torn_bytes() > 0) {
      env.log.Warn(
          "the session journal's last record was cut short by a "
          "crash and is dropped",
          {{"bytes", absl::StrCat((*journal)->torn_bytes())}});
    }
    return std::unique_ptr<ManagerConnection>(
        new grpcv1::SessionConnection(std::move(env), *std::move(target),
                                      *std::move(spool), *std::move(journal)));
  };
  if (absl::Status s = registry.Register("grpc", factory); !s.ok()) return s;
  return registry.Register("grpcs", factory);
}

}  // namespace delegate

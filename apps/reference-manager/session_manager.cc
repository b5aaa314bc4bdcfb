#include "session_manager.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "delegate/v1/session.grpc.pb.h"
#include "manager/grpc/convert.h"
#include "manager/grpc/session_batch.h"
#include "manager/grpc/tls.h"
#include "util/record_log.h"
#include "util/strings.h"

namespace delegate::reference {

namespace v1 = ::delegate::v1;
using grpcv1::DurationFromProto;
using grpcv1::DurationToProto;
using grpcv1::FromProto;
using grpcv1::ToProto;
using ServerStream =
    grpc::ServerReaderWriter<v1::ManagerMessage, v1::DelegateMessage>;

namespace {

bool Contains(const std::vector<std::string>& list, const std::string& v) {
  return std::find(list.begin(), list.end(), v) != list.end();
}

}  // namespace

class SessionManager::Impl final : public v1::DelegateSession::Service {
 public:
  Impl(SessionManagerOptions options)
      : options_(std::move(options)),
        log_(options_.log ? *options_.log : EventLog::Stdout()) {}
  ~Impl() override { Stop(); }

  absl::Status Serve(StageRunner& runner);
  void Stop();
  std::string address() const { return address_; }

  grpc::Status Connect(grpc::ServerContext* context,
                       ServerStream* stream) override;

  absl::Status Submit(std::string task_id, Stage stage, Priority priority,
                      std::shared_ptr<StageEvents> events);
  absl::Status SubmitAndFlush(std::string task_id, Stage stage,
                              Priority priority,
                              std::shared_ptr<StageEvents> events);
  absl::Status Cancel(std::string_view task_id, std::string_view reason);
  RuntimeCapacity Capacity() const;
  bool WaitAllDone(absl::Duration timeout);
  absl::StatusOr<StageSnapshot> Snapshot(const std::string& id) const;
  std::vector<StageSnapshot> Stages() const;
  std::vector<DelegateSnapshot> Delegates() const;
  std::vector<std::string> Rejections() const {
    std::lock_guard lock(mu_);
    return rejections_;
  }
  std::vector<absl::Duration> Latencies() const {
    std::lock_guard lock(mu_);
    return latencies_;
  }
  void ForgetDone();

 private:
  enum class State { kQueued, kLeased, kDone };
  struct Session;
  struct StepLog {
    std::vector<std::string> lines;
    bool closed = false;
    // Of the lines kept, as LogChunk.crc32 and size_bytes define them.
    uint32_t crc = 0;
    uint64_t bytes = 0;
    size_t emitted = 0;    // lines given to watchers (not again after a resend)
    bool damaged = false;  // damage_logs was applied
  };
  struct StageRec {
    std::string id;
    v1::Stage proto;
    std::string platform;
    std::vector<std::string> tags;
    Priority priority = Priority::kNormal;
    State state = State::kQueued;
    uint64_t token = 0;
    uint64_t lapsed_token = 0;  // the last token whose lease lapsed
    std::string lease_id;
    absl::Time lease_end;
    std::shared_ptr<Session> session;  // holding the lease, while connected
    // The delegate of each dispatch, in order: its size is the attempt
    // count, its back the latest.
    std::vector<std::string> delegates;
    uint32_t results_applied = 0;
    std::optional<StageResult> result;
    absl::flat_hash_map<std::string, v1::Ack> acks;  // applied keys
    std::set<std::string> steps_finished;
    std::map<std::string, StepLog> logs;
    uint32_t logs_resent = 0;
    uint32_t logs_checked = 0;
    absl::Time submitted;
    std::string cancel_reason;
    // Events go out in order, one thread at a time, outside mu_.
    std::shared_ptr<StageEvents> events;
    std::deque<std::function<void(StageEvents&)>> pending;  // guarded by mu_
    bool emitting = false;                                  // guarded by mu_
  };
  using RecPtr = std::shared_ptr<StageRec>;
  struct Session {
    std::string id;
    std::string name;
    std::vector<std::string> executors;
    std::vector<std::string> tags;
    uint32_t credit = 0;
    absl::flat_hash_set<std::string> leased;
    std::vector<v1::ManagerMessage> outbox;
    std::condition_variable cv;
    bool writer_waiting = false;
    bool ended = false;
    absl::Time last_heard;
    grpc::ServerContext* context = nullptr;
  };
  using SessionPtr = std::shared_ptr<Session>;

  // All REQUIRE mu_ held.
  void DispatchLocked();
  bool EligibleLocked(const Session& session, const StageRec& rec) const;
  void SendLocked(Session& session, v1::ManagerMessage message) {
    session.outbox.push_back(std::move(message));
    if (session.writer_waiting) session.cv.notify_one();
  }
  void LapseLocked(const RecPtr& rec);
  void FinishLocked(const RecPtr& rec, StageResult result);
  void EmitLocked(const RecPtr& rec, std::function<void(StageEvents&)> event);
  // Runs the events EmitLocked queued. REQUIRES: mu_ not held.
  void FlushEvents();
  void HandleLocked(Session& session, const v1::DelegateMessage& message);
  // The stage a report is for, or the Ack that answers it at once.
  RecPtr CheckReportLocked(const v1::ReportHeader& header, v1::Ack* answer);
  // Turns an accepted answer into a refusal of a malformed report; returns
  // the null stage AnswerLocked then takes.
  static RecPtr RefuseInvalid(const absl::Status& why, v1::Ack* ack) {
    ack->set_accepted(false);
    ack->set_refusal(v1::Ack::REFUSAL_INVALID);
    ack->set_message(std::string(why.message()));
    return nullptr;
  }
  void AnswerLocked(Session& session, const RecPtr& rec, v1::Ack ack) {
    if (rec && ack.accepted()) rec->acks[ack.idempotency_key()] = ack;
    v1::ManagerMessage m;
    *m.mutable_ack() = std::move(ack);
    SendLocked(session, std::move(m));
  }
  void Reject(ServerStream* stream, v1::HelloReject::Reason reason,
              std::string message);
  void Ticker();
  StageSnapshot SnapshotLocked(const StageRec& rec) const;

  const SessionManagerOptions options_;
  EventLog& log_;
  std::unique_ptr<grpc::Service> runtime_service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;

  mutable std::mutex mu_;
  std::condition_variable done_cv_;
  std::condition_variable ticker_cv_;
  bool stopping_ = false;
  uint64_t next_session_ = 1;
  absl::flat_hash_map<std::string, RecPtr> stages_;
  std::list<RecPtr> queues_[3];  // by Priority
  absl::flat_hash_set<RecPtr> leased_;
  std::map<std::string, SessionPtr> sessions_;  // by delegate name
  size_t round_robin_ = 0;
  size_t not_done_ = 0;
  uint64_t completed_ = 0;
  std::vector<std::string> rejections_;
  std::vector<absl::Duration> latencies_;
  std::vector<RecPtr> to_flush_;  // stages with events to run
  std::thread ticker_;
};

absl::Status SessionManager::Impl::Serve(StageRunner& runner) {
  runtime_service_ = NewRuntimeService(runner);
  std::shared_ptr<grpc::ServerCredentials> credentials =
      grpc::InsecureServerCredentials();
  const grpcv1::ServerTlsFiles files{
      options_.tls_cert_file, options_.tls_key_file, options_.client_ca_file,
      "--tls-cert",           "--tls-key",           "--client-ca"};
  if (grpcv1::WantsTls(files)) {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> tls =
        grpcv1::TlsServerCredentials(files);
    if (!tls.ok()) return tls.status();
    credentials = *std::move(tls);
  }
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options_.listen, credentials, &port);
  builder.RegisterService(this);
  builder.RegisterService(runtime_service_.get());
  builder.SetMaxReceiveMessageSize(64 << 20);
  server_ = builder.BuildAndStart();
  if (!server_ || port == 0) {
    server_.reset();
    return absl::UnavailableError(
        absl::StrCat("--grpc-listen: cannot listen on ", options_.listen));
  }
  const size_t colon = options_.listen.rfind(':');
  address_ = absl::StrCat(options_.listen.substr(0, colon), ":", port);
  ticker_ = std::thread([this] { Ticker(); });
  return absl::OkStatus();
}

void SessionManager::Impl::Stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    for (auto& [name, session] : sessions_) {
      session->ended = true;
      session->cv.notify_all();
      if (session->context) session->context->TryCancel();
    }
    ticker_cv_.notify_all();
    done_cv_.notify_all();
  }
  if (server_) {
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(200));
  }
  if (ticker_.joinable()) ticker_.join();
}

void SessionManager::Impl::Reject(ServerStream* stream,
                                  v1::HelloReject::Reason reason,
                                  std::string message) {
  log_.Error(
      "refused a delegate's session",
      {{"reason", v1::HelloReject::Reason_Name(reason)}, {"message", message}});
  v1::ManagerMessage m;
  v1::HelloReject& reject = *m.mutable_hello_reject();
  reject.set_reason(reason);
  reject.set_message(message);
  for (uint32_t v : options_.supported_versions) {
    reject.add_supported_versions(v);
  }
  {
    std::lock_guard lock(mu_);
    rejections_.push_back(std::move(message));
  }
  stream->Write(m);
}

grpc::Status SessionManager::Impl::Connect(grpc::ServerContext* context,
                                           ServerStream* stream) {
  v1::DelegateMessage first;
  if (!stream->Read(&first)) return grpc::Status::OK;
  if (!first.has_hello()) {
    Reject(stream, v1::HelloReject::REASON_INVALID_HELLO,
           "the first message of a session must be Hello");
    return grpc::Status::OK;
  }
  const v1::Hello& hello = first.hello();
  const std::string who =
      hello.delegate_name().empty()
          ? std::string("a delegate")
          : absl::StrCat("delegate ", hello.delegate_name());
  if (std::find(options_.supported_versions.begin(),
                options_.supported_versions.end(), hello.protocol_version()) ==
      options_.supported_versions.end()) {
    Reject(stream, v1::HelloReject::REASON_VERSION_MISMATCH,
           absl::StrCat(who, " (", hello.delegate_version(),
                        ") speaks DelegateSession protocol version ",
                        hello.protocol_version(), "; this manager speaks ",
                        absl::StrJoin(options_.supported_versions, ", "),
                        ": upgrade the older side"));
    return grpc::Status::OK;
  }
  if (hello.delegate_name().empty()) {
    Reject(stream, v1::HelloReject::REASON_INVALID_HELLO,
           "Hello.delegate_name is empty: every delegate needs a stable "
           "name (HARNESS_NAME)");
    return grpc::Status::OK;
  }

  auto session = std::make_shared<Session>();
  session->name = hello.delegate_name();
  session->executors.assign(hello.executors().begin(), hello.executors().end());
  session->tags.assign(hello.tags().begin(), hello.tags().end());
  session->context = context;
  v1::ManagerMessage ack_message;
  bool stopping = false;
  {
    std::lock_guard lock(mu_);
    stopping = stopping_;
  }
  if (stopping) {
    Reject(stream, v1::HelloReject::REASON_UNAVAILABLE,
           "the manager is shutting down");
    return grpc::Status::OK;
  }
  {
    std::lock_guard lock(mu_);
    // A delegate that comes back under its name replaces its old session
    // (which may not have noticed yet that the connection is gone).
    if (auto old = sessions_.find(session->name); old != sessions_.end()) {
      log_.Warn(
          "a new session replaces the delegate's old one",
          {{"delegate", session->name}, {"old_session", old->second->id}});
      old->second->ended = true;
      old->second->cv.notify_all();
      if (old->second->context) old->second->context->TryCancel();
      sessions_.erase(old);
    }
    session->id = absl::StrCat("session-", next_session_++);
    session->last_heard = absl::Now();
    sessions_[session->name] = session;
    v1::HelloAck& ack = *ack_message.mutable_hello_ack();
    ack.set_protocol_version(hello.protocol_version());
    ack.set_session_id(session->id);
    *ack.mutable_ping_interval() = DurationToProto(options_.ping_interval);
    const absl::Time now = absl::Now();
    for (const v1::HeldLease& held : hello.held_leases()) {
      auto it = stages_.find(held.stage_id());
      const bool current = it != stages_.end() &&
                           it->second->token == held.fencing_token() &&
                           it->second->lease_id == held.lease_id() &&
                           it->second->state != State::kQueued;
      if (current) {
        const RecPtr& rec = it->second;
        rec->session = session;
        if (rec->state == State::kLeased) {
          rec->lease_end = now + options_.lease_duration;
          session->leased.insert(rec->id);
          if (!rec->cancel_reason.empty()) {  // asked while it was away
            v1::ManagerMessage m;
            m.mutable_cancel()->set_stage_id(rec->id);
            m.mutable_cancel()->set_lease_id(rec->lease_id);
            m.mutable_cancel()->set_reason(rec->cancel_reason);
            session->outbox.push_back(std::move(m));
          }
        }
        v1::LeaseRenewed& resumed = *ack.add_resumed();
        resumed.set_stage_id(rec->id);
        resumed.set_lease_id(rec->lease_id);
        resumed.set_fencing_token(rec->token);
        *resumed.mutable_lease_duration() =
            DurationToProto(options_.lease_duration);
        for (const auto& [step, log] : rec->logs) {
          v1::LogAck& log_ack = *ack.add_log_acks();
          log_ack.set_stage_id(rec->id);
          log_ack.set_step_id(step);
          log_ack.set_fencing_token(rec->token);
          log_ack.set_offset(log.lines.size());
          log_ack.set_closed(log.closed);
        }
        continue;
      }
      v1::LeaseLost& lost = *ack.add_lost();
      lost.set_stage_id(held.stage_id());
      lost.set_lease_id(held.lease_id());
      lost.set_fencing_token(held.fencing_token());
      if (it == stages_.end() || held.fencing_token() > it->second->token) {
        lost.set_reason(v1::LeaseLost::REASON_UNKNOWN_LEASE);
        lost.set_message("the manager does not know this lease");
      } else if (held.fencing_token() == it->second->lapsed_token) {
        lost.set_reason(v1::LeaseLost::REASON_EXPIRED);
        lost.set_message("the lease lapsed; the stage was queued again");
      } else {
        lost.set_reason(v1::LeaseLost::REASON_SUPERSEDED);
        lost.set_message("the stage was dispatched again");
      }
    }
    // What was leased to this delegate and it does not hold (in flight when
    // its stream broke) goes to the queue at once, not at the lease's end.
    std::vector<RecPtr> not_held;
    for (const RecPtr& rec : leased_) {
      if (rec->delegates.back() == session->name && rec->session != session) {
        not_held.push_back(rec);
      }
    }
    for (const RecPtr& rec : not_held) LapseLocked(rec);
    log_.Info("delegate connected",
              {{"delegate", session->name},
               {"session", session->id},
               {"version", hello.delegate_version()},
               {"resumed", absl::StrCat(ack.resumed_size())}});
  }
  if (!stream->Write(ack_message)) {
    std::lock_guard lock(mu_);
    auto it = sessions_.find(session->name);
    if (it != sessions_.end() && it->second == session) sessions_.erase(it);
    for (const std::string& id : session->leased) {
      auto rec = stages_.find(id);
      if (rec != stages_.end() && rec->second->session == session) {
        rec->second->session = nullptr;  // its lease runs down as usual
      }
    }
    return grpc::Status::OK;
  }

  std::thread writer([this, session, stream] {
    std::vector<v1::ManagerMessage> batch;
    absl::Time previous_write = absl::InfinitePast();
    while (true) {
      // Under load, let a batch gather for a moment: one wake and one flush
      // for many messages.
      const absl::Time now = absl::Now();
      if (now - previous_write < absl::Milliseconds(1)) {
        absl::SleepFor(absl::Microseconds(100));
      }
      previous_write = now;
      {
        std::unique_lock lock(mu_);
        while (session->outbox.empty() && !session->ended) {
          session->writer_waiting = true;
          session->cv.wait(lock);
          session->writer_waiting = false;
        }
        if (session->outbox.empty()) return;
        batch.swap(session->outbox);
      }
      if (!stream->Write(grpcv1::PackBatch(batch))) {
        session->context->TryCancel();
        std::lock_guard lock(mu_);
        session->ended = true;
        return;
      }
    }
  });

  v1::DelegateMessage message;
  bool protocol_error = false;
  while (stream->Read(&message)) {
    {
      std::lock_guard lock(mu_);
      session->last_heard = absl::Now();
      if (message.has_hello()) {
        protocol_error = true;
        break;
      }
      if (message.has_batch()) {
        for (const v1::DelegateMessage& m : message.batch().messages()) {
          if (m.has_hello() || m.has_batch()) {
            protocol_error = true;
            break;
          }
          HandleLocked(*session, m);
        }
        if (protocol_error) break;
      } else {
        HandleLocked(*session, message);
      }
    }
    FlushEvents();
  }
  const bool clean = !context->IsCancelled() && !protocol_error;
  {
    std::lock_guard lock(mu_);
    session->ended = true;
    session->cv.notify_all();
  }
  writer.join();
  {
    std::lock_guard lock(mu_);
    auto it = sessions_.find(session->name);
    if (it != sessions_.end() && it->second == session) sessions_.erase(it);
    // LapseLocked erases from session->leased: walk a copy.
    const std::vector<std::string> leased(session->leased.begin(),
                                          session->leased.end());
    for (const std::string& id : leased) {
      auto rec = stages_.find(id);
      if (rec == stages_.end() || rec->second->session != session) continue;
      rec->second->session = nullptr;
      // A delegate that closes its stream cleanly holds nothing: what was
      // leased to it was still on the way and can go elsewhere at once.
      if (clean && rec->second->state == State::kLeased) {
        LapseLocked(rec->second);
      }
    }
    log_.Info(clean ? "delegate disconnected" : "delegate connection lost",
              {{"delegate", session->name}, {"session", session->id}});
    DispatchLocked();
  }
  FlushEvents();
  if (protocol_error) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "Hello may only be the first message of a session");
  }
  return grpc::Status::OK;
}

bool SessionManager::Impl::EligibleLocked(const Session& session,
                                          const StageRec& rec) const {
  if (session.credit == 0 || session.ended) return false;
  if (!Contains(session.executors, rec.platform)) return false;
  for (const std::string& tag : rec.tags) {
    if (!Contains(session.tags, tag)) return false;
  }
  return true;
}

void SessionManager::Impl::DispatchLocked() {
  if (sessions_.empty()) return;
  std::vector<SessionPtr> sessions;
  uint64_t credit = 0;
  for (auto& [name, s] : sessions_) {
    sessions.push_back(s);
    credit += s->ended ? 0 : s->credit;
  }
  const absl::Time now = absl::Now();
  for (auto& queue : queues_) {
    for (auto it = queue.begin(); it != queue.end() && credit > 0;) {
      const RecPtr& rec = *it;
      // Not back to a delegate that let this stage's lease lapse, while
      // another one can take it.
      const std::string* avoid =
          !rec->delegates.empty() && rec->lapsed_token == rec->token
              ? &rec->delegates.back()
              : nullptr;
      SessionPtr chosen;
      for (int pass = 0; pass < 2 && chosen == nullptr; ++pass) {
        for (size_t i = 0; i < sessions.size(); ++i) {
          const SessionPtr& s = sessions[(round_robin_ + i) % sessions.size()];
          if (pass == 0 && avoid != nullptr && s->name == *avoid) continue;
          if (EligibleLocked(*s, *rec)) {
            chosen = s;
            round_robin_ = (round_robin_ + i + 1) % sessions.size();
            break;
          }
        }
      }
      if (chosen == nullptr) {
        ++it;
        continue;
      }
      --chosen->credit;
      --credit;
      rec->state = State::kLeased;
      ++rec->token;
      rec->logs.clear();  // each attempt's log starts at offset 0
      rec->steps_finished.clear();
      rec->lease_id = absl::StrCat(rec->id, "-lease-", rec->token);
      rec->lease_end = now + options_.lease_duration;
      rec->session = chosen;
      rec->delegates.push_back(chosen->name);
      chosen->leased.insert(rec->id);
      leased_.insert(rec);
      v1::ManagerMessage m;
      v1::Dispatch& d = *m.mutable_dispatch();
      d.set_stage_id(rec->id);
      d.set_lease_id(rec->lease_id);
      d.set_fencing_token(rec->token);
      *d.mutable_lease_duration() = DurationToProto(options_.lease_duration);
      *d.mutable_stage() = rec->proto;
      d.set_attempt(static_cast<uint32_t>(rec->delegates.size()));
      SendLocked(*chosen, std::move(m));
      if (rec->delegates.size() == 1) {
        EmitLocked(rec, [platform = rec->platform, name = chosen->name](
                            StageEvents& e) { e.Started(platform, name); });
      }
      it = queue.erase(it);
    }
  }
}

void SessionManager::Impl::LapseLocked(const RecPtr& rec) {
  leased_.erase(rec);
  if (rec->session) {
    rec->session->leased.erase(rec->id);
    v1::ManagerMessage m;
    v1::LeaseLost& lost = *m.mutable_lease_lost();
    lost.set_stage_id(rec->id);
    lost.set_lease_id(rec->lease_id);
    lost.set_fencing_token(rec->token);
    lost.set_reason(v1::LeaseLost::REASON_EXPIRED);
    lost.set_message("the lease was not renewed in time");
    SendLocked(*rec->session, std::move(m));
    rec->session = nullptr;
  }
  rec->lapsed_token = rec->token;
  if (!rec->cancel_reason.empty()) {
    StageResult result;
    result.task_id = rec->id;
    result.stage = rec->proto.name();
    result.status = StepStatus::kCancelled;
    result.error = rec->cancel_reason;
    EmitLocked(rec, [result](StageEvents& e) { e.Finished(result); });
    FinishLocked(rec, std::move(result));
    return;
  }
  log_.Warn("lease lapsed; queueing the stage again",
            {{"stage", rec->id},
             {"delegate", rec->delegates.back()},
             {"fencing_token", absl::StrCat(rec->token)}});
  rec->state = State::kQueued;
  queues_[static_cast<int>(rec->priority)].push_front(rec);
}

void SessionManager::Impl::FinishLocked(const RecPtr& rec, StageResult result) {
  rec->state = State::kDone;
  leased_.erase(rec);
  if (rec->session) rec->session->leased.erase(rec->id);
  ++rec->results_applied;
  ++completed_;
  latencies_.push_back(absl::Now() - rec->submitted);
  rec->result = result;
  if (not_done_ > 0) --not_done_;
  done_cv_.notify_all();
}

void SessionManager::Impl::EmitLocked(const RecPtr& rec,
                                      std::function<void(StageEvents&)> event) {
  if (!rec->events) return;
  rec->pending.push_back(std::move(event));
  if (!rec->emitting) {
    rec->emitting = true;
    to_flush_.push_back(rec);
  }
}

void SessionManager::Impl::FlushEvents() {
  std::vector<RecPtr> recs;
  {
    std::lock_guard lock(mu_);
    if (to_flush_.empty()) return;
    recs.swap(to_flush_);
  }
  for (const RecPtr& rec : recs) {
    std::unique_lock lock(mu_);
    while (!rec->pending.empty()) {
      std::function<void(StageEvents&)> event = std::move(rec->pending.front());
      rec->pending.pop_front();
      lock.unlock();
      event(*rec->events);
      lock.lock();
    }
    rec->emitting = false;
  }
}

SessionManager::Impl::RecPtr SessionManager::Impl::CheckReportLocked(
    const v1::ReportHeader& header, v1::Ack* answer) {
  answer->set_idempotency_key(header.idempotency_key());
  auto it = stages_.find(header.stage_id());
  if (header.idempotency_key().empty()) {
    answer->set_refusal(v1::Ack::REFUSAL_INVALID);
    answer->set_message("header.idempotency_key is empty");
    return nullptr;
  }
  if (it == stages_.end()) {
    answer->set_refusal(v1::Ack::REFUSAL_UNKNOWN_LEASE);
    answer->set_message("the manager does not know this stage");
    return nullptr;
  }
  const RecPtr& rec = it->second;
  if (auto seen = rec->acks.find(header.idempotency_key());
      seen != rec->acks.end()) {
    *answer = seen->second;  // a repeat: the first answer
    return nullptr;
  }
  if (header.fencing_token() < rec->token ||
      (header.fencing_token() == rec->lapsed_token &&
       rec->token == rec->lapsed_token)) {
    answer->set_refusal(v1::Ack::REFUSAL_STALE_FENCING_TOKEN);
    answer->set_message(absl::StrCat(
        "fencing token ", header.fencing_token(),
        " no longer holds the stage: its lease lapsed or the stage was "
        "dispatched again"));
    return nullptr;
  }
  if (header.fencing_token() != rec->token ||
      header.lease_id() != rec->lease_id || rec->state == State::kQueued) {
    answer->set_refusal(v1::Ack::REFUSAL_UNKNOWN_LEASE);
    answer->set_message("the manager does not know this lease");
    return nullptr;
  }
  answer->set_accepted(true);
  return rec;
}

void SessionManager::Impl::HandleLocked(Session& session,
                                        const v1::DelegateMessage& message) {
  switch (message.body_case()) {
    case v1::DelegateMessage::kCredit:
      session.credit += message.credit().slots();
      DispatchLocked();
      return;
    case v1::DelegateMessage::kLeaseRenew: {
      const v1::LeaseRenew& renew = message.lease_renew();
      auto it = stages_.find(renew.stage_id());
      v1::ManagerMessage m;
      if (it != stages_.end() && it->second->token == renew.fencing_token() &&
          it->second->lease_id == renew.lease_id() &&
          it->second->state != State::kQueued) {
        it->second->lease_end = absl::Now() + options_.lease_duration;
        v1::LeaseRenewed& renewed = *m.mutable_lease_renewed();
        renewed.set_stage_id(renew.stage_id());
        renewed.set_lease_id(renew.lease_id());
        renewed.set_fencing_token(renew.fencing_token());
        *renewed.mutable_lease_duration() =
            DurationToProto(options_.lease_duration);
      } else {
        v1::LeaseLost& lost = *m.mutable_lease_lost();
        lost.set_stage_id(renew.stage_id());
        lost.set_lease_id(renew.lease_id());
        lost.set_fencing_token(renew.fencing_token());
        if (it == stages_.end()) {
          lost.set_reason(v1::LeaseLost::REASON_UNKNOWN_LEASE);
        } else if (renew.fencing_token() == it->second->lapsed_token) {
          lost.set_reason(v1::LeaseLost::REASON_EXPIRED);
        } else {
          lost.set_reason(v1::LeaseLost::REASON_SUPERSEDED);
        }
        lost.set_message("the manager no longer honours this lease");
      }
      SendLocked(session, std::move(m));
      return;
    }
    case v1::DelegateMessage::kStepStarted: {
      const v1::StepStartedReport& report = message.step_started();
      v1::Ack ack;
      RecPtr rec = CheckReportLocked(report.header(), &ack);
      if (rec) {
        std::string name = report.step_id();
        for (const v1::Step& step : rec->proto.steps()) {
          if (step.id() == report.step_id() && !step.name().empty()) {
            name = step.name();
          }
        }
        EmitLocked(rec, [id = report.step_id(), name](StageEvents& e) {
          e.StepStarted(id, name);
        });
      }
      AnswerLocked(session, rec, std::move(ack));
      return;
    }
    case v1::DelegateMessage::kStepResult: {
      const v1::StepResultReport& report = message.step_result();
      v1::Ack ack;
      RecPtr rec = CheckReportLocked(report.header(), &ack);
      if (rec) {
        absl::StatusOr<StepResult> result =
            FromProto(report.result(), "step_result.result");
        if (!result.ok()) {
          rec = RefuseInvalid(result.status(), &ack);
        } else {
          rec->steps_finished.insert(result->id);
          EmitLocked(rec, [r = *std::move(result)](StageEvents& e) {
            e.StepFinished(r);
          });
        }
      }
      AnswerLocked(session, rec, std::move(ack));
      return;
    }
    case v1::DelegateMessage::kStageResult: {
      const v1::StageResultReport& report = message.stage_result();
      v1::Ack ack;
      RecPtr rec = CheckReportLocked(report.header(), &ack);
      if (rec) {
        absl::StatusOr<StageResult> result =
            FromProto(report.result(), "stage_result.result");
        if (!result.ok()) {
          rec = RefuseInvalid(result.status(), &ack);
        } else if (rec->state != State::kDone) {
          result->task_id = rec->id;
          for (const StepResult& step : result->steps) {
            if (rec->steps_finished.insert(step.id).second) {
              EmitLocked(rec, [step](StageEvents& e) { e.StepFinished(step); });
            }
          }
          EmitLocked(rec, [r = *result](StageEvents& e) { e.Finished(r); });
          FinishLocked(rec, *std::move(result));
        }
      }
      AnswerLocked(session, rec, std::move(ack));
      return;
    }
    case v1::DelegateMessage::kLog: {
      const v1::LogChunkReport& report = message.log();
      const v1::LogChunk& chunk = report.chunk();
      auto it = stages_.find(chunk.task_id());
      // The latest dispatch's, also once its result is in: a log may still
      // be asked for again then.
      if (it == stages_.end() || report.fencing_token() != it->second->token ||
          report.lease_id() != it->second->lease_id ||
          it->second->state == State::kQueued) {
        return;  // not kept; a renewal or report tells the delegate why
      }
      const RecPtr& rec = it->second;
      StepLog& log = rec->logs[chunk.step_id()];
      absl::StatusOr<std::vector<LogLine>> lines =
          grpcv1::LogLinesFromProto(chunk, "log.chunk");
      if (lines.ok() && chunk.offset() <= log.lines.size()) {
        std::vector<LogLine> fresh;
        for (const LogLine& line : *lines) {
          if (line.number - 1 == log.lines.size()) {
            std::string text(line.text);
            if (options_.damage_logs && !log.damaged) {
              text += " (damaged)";
              log.damaged = true;
            }
            log.crc = Crc32(text, log.crc);
            log.bytes += text.size();
            if (!line.partial) {
              log.crc = Crc32("\n", log.crc);
              ++log.bytes;
            }
            log.lines.push_back(std::move(text));
            if (log.lines.size() > log.emitted) {
              fresh.push_back(line);
              log.emitted = log.lines.size();
            }
          }
        }
        if (chunk.closed() &&
            chunk.offset() + chunk.lines_size() == log.lines.size()) {
          if (chunk.has_crc32() && chunk.has_size_bytes() &&
              (chunk.crc32() != log.crc || chunk.size_bytes() != log.bytes)) {
            // The copy is not the delegate's log: all of it again.
            log_.Warn(
                "a log did not match its CRC-32 at its close; asking "
                "for it again from offset 0",
                {{"stage", rec->id},
                 {"step", chunk.step_id()},
                 {"lines", absl::StrCat(log.lines.size())},
                 {"bytes",
                  absl::StrCat(log.bytes, " of ", chunk.size_bytes())}});
            log.lines.clear();
            log.crc = 0;
            log.bytes = 0;
            ++rec->logs_resent;
          } else if (!log.closed) {
            log.closed = true;
            if (chunk.has_crc32()) ++rec->logs_checked;
          }
        }
        if (!fresh.empty() && rec->events) {
          // The lines view into `chunk`: the event keeps its own copy.
          auto copy = std::make_shared<v1::LogChunk>(chunk);
          EmitLocked(rec, [copy, from = fresh.front().number](StageEvents& e) {
            absl::StatusOr<std::vector<LogLine>> all =
                grpcv1::LogLinesFromProto(*copy, "log.chunk");
            if (!all.ok()) return;
            for (const LogLine& line : *all) {
              if (line.number >= from) e.Log(line);
            }
          });
        }
      }
      v1::ManagerMessage m;
      v1::LogAck& ack = *m.mutable_log_ack();
      ack.set_stage_id(rec->id);
      ack.set_step_id(chunk.step_id());
      ack.set_fencing_token(rec->token);
      ack.set_offset(log.lines.size());
      ack.set_closed(log.closed);
      SendLocked(session, std::move(m));
      return;
    }
    case v1::DelegateMessage::kPing: {
      v1::ManagerMessage m;
      m.mutable_pong()->set_nonce(message.ping().nonce());
      SendLocked(session, std::move(m));
      return;
    }
    default:
      return;
  }
}

void SessionManager::Impl::Ticker() {
  const absl::Duration tick =
      std::clamp(options_.lease_duration / 20, absl::Milliseconds(10),
                 absl::Milliseconds(250));
  std::unique_lock lock(mu_);
  while (!stopping_) {
    ticker_cv_.wait_for(lock, absl::ToChronoMilliseconds(tick));
    const absl::Time now = absl::Now();
    std::vector<RecPtr> lapsed;
    for (const RecPtr& rec : leased_) {
      if (rec->state == State::kLeased && now >= rec->lease_end) {
        lapsed.push_back(rec);
      }
    }
    for (const RecPtr& rec : lapsed) LapseLocked(rec);
    for (auto& [name, session] : sessions_) {
      if (now - session->last_heard > 3 * options_.ping_interval &&
          session->context) {
        session->context->TryCancel();
      }
    }
    if (!lapsed.empty()) DispatchLocked();
    if (!to_flush_.empty()) {
      lock.unlock();
      FlushEvents();
      lock.lock();
    }
  }
}

absl::Status SessionManager::Impl::Submit(std::string task_id, Stage stage,
                                          Priority priority,
                                          std::shared_ptr<StageEvents> events) {
  auto rec = std::make_shared<StageRec>();
  rec->id = std::move(task_id);
  rec->platform = stage.platform.empty() ? "host" : stage.platform;
  rec->tags = stage.tags;
  rec->proto = ToProto(stage);
  rec->priority = priority;
  rec->events = std::move(events);
  rec->submitted = absl::Now();
  std::lock_guard lock(mu_);
  if (stopping_) {
    return absl::UnavailableError("the manager is shutting down");
  }
  if (!stages_.emplace(rec->id, rec).second) {
    return absl::AlreadyExistsError(
        absl::StrCat("stage ", rec->id, " was submitted before"));
  }
  ++not_done_;
  queues_[static_cast<int>(priority)].push_back(rec);
  DispatchLocked();
  return absl::OkStatus();
}

absl::Status SessionManager::Impl::SubmitAndFlush(
    std::string task_id, Stage stage, Priority priority,
    std::shared_ptr<StageEvents> events) {
  absl::Status s =
      Submit(std::move(task_id), std::move(stage), priority, std::move(events));
  FlushEvents();
  return s;
}

absl::Status SessionManager::Impl::Cancel(std::string_view task_id,
                                          std::string_view reason) {
  {
    std::lock_guard lock(mu_);
    auto it = stages_.find(AbslView(task_id));
    if (it == stages_.end() || it->second->state == State::kDone) {
      return absl::NotFoundError(
          absl::StrCat("no queued or running stage ", AbslView(task_id)));
    }
    RecPtr rec = it->second;
    rec->cancel_reason = reason.empty() ? "cancelled" : std::string(reason);
    if (rec->state == State::kQueued) {
      auto& queue = queues_[static_cast<int>(rec->priority)];
      queue.remove(rec);
      StageResult result;
      result.task_id = rec->id;
      result.stage = rec->proto.name();
      result.status = StepStatus::kCancelled;
      result.error = rec->cancel_reason;
      for (const v1::Step& step : rec->proto.steps()) {
        StepResult r;
        r.id = step.id();
        r.status = StepStatus::kSkipped;
        r.error = "skipped: " + rec->cancel_reason;
        result.steps.push_back(r);
        EmitLocked(rec, [r](StageEvents& e) { e.StepFinished(r); });
      }
      EmitLocked(rec, [result](StageEvents& e) { e.Finished(result); });
      FinishLocked(rec, std::move(result));
    } else if (rec->session) {
      v1::ManagerMessage m;
      m.mutable_cancel()->set_stage_id(rec->id);
      m.mutable_cancel()->set_lease_id(rec->lease_id);
      m.mutable_cancel()->set_reason(rec->cancel_reason);
      SendLocked(*rec->session, std::move(m));
    }
  }
  FlushEvents();
  return absl::OkStatus();
}

RuntimeCapacity SessionManager::Impl::Capacity() const {
  std::lock_guard lock(mu_);
  RuntimeCapacity c;
  c.running = static_cast<uint32_t>(leased_.size());
  for (const auto& queue : queues_) c.queued += queue.size();
  c.completed = completed_;
  std::set<std::string> platforms;
  for (const auto& [name, s] : sessions_) {
    platforms.insert(s->executors.begin(), s->executors.end());
  }
  c.platforms.assign(platforms.begin(), platforms.end());
  c.draining = stopping_;
  return c;
}

bool SessionManager::Impl::WaitAllDone(absl::Duration timeout) {
  std::unique_lock lock(mu_);
  return done_cv_.wait_for(lock, absl::ToChronoMilliseconds(timeout), [&] {
    return not_done_ == 0 || stopping_;
  }) && not_done_ == 0;
}

StageSnapshot SessionManager::Impl::SnapshotLocked(const StageRec& rec) const {
  StageSnapshot s;
  s.id = rec.id;
  s.state = rec.state == State::kQueued   ? StageSnapshot::State::kQueued
            : rec.state == State::kLeased ? StageSnapshot::State::kLeased
                                          : StageSnapshot::State::kDone;
  s.attempts = static_cast<uint32_t>(rec.delegates.size());
  s.fencing_token = rec.token;
  if (!rec.delegates.empty()) s.delegate = rec.delegates.back();
  s.delegates = rec.delegates;
  s.results_applied = rec.results_applied;
  s.result = rec.result;
  for (const auto& [step, log] : rec.logs) s.logs.emplace_back(step, log.lines);
  s.logs_resent = rec.logs_resent;
  s.logs_checked = rec.logs_checked;
  return s;
}

absl::StatusOr<StageSnapshot> SessionManager::Impl::Snapshot(
    const std::string& id) const {
  std::lock_guard lock(mu_);
  auto it = stages_.find(id);
  if (it == stages_.end()) {
    return absl::NotFoundError(absl::StrCat("no stage ", id));
  }
  return SnapshotLocked(*it->second);
}

std::vector<StageSnapshot> SessionManager::Impl::Stages() const {
  std::lock_guard lock(mu_);
  std::vector<StageSnapshot> out;
  for (const auto& [id, rec] : stages_) out.push_back(SnapshotLocked(*rec));
  std::sort(out.begin(), out.end(),
            [](const StageSnapshot& a, const StageSnapshot& b) {
              return a.id < b.id;
            });
  return out;
}

std::vector<DelegateSnapshot> SessionManager::Impl::Delegates() const {
  std::lock_guard lock(mu_);
  std::vector<DelegateSnapshot> out;
  for (const auto& [name, s] : sessions_) {
    out.push_back(DelegateSnapshot{s->name, s->id, s->executors, s->tags,
                                   s->credit, s->leased.size()});
  }
  return out;
}

void SessionManager::Impl::ForgetDone() {
  std::lock_guard lock(mu_);
  for (auto it = stages_.begin(); it != stages_.end();) {
    auto next = std::next(it);
    if (it->second->state == State::kDone && !it->second->emitting) {
      stages_.erase(it);
    }
    it = next;
  }
  latencies_.clear();
}

// ------------------------------------------------------------ the facade

absl::StatusOr<std::unique_ptr<SessionManager>> SessionManager::Start(
    SessionManagerOptions options) {
  std::unique_ptr<SessionManager> manager(
      new SessionManager(std::make_unique<Impl>(std::move(options))));
  if (absl::Status s = manager->impl_->Serve(*manager); !s.ok()) return s;
  return manager;
}

SessionManager::SessionManager(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
SessionManager::~SessionManager() { Stop(); }
std::string SessionManager::address() const { return impl_->address(); }
void SessionManager::Stop() { impl_->Stop(); }
absl::Status SessionManager::Submit(std::string task_id, Stage stage,
                                    Priority priority,
                                    std::shared_ptr<StageEvents> events) {
  return impl_->SubmitAndFlush(std::move(task_id), std::move(stage), priority,
                               std::move(events));
}
absl::Status SessionManager::Cancel(std::string_view task_id,
                                    std::string_view reason) {
  return impl_->Cancel(task_id, reason);
}
RuntimeCapacity SessionManager::Capacity() const { return impl_->Capacity(); }
RuntimeHealth SessionManager::Health() const {
  RuntimeHealth health;
  health.delegate_name = "reference-manager";
  const RuntimeCapacity c = impl_->Capacity();
  if (c.draining) {
    health.state = RuntimeHealth::State::kDraining;
    health.message = "the manager is shutting down";
  } else if (c.platforms.empty()) {
    health.state = RuntimeHealth::State::kNotServing;
    health.message = "no delegate is connected: stages wait in the queue";
  }
  return health;
}
bool SessionManager::WaitAllDone(absl::Duration timeout) {
  return impl_->WaitAllDone(timeout);
}
absl::StatusOr<StageSnapshot> SessionManager::Snapshot(
    const std::string& id) const {
  return impl_->Snapshot(id);
}
std::vector<StageSnapshot> SessionManager::Stages() const {
  return impl_->Stages();
}
std::vector<DelegateSnapshot> SessionManager::Delegates() const {
  return impl_->Delegates();
}
std::vector<std::string> SessionManager::Rejections() const {
  return impl_->Rejections();
}
std::vector<absl::Duration> SessionManager::Latencies() const {
  return impl_->Latencies();
}
void SessionManager::ForgetDone() { impl_->ForgetDone(); }

}  // namespace delegate::reference

// RuntimeService over a StageRunner (runtime.proto), with the sync gRPC API:
// each call has a thread of gRPC's pool; a watch's thread reads the stage's
// in-memory journal, so a slow watcher holds up only itself.
#include "delegate/runtime_service.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <mutex>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "delegate/v1/runtime.grpc.pb.h"
#include "delegate/version.h"
#include "manager/grpc/convert.h"
#include "manager/grpc/tls.h"
#include "runtime/stage_journal.h"
#include "util/strings.h"

namespace delegate {
namespace {

using runtime::StageJournal;

// How often a waiting call looks at its client and at shutdown.
constexpr absl::Duration kPollInterval = absl::Milliseconds(100);
// Events a watch takes from the journal at a time.
constexpr size_t kEventsPerRead = 64;
// How long Shutdown lets calls end before gRPC cancels them.
constexpr auto kShutdownGrace = std::chrono::seconds(2);
constexpr size_t kMaxTaskIdBytes = 256;
constexpr size_t kMaxStepIdBytes = 128;

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()),
                      std::string(s.message()));
}

grpc::Status Invalid(std::string message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::move(message));
}

bool IsAsciiAlnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9');
}

// [A-Za-z0-9_.-] plus `extra`, 1 to `max` bytes.
bool IsId(std::string_view s, size_t max, std::string_view extra) {
  if (s.empty() || s.size() > max) return false;
  for (char c : s) {
    if (!IsAsciiAlnum(c) && c != '_' && c != '.' && c != '-' &&
        extra.find(c) == std::string_view::npos) {
      return false;
    }
  }
  return true;
}

// What a stage file's parser refuses and a converted proto may still hold.
// Messages name fields, never their values.
absl::Status CheckStageShape(const Stage& stage) {
  std::vector<std::string> problems;
  if (stage.name.empty()) {
    problems.push_back("stage.name: required: it names the stage in logs");
  }
  if (stage.steps.empty()) {
    problems.push_back("stage.steps: a stage needs at least one step");
  }
  absl::flat_hash_map<std::string_view, size_t> first_index;
  for (size_t i = 0; i < stage.steps.size(); ++i) {
    const Step& step = stage.steps[i];
    const std::string at = absl::StrCat("stage.steps[", i, "]");
    if (!IsId(step.id, kMaxStepIdBytes, "")) {
      problems.push_back(absl::StrCat(
          at, ".id: expected 1 to 128 letters, digits, '_', '.' or '-'"));
    } else if (auto [it, inserted] = first_index.emplace(step.id, i);
               !inserted) {
      problems.push_back(absl::StrCat(at, ".id: the same as stage.steps[",
                                      it->second,
                                      "].id; step ids are unique in a stage"));
    }
    const bool commands = !step.commands.empty();
    const bool entrypoint = !step.entrypoint.empty();
    if (commands && entrypoint) {
      problems.push_back(absl::StrCat(
          at, ": has both commands and entrypoint; give one of them"));
    } else if (!commands && !entrypoint) {
      problems.push_back(absl::StrCat(
          at, ": needs commands, or an entrypoint with optional args"));
    }
    if (!step.args.empty() && !entrypoint) {
      problems.push_back(absl::StrCat(
          at,
          ".args: args need an entrypoint (with commands, write them into "
          "the command)"));
    }
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(problems, "\n"));
}

// A runner names fields within the stage ("steps[1].image: ..."); the
// request has them under "stage.".
std::string UnderStage(absl::string_view message) {
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(message, '\n')) {
    const bool has_path =
        line.find(": ") != absl::string_view::npos &&
        line.substr(0, line.find(": ")).find(' ') == absl::string_view::npos;
    lines.push_back(has_path && !absl::StartsWith(line, "stage.")
                        ? absl::StrCat("stage.", line)
                        : std::string(line));
  }
  return absl::StrJoin(lines, "\n");
}

bool IsTaskId(std::string_view s) { return IsId(s, kMaxTaskIdBytes, ":"); }

grpc::Status UnknownTask(const std::string& task_id) {
  // Only a well-formed id is repeated back.
  return grpc::Status(
      grpc::StatusCode::NOT_FOUND,
      absl::StrCat("task_id: no stage ",
                   IsTaskId(task_id) ? task_id : "with that id",
                   " is known here (never submitted, or finished long ago "
                   "and forgotten)"));
}

grpc::Status ShuttingDown() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                      "the runtime is shutting down; once it is back, watch "
                      "again with after_sequence set to the last sequence "
                      "seen");
}

// The stages the service knows: queued, running and the recently finished.
// Shared with the journals' on_finished, which may outlive the service.
class StageTable {
 public:
  explicit StageTable(size_t finished_kept) : finished_kept_(finished_kept) {}

  struct Known {
    std::shared_ptr<StageJournal> journal;
    bool accepted = false;  // the runner took it (else a submit is under way)
    bool retired = false;   // counted among the finished ones kept
  };

  absl::Mutex mu;
  absl::CondVar resolved;  // a submit under way was accepted or refused
  absl::flat_hash_map<std::string, Known> stages ABSL_GUARDED_BY(mu);
  std::atomic<bool> shutting_down{false};

  std::shared_ptr<StageJournal> FindAccepted(const std::string& task_id) {
    absl::MutexLock lock(&mu);
    auto it = stages.find(task_id);
    if (it == stages.end() || !it->second.accepted) return nullptr;
    return it->second.journal;
  }

  // Puts the stage among the finished ones once it is both accepted and
  // finished (in either order), forgetting the oldest beyond finished_kept.
  void RetireLocked(const std::string& task_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it = stages.find(task_id);
    if (it == stages.end()) return;
    Known& known = it->second;
    if (!known.accepted || known.retired || !known.journal->finished()) return;
    known.retired = true;
    finished_.emplace_back(task_id, known.journal);
    while (finished_.size() > finished_kept_) {
      const auto& [old_id, old_journal] = finished_.front();
      auto old = stages.find(old_id);
      if (old != stages.end() && old->second.journal == old_journal) {
        stages.erase(old);
      }
      finished_.pop_front();
    }
  }

  void OnFinished(const std::string& task_id, const StageJournal* journal) {
    absl::MutexLock lock(&mu);
    auto it = stages.find(task_id);
    if (it != stages.end() && it->second.journal.get() == journal) {
      RetireLocked(task_id);
    }
  }

  void Shutdown() {
    shutting_down = true;
    absl::MutexLock lock(&mu);
    for (auto& [id, known] : stages) known.journal->Close();
  }

 private:
  const size_t finished_kept_;
  std::deque<std::pair<std::string, std::shared_ptr<StageJournal>>> finished_
      ABSL_GUARDED_BY(mu);
};

class RuntimeServiceImpl final : public v1::RuntimeService::Service {
 public:
  RuntimeServiceImpl(StageRunner& runner, RuntimeServiceOptions options)
      : runner_(runner),
        options_(options),
        table_(std::make_shared<StageTable>(options.finished_kept)) {}

  // Ends the watches (UNAVAILABLE) and refuses new stages.
  void Shutdown() { table_->Shutdown(); }

  grpc::Status SubmitStage(grpc::ServerContext* context,
                           const v1::SubmitStageRequest* request,
                           v1::SubmitStageResponse* response) override;
  grpc::Status WatchStage(grpc::ServerContext* context,
                          const v1::WatchStageRequest* request,
                          grpc::ServerWriter<v1::StageEvent>* writer) override;
  grpc::Status CancelStage(grpc::ServerContext* context,
                           const v1::CancelStageRequest* request,
                           v1::CancelStageResponse* response) override;
  grpc::Status GetCapacity(grpc::ServerContext* context,
                           const v1::GetCapacityRequest* request,
                           v1::Capacity* response) override;
  grpc::Status GetHealth(grpc::ServerContext* context,
                         const v1::GetHealthRequest* request,
                         v1::Health* response) override;

 private:
  // With the table locked: answers a repeat of a known task id (created =
  // false), waiting for a submit of it that is under way. nullopt when the
  // id is not known (or a submit of it was refused).
  std::optional<grpc::Status> AnswerRepeatLocked(
      grpc::ServerContext* context, const std::string& task_id,
      v1::SubmitStageResponse* response)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(table_->mu);

  StageRunner& runner_;
  const RuntimeServiceOptions options_;
  const std::shared_ptr<StageTable> table_;
};

std::optional<grpc::Status> RuntimeServiceImpl::AnswerRepeatLocked(
    grpc::ServerContext* context, const std::string& task_id,
    v1::SubmitStageResponse* response) {
  while (true) {
    if (table_->shutting_down) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "the runtime is shutting down and takes no stages");
    }
    auto it = table_->stages.find(task_id);
    if (it == table_->stages.end()) return std::nullopt;
    if (it->second.accepted) {
      response->set_created(false);
      return grpc::Status::OK;
    }
    if (context->IsCancelled()) {
      return grpc::Status(grpc::StatusCode::CANCELLED,
                          "the call was cancelled");
    }
    table_->resolved.WaitWithTimeout(&table_->mu, kPollInterval);
  }
}

grpc::Status RuntimeServiceImpl::SubmitStage(
    grpc::ServerContext* context, const v1::SubmitStageRequest* request,
    v1::SubmitStageResponse* response) {
  const std::string& task_id = request->task_id();
  if (!IsTaskId(task_id)) {
    return Invalid(absl::StrCat(
        "task_id: expected 1 to 256 letters, digits, '_', '.', ':' or '-', "
        "got ",
        task_id.empty() ? "an empty one" : "other characters or more"));
  }
  response->set_task_id(task_id);
  {
    absl::MutexLock lock(&table_->mu);
    if (auto answer = AnswerRepeatLocked(context, task_id, response)) {
      return *answer;
    }
  }
  // A new task id: the stage is looked at only now.
  absl::StatusOr<Stage> stage = grpcv1::FromProto(request->stage(), "stage");
  if (!stage.ok()) return ToGrpc(stage.status());
  if (absl::Status s = CheckStageShape(*stage); !s.ok()) return ToGrpc(s);
  absl::StatusOr<Priority> priority =
      grpcv1::FromProto(request->priority(), "priority");
  if (!priority.ok()) return ToGrpc(priority.status());

  std::weak_ptr<StageTable> weak_table = table_;
  auto journal = std::make_shared<StageJournal>(
      task_id, stage->name, options_.events_per_stage,
      [weak_table, task_id](const StageJournal* journal) {
        if (auto table = weak_table.lock()) table->OnFinished(task_id, journal);
      });
  {
    absl::MutexLock lock(&table_->mu);
    // Another call may have taken the id since it was looked up.
    if (auto answer = AnswerRepeatLocked(context, task_id, response)) {
      return *answer;
    }
    table_->stages[task_id] = {journal, false, false};
  }
  const absl::Status submitted =
      runner_.Submit(task_id, *std::move(stage), *priority, journal);
  {
    absl::MutexLock lock(&table_->mu);
    auto it = table_->stages.find(task_id);
    if (submitted.ok()) {
      it->second.accepted = true;
      // A stage may finish before its submit returns.
      table_->RetireLocked(task_id);
    } else {
      table_->stages.erase(it);
    }
    table_->resolved.SignalAll();
  }
  if (!submitted.ok()) {
    if (absl::IsInvalidArgument(submitted)) {
      return Invalid(UnderStage(submitted.message()));
    }
    return ToGrpc(submitted);
  }
  response->set_created(true);
  return grpc::Status::OK;
}

grpc::Status RuntimeServiceImpl::WatchStage(
    grpc::ServerContext* context, const v1::WatchStageRequest* request,
    grpc::ServerWriter<v1::StageEvent>* writer) {
  std::shared_ptr<StageJournal> journal =
      table_->FindAccepted(request->task_id());
  if (!journal) return UnknownTask(request->task_id());
  uint64_t after = request->after_sequence();
  while (true) {
    if (context->IsCancelled()) {
      return grpc::Status(grpc::StatusCode::CANCELLED,
                          "the watch was cancelled");
    }
    StageJournal::Batch batch = journal->Read(after, request->skip_logs(),
                                              kEventsPerRead, kPollInterval);
    // While shutting down, a watcher still gets every event recorded so far
    // (a stage that finished during the drain is seen to its end); only then
    // is it told to come back.
    if (batch.events.empty() && !batch.done &&
        (batch.closed || table_->shutting_down)) {
      return ShuttingDown();
    }
    for (const v1::StageEvent& event : batch.events) {
      if (!writer->Write(event)) {
        return grpc::Status(grpc::StatusCode::CANCELLED,
                            "the watcher went away");
      }
    }
    after = batch.after;
    if (batch.done) return grpc::Status::OK;
  }
}

grpc::Status RuntimeServiceImpl::CancelStage(
    grpc::ServerContext*, const v1::CancelStageRequest* request,
    v1::CancelStageResponse* response) {
  std::shared_ptr<StageJournal> journal =
      table_->FindAccepted(request->task_id());
  if (!journal) return UnknownTask(request->task_id());
  response->set_cancelled(false);
  if (journal->finished()) return grpc::Status::OK;
  const absl::Status s = runner_.Cancel(request->task_id(), request->reason());
  // NotFound: it finished in the meantime, and its result stands.
  if (absl::IsNotFound(s)) return grpc::Status::OK;
  if (!s.ok()) return ToGrpc(s);
  response->set_cancelled(true);
  return grpc::Status::OK;
}

grpc::Status RuntimeServiceImpl::GetCapacity(grpc::ServerContext*,
                                             const v1::GetCapacityRequest*,
                                             v1::Capacity* response) {
  const RuntimeCapacity capacity = runner_.Capacity();
  if (capacity.max_stages) response->set_max_stages(*capacity.max_stages);
  response->set_running(capacity.running);
  response->set_queued(capacity.queued);
  response->set_completed(capacity.completed);
  for (const std::string& platform : capacity.platforms) {
    response->add_platforms(platform);
  }
  response->set_draining(capacity.draining);
  return grpc::Status::OK;
}

grpc::Status RuntimeServiceImpl::GetHealth(grpc::ServerContext*,
                                           const v1::GetHealthRequest*,
                                           v1::Health* response) {
  const RuntimeHealth health = runner_.Health();
  switch (health.state) {
    case RuntimeHealth::State::kServing:
      response->set_state(v1::Health::STATE_SERVING);
      break;
    case RuntimeHealth::State::kDraining:
      response->set_state(v1::Health::STATE_DRAINING);
      break;
    case RuntimeHealth::State::kNotServing:
      response->set_state(v1::Health::STATE_NOT_SERVING);
      break;
  }
  response->set_message(health.message);
  response->set_delegate_name(health.delegate_name);
  response->set_version(std::string(Version()));
  response->set_git_commit(std::string(GitCommit()));
  return grpc::Status::OK;
}

// ------------------------------------------------------------ the server

struct ListenAddress {
  bool unix_socket = false;
  std::string host;  // as written, "[::1]" with its brackets
  int port = 0;
};

absl::StatusOr<ListenAddress> ParseListen(const std::string& listen) {
  const absl::Status bad = absl::InvalidArgumentError(
      absl::StrCat("listen: expected HOST:PORT (port 0: a free one) or "
                   "unix:PATH, got '",
                   listen, "'"));
  ListenAddress address;
  if (absl::StartsWith(listen, "unix:")) {
    if (listen.size() == 5) return bad;
    address.unix_socket = true;
    return address;
  }
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) return bad;
  address.host = listen.substr(0, colon);
  if (address.host.find_first_of(" /") != std::string::npos ||
      (address.host.find(':') != std::string::npos &&
       (address.host.front() != '[' || address.host.back() != ']'))) {
    return bad;
  }
  if (!absl::SimpleAtoi(AbslView(std::string_view(listen).substr(colon + 1)),
                        &address.port) ||
      address.port < 0 || address.port > 65535) {
    return bad;
  }
  return address;
}

bool IsLoopback(const std::string& host) {
  return host == "localhost" || host == "[::1]" ||
         absl::StartsWith(host, "127.");
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(
    const RuntimeServerOptions& options, const ListenAddress& address) {
  const grpcv1::ServerTlsFiles files{options.tls_cert_file,
                                     options.tls_key_file,
                                     options.client_ca_file};
  if (grpcv1::WantsTls(files)) return grpcv1::TlsServerCredentials(files);
  if (!options.client_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "client_ca_file: mutual TLS needs the server's certificate and key "
        "too");
  }
  if (!address.unix_socket && !IsLoopback(address.host)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "listen: ", address.host,
        " is not a loopback address: without TLS RuntimeService serves "
        "only on 127.0.0.1, [::1], localhost or a Unix socket, as its "
        "requests hold secret values; give a TLS certificate and key to "
        "serve there"));
  }
  return grpc::InsecureServerCredentials();
}

class GrpcRuntimeServer final : public RuntimeServer {
 public:
  GrpcRuntimeServer(std::unique_ptr<RuntimeServiceImpl> service,
                    std::unique_ptr<grpc::Server> server, std::string address,
                    int port)
      : service_(std::move(service)),
        server_(std::move(server)),
        address_(std::move(address)),
        port_(port) {}
  ~GrpcRuntimeServer() override { Shutdown(); }

  std::string address() const override { return address_; }
  int port() const override { return port_; }
  void Shutdown() override {
    std::call_once(shutdown_, [this] {
      service_->Shutdown();
      // A watch blocked on a client that stopped reading is cancelled after
      // the grace.
      server_->Shutdown(std::chrono::system_clock::now() + kShutdownGrace);
      server_->Wait();
    });
  }

 private:
  const std::unique_ptr<RuntimeServiceImpl> service_;
  const std::unique_ptr<grpc::Server> server_;
  const std::string address_;
  const int port_;
  std::once_flag shutdown_;
};

}  // namespace

std::unique_ptr<grpc::Service> NewRuntimeService(
    StageRunner& runner, RuntimeServiceOptions options) {
  return std::make_unique<RuntimeServiceImpl>(runner, options);
}

absl::StatusOr<std::unique_ptr<RuntimeServer>> RuntimeServer::Start(
    RuntimeServerOptions options, StageRunner& runner) {
  absl::StatusOr<ListenAddress> address = ParseListen(options.listen);
  if (!address.ok()) return address.status();
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      Credentials(options, *address);
  if (!credentials.ok()) return credentials.status();

  auto service = std::make_unique<RuntimeServiceImpl>(runner, options.service);
  grpc::ServerBuilder builder;
  // Without this a second server could bind the same port.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  int selected_port = 0;
  builder.AddListeningPort(options.listen, *credentials, &selected_port);
  builder.RegisterService(service.get());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || (!address->unix_socket && selected_port == 0)) {
    if (server) server->Shutdown();
    return absl::UnavailableError(absl::StrCat(
        "listen: cannot serve on ", options.listen,
        address->unix_socket
            ? " (does the directory exist, and may this user write it?)"
            : " (is the port in use, or the address not this machine's?)"));
  }
  std::string bound = address->unix_socket
                          ? options.listen
                          : absl::StrCat(address->host, ":", selected_port);
  return std::make_unique<GrpcRuntimeServer>(
      std::move(service), std::move(server), std::move(bound),
      address->unix_socket ? 0 : selected_port);
}

}  // namespace delegate

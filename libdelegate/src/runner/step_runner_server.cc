#include "runner/step_runner_server.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "delegate/v1/runner.grpc.pb.h"
#include "delegate/version.h"
#include "executor/outputs.h"
#include "logs/masker.h"
#include "runner/agent_link.h"
#include "runner/identity.h"

namespace delegate::runner {
namespace {

namespace v1 = ::delegate::v1;

// How often a running step looks at its call's cancellation.
constexpr absl::Duration kTick = absl::Milliseconds(50);

// Step output for the runner's own output: masked as a stream (a secret
// split across writes is masked too), then cut into lines.
class Recorder {
 public:
  Recorder(const std::function<void(std::string_view)>& record,
           std::string step_id, const std::vector<std::string>& mask)
      : record_(record), prefix_(absl::StrCat("[", step_id, "] ")) {
    auto masker = std::make_shared<const logs::SecretMasker>(mask);
    for (int i = 0; i < 2; ++i) {
      streams_[i] = std::make_unique<logs::MaskingStream>(
          masker, [this, i](std::string_view masked) { Lines(i, masked); });
    }
  }
  ~Recorder() {
    for (int i = 0; i < 2; ++i) {
      streams_[i]->Flush();
      if (!partial_[i].empty()) Emit(partial_[i]);
    }
  }
  void Add(int stream, std::string_view data) {
    streams_[stream == 2 ? 1 : 0]->Write(data);
  }

 private:
  void Lines(int i, std::string_view masked) {
    std::string& partial = partial_[i];
    partial.append(masked.data(), masked.size());
    size_t start = 0;
    for (size_t nl; (nl = partial.find('\n', start)) != std::string::npos;
         start = nl + 1) {
      Emit(std::string_view(partial).substr(start, nl - start));
    }
    partial.erase(0, start);
    // A line without an end is recorded in pieces of at most 64 KiB (cut
    // after masking: no secret is split by the cut).
    if (partial.size() > 64 * 1024) {
      Emit(partial);
      partial.clear();
    }
  }
  void Emit(std::string_view line) {
    record_(absl::StrCat(prefix_, absl::string_view(line.data(), line.size())));
  }

  const std::function<void(std::string_view)>& record_;
  const std::string prefix_;
  std::string partial_[2];
  std::unique_ptr<logs::MaskingStream> streams_[2];  // last: flushed first
};

// The output variables a step wrote: a regular file (not a FIFO, not a
// link) of at most 1 MiB; `error` says why not.
std::map<std::string, std::string> ReadOutputs(const std::string& path,
                                               std::string* error) {
  constexpr off_t kMax = 1 << 20;
  int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno != ENOENT) {
      *error = absl::StrCat("HARNESS_OUTPUT_FILE: ", strerror(errno));
    }
    return {};
  }
  struct stat st;
  std::string text;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    *error = "HARNESS_OUTPUT_FILE: not a regular file";
  } else if (st.st_size > kMax) {
    *error = absl::StrCat("HARNESS_OUTPUT_FILE: ", st.st_size,
                          " bytes; output variables may take 1 MiB");
  } else {
    text.resize(static_cast<size_t>(st.st_size));
    ssize_t n = pread(fd, text.data(), text.size(), 0);
    text.resize(n > 0 ? static_cast<size_t>(n) : 0);
  }
  close(fd);
  return error->empty() ? ParseOutputs(text)
                        : std::map<std::string, std::string>();
}

class Service final : public v1::StepRunner::Service {
 public:
  Service(const StepRunnerServerOptions& options, AgentHub& hub)
      : options_(options), hub_(hub), last_call_(absl::Now()) {}

  grpc::Status GetRunnerStatus(grpc::ServerContext* context,
                               const v1::GetRunnerStatusRequest*,
                               v1::RunnerStatus* status) override {
    if (grpc::Status s = Authorize(*context); !s.ok()) return s;
    status->set_version(std::string(Version()));
    for (const std::string& name : hub_.Connected()) {
      status->add_containers(name);
    }
    return grpc::Status::OK;
  }

  grpc::Status RunStep(grpc::ServerContext* context,
                       const v1::RunStepRequest* request,
                       grpc::ServerWriter<v1::StepEvent>* writer) override {
    if (grpc::Status s = Authorize(*context); !s.ok()) return s;
    if (request->container().empty()) {
      return Invalid("container: required (the step container to run in)");
    }
    if (request->argv().empty() || request->argv(0).empty()) {
      return Invalid("argv: required (what to execute)");
    }
    if (!request->working_dir().empty() &&
        !absl::StartsWith(request->working_dir(), "/")) {
      return Invalid("working_dir: must be absolute");
    }
    // From here on a StopStep for this container is this call's, also
    // while it waits for the agent.
    const uint64_t call = BeginCall(request->container());
    absl::StatusOr<std::shared_ptr<AgentConnection>> agent = hub_.Acquire(
        request->container(), request->container_token(), options_.agent_wait);
    if (!agent.ok()) EndCall(request->container(), call);
    if (!agent.ok()) {
      return grpc::Status(absl::IsNotFound(agent.status())
                              ? grpc::StatusCode::NOT_FOUND
                              : grpc::StatusCode::FAILED_PRECONDITION,
                          std::string(agent.status().message()));
    }
    grpc::Status result = Drive(*context, *request, writer, **agent, call);
    hub_.Release(*agent);
    EndCall(request->container(), call);
    Touch();
    return result;
  }

  grpc::Status StopStep(grpc::ServerContext* context,
                        const v1::StopStepRequest* request,
                        v1::StopStepResponse* response) override {
    if (grpc::Status s = Authorize(*context); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
    auto it = calls_.find(request->container());
    if (it != calls_.end()) {
      it->second.stop = true;
      response->set_was_running(true);
    }
    return grpc::Status::OK;
  }

  grpc::Status Shutdown(grpc::ServerContext* context,
                        const v1::ShutdownRequest*,
                        v1::ShutdownResponse*) override {
    if (grpc::Status s = Authorize(*context); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
    shutdown_ = true;
    return grpc::Status::OK;
  }

  // Until Shutdown, the idle timeout or Stop.
  void Wait() {
    absl::MutexLock lock(&mu_);
    for (;;) {
      if (shutdown_ || stopped_) return;
      if (running_ == 0 && absl::Now() - last_call_ >= options_.idle_timeout) {
        return;
      }
      mu_.AwaitWithTimeout(absl::Condition(&shutdown_), absl::Seconds(1));
    }
  }

  void Stop() {
    absl::MutexLock lock(&mu_);
    stopped_ = true;
  }

 private:
  static grpc::Status Invalid(std::string what) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::move(what));
  }

  // A call of the one delegate (its certificate), which keeps the runner
  // from its idle end; anything else is refused and keeps nothing alive.
  grpc::Status Authorize(const grpc::ServerContext& context) {
    std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
    if (auth) {
      for (const grpc::string_ref& pem :
           auth->FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME)) {
        absl::StatusOr<std::string> sha =
            CertificateSha256(std::string_view(pem.data(), pem.size()));
        if (sha.ok() && absl::EqualsIgnoreCase(*sha, options_.client_sha256)) {
          Touch();
          return grpc::Status::OK;
        }
      }
    }
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "this runner serves only the delegate that started "
                        "its task (a client certificate with the SHA-256 it "
                        "was given)");
  }

  void Touch() {
    absl::MutexLock lock(&mu_);
    last_call_ = absl::Now();
  }

  // The RunStep call of a container, while there is one; a second call for
  // the same container gets FailedPrecondition from the hub and leaves the
  // first one's entry alone.
  uint64_t BeginCall(const std::string& container) {
    absl::MutexLock lock(&mu_);
    const uint64_t id = ++next_call_;
    calls_.try_emplace(container, Call{id, false});
    ++running_;
    return id;
  }
  void EndCall(const std::string& container, uint64_t id) {
    absl::MutexLock lock(&mu_);
    auto it = calls_.find(container);
    if (it != calls_.end() && it->second.id == id) calls_.erase(it);
    --running_;
  }
  bool StopRequested(const std::string& container, uint64_t id) {
    absl::MutexLock lock(&mu_);
    if (stopped_) return true;
    auto it = calls_.find(container);
    return it != calls_.end() && it->second.id == id && it->second.stop;
  }

  grpc::Status Drive(grpc::ServerContext& context,
                     const v1::RunStepRequest& request,
                     grpc::ServerWriter<v1::StepEvent>* writer,
                     AgentConnection& agent, uint64_t call) {
    AgentRun run;
    run.argv.assign(request.argv().begin(), request.argv().end());
    for (const auto& [key, value] : request.env()) {
      run.env.push_back(absl::StrCat(key, "=", value));
    }
    std::sort(run.env.begin(), run.env.end());
    // The output file exists, empty and writable by the step's user,
    // before the step starts.
    if (!request.output_file().empty()) {
      std::error_code ec;
      std::filesystem::create_directories(
          std::filesystem::path(request.output_file()).parent_path(), ec);
      int fd =
          open(request.output_file().c_str(),
               O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0666);
      if (fd >= 0) {
        fchmod(fd, 0666);
        close(fd);
      }
      chmod(std::filesystem::path(request.output_file()).parent_path().c_str(),
            01777);
    }
    run.working_dir = request.working_dir();
    if (absl::Status s = agent.Run(run); !s.ok()) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          std::string(s.message()));
    }
    std::vector<std::string> mask(request.mask().begin(), request.mask().end());
    Recorder recorder(options_.record, request.step_id(), mask);
    const absl::Duration grace =
        absl::Milliseconds(std::max<int64_t>(request.stop_grace_ms(), 0));
    std::optional<absl::Time> kill_at;    // when SIGKILL is due
    std::optional<absl::Time> killed_at;  // when it was sent
    bool client_there = true;
    for (;;) {
      const bool stopping = context.IsCancelled() || !client_there ||
                            StopRequested(request.container(), call);
      if (stopping && !kill_at) {
        (void)agent.Signal(SIGTERM);
        kill_at = absl::Now() + grace;
      } else if (kill_at && !killed_at && absl::Now() >= *kill_at) {
        (void)agent.Signal(SIGKILL);
        killed_at = absl::Now();
      } else if (killed_at && absl::Now() - *killed_at > absl::Seconds(10)) {
        // Its frames must not reach a later step: the link goes.
        agent.Abandon();
        return grpc::Status(
            grpc::StatusCode::UNAVAILABLE,
            absl::StrCat("step container ", request.container(),
                         " did not report its step's end 10 s after SIGKILL"));
      }
      absl::StatusOr<AgentEvent> event = agent.Next(kTick);
      if (absl::IsDeadlineExceeded(event.status())) continue;
      if (!event.ok()) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                            std::string(event.status().message()));
      }
      v1::StepEvent out;
      switch (event->kind) {
        case AgentEvent::Kind::kStarted:
          out.mutable_started()->set_pid(event->pid);
          break;
        case AgentEvent::Kind::kOutput:
          recorder.Add(event->stream, event->data);
          out.mutable_output()->set_stream(event->stream == 2
                                               ? v1::StepOutput::STREAM_STDERR
                                               : v1::StepOutput::STREAM_STDOUT);
          out.mutable_output()->set_data(std::move(event->data));
          break;
        case AgentEvent::Kind::kExited: {
          v1::StepExited* exited = out.mutable_exited();
          exited->set_exit_code(event->exit_code);
          exited->set_signal(event->signal);
          exited->set_error(event->error);
          if (!request.output_file().empty()) {
            std::string error;
            for (auto& [key, value] :
                 ReadOutputs(request.output_file(), &error)) {
              (*exited->mutable_outputs())[key] = value;
            }
            exited->set_outputs_error(error);
          }
          if (client_there) writer->Write(out);
          if (context.IsCancelled()) {
            return grpc::Status(grpc::StatusCode::CANCELLED, "step stopped");
          }
          return grpc::Status::OK;
        }
      }
      if (client_there && !writer->Write(out)) client_there = false;
    }
  }

  const StepRunnerServerOptions& options_;
  AgentHub& hub_;
  absl::Mutex mu_;
  absl::Time last_call_ ABSL_GUARDED_BY(mu_);
  int running_ ABSL_GUARDED_BY(mu_) = 0;  // RunStep calls, waiting or not
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  struct Call {
    uint64_t id;
    bool stop;  // StopStep asked for it
  };
  std::map<std::string, Call> calls_ ABSL_GUARDED_BY(mu_);
  uint64_t next_call_ ABSL_GUARDED_BY(mu_) = 0;
};

class ServerImpl final : public StepRunnerServer {
 public:
  int port() const override { return port_; }

  void Wait() override {
    service_->Wait();
    server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    server_->Wait();
  }

  void Stop() override { service_->Stop(); }

  static absl::StatusOr<std::unique_ptr<StepRunnerServer>> Start(
      StepRunnerServerOptions options) {
    if (!IsSha256Hex(options.client_sha256)) {
      return absl::InvalidArgumentError(
          "the runner needs the SHA-256 of its delegate's client certificate "
          "(64 hex digits) in DELEGATE_RUNNER_CLIENT_SHA256");
    }
    if (!options.record) {
      options.record = [](std::string_view line) {
        fprintf(stdout, "%.*s\n", static_cast<int>(line.size()), line.data());
        fflush(stdout);
      };
    }
    auto impl = std::unique_ptr<ServerImpl>(new ServerImpl);
    impl->options_ = std::move(options);
    absl::StatusOr<std::unique_ptr<AgentHub>> hub =
        AgentHub::Listen(impl->options_.agent_socket);
    if (!hub.ok()) return hub.status();
    impl->hub_ = *std::move(hub);
    impl->service_ = std::make_unique<Service>(impl->options_, *impl->hub_);

    absl::StatusOr<Identity> self = MakeIdentity("delegate-runner");
    if (!self.ok()) return self.status();
    auto provider =
        std::make_shared<grpc::experimental::StaticDataCertificateProvider>(
            std::vector<grpc::experimental::IdentityKeyCertPair>{
                {self->key_pem, self->cert_pem}});
    grpc::experimental::TlsServerCredentialsOptions tls(provider);
    tls.watch_identity_key_cert_pairs();
    tls.set_cert_request_type(
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_BUT_DONT_VERIFY);
    grpc::ServerBuilder builder;
    // The delegate pings an idle channel (to notice a task that vanished).
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.AddChannelArgument(
        GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
    builder.AddListeningPort(impl->options_.listen,
                             grpc::experimental::TlsServerCredentials(tls),
                             &impl->port_);
    builder.RegisterService(impl->service_.get());
    impl->server_ = builder.BuildAndStart();
    if (!impl->server_ || impl->port_ == 0) {
      return absl::UnavailableError(
          absl::StrCat("the runner cannot listen on ", impl->options_.listen));
    }
    return std::unique_ptr<StepRunnerServer>(std::move(impl));
  }

 private:
  ServerImpl() = default;

  StepRunnerServerOptions options_;
  std::unique_ptr<AgentHub> hub_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<StepRunnerServer>> StepRunnerServer::Start(
    StepRunnerServerOptions options) {
  return ServerImpl::Start(std::move(options));
}

}  // namespace delegate::runner

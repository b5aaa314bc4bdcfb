#include "runner/step_runner_client.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <mutex>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "delegate/v1/runner.grpc.pb.h"

namespace delegate::runner {
namespace {

namespace v1 = ::delegate::v1;

absl::Status FromGrpc(const grpc::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(what, ": ", s.error_message()));
}

class Client final : public StepRunnerClient {
 public:
  explicit Client(std::shared_ptr<grpc::Channel> channel)
      : channel_(std::move(channel)),
        stub_(v1::StepRunner::NewStub(channel_)) {}

  absl::StatusOr<std::vector<std::string>> Containers() override {
    return Status(absl::Now() + absl::Seconds(30));
  }

  absl::StatusOr<std::vector<std::string>> Status(absl::Time deadline) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(deadline));
    context.set_wait_for_ready(true);
    v1::RunnerStatus status;
    grpc::Status s =
        stub_->GetRunnerStatus(&context, v1::GetRunnerStatusRequest(), &status);
    if (!s.ok()) return FromGrpc(s, "the stage task's runner");
    return std::vector<std::string>(status.containers().begin(),
                                    status.containers().end());
  }

  absl::StatusOr<RunnerStepEnd> Run(
      const RunnerStep& step,
      const std::function<void(int, std::string_view)>& on_output,
      std::stop_token stop, absl::Time deadline) override {
    v1::RunStepRequest request;
    request.set_container(step.container);
    request.set_step_id(step.step_id);
    for (const std::string& a : step.argv) request.add_argv(a);
    for (const auto& [key, value] : step.env) {
      (*request.mutable_env())[key] = value;
    }
    request.set_working_dir(step.working_dir);
    request.set_stop_grace_ms(absl::ToInt64Milliseconds(step.stop_grace));
    for (const std::string& m : step.mask) request.add_mask(m);
    request.set_output_file(step.output_file);
    request.set_container_token(step.container_token);

    grpc::ClientContext context;
    RunnerStepEnd end;
    // At a stop or the deadline, a watcher asks the runner to stop the step
    // (StopStep), and the stream goes on to bring how it ended; only when
    // that does not come within the grace and 15 s more is the call
    // cancelled.
    absl::Mutex mu;
    bool finished = false;
    bool stop_requested = false;
    std::stop_callback on_stop(stop, [&] {
      absl::MutexLock lock(&mu);
      stop_requested = true;
    });
    std::thread watcher([&] {
      absl::MutexLock lock(&mu);
      auto woken = [&] { return finished || stop_requested; };
      mu.AwaitWithDeadline(absl::Condition(&woken), deadline);
      if (finished) return;
      (stop_requested ? end.stopped : end.deadline_passed) = true;
      mu.Unlock();
      grpc::ClientContext stop_context;
      stop_context.set_deadline(
          absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
      v1::StopStepRequest stop_request;
      stop_request.set_container(step.container);
      v1::StopStepResponse stop_response;
      (void)stub_->StopStep(&stop_context, stop_request, &stop_response);
      mu.Lock();
      mu.AwaitWithTimeout(absl::Condition(&finished),
                          step.stop_grace + absl::Seconds(15));
      if (!finished) context.TryCancel();
    });
    std::unique_ptr<grpc::ClientReader<v1::StepEvent>> reader =
        stub_->RunStep(&context, request);
    v1::StepEvent event;
    bool exited = false;
    while (reader->Read(&event)) {
      if (event.has_output()) {
        on_output(
            event.output().stream() == v1::StepOutput::STREAM_STDERR ? 2 : 1,
            event.output().data());
      } else if (event.has_exited()) {
        const v1::StepExited& e = event.exited();
        end.exit_code = e.exit_code();
        end.signal = e.signal();
        end.error = e.error();
        end.outputs.insert(e.outputs().begin(), e.outputs().end());
        end.outputs_error = e.outputs_error();
        exited = true;
      }
    }
    grpc::Status s = reader->Finish();
    {
      absl::MutexLock lock(&mu);
      finished = true;
    }
    watcher.join();
    // Stopped before its end was told: fine when the call was cancelled or
    // ran out; any other error (the container or the runner gone) is one.
    const bool stop_ended_it =
        (end.stopped || end.deadline_passed) &&
        (s.ok() || s.error_code() == grpc::StatusCode::CANCELLED ||
         s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED);
    if (exited || stop_ended_it) {
      if (!exited) {
        end.exit_code = -1;
        end.signal = 0;
      }
      return end;
    }
    return FromGrpc(s.ok() ? grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                          "the stream ended without the "
                                          "step's exit")
                           : s,
                    absl::StrCat("step ", step.step_id));
  }

  absl::Status Shutdown() override {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    v1::ShutdownResponse response;
    return FromGrpc(stub_->Shutdown(&context, v1::ShutdownRequest(), &response),
                    "shutting the runner down");
  }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::StepRunner::Stub> stub_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<StepRunnerClient>> StepRunnerClient::Connect(
    const std::string& target, const Identity& identity,
    absl::Duration connect_timeout) {
  auto provider =
      std::make_shared<grpc::experimental::StaticDataCertificateProvider>(
          std::vector<grpc::experimental::IdentityKeyCertPair>{
              {identity.key_pem, identity.cert_pem}});
  grpc::experimental::TlsChannelCredentialsOptions tls;
  tls.set_certificate_provider(provider);
  tls.watch_identity_key_cert_pairs();
  // The runner's certificate is its own, made at its start (header).
  tls.set_verify_server_certs(false);
  tls.set_check_call_host(false);
  tls.set_certificate_verifier(
      std::make_shared<grpc::experimental::NoOpCertificateVerifier>());
  grpc::ChannelArguments args;
  // The name in the runner's certificate, so that TLS does not complain
  // about the IP (nothing is verified against it: see the header).
  args.SetSslTargetNameOverride("delegate-runner");
  // Step output streams can be large; the runner's limit is the default.
  args.SetMaxReceiveMessageSize(64 << 20);
  // A task that vanishes without a reset (its ENI gone) is noticed.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(
      target, grpc::experimental::TlsCredentials(tls), args);
  auto client = std::make_unique<Client>(std::move(channel));
  absl::StatusOr<std::vector<std::string>> status =
      client->Status(absl::Now() + connect_timeout);
  if (!status.ok()) return status.status();
  return std::unique_ptr<StepRunnerClient>(std::move(client));
}

}  // namespace delegate::runner

// reference-manager: the reference manager as a program, for tests,
// benchmarks and trying the delegate locally. It speaks the Harness REST
// protocol (with --token-file), DelegateSession and RuntimeService (with
// --grpc-listen), or both.
//
//   reference-manager [--account ACCOUNT --token-file FILE] [--listen
//   HOST:PORT]
//       [--tls-cert PEM --tls-key PEM [--client-ca PEM]] [--state FILE]
//       [--inline-data] [--lost-after-seconds N]
//       [--grpc-listen HOST:PORT [--lease-seconds N] [--stage FILE]...]
//
// Prints "listening URL" (Harness) and "grpc-listening HOST:PORT" once it
// serves, "stage ID STATUS on DELEGATE" and the stage's log as each --stage
// stage finishes, then runs
// until SIGTERM or SIGINT.
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "delegate/stage_file.h"
#include "reference_manager.h"
#include "session_manager.h"
#include "util/strings.h"

namespace {

int Fail(const std::string& message) {
  fprintf(stderr, "reference-manager: %s\n", message.c_str());
  return 2;
}

// Prints each --stage stage when it finishes: "stage ID STATUS on DELEGATE",
// then its log lines indented.
class PrintFinished final : public delegate::StageEvents {
 public:
  explicit PrintFinished(std::string id) : id_(std::move(id)) {}
  void Started(std::string_view, std::string_view delegate_name) override {
    std::lock_guard lock(mu_);
    delegate_ = std::string(delegate_name);
  }
  void StepStarted(std::string_view, std::string_view) override {}
  void StepFinished(const delegate::StepResult&) override {}
  void Log(const delegate::LogLine& line) override {
    std::lock_guard lock(mu_);
    lines_.push_back(absl::StrCat("  | ", delegate::AbslView(line.text)));
  }
  void Finished(const delegate::StageResult& result) override {
    std::lock_guard lock(mu_);
    std::string out = absl::StrCat("stage ", id_, " ",
                                   delegate::StepStatusName(result.status),
                                   result.error.empty() ? "" : ": ",
                                   result.error, " on ", delegate_, "\n");
    for (const std::string& line : lines_) absl::StrAppend(&out, line, "\n");
    fputs(out.c_str(), stdout);
    fflush(stdout);
  }

 private:
  const std::string id_;
  std::mutex mu_;
  std::string delegate_;            // guarded by mu_
  std::vector<std::string> lines_;  // guarded by mu_
};

}  // namespace

int main(int argc, char** argv) {
  delegate::reference::ManagerOptions options;
  delegate::reference::SessionManagerOptions grpc_options;
  std::string token_file, cert, key, client_ca, grpc_listen;
  std::vector<std::string> stage_files;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (arg == "--account") {
      options.account_id = next();
    } else if (arg == "--token-file") {
      token_file = next();
    } else if (arg == "--listen") {
      std::string listen = next();
      const size_t colon = listen.rfind(':');
      if (colon == std::string::npos ||
          !absl::SimpleAtoi(listen.substr(colon + 1), &options.port)) {
        return Fail("--listen: expected HOST:PORT");
      }
      options.address = listen.substr(0, colon);
    } else if (arg == "--tls-cert") {
      cert = next();
    } else if (arg == "--tls-key") {
      key = next();
    } else if (arg == "--client-ca") {
      client_ca = next();
    } else if (arg == "--state") {
      options.state_file = next();
    } else if (arg == "--lost-after-seconds") {
      double seconds = 0;
      if (!absl::SimpleAtod(next(), &seconds) || seconds <= 0) {
        return Fail(
            "--lost-after-seconds: expected a positive number of seconds");
      }
      options.lost_after = absl::Seconds(seconds);
    } else if (arg == "--inline-data") {
      options.base64_data = false;
    } else if (arg == "--grpc-listen") {
      grpc_listen = next();
      if (grpc_listen.rfind(':') == std::string::npos) {
        return Fail("--grpc-listen: expected HOST:PORT");
      }
    } else if (arg == "--lease-seconds") {
      double seconds = 0;
      if (!absl::SimpleAtod(next(), &seconds) || seconds <= 0) {
        return Fail("--lease-seconds: expected a positive number of seconds");
      }
      grpc_options.lease_duration = absl::Seconds(seconds);
    } else if (arg == "--stage") {
      stage_files.push_back(next());
    } else {
      return Fail(absl::StrCat("unknown argument ", arg));
    }
  }
  if (token_file.empty() && grpc_listen.empty()) {
    return Fail(
        "nothing to serve: give --token-file (the Harness protocol), "
        "--grpc-listen (DelegateSession and RuntimeService), or both");
  }
  if (!stage_files.empty() && grpc_listen.empty()) {
    return Fail(
        "--stage needs --grpc-listen: stage files go to gRPC delegates");
  }
  if (!cert.empty() || !key.empty()) {
    if (cert.empty() || key.empty()) {
      return Fail("--tls-cert and --tls-key go together");
    }
    options.tls = delegate::http::ServerTlsOptions{cert, key, client_ca};
  }
  std::vector<std::pair<std::string, delegate::Stage>> stages;
  for (const std::string& file : stage_files) {
    absl::StatusOr<delegate::Stage> stage = delegate::LoadStageFile(file);
    if (!stage.ok()) return Fail(std::string(stage.status().message()));
    stages.emplace_back(absl::StrCat("file-", stages.size() + 1), *stage);
  }
  if (!token_file.empty()) {
    std::ifstream in(token_file);
    if (!in)
      return Fail(absl::StrCat("--token-file: cannot read ", token_file));
    std::stringstream ss;
    ss << in.rdbuf();
    options.token = delegate::SecretString(
        std::string(absl::StripAsciiWhitespace(ss.str())));
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::unique_ptr<delegate::reference::ReferenceManager> harness;
  if (!token_file.empty()) {
    auto started = delegate::reference::ReferenceManager::Start(options);
    if (!started.ok()) return Fail(std::string(started.status().message()));
    harness = *std::move(started);
    printf("listening %s\n", harness->url().c_str());
  }
  std::unique_ptr<delegate::reference::SessionManager> sessions;
  if (!grpc_listen.empty()) {
    grpc_options.listen = grpc_listen;
    grpc_options.tls_cert_file = cert;
    grpc_options.tls_key_file = key;
    grpc_options.client_ca_file = client_ca;
    auto started = delegate::reference::SessionManager::Start(grpc_options);
    if (!started.ok()) return Fail(std::string(started.status().message()));
    sessions = *std::move(started);
    printf("grpc-listening %s\n", sessions->address().c_str());
    for (auto& [id, stage] : stages) {
      absl::Status s =
          sessions->Submit(id, std::move(stage), delegate::Priority::kNormal,
                           std::make_shared<PrintFinished>(id));
      if (!s.ok()) return Fail(std::string(s.message()));
    }
  }
  fflush(stdout);
  int received = 0;
  sigwait(&signals, &received);
  if (sessions) sessions->Stop();
  if (harness) harness->Stop();
  return 0;
}

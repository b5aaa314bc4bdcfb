// reference-manager: the reference Harness manager as a program, for tests,
// benchmarks and trying the delegate locally.
//
//   reference-manager --account ACCOUNT --token-file FILE [--listen HOST:PORT]
//       [--tls-cert PEM --tls-key PEM [--client-ca PEM]] [--state FILE]
//       [--inline-data]
//
// Prints "listening URL" once it serves, then runs until SIGTERM or SIGINT.
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "reference_manager.h"

namespace {

int Fail(const std::string& message) {
  fprintf(stderr, "reference-manager: %s\n", message.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  delegate::reference::ManagerOptions options;
  std::string token_file, cert, key, client_ca;
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
    } else if (arg == "--inline-data") {
      options.base64_data = false;
    } else {
      return Fail(absl::StrCat("unknown argument ", arg));
    }
  }
  if (token_file.empty()) return Fail("--token-file is required");
  std::ifstream in(token_file);
  if (!in) return Fail(absl::StrCat("--token-file: cannot read ", token_file));
  std::stringstream ss;
  ss << in.rdbuf();
  options.token =
      delegate::SecretString(std::string(absl::StripAsciiWhitespace(ss.str())));
  if (!cert.empty() || !key.empty()) {
    if (cert.empty() || key.empty()) {
      return Fail("--tls-cert and --tls-key go together");
    }
    options.tls = delegate::http::ServerTlsOptions{cert, key, client_ca};
  }

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  auto manager = delegate::reference::ReferenceManager::Start(options);
  if (!manager.ok()) {
    return Fail(std::string(manager.status().message()));
  }
  printf("listening %s\n", (*manager)->url().c_str());
  fflush(stdout);
  int received = 0;
  sigwait(&signals, &received);
  (*manager)->Stop();
  return 0;
}

// The reference manager as a process of its own (the reference-manager
// binary), so that a test can kill it and start it again on the same port
// with its --state.
#ifndef DELEGATE_TESTS_FAKES_MANAGER_PROCESS_H_
#define DELEGATE_TESTS_FAKES_MANAGER_PROCESS_H_

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace delegate::testing {

class ManagerProcess {
 public:
  // Runs `binary` with `args` and --listen 127.0.0.1:`port` (0: a free
  // one), its stdout to `out_file`, and waits up to 4 s for it to say
  // "listening URL".
  ManagerProcess(const std::string& binary, std::vector<std::string> args,
                 int port, const std::string& out_file) {
    args.insert(args.begin(), binary);
    args.insert(args.end(), {"--listen", absl::StrCat("127.0.0.1:", port)});
    std::filesystem::remove(out_file);  // "listening" must be this process's
    pid_ = fork();
    if (pid_ == 0) {
      if (freopen(out_file.c_str(), "w", stdout) == nullptr) _exit(126);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    std::string out;
    for (int i = 0; i < 200; ++i) {
      std::ifstream in(out_file);
      std::stringstream ss;
      ss << in.rdbuf();
      out = ss.str();
      if (absl::StrContains(out, "listening")) break;
      absl::SleepFor(absl::Milliseconds(20));
    }
    std::smatch m;
    if (std::regex_search(out, m, std::regex("https?://127.0.0.1:([0-9]+)"))) {
      url_ = m[0];
      port_ = std::stoi(m[1]);
    }
  }
  ~ManagerProcess() { Kill(SIGTERM); }
  ManagerProcess(const ManagerProcess&) = delete;
  ManagerProcess& operator=(const ManagerProcess&) = delete;

  // Empty when it did not say it listens.
  const std::string& url() const { return url_; }
  int port() const { return port_; }

  // Sends `sig` and reaps it.
  void Kill(int sig) {
    if (pid_ <= 0) return;
    kill(pid_, sig);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
  std::string url_;
  int port_ = 0;
};

}  // namespace delegate::testing

#endif  // DELEGATE_TESTS_FAKES_MANAGER_PROCESS_H_

// Runs the `delegate` binary as a user would, for integration tests.
#ifndef DELEGATE_TESTS_FAKES_DELEGATE_PROCESS_H_
#define DELEGATE_TESTS_FAKES_DELEGATE_PROCESS_H_

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace delegate::testing {

struct Outcome {
  int exit_code = -1;
  std::string out;  // stdout and stderr together
};

// The binary with `args`, extra `env` on top of ours, output to a file.
class DelegateProcess {
 public:
  DelegateProcess(const std::vector<std::string>& args,
                  const std::vector<std::string>& env, const std::string& log)
      : log_(log) {
    // Emptied before the fork, not only by the child: a reader must never
    // see what an earlier process wrote to the same file.
    std::ofstream(log, std::ios::trunc).close();
    pid_ = fork();
    if (pid_ == 0) {
      int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      for (const std::string& kv : env) putenv(strdup(kv.c_str()));
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(DELEGATE_BINARY));
      for (const std::string& a : args) argv.push_back(strdup(a.c_str()));
      argv.push_back(nullptr);
      execv(DELEGATE_BINARY, argv.data());
      _exit(127);
    }
  }
  DelegateProcess(const DelegateProcess&) = delete;
  DelegateProcess& operator=(const DelegateProcess&) = delete;
  ~DelegateProcess() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  pid_t pid() const { return pid_; }

  Outcome Wait() {
    if (!reaped_) {
      waitpid(pid_, &status_, 0);
      reaped_ = true;
    }
    Outcome o;
    o.exit_code =
        WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
    o.out = Output();
    return o;
  }
  // Reaps the process if it has exited; Wait then gives its status.
  bool Exited() {
    if (reaped_) return true;
    if (waitpid(pid_, &status_, WNOHANG) == pid_) reaped_ = true;
    return reaped_;
  }
  std::string Output() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  pid_t pid_;
  bool reaped_ = false;
  int status_ = 0;
  std::string log_;
};

}  // namespace delegate::testing

#endif  // DELEGATE_TESTS_FAKES_DELEGATE_PROCESS_H_

// The default ProcessLauncher. Each step runs under a keeper: a forked
// child of this process that is the subreaper of the step's process tree, so
// that nothing the step starts outlives it (not even a process that called
// setsid or was double-forked), nor outlives this process (the keeper holds
// a lifeline pipe and kills the tree when it hangs up). Output comes through
// pipes and the keeper's exit through a pidfd, all multiplexed by poll() on
// the waiting thread so that no extra thread is needed per process.
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "delegate/process.h"

namespace delegate {
namespace {

constexpr size_t kReadChunk = 64 * 1024;
// After the keeper exits, how long output is still read from pipes that a
// process the keeper could not kill (one in uninterruptible sleep) may hold
// open.
constexpr auto kDrainAfterExit = std::chrono::seconds(2);

int PidfdOpen(pid_t pid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
#else
  (void)pid;
  errno = ENOSYS;
  return -1;
#endif
}

void CloseFd(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

std::string Errno(const char* what) {
  return absl::StrCat(what, ": ", strerror(errno));
}

ExitInfo ToExitInfo(int wstatus) {
  ExitInfo info;
  if (WIFEXITED(wstatus)) {
    info.exit_code = WEXITSTATUS(wstatus);
  } else if (WIFSIGNALED(wstatus)) {
    info.term_signal = WTERMSIG(wstatus);
  }
  return info;
}

class PosixProcess final : public Process {
 public:
  // `keeper` is this process's child; `step` its child, which leads the
  // step's process group.
  PosixProcess(pid_t keeper, pid_t step, int out_fd, int err_fd,
               OutputCallback on_output)
      : keeper_(keeper),
        step_(step),
        out_fd_(out_fd),
        err_fd_(err_fd),
        on_output_(std::move(on_output)),
        buffer_(new char[kReadChunk]) {
    pidfd_ = PidfdOpen(keeper);
    wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  }

  ~PosixProcess() override {
    if (!exit_) {
      // The keeper kills whatever else is left once the step is gone.
      kill(-step_, SIGKILL);
      int wstatus = 0;
      while (waitpid(keeper_, &wstatus, 0) < 0 && errno == EINTR) {
      }
    }
    CloseFd(out_fd_);
    CloseFd(err_fd_);
    CloseFd(pidfd_);
    CloseFd(wake_fd_);
  }

  pid_t pid() const override { return step_; }

  void Signal(int sig) override {
    // The keeper reaps the leader just before it exits: once it has exited
    // the step's pid may name someone else's group.
    if (!exit_) kill(-step_, sig);
  }

  void Interrupt() override {
    uint64_t one = 1;
    if (wake_fd_ >= 0) {
      ssize_t n = write(wake_fd_, &one, sizeof(one));
      (void)n;
    }
  }

  std::optional<ExitInfo> Wait(absl::Duration timeout) override {
    using SteadyClock = std::chrono::steady_clock;
    const bool forever = timeout == absl::InfiniteDuration();
    const auto start = SteadyClock::now();
    const auto limit =
        forever ? SteadyClock::time_point::max()
                : start + std::chrono::milliseconds(std::max<int64_t>(
                              0, absl::ToInt64Milliseconds(timeout)));
    while (true) {
      if (!exit_) ReapIfExited();
      if (exit_ && out_fd_ < 0 && err_fd_ < 0) return exit_;
      const auto now = SteadyClock::now();
      auto until = limit;
      if (exit_) until = std::min(until, drain_limit_);
      if (exit_ && now >= drain_limit_) {
        CloseFd(out_fd_);
        CloseFd(err_fd_);
        continue;
      }
      if (!exit_ && now >= limit) return std::nullopt;

      pollfd fds[4];
      int n = 0;
      int out_i = -1, err_i = -1, pid_i = -1, wake_i = -1;
      if (out_fd_ >= 0) fds[out_i = n++] = {out_fd_, POLLIN, 0};
      if (err_fd_ >= 0) fds[err_i = n++] = {err_fd_, POLLIN, 0};
      if (!exit_ && pidfd_ >= 0) fds[pid_i = n++] = {pidfd_, POLLIN, 0};
      if (wake_fd_ >= 0) fds[wake_i = n++] = {wake_fd_, POLLIN, 0};
      int wait_ms = -1;
      if (until != SteadyClock::time_point::max()) {
        wait_ms = static_cast<int>(
            std::chrono::ceil<std::chrono::milliseconds>(until - now).count());
      }
      // Without a pidfd (old kernels) exit is noticed by polling waitpid.
      if (!exit_ && pidfd_ < 0 && (wait_ms < 0 || wait_ms > 20)) wait_ms = 20;
      int rc = poll(fds, n, wait_ms);
      if (rc < 0) {
        if (errno == EINTR) continue;
        return std::nullopt;
      }
      if (wake_i >= 0 && (fds[wake_i].revents & POLLIN)) {
        uint64_t value;
        ssize_t r = read(wake_fd_, &value, sizeof(value));
        (void)r;
        if (!exit_) return std::nullopt;
      }
      if (out_i >= 0 && fds[out_i].revents) Drain(out_fd_, LogStream::kStdout);
      if (err_i >= 0 && fds[err_i].revents) Drain(err_fd_, LogStream::kStderr);
      if (pid_i >= 0 && fds[pid_i].revents) ReapIfExited();
    }
  }

 private:
  void ReapIfExited() {
    siginfo_t info{};
    if (waitid(P_PID, keeper_, &info, WEXITED | WNOHANG | WNOWAIT) != 0 ||
        info.si_pid != keeper_) {
      return;
    }
    // The keeper exits like the step, after it has killed and reaped all
    // that the step left.
    int wstatus = 0;
    while (waitpid(keeper_, &wstatus, 0) < 0 && errno == EINTR) {
    }
    exit_ = ToExitInfo(wstatus);
    drain_limit_ = std::chrono::steady_clock::now() + kDrainAfterExit;
  }

  // One read per readiness so both streams keep their order roughly in step.
  void Drain(int& fd, LogStream stream) {
    ssize_t r = read(fd, buffer_.get(), kReadChunk);
    if (r > 0) {
      if (on_output_) on_output_(stream, std::string_view(buffer_.get(), r));
      return;
    }
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) return;
    CloseFd(fd);
  }

  pid_t keeper_;
  pid_t step_;
  int out_fd_;
  int err_fd_;
  int pidfd_ = -1;
  int wake_fd_ = -1;
  OutputCallback on_output_;
  std::unique_ptr<char[]> buffer_;
  std::optional<ExitInfo> exit_;
  std::chrono::steady_clock::time_point drain_limit_{};
};

struct CStrings {
  explicit CStrings(const std::vector<std::string>& v) {
    ptrs.reserve(v.size() + 1);
    for (const std::string& s : v) ptrs.push_back(const_cast<char*>(s.c_str()));
    ptrs.push_back(nullptr);
  }
  std::vector<char*> ptrs;
};

// The lifeline: a pipe whose write end only this process holds. When this
// process dies, however it dies, the pipe hangs up and every keeper kills
// its step. (PR_SET_PDEATHSIG would fire when the launching thread exits,
// not the process, and a worker thread may retire while its step runs.)
struct Lifeline {
  int read_fd = -1;
  int write_fd = -1;
};
const Lifeline& TheLifeline() {
  static const Lifeline lifeline = [] {
    Lifeline l;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) == 0) {
      l.read_fd = fds[0];
      l.write_fd = fds[1];
    }
    return l;
  }();
  return lifeline;
}

// What the keeper and the step tell the launcher over the report pipe: the
// step's pid, or what failed and its errno. 8 bytes, written atomically.
enum ReportCode : int {
  kStepPid = 0,
  kSetUpStdio = 1,
  kSwitchGroup = 2,
  kSwitchUser = 3,
  kEnterWorkdir = 4,
  kExecute = 5,
  kForkStep = 6,
};
constexpr const char* kFailedTo[] = {"",
                                     "set up stdio",
                                     "switch to the group",
                                     "switch to the user",
                                     "enter the working directory",
                                     "execute",
                                     "fork"};

void Report(int fd, int code, int value) {
  int data[2] = {code, value};
  ssize_t w = write(fd, data, sizeof(data));
  (void)w;
}

// Everything the keeper and the step need, prepared before fork: after it
// only async-signal-safe calls are made.
struct KeeperArgs {
  char* const* argv;
  char* const* envp;
  const char* dir;
  bool set_gid;
  gid_t gid;
  bool set_uid;
  uid_t uid;
  int out_w;
  int err_w;
  int report_w;
  int lifeline_r;
  int lifeline_w;
};

// Closes every descriptor from 3 up except those in `keep` (sorted).
void CloseAllBut(const int* keep, int n) {
  unsigned from = 3;
  for (int i = 0; i < n; ++i) {
    if (keep[i] < 0 || static_cast<unsigned>(keep[i]) < from) continue;
    if (static_cast<unsigned>(keep[i]) > from) {
      syscall(SYS_close_range, from, static_cast<unsigned>(keep[i]) - 1, 0);
    }
    from = static_cast<unsigned>(keep[i]) + 1;
  }
  syscall(SYS_close_range, from, ~0U, 0);
}

// The step: its own process group, default signals, stdin from /dev/null,
// then the user, the working directory and exec.
[[noreturn]] void StartStep(const KeeperArgs& a) {
  auto fail = [&](int code) {
    Report(a.report_w, code, errno);
    _exit(127);
  };
  setpgid(0, 0);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int s = 1; s < NSIG; ++s) sigaction(s, &dfl, nullptr);
  sigset_t empty;
  sigemptyset(&empty);
  sigprocmask(SIG_SETMASK, &empty, nullptr);
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_fd < 0 || dup2(null_fd, 0) < 0) fail(kSetUpStdio);
  if (dup2(a.out_w, 1) < 0 || dup2(a.err_w, 2) < 0) fail(kSetUpStdio);
  if (a.set_gid) {
    if (setgroups(1, &a.gid) != 0 || setgid(a.gid) != 0) fail(kSwitchGroup);
  }
  if (a.set_uid && setuid(a.uid) != 0) fail(kSwitchUser);
  if (a.dir && chdir(a.dir) != 0) fail(kEnterWorkdir);
  execve(a.argv[0], a.argv, a.envp);
  fail(kExecute);
  _exit(127);  // not reached
}

// Parses the pids in /proc/self/task/<pid>/children and SIGKILLs each (and
// its group, for a child that leads one). Returns how many it found.
int KillChildren() {
  char path[64] = "/proc/self/task/";
  {
    char digits[16];
    int n = 0;
    for (pid_t v = getpid(); v > 0 && n < 16; v /= 10)
      digits[n++] = '0' + v % 10;
    size_t at = strlen(path);
    while (n > 0) path[at++] = digits[--n];
    memcpy(path + at, "/children", 10);
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[4096];
  int found = 0;
  pid_t pid = 0;
  ssize_t r;
  while ((r = read(fd, buf, sizeof(buf))) > 0) {
    for (ssize_t i = 0; i < r; ++i) {
      if (buf[i] >= '0' && buf[i] <= '9') {
        pid = pid * 10 + (buf[i] - '0');
      } else if (pid > 0) {
        kill(pid, SIGKILL);
        kill(-pid, SIGKILL);
        ++found;
        pid = 0;
      }
    }
  }
  if (pid > 0) {
    kill(pid, SIGKILL);
    kill(-pid, SIGKILL);
    ++found;
  }
  close(fd);
  return found;
}

// Kills and reaps every process left below the keeper: the step's group,
// and what was re-parented to the keeper (it is their subreaper), until
// none is left.
void KillEverything(pid_t step, bool step_reaped) {
  if (!step_reaped) kill(-step, SIGKILL);
  while (true) {
    int found = KillChildren();
    int wstatus;
    pid_t reaped = waitpid(-1, &wstatus, found == 0 ? WNOHANG : 0);
    if (reaped < 0 && errno == ECHILD) return;
    if (reaped < 0 && errno != EINTR) return;
    if (reaped == 0) {
      // Children, but /proc listed none: wait for them to be listed.
      struct timespec pause = {0, 1000000};
      nanosleep(&pause, nullptr);
    }
  }
}

// Ends the keeper the way its step ended, so that the launcher's waitpid
// sees the step's own exit code or signal.
[[noreturn]] void EndLike(int wstatus) {
  if (WIFSIGNALED(wstatus)) {
    const int sig = WTERMSIG(wstatus);
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, nullptr);
    sigset_t only;
    sigemptyset(&only);
    sigaddset(&only, sig);
    sigprocmask(SIG_UNBLOCK, &only, nullptr);
    kill(getpid(), sig);
    _exit(128 + sig);
  }
  _exit(WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 127);
}

// The keeper: the launcher's child and the step's parent, and the
// subreaper of everything the step starts, so that a process that left the
// step's group (setsid, a double fork) still comes back to it. When the step
// exits it kills all of that and exits like the step; when the launcher's
// process dies (the lifeline hangs up) it kills all of it at once.
[[noreturn]] void RunKeeper(const KeeperArgs& a) {
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_SETMASK, &all, nullptr);
  // Terminal and session signals sent to the launcher's group are not for
  // the keeper; the step gets them through its own group.
  struct sigaction ign {};
  ign.sa_handler = SIG_IGN;
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int s = 1; s < NSIG; ++s) sigaction(s, &dfl, nullptr);
  for (int s : {SIGINT, SIGQUIT, SIGHUP, SIGTERM, SIGPIPE, SIGTSTP, SIGTTIN,
                SIGTTOU, SIGUSR1, SIGUSR2}) {
    sigaction(s, &ign, nullptr);
  }
  if (a.lifeline_w >= 0) close(a.lifeline_w);
  int keep[4] = {a.out_w, a.err_w, a.report_w, a.lifeline_r};
  std::sort(keep, keep + 4);
  CloseAllBut(keep, 4);
  prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
  if (a.lifeline_r >= 0) {
    // The launcher may have died before the subreaper was set.
    pollfd p = {a.lifeline_r, POLLIN, 0};
    if (poll(&p, 1, 0) > 0) _exit(127);
  }
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  const int child_fd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  const pid_t step = fork();
  if (step < 0) {
    Report(a.report_w, kForkStep, errno);
    _exit(127);
  }
  if (step == 0) StartStep(a);
  setpgid(step, step);  // also here, so the launcher can signal it at once
  Report(a.report_w, kStepPid, step);
  close(a.report_w);
  close(a.out_w);
  close(a.err_w);
  while (true) {
    pollfd fds[2];
    int n = 0;
    if (child_fd >= 0) fds[n++] = {child_fd, POLLIN, 0};
    const int life_i = a.lifeline_r >= 0 ? n : -1;
    if (life_i >= 0) fds[n++] = {a.lifeline_r, POLLIN, 0};
    // Without a signalfd, exits are noticed by polling.
    if (poll(fds, n, child_fd >= 0 ? -1 : 50) < 0 && errno != EINTR) {
      struct timespec pause = {0, 50000000};
      nanosleep(&pause, nullptr);
    }
    if (life_i >= 0 && fds[life_i].revents != 0) {
      KillEverything(step, false);
      _exit(128 + SIGKILL);
    }
    if (child_fd >= 0) {
      signalfd_siginfo info;
      while (read(child_fd, &info, sizeof(info)) > 0) {
      }
    }
    // Reap what exited; the step last, after its group is killed while its
    // zombie still holds the group's id.
    while (true) {
      siginfo_t info{};
      if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0 ||
          info.si_pid == 0) {
        break;
      }
      if (info.si_pid == step) {
        kill(-step, SIGKILL);
        int wstatus = 0;
        while (waitpid(step, &wstatus, 0) < 0 && errno == EINTR) {
        }
        KillEverything(step, true);
        EndLike(wstatus);
      }
      while (waitpid(info.si_pid, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
  }
}

class PosixLauncher final : public ProcessLauncher {
 public:
  absl::StatusOr<std::unique_ptr<Process>> Launch(
      const ProcessSpec& spec, OutputCallback on_output) override {
    if (spec.argv.empty()) {
      return absl::InvalidArgumentError("process argv is empty");
    }
    int out[2], err[2], report[2];
    if (pipe2(out, O_CLOEXEC) != 0) {
      return absl::InternalError(Errno("pipe2"));
    }
    if (pipe2(err, O_CLOEXEC) != 0) {
      close(out[0]);
      close(out[1]);
      return absl::InternalError(Errno("pipe2"));
    }
    if (pipe2(report, O_CLOEXEC) != 0) {
      for (int fd : {out[0], out[1], err[0], err[1]}) close(fd);
      return absl::InternalError(Errno("pipe2"));
    }
    CStrings argv(spec.argv);
    CStrings envp(spec.env);
    const Lifeline& lifeline = TheLifeline();
    const KeeperArgs args = {
        .argv = argv.ptrs.data(),
        .envp = envp.ptrs.data(),
        .dir = spec.working_dir.empty() ? nullptr : spec.working_dir.c_str(),
        .set_gid = spec.gid.has_value(),
        .gid = spec.gid.value_or(0),
        .set_uid = spec.uid.has_value(),
        .uid = spec.uid.value_or(0),
        .out_w = out[1],
        .err_w = err[1],
        .report_w = report[1],
        .lifeline_r = lifeline.read_fd,
        .lifeline_w = lifeline.write_fd,
    };
    const pid_t keeper = fork();
    if (keeper == 0) RunKeeper(args);
    const int fork_errno = errno;
    close(out[1]);
    close(err[1]);
    close(report[1]);
    if (keeper < 0) {
      for (int fd : {out[0], err[0], report[0]}) close(fd);
      errno = fork_errno;
      return absl::InternalError(Errno("fork"));
    }
    // The step's pid, then end of file when it has exec'd; or a failure.
    pid_t step = -1;
    int failed = 0, failed_errno = 0;
    int data[2];
    ssize_t r;
    while ((r = read(report[0], data, sizeof(data))) != 0) {
      if (r < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (r != static_cast<ssize_t>(sizeof(data))) break;
      if (data[0] == kStepPid) {
        step = data[1];
      } else if (data[0] > 0 && data[0] <= kForkStep) {
        failed = data[0];
        failed_errno = data[1];
      }
    }
    close(report[0]);
    if (failed != 0 || step <= 0) {
      int wstatus;
      while (waitpid(keeper, &wstatus, 0) < 0 && errno == EINTR) {
      }
      close(out[0]);
      close(err[0]);
      if (failed == 0) {
        return absl::InternalError(absl::StrCat(
            "cannot start ", spec.argv[0], ": its keeper process ended first"));
      }
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot start ", spec.argv[0], " in ", spec.working_dir,
          ": failed to ", kFailedTo[failed], ": ", strerror(failed_errno)));
    }
    return std::unique_ptr<Process>(
        new PosixProcess(keeper, step, out[0], err[0], std::move(on_output)));
  }
};

}  // namespace

ProcessLauncher& ProcessLauncher::Default() {
  static PosixLauncher* launcher = new PosixLauncher;
  return *launcher;
}

}  // namespace delegate

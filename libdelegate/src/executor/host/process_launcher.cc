// The default ProcessLauncher: posix_spawn into a new process group, output
// through pipes, exit through a pidfd, all multiplexed by poll() on the
// waiting thread so that no extra thread is needed per process.
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "delegate/process.h"

namespace delegate {
namespace {

constexpr size_t kReadChunk = 64 * 1024;
// After the leader exits, how long output is still read from pipes that a
// process outside the group (one that called setsid) may hold open.
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
  PosixProcess(pid_t pid, int out_fd, int err_fd, OutputCallback on_output)
      : pid_(pid),
        out_fd_(out_fd),
        err_fd_(err_fd),
        on_output_(std::move(on_output)),
        buffer_(new char[kReadChunk]) {
    pidfd_ = PidfdOpen(pid);
    wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  }

  ~PosixProcess() override {
    if (!exit_) {
      kill(-pid_, SIGKILL);
      int wstatus = 0;
      while (waitpid(pid_, &wstatus, 0) < 0 && errno == EINTR) {
      }
    }
    CloseFd(out_fd_);
    CloseFd(err_fd_);
    CloseFd(pidfd_);
    CloseFd(wake_fd_);
  }

  pid_t pid() const override { return pid_; }

  void Signal(int sig) override {
    // Once the leader is reaped its pid may name someone else's group.
    if (!exit_) kill(-pid_, sig);
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
    if (waitid(P_PID, pid_, &info, WEXITED | WNOHANG | WNOWAIT) != 0 ||
        info.si_pid != pid_) {
      return;
    }
    // Nothing of the step may outlive it. The leader is a zombie until
    // reaped, so its pid still names the group and cannot be reused yet.
    kill(-pid_, SIGKILL);
    int wstatus = 0;
    while (waitpid(pid_, &wstatus, 0) < 0 && errno == EINTR) {
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

  pid_t pid_;
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

class PosixLauncher final : public ProcessLauncher {
 public:
  absl::StatusOr<std::unique_ptr<Process>> Launch(
      const ProcessSpec& spec, OutputCallback on_output) override {
    if (spec.argv.empty()) {
      return absl::InvalidArgumentError("process argv is empty");
    }
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) != 0) {
      return absl::InternalError(Errno("pipe2"));
    }
    if (pipe2(err, O_CLOEXEC) != 0) {
      close(out[0]);
      close(out[1]);
      return absl::InternalError(Errno("pipe2"));
    }
    CStrings argv(spec.argv);
    CStrings envp(spec.env);
    pid_t pid = -1;
    absl::Status status = (spec.uid || spec.gid)
                              ? ForkExec(spec, argv, envp, out[1], err[1], pid)
                              : Spawn(spec, argv, envp, out[1], err[1], pid);
    close(out[1]);
    close(err[1]);
    if (!status.ok()) {
      close(out[0]);
      close(err[0]);
      return status;
    }
    return std::unique_ptr<Process>(
        new PosixProcess(pid, out[0], err[0], std::move(on_output)));
  }

 private:
  static absl::Status Spawn(const ProcessSpec& spec, CStrings& argv,
                            CStrings& envp, int out_w, int err_w, pid_t& pid) {
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, out_w, 1);
    posix_spawn_file_actions_adddup2(&actions, err_w, 2);
    if (!spec.working_dir.empty()) {
      posix_spawn_file_actions_addchdir_np(&actions, spec.working_dir.c_str());
    }
    sigset_t empty, all;
    sigemptyset(&empty);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &empty);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP |
                                        POSIX_SPAWN_SETSIGMASK |
                                        POSIX_SPAWN_SETSIGDEF);
    int rc = posix_spawn(&pid, argv.ptrs[0], &actions, &attr, argv.ptrs.data(),
                         envp.ptrs.data());
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot start ", spec.argv[0], " in ", spec.working_dir,
                       ": ", strerror(rc)));
    }
    return absl::OkStatus();
  }

  // fork + exec for a step that runs as another user, which posix_spawn cannot
  // do. The child uses only async-signal-safe calls; failures reach the parent
  // through a close-on-exec pipe.
  static absl::Status ForkExec(const ProcessSpec& spec, CStrings& argv,
                               CStrings& envp, int out_w, int err_w,
                               pid_t& pid) {
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) {
      return absl::InternalError(Errno("pipe2"));
    }
    const char* dir =
        spec.working_dir.empty() ? nullptr : spec.working_dir.c_str();
    const bool set_gid = spec.gid.has_value();
    const gid_t gid = spec.gid.value_or(0);
    const bool set_uid = spec.uid.has_value();
    const uid_t uid = spec.uid.value_or(0);
    pid = fork();
    if (pid < 0) {
      close(report[0]);
      close(report[1]);
      return absl::InternalError(Errno("fork"));
    }
    if (pid == 0) {
      auto fail = [&](int stage) {
        int data[2] = {stage, errno};
        ssize_t w = write(report[1], data, sizeof(data));
        (void)w;
        _exit(127);
      };
      setpgid(0, 0);
      sigset_t empty;
      sigemptyset(&empty);
      sigprocmask(SIG_SETMASK, &empty, nullptr);
      for (int s = 1; s < NSIG; ++s) signal(s, SIG_DFL);
      int null_fd = open("/dev/null", O_RDONLY);
      if (null_fd < 0 || dup2(null_fd, 0) < 0) fail(1);
      if (dup2(out_w, 1) < 0 || dup2(err_w, 2) < 0) fail(1);
      if (set_gid) {
        if (setgroups(1, &gid) != 0 || setgid(gid) != 0) fail(2);
      }
      if (set_uid && setuid(uid) != 0) fail(3);
      if (dir && chdir(dir) != 0) fail(4);
      execve(argv.ptrs[0], argv.ptrs.data(), envp.ptrs.data());
      fail(5);
    }
    close(report[1]);
    int data[2] = {0, 0};
    ssize_t r;
    while ((r = read(report[0], data, sizeof(data))) < 0 && errno == EINTR) {
    }
    close(report[0]);
    if (r == static_cast<ssize_t>(sizeof(data))) {
      int wstatus;
      waitpid(pid, &wstatus, 0);
      static constexpr const char* kWhat[] = {"",
                                              "set up stdio",
                                              "switch to the group",
                                              "switch to the user",
                                              "enter the working directory",
                                              "execute"};
      return absl::FailedPreconditionError(
          absl::StrCat("cannot start ", spec.argv[0], ": failed to ",
                       kWhat[data[0]], ": ", strerror(data[1])));
    }
    return absl::OkStatus();
  }
};

}  // namespace

ProcessLauncher& ProcessLauncher::Default() {
  static PosixLauncher* launcher = new PosixLauncher;
  return *launcher;
}

}  // namespace delegate

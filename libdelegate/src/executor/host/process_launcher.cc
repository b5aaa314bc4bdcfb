// The default ProcessLauncher. Each step runs under a keeper (keeper/keeper.c,
// a small static program embedded in the library and started with
// posix_spawn), the subreaper of the step's process tree, so that nothing
// the step starts outlives it (not even a process that called setsid or was
// double-forked), nor outlives this process (the keeper holds a lifeline
// pipe and kills the tree when it hangs up). Output comes through
// pipes and the keeper's exit through a pidfd, all multiplexed by poll() on
// the waiting thread so that no extra thread is needed per process.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
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

// keeper_image.cc, made by the build from executor/host/keeper/keeper.c.
extern const unsigned char kKeeperImage[];
extern const unsigned long kKeeperImage_size;

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
// Both ends sit at high numbers, so that the spawn's dup2 onto 3 and 4
// never overwrites one before it is used.
struct Lifeline {
  int read_fd = -1;
  int write_fd = -1;
};
int HighFd(int fd) {
  if (fd < 0) return fd;
  int high = fcntl(fd, F_DUPFD_CLOEXEC, 100);
  if (high < 0) return fd;
  close(fd);
  return high;
}
const Lifeline& TheLifeline() {
  static const Lifeline lifeline = [] {
    Lifeline l;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) == 0) {
      l.read_fd = HighFd(fds[0]);
      l.write_fd = HighFd(fds[1]);
    }
    return l;
  }();
  return lifeline;
}

// What the keeper and the step tell the launcher over the report pipe
// (keeper.c): the step's pid, or what failed and its errno.
enum ReportCode : int {
  kStepPid = 0,
  kForkStep = 6,
  kKeeperUsage = 7,
};
constexpr const char* kFailedTo[] = {"",
                                     "set up stdio",
                                     "switch to the group",
                                     "switch to the user",
                                     "enter the working directory",
                                     "execute",
                                     "fork",
                                     "start its keeper"};

bool WriteAll(int fd, const unsigned char* data, size_t size) {
  while (size > 0) {
    ssize_t n = write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

// The keeper's executable: kKeeperImage in a sealed memfd, at
// /proc/self/fd/N; where memfds cannot be executed, a file of this user's
// under $TMPDIR. Made once.
struct KeeperExe {
  std::string path;
  std::string error;
};
// Removes the on-disk keeper when the process ends normally.
struct RemoveAtExit {
  std::string path;
  ~RemoveAtExit() {
    if (!path.empty()) unlink(path.c_str());
  }
};
KeeperExe MakeKeeperFile() {
  KeeperExe k;
  const char* tmp = getenv("TMPDIR");
  std::string path = absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp",
                                  "/delegate-keeper-XXXXXX");
  // A fresh name (O_EXCL): never a file or link someone else put there.
  int fd = mkostemp(path.data(), O_CLOEXEC);
  if (fd < 0) {
    k.error = Errno(absl::StrCat("mkstemp ", path).c_str());
    return k;
  }
  static RemoveAtExit remove;
  remove.path = path;
  if (!WriteAll(fd, kKeeperImage, kKeeperImage_size) || fchmod(fd, 0500) != 0) {
    k.error = Errno(absl::StrCat("write ", path).c_str());
    close(fd);
    return k;
  }
  close(fd);
  k.path = path;
  return k;
}
const KeeperExe& TheKeeper(bool file_instead) {
  static const KeeperExe in_memory = [] {
    KeeperExe k;
    int fd = memfd_create("delegate-keeper", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 || !WriteAll(fd, kKeeperImage, kKeeperImage_size)) {
      k.error = Errno("memfd_create");
      if (fd >= 0) close(fd);
      return k;
    }
    fcntl(fd, F_ADD_SEALS,
          F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
    fd = HighFd(fd);
    k.path = absl::StrCat("/proc/self/fd/", fd);
    return k;
  }();
  if (!file_instead && !in_memory.path.empty()) return in_memory;
  static const KeeperExe on_disk = MakeKeeperFile();
  return on_disk;
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
    pid_t keeper = -1;
    absl::Status spawned = SpawnKeeper(spec, out[1], err[1], report[1], keeper);
    close(out[1]);
    close(err[1]);
    close(report[1]);
    if (!spawned.ok()) {
      for (int fd : {out[0], err[0], report[0]}) close(fd);
      return spawned;
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
      } else if (data[0] > 0 && data[0] <= kKeeperUsage) {
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

 private:
  // posix_spawn of the keeper (as vfork: the delegate's memory is not
  // copied), with the step's pipes as its stdout and stderr, the report
  // pipe as 3 and the lifeline as 4.
  static absl::Status SpawnKeeper(const ProcessSpec& spec, int out_w, int err_w,
                                  int report_w, pid_t& pid) {
    std::vector<std::string> args = {"delegate-keeper"};
    if (spec.uid) args.insert(args.end(), {"-u", absl::StrCat(*spec.uid)});
    if (spec.gid) args.insert(args.end(), {"-g", absl::StrCat(*spec.gid)});
    if (!spec.working_dir.empty()) {
      args.insert(args.end(), {"-C", spec.working_dir});
    }
    args.push_back("--");
    args.insert(args.end(), spec.argv.begin(), spec.argv.end());
    CStrings argv(args);
    CStrings envp(spec.env);
    const Lifeline& lifeline = TheLifeline();
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, out_w, 1);
    posix_spawn_file_actions_adddup2(&actions, err_w, 2);
    posix_spawn_file_actions_adddup2(&actions, report_w, 3);
    if (lifeline.read_fd >= 0) {
      posix_spawn_file_actions_adddup2(&actions, lifeline.read_fd, 4);
    }
    sigset_t empty, all;
    sigemptyset(&empty);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &empty);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr,
                             POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    int rc = ENOENT;
    for (bool file_instead : {false, true}) {
      const KeeperExe& exe = TheKeeper(file_instead);
      if (exe.path.empty()) {
        rc = ENOENT;
        continue;
      }
      rc = posix_spawn(&pid, exe.path.c_str(), &actions, &attr,
                       argv.ptrs.data(), envp.ptrs.data());
      // A memfd cannot be executed where memfd_noexec forbids it, nor from
      // a /proc mounted noexec: then from a file.
      if (rc != EACCES && rc != EPERM && rc != ENOEXEC && rc != ENOENT) break;
    }
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot start ", spec.argv[0],
                       ": cannot start its keeper process: ", strerror(rc)));
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

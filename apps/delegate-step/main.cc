// delegate-step: the program a step container of a stage task runs. The
// runner (`delegate runner`, in the same task) copies it into a volume every
// container of the task mounts; a step container starts it as its entry
// point:
//
//   delegate-step --socket /delegate/runner.sock --name step-1
//
// It connects to the runner's Unix socket, says which container it is (and
// the container's token, DELEGATE_STEP_TOKEN, which the delegate gave this
// container alone, so that no other container's step can pose as it), and
// then runs what the runner sends, one process at a time, in a process group
// of its own: output and exit go back to the runner, and a signal from the
// runner goes to the whole group. When the step's process has exited,
// whatever it left running is killed: its process group, and, as the
// container's PID 1, every other process of the container (a step that
// called setsid too): no process outlives its step. As PID 1 it also reaps
// every orphan, between steps too.
//
// Statically linked, with nothing but the C library and POSIX: it runs in
// any step image, with or without a libc (alpine, distroless, scratch).
// The wire format is runner/agent_protocol.h's; this file has its own copy
// of the few lines of encoding so that it links nothing of libdelegate.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <string>
#include <vector>

extern char** environ;

namespace {

// Frame types (runner/agent_protocol.h).
enum : uint8_t {
  kHello = 1,
  kStarted = 2,
  kOutput = 3,
  kExited = 4,
  kRun = 16,
  kSignal = 17,
};
constexpr uint32_t kMaxFrame = 64u << 20;

int g_socket = -1;
volatile sig_atomic_t g_terminate = 0;

void Say(const char* what, const char* detail = "") {
  fprintf(stderr, "delegate-step: %s%s\n", what, detail);
}

bool WriteAll(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

bool ReadAll(int fd, void* data, size_t size) {
  char* p = static_cast<char*>(data);
  while (size > 0) {
    ssize_t n = read(fd, p, size);
    if (n < 0 && errno == EINTR && !g_terminate) continue;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

void PutU32(std::string& out, uint32_t v) {
  const char b[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16),
                     static_cast<char>(v >> 8), static_cast<char>(v)};
  out.append(b, 4);
}

void PutString(std::string& out, const std::string& s) {
  PutU32(out, static_cast<uint32_t>(s.size()));
  out += s;
}

bool Send(uint8_t type, const std::string& payload) {
  std::string frame;
  PutU32(frame, static_cast<uint32_t>(payload.size() + 1));
  frame.push_back(static_cast<char>(type));
  frame += payload;
  return WriteAll(g_socket, frame.data(), frame.size());
}

// Reads one frame; false when the runner is gone or sent garbage.
bool Receive(uint8_t* type, std::string* payload) {
  unsigned char head[4];
  if (!ReadAll(g_socket, head, 4)) return false;
  const uint32_t size = (uint32_t{head[0]} << 24) | (uint32_t{head[1]} << 16) |
                        (uint32_t{head[2]} << 8) | uint32_t{head[3]};
  if (size == 0 || size > kMaxFrame) return false;
  std::string body(size, '\0');
  if (!ReadAll(g_socket, body.data(), size)) return false;
  *type = static_cast<uint8_t>(body[0]);
  payload->assign(body, 1, std::string::npos);
  return true;
}

// A reader over a payload of u32 counts and length-prefixed strings.
class Reader {
 public:
  explicit Reader(const std::string& s) : s_(s) {}
  bool U32(uint32_t* v) {
    if (s_.size() - at_ < 4) return false;
    const auto* p = reinterpret_cast<const unsigned char*>(s_.data() + at_);
    *v = (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) |
         (uint32_t{p[2]} << 8) | uint32_t{p[3]};
    at_ += 4;
    return true;
  }
  bool String(std::string* out) {
    uint32_t n = 0;
    if (!U32(&n) || s_.size() - at_ < n) return false;
    out->assign(s_, at_, n);
    at_ += n;
    return true;
  }
  bool Strings(std::vector<std::string>* out) {
    uint32_t n = 0;
    if (!U32(&n) || n > s_.size()) return false;
    out->resize(n);
    for (std::string& s : *out) {
      if (!String(&s)) return false;
    }
    return true;
  }

 private:
  const std::string& s_;
  size_t at_ = 0;
};

struct RunRequest {
  std::vector<std::string> argv;
  std::vector<std::string> env;  // KEY=VALUE
  std::string working_dir;
};

bool ParseRun(const std::string& payload, RunRequest* run) {
  Reader r(payload);
  return r.Strings(&run->argv) && r.Strings(&run->env) &&
         r.String(&run->working_dir) && !run->argv.empty();
}

// mkdir -p, for the working directory.
void MakeDirs(const std::string& path) {
  for (size_t i = 1; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      mkdir(path.substr(0, i).c_str(), 0755);
    }
  }
}

void SendExited(int code, int signal, const std::string& error) {
  std::string p;
  PutU32(p, static_cast<uint32_t>(code));
  PutU32(p, static_cast<uint32_t>(signal));
  PutString(p, error);
  Send(kExited, p);
}

bool SendOutput(uint8_t stream, const char* data, size_t size) {
  std::string p(1, static_cast<char>(stream));
  p.append(data, size);
  return Send(kOutput, p);
}

// Forks the step's process in a group of its own. Returns its pid, or -1
// with `error` set when it could not be started (the exec failure comes
// back from the child through a close-on-exec pipe).
pid_t Start(const RunRequest& run, int out_fd, int err_fd, std::string* error) {
  int status_pipe[2];
  if (pipe2(status_pipe, O_CLOEXEC) != 0) {
    *error = std::string("pipe: ") + strerror(errno);
    return -1;
  }
  std::vector<char*> argv;
  for (const std::string& a : run.argv)
    argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  // The container's own environment (its image's ENV, such as PATH, and
  // its definition's), under the step's: as `docker run -e` would have it.
  // The agent's own DELEGATE_* settings stay out.
  std::vector<std::string> merged = run.env;
  auto named = [&](const char* entry) {
    const char* eq = strchr(entry, '=');
    const size_t n = eq ? static_cast<size_t>(eq - entry) : strlen(entry);
    for (const std::string& e : run.env) {
      if (e.size() > n && e[n] == '=' && e.compare(0, n, entry, n) == 0) {
        return true;
      }
    }
    return false;
  };
  for (char** e = environ; e && *e; ++e) {
    if (strncmp(*e, "DELEGATE_", 9) == 0 || named(*e)) continue;
    merged.push_back(*e);
  }
  std::vector<char*> envp;
  for (const std::string& e : merged) {
    envp.push_back(const_cast<char*>(e.c_str()));
  }
  envp.push_back(nullptr);
  if (!run.working_dir.empty()) MakeDirs(run.working_dir);

  pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGTERM, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    close(status_pipe[0]);
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull >= 0) dup2(devnull, 0);  // the copy on 0 stays open
    const char* what = "chdir";
    if (run.working_dir.empty() || chdir(run.working_dir.c_str()) == 0) {
      // execvp looks argv[0] up in the PATH of the step's environment.
      environ = envp.data();
      execvp(argv[0], argv.data());
      what = "exec";
    }
    const std::string message =
        std::string(what) + ": " +
        (what[0] == 'e' ? run.argv[0] : run.working_dir) + ": " +
        strerror(errno);
    WriteAll(status_pipe[1], message.data(), message.size());
    _exit(127);
  }
  close(status_pipe[1]);
  if (pid < 0) {
    *error = std::string("fork: ") + strerror(errno);
    close(status_pipe[0]);
    return -1;
  }
  setpgid(pid, pid);  // also here: no race with a signal right after
  char buf[512];
  ssize_t n;
  do {
    n = read(status_pipe[0], buf, sizeof(buf));
  } while (n < 0 && errno == EINTR);
  close(status_pipe[0]);
  if (n > 0) {
    *error = std::string(buf, static_cast<size_t>(n));
    int ignored;
    waitpid(pid, &ignored, 0);
    return -1;
  }
  return pid;
}

// Reaps every child that has exited (orphans too, as PID 1); true when
// `main_pid` was among them, with its status.
bool Reap(pid_t main_pid, int* main_status) {
  bool found = false;
  for (;;) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) break;
    if (pid == main_pid) {
      *main_status = status;
      found = true;
    }
  }
  return found;
}

void OnTerminate(int) { g_terminate = 1; }

// Runs one request to its end; false when the runner went away.
bool RunOne(const RunRequest& run) {
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) {
    SendExited(-1, 0, std::string("pipe: ") + strerror(errno));
    return true;
  }
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    close(out_pipe[0]);
    close(out_pipe[1]);
    SendExited(-1, 0, std::string("pipe: ") + strerror(errno));
    return true;
  }
  std::string error;
  const pid_t pid = Start(run, out_pipe[1], err_pipe[1], &error);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (pid < 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    SendExited(-1, 0, error);
    return true;
  }
  {
    std::string p;
    PutU32(p, static_cast<uint32_t>(pid));
    if (!Send(kStarted, p)) return false;
  }
  int fds[2] = {out_pipe[0], err_pipe[0]};
  bool open_fds[2] = {true, true};
  bool runner_there = true;
  bool terminated = false;  // SIGTERM passed on to the step
  bool exited = false;
  int status = 0;
  struct timespec exited_at = {};
  char buf[64 * 1024];
  for (;;) {
    if (g_terminate && !terminated) {
      kill(-pid, SIGTERM);
      terminated = true;
    }
    if (!exited && Reap(pid, &status)) {
      exited = true;
      clock_gettime(CLOCK_MONOTONIC, &exited_at);
      // What the step left running goes with it: its group, and as PID 1
      // every other process of the container (kill(-1) spares PID 1). Its
      // output already written is still read below.
      kill(-pid, SIGKILL);
      if (getpid() == 1) kill(-1, SIGKILL);
    }
    if (exited && !open_fds[0] && !open_fds[1]) break;
    if (exited) {
      // A process that left the group may hold the pipes: give up on them
      // after a moment rather than wait for ever.
      struct timespec now;
      clock_gettime(CLOCK_MONOTONIC, &now);
      if (now.tv_sec - exited_at.tv_sec >= 2) break;
    }
    struct pollfd p[3];
    int n = 0;
    int index[3];
    for (int i = 0; i < 2; ++i) {
      if (open_fds[i]) {
        p[n] = {fds[i], POLLIN, 0};
        index[n++] = i;
      }
    }
    p[n] = {g_socket, POLLIN, 0};
    const int socket_slot = n++;
    if (poll(p, static_cast<nfds_t>(n), 50) < 0 && errno != EINTR) {
      kill(-pid, SIGKILL);
      break;
    }
    for (int k = 0; k < socket_slot; ++k) {
      if (!(p[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const int i = index[k];
      ssize_t got = read(fds[i], buf, sizeof(buf));
      if (got > 0) {
        if (runner_there) {
          runner_there = SendOutput(static_cast<uint8_t>(i + 1), buf,
                                    static_cast<size_t>(got));
        }
      } else if (got == 0 || errno != EINTR) {
        open_fds[i] = false;
      }
    }
    if (p[socket_slot].revents & (POLLIN | POLLHUP | POLLERR)) {
      uint8_t type = 0;
      std::string payload;
      if (!Receive(&type, &payload)) {
        // The runner is gone: so is the step.
        kill(-pid, SIGKILL);
        runner_there = false;
        break;
      }
      if (type == kSignal) {
        Reader r(payload);
        uint32_t sig = 0;
        if (r.U32(&sig) && sig > 0 && sig < 65)
          kill(-pid, static_cast<int>(sig));
      }
    }
  }
  close(fds[0]);
  close(fds[1]);
  if (!exited) {
    int waited = 0;
    while (!(exited = Reap(pid, &status)) && waited++ < 100) usleep(20000);
  }
  if (!runner_there) return false;
  if (!exited) {
    SendExited(-1, SIGKILL, "the step's process did not end after SIGKILL");
    return true;
  }
  if (WIFSIGNALED(status)) {
    SendExited(-1, WTERMSIG(status), "");
  } else {
    SendExited(WEXITSTATUS(status), 0, "");
  }
  return true;
}

int Connect(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) return -1;
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  // The runner may still be making the socket: try for a minute.
  for (int attempt = 0; attempt < 600 && !g_terminate; ++attempt) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      return fd;
    }
    close(fd);
    usleep(100000);
  }
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string socket_path, name;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--socket") == 0) socket_path = argv[i + 1];
    if (strcmp(argv[i], "--name") == 0) name = argv[i + 1];
  }
  if (socket_path.empty() || name.empty()) {
    Say("usage: delegate-step --socket PATH --name CONTAINER");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  struct sigaction term {};
  term.sa_handler = OnTerminate;
  sigaction(SIGTERM, &term, nullptr);
  sigaction(SIGINT, &term, nullptr);

  g_socket = Connect(socket_path);
  if (g_socket < 0) {
    Say("cannot reach the runner at ", socket_path.c_str());
    return 1;
  }
  // The token is this container's alone; the steps it runs do not get it
  // (they get only their own environment).
  std::string hello = name;
  if (const char* token = getenv("DELEGATE_STEP_TOKEN")) {
    hello += '\n';
    hello += token;
  }
  unsetenv("DELEGATE_STEP_TOKEN");
  if (!Send(kHello, hello)) return 1;
  for (;;) {
    // Between steps: orphans are reaped, and SIGTERM ends the agent.
    struct pollfd idle = {g_socket, POLLIN, 0};
    while (!g_terminate && poll(&idle, 1, 1000) == 0) {
      int ignored;
      Reap(-1, &ignored);
    }
    if (g_terminate) break;
    uint8_t type = 0;
    std::string payload;
    if (!Receive(&type, &payload)) break;  // the runner is gone
    if (type == kSignal) continue;         // nothing runs
    if (type != kRun) {
      Say("unexpected frame from the runner");
      break;
    }
    RunRequest run;
    if (!ParseRun(payload, &run)) {
      SendExited(-1, 0, "malformed run request");
      continue;
    }
    if (!RunOne(run)) break;
    int ignored;
    Reap(-1, &ignored);
    if (g_terminate) break;
  }
  return 0;
}

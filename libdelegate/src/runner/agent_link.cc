#include "runner/agent_link.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace delegate::runner {
namespace {

void PutU32(std::string& out, uint32_t v) {
  const char b[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16),
                     static_cast<char>(v >> 8), static_cast<char>(v)};
  out.append(b, 4);
}

void PutString(std::string& out, std::string_view s) {
  PutU32(out, static_cast<uint32_t>(s.size()));
  out.append(s.data(), s.size());
}

uint32_t U32At(std::string_view s, size_t at) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data() + at);
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) |
         (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

int MillisOf(absl::Duration d) {
  if (d <= absl::ZeroDuration()) return 0;
  return static_cast<int>(
      std::min<int64_t>(absl::ToInt64Milliseconds(d) + 1, 1 << 30));
}

bool WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

}  // namespace

std::string EncodeRun(const AgentRun& run) {
  std::string out;
  PutU32(out, static_cast<uint32_t>(run.argv.size()));
  for (const std::string& a : run.argv) PutString(out, a);
  PutU32(out, static_cast<uint32_t>(run.env.size()));
  for (const std::string& e : run.env) PutString(out, e);
  PutString(out, run.working_dir);
  return out;
}

absl::StatusOr<AgentEvent> DecodeAgentFrame(FrameType type,
                                            std::string_view payload) {
  AgentEvent event;
  switch (type) {
    case FrameType::kStarted:
      if (payload.size() != 4) break;
      event.kind = AgentEvent::Kind::kStarted;
      event.pid = U32At(payload, 0);
      return event;
    case FrameType::kOutput:
      if (payload.empty() || (payload[0] != 1 && payload[0] != 2)) break;
      event.kind = AgentEvent::Kind::kOutput;
      event.stream = payload[0];
      event.data = std::string(payload.substr(1));
      return event;
    case FrameType::kExited: {
      if (payload.size() < 12) break;
      const uint32_t length = U32At(payload, 8);
      if (payload.size() - 12 != length) break;
      event.kind = AgentEvent::Kind::kExited;
      event.exit_code = static_cast<int32_t>(U32At(payload, 0));
      event.signal = static_cast<int32_t>(U32At(payload, 4));
      event.error = std::string(payload.substr(12));
      return event;
    }
    default:
      break;
  }
  return absl::DataLossError(
      absl::StrCat("the step container's agent sent a malformed frame (type ",
                   static_cast<int>(type), ", ", payload.size(), " bytes)"));
}

// ------------------------------------------------------------ connection

AgentConnection::AgentConnection(int fd, std::string name, std::string token)
    : fd_(fd), name_(std::move(name)), token_(std::move(token)) {}

void AgentConnection::Abandon() {
  shutdown(fd_, SHUT_RDWR);
  absl::MutexLock lock(&mu_);
  gone_ = true;
}

AgentConnection::~AgentConnection() { close(fd_); }

bool AgentConnection::gone() const {
  absl::MutexLock lock(&mu_);
  return gone_;
}

absl::Status AgentConnection::Send(FrameType type, const std::string& payload) {
  std::string frame;
  PutU32(frame, static_cast<uint32_t>(payload.size() + 1));
  frame.push_back(static_cast<char>(type));
  frame += payload;
  if (WriteAll(fd_, frame)) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  gone_ = true;
  return absl::UnavailableError(
      absl::StrCat("step container ", name_, " is gone"));
}

absl::Status AgentConnection::Run(const AgentRun& run) {
  return Send(FrameType::kRun, EncodeRun(run));
}

absl::Status AgentConnection::Signal(int signal) {
  std::string payload;
  PutU32(payload, static_cast<uint32_t>(signal));
  return Send(FrameType::kSignal, payload);
}

absl::StatusOr<AgentEvent> AgentConnection::Next(absl::Duration wait) {
  const absl::Time deadline = absl::Now() + wait;
  for (;;) {
    if (buffer_.size() >= 5) {
      const uint32_t size = U32At(buffer_, 0);
      if (size == 0 || size > kMaxFrameBytes) {
        absl::MutexLock lock(&mu_);
        gone_ = true;
        return absl::DataLossError(absl::StrCat("step container ", name_,
                                                "'s agent sent a frame of ",
                                                size, " bytes"));
      }
      if (buffer_.size() >= 4 + size) {
        const auto type = static_cast<FrameType>(buffer_[4]);
        absl::StatusOr<AgentEvent> event = DecodeAgentFrame(
            type, std::string_view(buffer_).substr(5, size - 1));
        buffer_.erase(0, 4 + size);
        return event;
      }
    }
    pollfd p = {fd_, POLLIN, 0};
    const int ready = poll(&p, 1, MillisOf(deadline - absl::Now()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) return absl::DeadlineExceededError("no event yet");
    char chunk[64 * 1024];
    ssize_t n = read(fd_, chunk, sizeof(chunk));
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) {
      absl::MutexLock lock(&mu_);
      gone_ = true;
      return absl::UnavailableError(absl::StrCat(
          "step container ", name_,
          " went away (its container stopped: see the task's stop reason)"));
    }
    buffer_.append(chunk, static_cast<size_t>(n));
  }
}

// ------------------------------------------------------------ hub

absl::StatusOr<std::unique_ptr<AgentHub>> AgentHub::Listen(
    const std::string& socket_path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the agents' socket path ", socket_path,
                     " is longer than ", sizeof(addr.sun_path) - 1, " bytes"));
  }
  memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  unlink(socket_path.c_str());
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(strerror(errno));
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      chmod(socket_path.c_str(), 0666) != 0 || listen(fd, 64) != 0) {
    const int e = errno;
    close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat("cannot listen for step containers at ", socket_path, ": ",
                     strerror(e)));
  }
  return std::unique_ptr<AgentHub>(new AgentHub(fd, socket_path));
}

AgentHub::AgentHub(int listener, std::string path)
    : listener_(listener), path_(std::move(path)) {
  if (pipe2(wake_, O_CLOEXEC) != 0) wake_[0] = wake_[1] = -1;
  acceptor_ = std::thread([this] { AcceptLoop(); });
}

AgentHub::~AgentHub() {
  if (wake_[1] >= 0) (void)!write(wake_[1], "x", 1);
  acceptor_.join();
  close(listener_);
  if (wake_[0] >= 0) close(wake_[0]);
  if (wake_[1] >= 0) close(wake_[1]);
  unlink(path_.c_str());
}

void AgentHub::AcceptLoop() {
  // Connections that have not said hello yet, each with 5 s to do so; read
  // as their bytes come, so that a silent one holds up no other.
  struct Pending {
    int fd;
    std::string buffer;
    absl::Time give_up;
  };
  std::vector<Pending> pending;
  constexpr size_t kMaxPending = 64;
  for (;;) {
    std::vector<pollfd> p = {{listener_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    absl::Time next = absl::InfiniteFuture();
    for (const Pending& c : pending) {
      p.push_back({c.fd, POLLIN, 0});
      next = std::min(next, c.give_up);
    }
    const int timeout =
        next == absl::InfiniteFuture() ? -1 : MillisOf(next - absl::Now());
    if (poll(p.data(), p.size(), timeout) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[1].revents != 0) break;
    const absl::Time now = absl::Now();
    std::vector<Pending> still;
    for (size_t i = 0; i < pending.size(); ++i) {
      Pending& c = pending[i];
      bool drop = now >= c.give_up;
      if (!drop && p[i + 2].revents != 0) {
        char chunk[512];
        ssize_t n = read(c.fd, chunk, sizeof(chunk));
        if (n <= 0) {
          drop = true;
        } else {
          c.buffer.append(chunk, static_cast<size_t>(n));
        }
      }
      if (!drop && c.buffer.size() >= 5) {
        const uint32_t size = U32At(c.buffer, 0);
        if (size < 2 || size > 1024 ||
            static_cast<FrameType>(c.buffer[4]) != FrameType::kHello ||
            c.buffer.size() > 4 + size) {
          drop = true;  // not an agent, or one that says more than hello
        } else if (c.buffer.size() == 4 + size) {
          std::string hello = c.buffer.substr(5);
          std::string token;
          if (size_t nl = hello.find('\n'); nl != std::string::npos) {
            token = hello.substr(nl + 1);
            hello.resize(nl);
          }
          auto agent = std::make_shared<AgentConnection>(c.fd, hello, token);
          absl::MutexLock lock(&mu_);
          auto& named = agents_[hello];
          named.erase(std::remove_if(named.begin(), named.end(),
                                     [](const auto& a) { return a->gone(); }),
                      named.end());
          named.push_back(std::move(agent));
          continue;  // handed over: not closed, not kept pending
        }
      }
      if (drop) {
        close(c.fd);
      } else {
        still.push_back(std::move(c));
      }
    }
    pending = std::move(still);
    if (p[0].revents != 0) {
      int fd = accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0 && pending.size() >= kMaxPending) {
        close(fd);
      } else if (fd >= 0) {
        pending.push_back({fd, "", absl::Now() + absl::Seconds(5)});
      }
    }
  }
  for (const Pending& c : pending) close(c.fd);
}

absl::StatusOr<std::shared_ptr<AgentConnection>> AgentHub::Acquire(
    const std::string& container, const std::string& token,
    absl::Duration wait) {
  absl::MutexLock lock(&mu_);
  // The connection that may run the step: not gone, and with the token.
  auto find = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(
                  mu_) -> std::shared_ptr<AgentConnection> {
    auto it = agents_.find(container);
    if (it == agents_.end()) return nullptr;
    for (const auto& agent : it->second) {
      if (!agent->gone() && (token.empty() || agent->token() == token)) {
        return agent;
      }
    }
    return nullptr;
  };
  auto connected = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return find() != nullptr;
  };
  mu_.AwaitWithTimeout(absl::Condition(&connected), wait);
  std::shared_ptr<AgentConnection> agent = find();
  if (!agent) {
    return absl::NotFoundError(absl::StrCat(
        "step container ", container, " is not connected to the runner (",
        absl::FormatDuration(wait),
        " waited): it did not start, or it stopped; its image must be able "
        "to run a static x86-64 Linux program"));
  }
  if (busy_.contains(agent.get())) {
    return absl::FailedPreconditionError(
        absl::StrCat("step container ", container, " is running another step"));
  }
  busy_.insert(agent.get());
  return agent;
}

void AgentHub::Release(const std::shared_ptr<AgentConnection>& agent) {
  absl::MutexLock lock(&mu_);
  busy_.erase(agent.get());
}

std::vector<std::string> AgentHub::Connected() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& [name, agents] : agents_) {
    for (const auto& agent : agents) {
      if (!agent->gone()) {
        out.push_back(name);
        break;
      }
    }
  }
  return out;
}

}  // namespace delegate::runner

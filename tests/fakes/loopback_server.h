// What the loopback relays of the tests (ConnectProxy, TlsTerminator) share:
// a listener on 127.0.0.1 that serves each connection on its own thread,
// blocking socket helpers, and a byte relay between two sockets. On
// destruction every connection, and every upstream socket a handler
// tracked, is shut down, so that blocked handlers return, and the threads
// are joined.
#ifndef DELEGATE_TESTS_FAKES_LOOPBACK_SERVER_H_
#define DELEGATE_TESTS_FAKES_LOOPBACK_SERVER_H_

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace delegate::testing {

// A socket listening on 127.0.0.1 at a port of the kernel's choice, put in
// *port.
inline int ListenLoopback(int* port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  listen(fd, 64);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  *port = ntohs(addr.sin_port);
  return fd;
}

// A connected TCP socket to host:port (resolved; "localhost" included), or
// -1.
inline int ConnectTcp(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) !=
      0) {
    return -1;
  }
  int fd = -1;
  for (addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  return fd;
}

// Writes all of `data`; false when the peer is gone.
inline bool SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Reads until "\r\n\r\n": the head (terminator included) in *head and what
// came after it in *rest. False when the peer closed first.
inline bool ReadHead(int fd, std::string* head, std::string* rest) {
  std::string buf;
  char chunk[4096];
  while (buf.find("\r\n\r\n") == std::string::npos) {
    const ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
    if (n <= 0) return false;
    buf.append(chunk, static_cast<size_t>(n));
  }
  const size_t end = buf.find("\r\n\r\n") + 4;
  *head = buf.substr(0, end);
  *rest = buf.substr(end);
  return true;
}

// Copies bytes both ways between `a` and `b` until one side closes.
inline void Relay(int a, int b) {
  char buf[65536];
  for (;;) {
    pollfd fds[] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) return;
    for (int i = 0; i < 2; ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const ssize_t n = recv(fds[i].fd, buf, sizeof(buf), 0);
      if (n <= 0 || !SendAll(i == 0 ? b : a,
                             std::string_view(buf, static_cast<size_t>(n)))) {
        return;
      }
    }
  }
}

class LoopbackServer {
 public:
  // Called on a connection's own thread with its socket, which the server
  // closes once the handler returns, and the server (for Track).
  using Handler = std::function<void(int fd, LoopbackServer& server)>;

  explicit LoopbackServer(Handler handler) : handler_(std::move(handler)) {
    listener_ = ListenLoopback(&port_);
    acceptor_ = std::thread([this] { Accept(); });
  }

  ~LoopbackServer() {
    stop_ = true;
    acceptor_.join();
    {
      std::lock_guard lock(mu_);
      for (int fd : open_) shutdown(fd, SHUT_RDWR);
    }
    for (std::thread& t : connections_) t.join();
    close(listener_);
  }
  LoopbackServer(const LoopbackServer&) = delete;
  LoopbackServer& operator=(const LoopbackServer&) = delete;

  int port() const { return port_; }

  // A socket a handler opened (its upstream): shut down with the others on
  // destruction. Untrack it before closing it.
  void Track(int fd) {
    std::lock_guard lock(mu_);
    if (stop_) shutdown(fd, SHUT_RDWR);
    open_.insert(fd);
  }
  void Untrack(int fd) {
    std::lock_guard lock(mu_);
    open_.erase(fd);
  }

 private:
  void Accept() {
    while (!stop_) {
      pollfd p{listener_, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      const int fd = accept(listener_, nullptr, nullptr);
      if (fd < 0) continue;
      Track(fd);
      connections_.emplace_back([this, fd] {
        handler_(fd, *this);
        Untrack(fd);
        close(fd);
      });
    }
  }

  const Handler handler_;
  int listener_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::vector<std::thread> connections_;  // only the acceptor adds
  std::mutex mu_;
  std::set<int> open_;  // guarded by mu_
};

}  // namespace delegate::testing

#endif  // DELEGATE_TESTS_FAKES_LOOPBACK_SERVER_H_

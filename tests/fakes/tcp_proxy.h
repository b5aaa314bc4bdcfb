// A loopback TCP forwarder that a test can cut: every connection through it
// is closed at once (as a network failure would), and new ones are accepted
// again. For reconnect tests between a real client and a real server.
#ifndef DELEGATE_TESTS_FAKES_TCP_PROXY_H_
#define DELEGATE_TESTS_FAKES_TCP_PROXY_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tests/fakes/loopback_server.h"

namespace delegate::testing {

class TcpProxy {
 public:
  // Forwards 127.0.0.1:port() to 127.0.0.1:target_port.
  explicit TcpProxy(int target_port) : target_port_(target_port) {
    listener_ = ListenLoopback(&port_);
    thread_ = std::thread([this] { Loop(); });
  }
  ~TcpProxy() {
    stop_ = true;
    thread_.join();
    Cut();
    close(listener_);
  }
  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  // Closes every connection through the proxy (both ends).
  void Cut() {
    std::lock_guard lock(mu_);
    for (auto& [a, b] : pairs_) {
      shutdown(a, SHUT_RDWR);
      shutdown(b, SHUT_RDWR);
      close(a);
      close(b);
    }
    pairs_.clear();
  }
  // While refusing, new connections are accepted and closed at once.
  void Refuse(bool refuse) { refuse_ = refuse; }

 private:
  void Loop() {
    char buf[65536];
    while (!stop_) {
      std::vector<pollfd> fds{{listener_, POLLIN, 0}};
      {
        std::lock_guard lock(mu_);
        for (auto& [a, b] : pairs_) {
          fds.push_back({a, POLLIN, 0});
          fds.push_back({b, POLLIN, 0});
        }
      }
      if (poll(fds.data(), fds.size(), 20) <= 0) continue;
      if (fds[0].revents & POLLIN) {
        int client = accept(listener_, nullptr, nullptr);
        if (client >= 0 && refuse_) {
          close(client);
        } else if (client >= 0) {
          int upstream = socket(AF_INET, SOCK_STREAM, 0);
          sockaddr_in addr{};
          addr.sin_family = AF_INET;
          addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
          addr.sin_port = htons(target_port_);
          if (connect(upstream, reinterpret_cast<sockaddr*>(&addr),
                      sizeof(addr)) != 0) {
            close(client);
            close(upstream);
          } else {
            std::lock_guard lock(mu_);
            pairs_.push_back({client, upstream});
          }
        }
      }
      std::lock_guard lock(mu_);
      std::vector<bool> dead(pairs_.size(), false);
      for (size_t i = 1; i < fds.size(); ++i) {
        if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        const size_t pair = (i - 1) / 2;
        if (pair >= pairs_.size() ||
            fds[i].fd != (i % 2 ? pairs_[pair].first : pairs_[pair].second)) {
          continue;  // cut meanwhile
        }
        const int from = fds[i].fd;
        const int to = i % 2 ? pairs_[pair].second : pairs_[pair].first;
        ssize_t n = read(from, buf, sizeof(buf));
        if (n <= 0 || write(to, buf, n) != n) dead[pair] = true;
      }
      for (size_t p = pairs_.size(); p-- > 0;) {
        if (!dead[p]) continue;
        close(pairs_[p].first);
        close(pairs_[p].second);
        pairs_.erase(pairs_.begin() + p);
      }
    }
  }

  const int target_port_;
  int listener_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> refuse_{false};
  std::mutex mu_;
  std::vector<std::pair<int, int>> pairs_;  // guarded by mu_
  std::thread thread_;
};

}  // namespace delegate::testing

#endif  // DELEGATE_TESTS_FAKES_TCP_PROXY_H_

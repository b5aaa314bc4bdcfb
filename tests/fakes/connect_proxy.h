// A loopback HTTP proxy that records where each request asked to go: a
// CONNECT tunnel (what a client sends for an https:// URL) or an
// absolute-URI request (for an http:// URL, forwarded with
// "Connection: close"). For tests of a client's proxy settings.
#ifndef DELEGATE_TESTS_FAKES_CONNECT_PROXY_H_
#define DELEGATE_TESTS_FAKES_CONNECT_PROXY_H_

#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tests/fakes/loopback_server.h"

namespace delegate::testing {

// One request the proxy received.
struct ProxiedRequest {
  std::string method;  // "CONNECT", "POST", ...
  std::string target;  // "host:port" it asked for
  // The Proxy-Authorization header as sent; empty when absent.
  std::string authorization;
};

class ConnectProxy {
 public:
  // With `user_password` ("user:password") set, a request without that
  // Basic Proxy-Authorization is answered 407 and not forwarded.
  explicit ConnectProxy(std::string user_password = "")
      : user_password_(std::move(user_password)),
        server_(std::make_unique<LoopbackServer>(
            [this](int fd, LoopbackServer& server) { Serve(fd, server); })) {}
  ~ConnectProxy() { server_.reset(); }
  ConnectProxy(const ConnectProxy&) = delete;
  ConnectProxy& operator=(const ConnectProxy&) = delete;

  int port() const { return server_->port(); }
  // "http://127.0.0.1:PORT"
  std::string url() const { return absl::StrCat("http://127.0.0.1:", port()); }

  std::vector<ProxiedRequest> Requests() const {
    std::lock_guard lock(mu_);
    return requests_;
  }
  // The targets of Requests(), in arrival order.
  std::vector<std::string> Targets() const {
    std::vector<std::string> out;
    for (const ProxiedRequest& r : Requests()) out.push_back(r.target);
    return out;
  }

 private:
  void Serve(int fd, LoopbackServer& server) {
    std::string head, rest;
    if (!ReadHead(fd, &head, &rest)) return;
    std::vector<std::string> lines =
        absl::StrSplit(head.substr(0, head.size() - 4), "\r\n");
    std::vector<std::string> request_line = absl::StrSplit(lines[0], ' ');
    if (request_line.size() != 3) {
      SendAll(fd, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
      return;
    }
    ProxiedRequest r;
    r.method = request_line[0];
    size_t content_length = 0;
    std::vector<std::string> forwarded;  // the headers passed on
    for (size_t i = 1; i < lines.size(); ++i) {
      const size_t colon = lines[i].find(':');
      if (colon == std::string::npos) continue;
      const std::string name = absl::AsciiStrToLower(lines[i].substr(0, colon));
      const std::string value(
          absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
      if (name == "proxy-authorization") {
        r.authorization = value;
      } else if (name != "proxy-connection" && name != "connection") {
        if (name == "content-length") {
          (void)absl::SimpleAtoi(value, &content_length);
        }
        forwarded.push_back(lines[i]);
      }
    }
    // CONNECT host:port, or METHOD http://host[:port]/path.
    std::string path = "/";
    if (r.method == "CONNECT") {
      r.target = request_line[1];
    } else {
      absl::string_view url = request_line[1];
      if (!absl::ConsumePrefix(&url, "http://")) {
        SendAll(fd, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        return;
      }
      const size_t slash = url.find('/');
      r.target = std::string(url.substr(0, slash));
      if (slash != absl::string_view::npos)
        path = std::string(url.substr(slash));
      if (r.target.find(':') == std::string::npos) r.target += ":80";
    }
    {
      std::lock_guard lock(mu_);
      requests_.push_back(r);
    }
    if (!user_password_.empty() &&
        r.authorization !=
            absl::StrCat("Basic ", absl::Base64Escape(user_password_))) {
      SendAll(fd,
              "HTTP/1.1 407 Proxy Authentication Required\r\n"
              "Proxy-Authenticate: Basic realm=\"test\"\r\n"
              "Content-Length: 0\r\nConnection: close\r\n\r\n");
      return;
    }
    const size_t colon = r.target.rfind(':');
    int port = 0;
    if (colon == std::string::npos ||
        !absl::SimpleAtoi(r.target.substr(colon + 1), &port)) {
      SendAll(fd, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
      return;
    }
    std::string host = r.target.substr(0, colon);
    if (host.size() > 2 && host.front() == '[') {
      host = host.substr(1, host.size() - 2);
    }
    const int upstream = ConnectTcp(host, port);
    if (upstream < 0) {
      SendAll(fd, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
      return;
    }
    server.Track(upstream);
    if (r.method == "CONNECT") {
      if (SendAll(fd, "HTTP/1.1 200 Connection established\r\n\r\n") &&
          SendAll(upstream, rest)) {
        Relay(fd, upstream);
      }
    } else {
      Forward(fd, upstream, r.method, path, forwarded, content_length, rest);
    }
    server.Untrack(upstream);
    close(upstream);
  }

  // Sends the request on in origin form and hands back the whole answer
  // (read to its end), both with "Connection: close".
  static void Forward(int fd, int upstream, const std::string& method,
                      const std::string& path,
                      const std::vector<std::string>& headers,
                      size_t content_length, std::string body) {
    char chunk[65536];
    while (body.size() < content_length) {
      const ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
      if (n <= 0) return;
      body.append(chunk, static_cast<size_t>(n));
    }
    std::string out = absl::StrCat(method, " ", path, " HTTP/1.1\r\n");
    for (const std::string& h : headers) absl::StrAppend(&out, h, "\r\n");
    absl::StrAppend(&out, "Connection: close\r\n\r\n", body);
    if (!SendAll(upstream, out)) return;
    std::string answer;
    for (;;) {
      const ssize_t n = recv(upstream, chunk, sizeof(chunk), 0);
      if (n <= 0) break;
      answer.append(chunk, static_cast<size_t>(n));
    }
    const size_t first_line = answer.find("\r\n");
    const size_t head_end = answer.find("\r\n\r\n");
    if (first_line == std::string::npos || head_end == std::string::npos) {
      return;
    }
    if (!absl::StrContains(absl::AsciiStrToLower(answer.substr(0, head_end)),
                           "\r\nconnection: close")) {
      answer.insert(first_line + 2, "Connection: close\r\n");
    }
    SendAll(fd, answer);
  }

  const std::string user_password_;
  mutable std::mutex mu_;
  std::vector<ProxiedRequest> requests_;  // guarded by mu_
  // Last: its threads, which use the above, end first.
  std::unique_ptr<LoopbackServer> server_;
};

}  // namespace delegate::testing

#endif  // DELEGATE_TESTS_FAKES_CONNECT_PROXY_H_

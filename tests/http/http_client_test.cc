#include "http/http_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "util/url.h"

namespace delegate::http {
namespace {

using ::testing::HasSubstr;

// What the loopback server saw of one request.
struct SeenRequest {
  std::string method;
  std::string target;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
};

bool WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

std::string Reply(int status, const std::string& body,
                  const std::string& extra_headers = "") {
  return absl::StrCat("HTTP/1.1 ", status,
                      " X\r\nContent-Length: ", body.size(), "\r\n",
                      extra_headers, "\r\n", body);
}

// A tiny HTTP/1.1 server on loopback TCP or a unix socket: one thread per
// connection, keep-alive, Content-Length bodies only. The handler writes the
// whole response itself (so it can stream or stall) and returns false to
// close the connection.
class TestServer {
 public:
  using Handler = std::function<bool(const SeenRequest&, int fd,
                                     const std::atomic<bool>& stopping)>;

  explicit TestServer(Handler handler, bool unix_socket = false)
      : handler_(std::move(handler)) {
    if (unix_socket) {
      path_ = absl::StrCat("/tmp/http_client_test.", getpid(), ".", counter_++,
                           ".sock");
      unlink(path_.c_str());
      listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path_.c_str());
      EXPECT_EQ(
          bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)),
          0);
    } else {
      listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      EXPECT_EQ(
          bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)),
          0);
      socklen_t len = sizeof(addr);
      getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
      port_ = ntohs(addr.sin_port);
    }
    EXPECT_EQ(listen(listen_fd_, 64), 0);
    acceptor_ = std::thread([this] { AcceptLoop(); });
  }

  ~TestServer() {
    stopping_ = true;
    shutdown(listen_fd_, SHUT_RDWR);
    acceptor_.join();
    close(listen_fd_);
    {
      absl::MutexLock lock(&mu_);
      for (int fd : open_fds_) shutdown(fd, SHUT_RDWR);
    }
    for (std::thread& t : connections_) t.join();
    if (!path_.empty()) unlink(path_.c_str());
  }

  std::string url(const std::string& path) const {
    if (!path_.empty()) return absl::StrCat("http://localhost", path);
    return absl::StrCat("http://127.0.0.1:", port_, path);
  }
  const std::string& socket_path() const { return path_; }
  int accepted() const { return accepted_.load(); }
  std::vector<SeenRequest> seen() {
    absl::MutexLock lock(&mu_);
    return seen_;
  }

 private:
  void AcceptLoop() {
    while (!stopping_) {
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      ++accepted_;
      absl::MutexLock lock(&mu_);
      open_fds_.push_back(fd);
      connections_.emplace_back([this, fd] { Serve(fd); });
    }
  }

  void Serve(int fd) {
    std::string buffer;
    char chunk[65536];
    while (!stopping_) {
      size_t end = buffer.find("\r\n\r\n");
      if (end == std::string::npos) {
        ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
        if (n <= 0) break;
        buffer.append(chunk, static_cast<size_t>(n));
        continue;
      }
      SeenRequest request;
      std::string_view head(buffer.data(), end);
      size_t line_end = head.find("\r\n");
      std::string_view first = head.substr(0, line_end);
      size_t sp1 = first.find(' ');
      size_t sp2 = first.find(' ', sp1 + 1);
      request.method = std::string(first.substr(0, sp1));
      request.target = std::string(first.substr(sp1 + 1, sp2 - sp1 - 1));
      while (line_end != std::string_view::npos && line_end < head.size()) {
        size_t next = head.find("\r\n", line_end + 2);
        std::string_view line =
            head.substr(line_end + 2, next == std::string_view::npos
                                          ? std::string_view::npos
                                          : next - line_end - 2);
        size_t colon = line.find(':');
        if (colon != std::string_view::npos) {
          std::string name(line.substr(0, colon));
          absl::AsciiStrToLower(&name);
          std::string value(line.substr(colon + 1));
          absl::StripAsciiWhitespace(&value);
          request.headers[name] = value;
        }
        line_end = next;
      }
      size_t length = 0;
      if (auto it = request.headers.find("content-length");
          it != request.headers.end()) {
        (void)absl::SimpleAtoi(it->second, &length);
      }
      buffer.erase(0, end + 4);
      while (buffer.size() < length) {
        ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
        if (n <= 0) break;
        buffer.append(chunk, static_cast<size_t>(n));
      }
      request.body = buffer.substr(0, length);
      buffer.erase(0, length);
      {
        absl::MutexLock lock(&mu_);
        seen_.push_back(request);
      }
      if (!handler_(request, fd, stopping_)) break;
    }
    shutdown(fd, SHUT_RDWR);
    absl::MutexLock lock(&mu_);
    std::erase(open_fds_, fd);
    close(fd);
  }

  static inline std::atomic<int> counter_{0};
  Handler handler_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::string path_;
  std::atomic<bool> stopping_{false};
  std::atomic<int> accepted_{0};
  std::thread acceptor_;
  absl::Mutex mu_;
  std::vector<int> open_fds_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> connections_ ABSL_GUARDED_BY(mu_);
  std::vector<SeenRequest> seen_ ABSL_GUARDED_BY(mu_);
};

// Keeps the connection open, sending nothing, until the client goes away or
// the server stops.
void HoldOpen(int fd, const std::atomic<bool>& stopping) {
  while (!stopping) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 20) > 0) {
      char c;
      if (recv(fd, &c, 1, MSG_DONTWAIT) <= 0) return;
    }
  }
}

TEST(HttpClientTest, GetReturnsStatusHeadersAndBody) {
  TestServer server([](const SeenRequest&, int fd, const auto&) {
    return WriteAll(fd, Reply(200, "hello", "X-Thing: a value \r\n"));
  });
  HttpClient client;
  Request request;
  request.url = server.url("/path?q=1");
  request.headers.emplace_back("X-Custom", "yes");
  absl::StatusOr<Response> r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "hello");
  EXPECT_EQ(r->header("x-thing"), "a value");
  EXPECT_EQ(r->header("Content-Length"), "5");
  EXPECT_EQ(r->header("absent"), "");
  std::vector<SeenRequest> seen = server.seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "GET");
  EXPECT_EQ(seen[0].target, "/path?q=1");
  EXPECT_EQ(seen[0].headers["x-custom"], "yes");
}

TEST(HttpClientTest, SendsBodiesAndMethods) {
  TestServer server([](const SeenRequest& r, int fd, const auto&) {
    return WriteAll(fd, Reply(201, r.method + ":" + r.body));
  });
  HttpClient client;
  for (const char* method : {"POST", "PUT", "DELETE", "PATCH"}) {
    Request request;
    request.method = method;
    request.url = server.url("/x");
    request.body = std::string(5000, 'b');  // large enough for Expect
    absl::StatusOr<Response> r = client.Perform(request);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 201);
    EXPECT_EQ(r->body, std::string(method) + ":" + request.body);
  }
  // An empty POST still sends "Content-Length: 0".
  Request empty;
  empty.method = "POST";
  empty.url = server.url("/empty");
  absl::StatusOr<Response> r = client.Perform(empty);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->body, "POST:");
  std::vector<SeenRequest> seen = server.seen();
  ASSERT_EQ(seen.size(), 5u);
  EXPECT_EQ(seen[4].headers["content-length"], "0");
  for (const SeenRequest& s : seen) EXPECT_EQ(s.headers.count("expect"), 0u);
  // A DELETE without a body.
  Request del;
  del.method = "DELETE";
  del.url = server.url("/thing");
  r = client.Perform(del);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->body, "DELETE:");
}

TEST(HttpClientTest, ErrorStatusIsAResponse) {
  TestServer server([](const SeenRequest&, int fd, const auto&) {
    return WriteAll(fd, Reply(404, R"({"message":"no such thing"})"));
  });
  HttpClient client;
  Request request;
  request.url = server.url("/missing");
  bool streamed = false;
  request.on_body = [&](std::string_view) { return streamed = true; };
  absl::StatusOr<Response> r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 404);
  // Kept for the caller's error message, not streamed.
  EXPECT_EQ(r->body, R"({"message":"no such thing"})");
  EXPECT_FALSE(streamed);
}

TEST(HttpClientTest, RedirectsAreNotFollowed) {
  TestServer server([](const SeenRequest&, int fd, const auto&) {
    return WriteAll(fd, Reply(302, "", "Location: /elsewhere\r\n"));
  });
  HttpClient client;
  Request request;
  request.url = server.url("/start");
  absl::StatusOr<Response> r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 302);
  EXPECT_EQ(r->header("location"), "/elsewhere");
  EXPECT_EQ(server.seen().size(), 1u);
}

TEST(HttpClientTest, StreamsAChunkedBody) {
  TestServer server([](const SeenRequest&, int fd, const auto&) {
    std::string out = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (int i = 0; i < 100; ++i) {
      std::string piece = absl::StrCat("piece", i, ";");
      absl::StrAppend(&out, absl::Hex(piece.size()), "\r\n", piece, "\r\n");
    }
    absl::StrAppend(&out, "0\r\n\r\n");
    return WriteAll(fd, out);
  });
  HttpClient client;
  Request request;
  request.url = server.url("/stream");
  std::string streamed;
  request.on_body = [&](std::string_view chunk) {
    streamed.append(chunk);
    return true;
  };
  absl::StatusOr<Response> r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "");
  std::string expected;
  for (int i = 0; i < 100; ++i) absl::StrAppend(&expected, "piece", i, ";");
  EXPECT_EQ(streamed, expected);
}

TEST(HttpClientTest, ReadsABodyThatEndsWithTheConnection) {
  // How the Docker Engine answers an attached exec: no length, no chunks.
  TestServer server([](const SeenRequest&, int fd, const auto&) {
    WriteAll(fd, "HTTP/1.1 200 OK\r\nContent-Type: raw\r\n\r\n");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    WriteAll(fd, "until close");
    return false;
  });
  HttpClient client;
  Request request;
  request.method = "POST";
  request.url = server.url("/exec");
  absl::StatusOr<Response> r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->body, "until close");
}

TEST(HttpClientTest, AbortAbandonsAStalledStreamPromptly) {
  TestServer server([](const SeenRequest&, int fd, const auto& stopping) {
    WriteAll(fd,
             "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             "5\r\nfirst\r\n");
    HoldOpen(fd, stopping);
    return false;
  });
  HttpClient client;
  Request request;
  request.url = server.url("/logs");
  request.timeout = absl::InfiniteDuration();
  std::atomic<bool> stop{false};
  std::string streamed;
  request.on_body = [&](std::string_view chunk) {
    streamed.append(chunk);
    return true;
  };
  request.abort = [&] { return stop.load(); };
  std::atomic<int64_t> stopped_at{0};
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    stopped_at = absl::ToUnixMicros(absl::Now());
    stop = true;
  });
  absl::StatusOr<Response> r = client.Perform(request);
  int64_t returned_at = absl::ToUnixMicros(absl::Now());
  stopper.join();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  EXPECT_EQ(streamed, "first");
  EXPECT_LT(returned_at - stopped_at.load(), 1000000) << "abandoned too slowly";

  // The handle goes back to the pool and works for the next request, on a
  // fresh connection (the abandoned one was closed).
  TestServer other([](const SeenRequest&, int fd, const auto&) {
    return WriteAll(fd, Reply(200, "ok"));
  });
  Request next;
  next.url = other.url("/");
  absl::StatusOr<Response> again = client.Perform(next);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->body, "ok");
}

TEST(HttpClientTest, AbortBeforeAnyResponse) {
  TestServer server([](const SeenRequest&, int fd, const auto& stopping) {
    HoldOpen(fd, stopping);
    return false;
  });
  HttpClient client;
  Request request;
  request.method = "POST";
  request.url = server.url("/wait");
  request.timeout = absl::InfiniteDuration();
  absl::Time deadline = absl::Now() + absl::Milliseconds(250);
  request.abort = [&] { return absl::Now() > deadline; };
  absl::StatusOr<Response> r = client.Perform(request);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  EXPECT_LT(absl::Now() - deadline, absl::Seconds(1));
}

TEST(HttpClientTest, BodyCallbackCanStopTheTransfer) {
  TestServer server([](const SeenRequest&, int fd, const auto& stopping) {
    WriteAll(fd,
             "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             "3\r\nabc\r\n");
    HoldOpen(fd, stopping);
    return false;
  });
  HttpClient client;
  Request request;
  request.url = server.url("/");
  request.timeout = absl::InfiniteDuration();
  request.on_body = [](std::string_view) { return false; };
  absl::StatusOr<Response> r = client.Perform(request);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
}

TEST(HttpClientTest, TotalTimeout) {
  TestServer server([](const SeenRequest&, int fd, const auto& stopping) {
    HoldOpen(fd, stopping);
    return false;
  });
  HttpClient client;
  Request request;
  request.url = server.url("/slow");
  request.timeout = absl::Milliseconds(300);
  absl::Time start = absl::Now();
  absl::StatusOr<Response> r = client.Perform(request);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded)
      << r.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TEST(HttpClientTest, ConnectionRefusedIsUnavailable) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  int port = ntohs(addr.sin_port);
  close(fd);  // bound, never listened: nothing answers there now

  HttpClient client;
  Request request;
  request.url = absl::StrCat("http://127.0.0.1:", port, "/x?token=secret");
  absl::StatusOr<Response> r = client.Perform(request);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr(absl::StrCat("127.0.0.1:", port, "/x")));
  EXPECT_THAT(std::string(r.status().message()),
              ::testing::Not(HasSubstr("secret")));
}

TEST(HttpClientTest, MissingUnixSocketIsUnavailable) {
  HttpClient client;
  Request request;
  request.url = "http://localhost/version";
  request.unix_socket = "/nonexistent/dir/socket";
  absl::StatusOr<Response> r = client.Perform(request);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("/nonexistent/dir/socket"));
}

TEST(HttpClientTest, SpeaksOverAUnixSocket) {
  TestServer server(
      [](const SeenRequest& r, int fd, const auto&) {
        return WriteAll(fd, Reply(200, "unix:" + r.target));
      },
      /*unix_socket=*/true);
  HttpClient client;
  Request request;
  request.url = server.url("/v1.41/version");
  request.unix_socket = server.socket_path();
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<Response> r = client.Perform(request);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->body, "unix:/v1.41/version");
  }
  EXPECT_EQ(server.accepted(), 1);
}

TEST(HttpClientTest, ReusesConnections) {
  TestServer server([](const SeenRequest&, int fd, const auto&) {
    return WriteAll(fd, Reply(200, "again"));
  });
  HttpClient client;
  for (int i = 0; i < 5; ++i) {
    Request request;
    request.url = server.url("/");
    absl::StatusOr<Response> r = client.Perform(request);
    ASSERT_TRUE(r.ok()) << r.status();
  }
  EXPECT_EQ(server.accepted(), 1);
  EXPECT_EQ(server.seen().size(), 5u);
}

TEST(HttpClientTest, OversizedBodyIsResourceExhausted) {
  TestServer server([](const SeenRequest&, int fd, const auto&) {
    return WriteAll(fd, Reply(200, std::string(10000, 'x')));
  });
  HttpClient client;
  Request request;
  request.url = server.url("/big");
  request.max_body_bytes = 1000;
  absl::StatusOr<Response> r = client.Perform(request);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted)
      << r.status();
}

TEST(HttpClientTest, ConcurrentRequests) {
  TestServer server([](const SeenRequest& r, int fd, const auto&) {
    return WriteAll(fd, Reply(200, r.target));
  });
  HttpClient client(4);
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        Request request;
        request.url = server.url(absl::StrCat("/", t, "/", i));
        absl::StatusOr<Response> r = client.Perform(request);
        if (r.ok() && r->body == absl::StrCat("/", t, "/", i)) ++ok;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(ok.load(), 160);
}

TEST(HttpClientTest, RejectsARequestWithoutUrl) {
  HttpClient client;
  EXPECT_EQ(client.Perform(Request{}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(UrlEncodeTest, EncodesReservedCharacters) {
  EXPECT_EQ(UrlEncode("a-b_c.d~e"), "a-b_c.d~e");
  EXPECT_EQ(UrlEncode(R"({"label":["k=v"]})"),
            "%7B%22label%22%3A%5B%22k%3Dv%22%5D%7D");
  EXPECT_EQ(UrlEncode("host:5000/name", "/:"), "host:5000/name");
  EXPECT_EQ(UrlEncode("a b/c"), "a%20b%2Fc");
  EXPECT_EQ(UrlEncode("\xff"), "%FF");
}

}  // namespace
}  // namespace delegate::http

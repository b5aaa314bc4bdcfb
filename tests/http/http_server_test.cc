#include "http/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "http/http_client.h"
#include "tests/fakes/test_ca.h"

namespace delegate::http {
namespace {

using ::delegate::testing::TestCa;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

std::unique_ptr<HttpServer> MustStart(ServerOptions options, Handler handler) {
  absl::StatusOr<std::unique_ptr<HttpServer>> server =
      HttpServer::Start(std::move(options), std::move(handler));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? std::move(*server) : nullptr;
}

ServerResponse Text(int status, std::string body) {
  ServerResponse response;
  response.status = status;
  response.content_type = "text/plain";
  response.body = std::move(body);
  return response;
}

// What a handler saw, without the `cancelled` probe (dead after the call).
struct Seen {
  std::string method, target, path, body, peer, subject;
  std::vector<Header> headers;
  std::map<std::string, std::optional<std::string>> queries;
};

// Records every request and answers "METHOD path body".
class Recorder {
 public:
  Handler handler(std::vector<std::string> query_names = {}) {
    return [this, query_names](const ServerRequest& r) {
      Seen s{r.method,       r.target,
             r.path,         r.body,
             r.peer_address, r.client_cert_subject,
             r.headers,      {}};
      for (const std::string& q : query_names) s.queries[q] = r.query(q);
      {
        std::lock_guard<std::mutex> lock(mu_);
        seen_.push_back(s);
      }
      return Text(200, absl::StrCat(r.method, " ", r.path, " ", r.body));
    };
  }
  std::vector<Seen> seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }

 private:
  std::mutex mu_;
  std::vector<Seen> seen_;  // guarded by mu_
};

struct RawResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
};

// A client that writes bytes as given and parses what comes back, for what
// libcurl would never send.
class RawClient {
 public:
  explicit RawClient(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    connected_ =
        connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawClient() { Close(); }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  bool connected() const { return connected_; }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  bool Send(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  // The next response (a "100 Continue" counts as one), or nullopt when the
  // connection ended or `timeout` passed first. `answers_head`: the answer to
  // HEAD, without a body whatever its Content-Length.
  std::optional<RawResponse> Read(absl::Duration timeout = absl::Seconds(5),
                                  bool answers_head = false) {
    absl::Time deadline = absl::Now() + timeout;
    size_t end;
    while ((end = buffer_.find("\r\n\r\n")) == std::string::npos) {
      if (!ReadMore(deadline)) return std::nullopt;
    }
    RawResponse r;
    std::string_view head(buffer_.data(), end);
    size_t line_end = head.find("\r\n");
    std::string_view status_line = head.substr(0, line_end);
    if (status_line.size() < 12 ||
        !absl::SimpleAtoi(std::string(status_line.substr(9, 3)), &r.status)) {
      return std::nullopt;
    }
    while (line_end != std::string_view::npos) {
      size_t next = head.find("\r\n", line_end + 2);
      std::string_view line = head.substr(
          line_end + 2, next == std::string_view::npos ? std::string_view::npos
                                                       : next - line_end - 2);
      size_t colon = line.find(':');
      if (colon != std::string_view::npos) {
        std::string name(line.substr(0, colon));
        absl::AsciiStrToLower(&name);
        std::string value(line.substr(colon + 1));
        absl::StripAsciiWhitespace(&value);
        r.headers[name] = value;
      }
      line_end = next;
    }
    size_t length = 0;
    if (auto it = r.headers.find("content-length");
        !answers_head && it != r.headers.end()) {
      (void)absl::SimpleAtoi(it->second, &length);
    }
    buffer_.erase(0, end + 4);
    while (buffer_.size() < length) {
      if (!ReadMore(deadline)) return std::nullopt;
    }
    r.body = buffer_.substr(0, length);
    buffer_.erase(0, length);
    return r;
  }

  // True when the server closes the connection within `timeout` (what it
  // sends first is discarded).
  bool ClosedWithin(absl::Duration timeout) {
    absl::Time deadline = absl::Now() + timeout;
    while (ReadMore(deadline)) buffer_.clear();
    return eof_;
  }

 private:
  // False on end of stream (eof_ set) or when the deadline passes.
  bool ReadMore(absl::Time deadline) {
    for (;;) {
      int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
      if (ms <= 0) return false;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(ms)) <= 0) continue;
      char buf[65536];
      ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n > 0) {
        buffer_.append(buf, static_cast<size_t>(n));
        return true;
      }
      eof_ = true;  // an orderly close or a reset
      return false;
    }
  }

  int fd_ = -1;
  bool connected_ = false;
  bool eof_ = false;
  std::string buffer_;
};

TEST(HttpServerTest, GetAndPostRoundTrip) {
  Recorder recorder;
  ServerOptions options;
  auto server =
      MustStart(options, recorder.handler({"x", "y", "z", "e", "no"}));
  ASSERT_NE(server, nullptr);
  EXPECT_GT(server->port(), 0);
  EXPECT_EQ(server->url(), absl::StrCat("http://127.0.0.1:", server->port()));

  HttpClient client;
  Request get;
  get.url = server->url() + "/a%20b/c?x=1&y=hello+world&z=%2F%3D&e";
  get.headers.emplace_back("X-Custom", "value");
  absl::StatusOr<Response> r = client.Perform(get);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "GET /a b/c ");
  EXPECT_EQ(r->header("content-type"), "text/plain");
  EXPECT_EQ(r->header("content-length"), "11");

  Request post;
  post.method = "POST";
  post.url = server->url() + "/submit";
  post.body = std::string(5000, 'j');
  r = client.Perform(post);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->body, "POST /submit " + post.body);

  std::vector<Seen> seen = recorder.seen();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].method, "GET");
  EXPECT_EQ(seen[0].target, "/a%20b/c?x=1&y=hello+world&z=%2F%3D&e");
  EXPECT_EQ(seen[0].path, "/a b/c");
  EXPECT_EQ(seen[0].queries["x"], "1");
  EXPECT_EQ(seen[0].queries["y"], "hello world");
  EXPECT_EQ(seen[0].queries["z"], "/=");
  EXPECT_EQ(seen[0].queries["e"], "");
  EXPECT_EQ(seen[0].queries["no"], std::nullopt);
  EXPECT_THAT(seen[0].peer, StartsWith("127.0.0.1:"));
  EXPECT_EQ(seen[0].subject, "");
  bool saw_custom = false;
  for (const auto& [name, value] : seen[0].headers) {
    if (name == "X-Custom" && value == "value") saw_custom = true;
  }
  EXPECT_TRUE(saw_custom);
  EXPECT_EQ(seen[1].method, "POST");
  EXPECT_EQ(seen[1].body, post.body);
}

TEST(HttpServerTest, RequestAccessorsAreCaseInsensitiveAndDecode) {
  ServerRequest request;
  request.target = "/p?a=1&b=%41%2b+c&a=2&bad=%zz";
  request.headers = {{"Content-Type", "application/json"}};
  EXPECT_EQ(request.header("content-type"), "application/json");
  EXPECT_EQ(request.header("CONTENT-TYPE"), "application/json");
  EXPECT_EQ(request.header("accept"), "");
  EXPECT_EQ(request.query("a"), "1");  // the first
  EXPECT_EQ(request.query("b"), "A+ c");
  EXPECT_EQ(request.query("bad"), "%zz");  // kept as sent
  EXPECT_EQ(request.query("c"), std::nullopt);
}

TEST(HttpServerTest, ResponseStatusHeadersAndContentType) {
  auto server = MustStart({}, [](const ServerRequest& r) {
    ServerResponse response;
    if (r.path == "/bye") {
      response.headers = {{"Connection", "close"}};
    } else if (r.path == "/created") {
      response.status = 201;
      response.body = R"({"id":1})";
      response.headers = {{"X-Id", "1"}, {"Content-Length", "999"}};
    } else {
      response.status = 204;
      response.body = "dropped";
    }
    return response;
  });
  ASSERT_NE(server, nullptr);
  RawClient raw(server->port());
  ASSERT_TRUE(raw.Send("GET /created HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::optional<RawResponse> r = raw.Read();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 201);
  EXPECT_EQ(r->headers["content-type"], "application/json");
  EXPECT_EQ(r->headers["content-length"], "8");  // the handler's is dropped
  EXPECT_EQ(r->headers["x-id"], "1");
  EXPECT_EQ(r->body, R"({"id":1})");
  ASSERT_TRUE(raw.Send("DELETE /gone HTTP/1.1\r\nHost: x\r\n\r\n"));
  r = raw.Read();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 204);
  EXPECT_EQ(r->body, "");
  EXPECT_EQ(r->headers.count("content-length"), 0u);
  // HEAD: the length, not the body.
  ASSERT_TRUE(
      raw.Send("HEAD /created HTTP/1.1\r\nHost: x\r\n\r\n"
               "GET /created HTTP/1.1\r\nHost: x\r\n\r\n"));
  r = raw.Read(absl::Seconds(5), /*answers_head=*/true);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 201);
  EXPECT_EQ(r->headers["content-length"], "8");
  r = raw.Read();  // the GET's response follows at once
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->body, R"({"id":1})");
  // The handler can end the connection.
  ASSERT_TRUE(raw.Send("GET /bye HTTP/1.1\r\nHost: x\r\n\r\n"));
  r = raw.Read();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->headers["connection"], "close");
  EXPECT_TRUE(raw.ClosedWithin(absl::Seconds(5)));
}

TEST(HttpServerTest, KeepAliveServesManyRequestsOnOneConnection) {
  Recorder recorder;
  auto server = MustStart({}, recorder.handler());
  ASSERT_NE(server, nullptr);
  HttpClient client;
  for (int i = 0; i < 5; ++i) {
    Request request;
    request.url = absl::StrCat(server->url(), "/", i);
    absl::StatusOr<Response> r = client.Perform(request);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->body, absl::StrCat("GET /", i, " "));
    EXPECT_EQ(r->header("connection"), "");  // HTTP/1.1: kept by default
  }
  EXPECT_EQ(server->connections_accepted(), 1u);
  EXPECT_EQ(recorder.seen().size(), 5u);
}

TEST(HttpServerTest, PipelinedRequestsAreAnsweredInOrder) {
  Recorder recorder;
  auto server = MustStart({}, recorder.handler());
  ASSERT_NE(server, nullptr);
  RawClient raw(server->port());
  ASSERT_TRUE(
      raw.Send("GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
               "POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
               "\r\nGET /three HTTP/1.1\r\nHost: x\r\n\r\n"));
  for (const char* expected : {"GET /one ", "POST /two abc", "GET /three "}) {
    std::optional<RawResponse> r = raw.Read();
    ASSERT_TRUE(r.has_value()) << expected;
    EXPECT_EQ(r->body, expected);
  }
}

TEST(HttpServerTest, ConnectionCloseAndHttp10) {
  Recorder recorder;
  auto server = MustStart({}, recorder.handler());
  ASSERT_NE(server, nullptr);
  {
    RawClient raw(server->port());
    ASSERT_TRUE(
        raw.Send("GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    std::optional<RawResponse> r = raw.Read();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->headers["connection"], "close");
    EXPECT_TRUE(raw.ClosedWithin(absl::Seconds(5)));
  }
  {
    // HTTP/1.0 closes unless asked to keep alive.
    RawClient raw(server->port());
    ASSERT_TRUE(raw.Send("GET /old HTTP/1.0\r\n\r\n"));
    std::optional<RawResponse> r = raw.Read();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->body, "GET /old ");
    EXPECT_EQ(r->headers["connection"], "close");
    EXPECT_TRUE(raw.ClosedWithin(absl::Seconds(5)));
  }
  {
    RawClient raw(server->port());
    ASSERT_TRUE(raw.Send("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    std::optional<RawResponse> r = raw.Read();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->headers["connection"], "keep-alive");
    ASSERT_TRUE(raw.Send("GET /b HTTP/1.0\r\n\r\n"));
    r = raw.Read();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->body, "GET /b ");
  }
}

TEST(HttpServerTest, ChunkedRequestBody) {
  Recorder recorder;
  auto server = MustStart({}, recorder.handler());
  ASSERT_NE(server, nullptr);
  RawClient raw(server->port());
  ASSERT_TRUE(raw.Send(
      "POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5;name=value\r\nhello\r\n"));
  // The rest arrives later, split mid-chunk.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const std::string piece = ", chunked world, in two ";
  ASSERT_TRUE(raw.Send(absl::StrCat(absl::Hex(piece.size()), "\r\n", piece)));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(raw.Send("\r\n0\r\nX-Trailer: ignored\r\n\r\n"));
  std::optional<RawResponse> r = raw.Read();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "POST /chunks hello, chunked world, in two ");
  // The connection goes on after the trailers.
  ASSERT_TRUE(raw.Send("GET /next HTTP/1.1\r\nHost: x\r\n\r\n"));
  r = raw.Read();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->body, "GET /next ");
  EXPECT_EQ(server->connections_accepted(), 1u);
}

TEST(HttpServerTest, ExpectContinueWithALargeBody) {
  Recorder recorder;
  auto server = MustStart({}, recorder.handler());
  ASSERT_NE(server, nullptr);
  const std::string body(100 * 1000, 'e');
  {
    RawClient raw(server->port());
    ASSERT_TRUE(raw.Send(
        absl::StrCat("PUT /big HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     "Content-Length: ",
                     body.size(), "\r\n\r\n")));
    // The body is only sent once the server said to go on.
    std::optional<RawResponse> interim = raw.Read();
    ASSERT_TRUE(interim.has_value());
    EXPECT_EQ(interim->status, 100);
    ASSERT_TRUE(raw.Send(body));
    std::optional<RawResponse> r = raw.Read();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, "PUT /big " + body);
  }
  // libcurl's way (it sends Expect for bodies over 1 KiB when let).
  HttpClient client;
  Request request;
  request.method = "POST";
  request.url = server->url() + "/curl";
  request.headers.emplace_back("Expect", "100-continue");
  request.body = body;
  absl::StatusOr<Response> r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "POST /curl " + body);
  std::vector<Seen> seen = recorder.seen();
  ASSERT_EQ(seen.size(), 2u);
  bool saw_expect = false;
  for (const auto& [name, value] : seen[1].headers) {
    if (absl::EqualsIgnoreCase(name, "expect")) saw_expect = true;
  }
  EXPECT_TRUE(saw_expect);
}

TEST(HttpServerTest, OversizedBodyIs413) {
  Recorder recorder;
  ServerOptions options;
  options.max_body_bytes = 1000;
  auto server = MustStart(options, recorder.handler());
  ASSERT_NE(server, nullptr);

  HttpClient client;
  Request request;
  request.method = "POST";
  request.url = server->url() + "/upload";
  request.body = std::string(100 * 1000, 'x');
  absl::StatusOr<Response> r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 413);

  // A body of exactly the limit is fine.
  request.body = std::string(1000, 'x');
  r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);

  {
    // With Expect, the answer comes at once, without a 100.
    RawClient raw(server->port());
    ASSERT_TRUE(
        raw.Send("POST /u HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                 "Content-Length: 5000\r\n\r\n"));
    std::optional<RawResponse> raw_r = raw.Read();
    ASSERT_TRUE(raw_r.has_value());
    EXPECT_EQ(raw_r->status, 413);
    EXPECT_TRUE(raw.ClosedWithin(absl::Seconds(5)));
  }
  {
    // Chunked: counted as it arrives.
    RawClient raw(server->port());
    std::string chunk(600, 'c');
    ASSERT_TRUE(raw.Send(absl::StrCat(
        "POST /u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        absl::Hex(chunk.size()), "\r\n", chunk, "\r\n", absl::Hex(chunk.size()),
        "\r\n", chunk, "\r\n0\r\n\r\n")));
    std::optional<RawResponse> raw_r = raw.Read();
    ASSERT_TRUE(raw_r.has_value());
    EXPECT_EQ(raw_r->status, 413);
  }
  EXPECT_EQ(recorder.seen().size(), 1u);  // only the one within the limit
}

TEST(HttpServerTest, MalformedRequestsAre400) {
  Recorder recorder;
  auto server = MustStart({}, recorder.handler());
  ASSERT_NE(server, nullptr);
  const std::pair<const char*, int> cases[] = {
      {"GARBAGE\r\n\r\n", 400},
      {"GET /\r\n\r\n", 400},
      {"GET / HTTP/1.1 extra\r\n\r\n", 400},
      {"GET  / HTTP/1.1\r\n\r\n", 400},
      {"G(T / HTTP/1.1\r\n\r\n", 400},
      {"GET / HTTX/1.1\r\n\r\n", 400},
      {"GET nopath HTTP/1.1\r\n\r\n", 400},
      {"GET /%zz HTTP/1.1\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nBad name: x\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
       400},
      {"POST / HTTP/1.1\r\nContent-Length: 3\r\n"
       "Transfer-Encoding: chunked\r\n\r\n",
       400},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX", 400},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
      {"GET / HTTP/2.0\r\n\r\n", 505},
      {"GET / HTTP/1.1\r\nExpect: something\r\n\r\n", 417},
  };
  for (const auto& [request, status] : cases) {
    RawClient raw(server->port());
    ASSERT_TRUE(raw.Send(request));
    std::optional<RawResponse> r = raw.Read();
    ASSERT_TRUE(r.has_value()) << absl::CEscape(request);
    EXPECT_EQ(r->status, status) << absl::CEscape(request);
    EXPECT_EQ(r->headers["connection"], "close") << absl::CEscape(request);
    EXPECT_TRUE(raw.ClosedWithin(absl::Seconds(5))) << absl::CEscape(request);
  }
  EXPECT_EQ(recorder.seen().size(), 0u);
  // Still serving.
  HttpClient client;
  Request ok;
  ok.url = server->url() + "/fine";
  absl::StatusOr<Response> r = client.Perform(ok);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
}

TEST(HttpServerTest, OversizedHeadersAre431) {
  Recorder recorder;
  ServerOptions options;
  options.max_header_bytes = 1024;
  auto server = MustStart(options, recorder.handler());
  ASSERT_NE(server, nullptr);
  {
    RawClient raw(server->port());
    ASSERT_TRUE(raw.Send(absl::StrCat(
        "GET / HTTP/1.1\r\nX-Big: ", std::string(2000, 'h'), "\r\n\r\n")));
    std::optional<RawResponse> r = raw.Read();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status, 431);
  }
  {
    // A head that never ends is cut off at the limit.
    RawClient raw(server->port());
    ASSERT_TRUE(raw.Send("GET / HTTP/1.1\r\n"));
    for (int i = 0; i < 40; ++i) {
      if (!raw.Send(
              absl::StrCat("X-", i, ": ", std::string(40, 'v'), "\r\n"))) {
        break;
      }
    }
    std::optional<RawResponse> r = raw.Read();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status, 431);
  }
  HttpClient client;
  Request request;
  request.url = server->url() + "/";
  request.headers.emplace_back("X-Small", std::string(100, 's'));
  absl::StatusOr<Response> r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
}

TEST(HttpServerTest, HandlerExceptionIs500AndTheServerGoesOn) {
  std::mutex mu;
  std::vector<std::string> errors;
  ServerOptions options;
  options.on_error = [&](std::string_view message) {
    std::lock_guard<std::mutex> lock(mu);
    errors.emplace_back(message);
  };
  auto server = MustStart(options, [](const ServerRequest& r) {
    if (r.path == "/throw") throw std::runtime_error("boom");
    if (r.path == "/bad-header") {
      ServerResponse response = Text(200, "x");
      response.headers.emplace_back("X-Split", "a\r\nInjected: yes");
      return response;
    }
    if (r.path == "/bad-status") return Text(42, "x");
    return Text(200, "fine");
  });
  ASSERT_NE(server, nullptr);
  HttpClient client;
  Request request;
  for (const char* path : {"/throw", "/bad-header", "/bad-status"}) {
    request.url = server->url() + path;
    absl::StatusOr<Response> r = client.Perform(request);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 500) << path;
    EXPECT_EQ(r->header("injected"), "") << path;
  }
  request.url = server->url() + "/ok";
  absl::StatusOr<Response> r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->body, "fine");
  EXPECT_EQ(server->connections_accepted(), 1u);  // the 500s kept it alive
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(errors.size(), 3u);
  EXPECT_THAT(errors[0], HasSubstr("GET /throw threw: boom"));
  EXPECT_THAT(errors[1], HasSubstr("X-Split"));
  EXPECT_THAT(errors[2], HasSubstr("status 42"));
}

TEST(HttpServerTest, StopReturnsPromptlyWithIdleKeepAliveConnections) {
  Recorder recorder;
  auto server = MustStart({}, recorder.handler());
  ASSERT_NE(server, nullptr);
  HttpClient client;  // keeps its connection open after the request
  Request request;
  request.url = server->url() + "/";
  ASSERT_TRUE(client.Perform(request).ok());
  RawClient idle(server->port());  // connected, sends nothing
  RawClient partial(server->port());
  ASSERT_TRUE(partial.Send("GET / HTTP/1.1\r\nHost"));
  RawClient kept(server->port());
  ASSERT_TRUE(kept.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(kept.Read().has_value());
  while (server->connections_accepted() < 4) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }

  absl::Time start = absl::Now();
  server->Stop();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_TRUE(idle.ClosedWithin(absl::Seconds(1)));
  EXPECT_TRUE(kept.ClosedWithin(absl::Seconds(1)));
  server->Stop();  // idempotent
  server.reset();
  // Nothing listens any more.
  absl::StatusOr<Response> r = client.Perform(request);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
}

TEST(HttpServerTest, ConcurrentClients) {
  Recorder recorder;
  auto server = MustStart({}, recorder.handler());
  ASSERT_NE(server, nullptr);
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      HttpClient client;
      for (int i = 0; i < 25; ++i) {
        Request request;
        request.method = "POST";
        request.url = absl::StrCat(server->url(), "/", t);
        request.body = std::string(static_cast<size_t>(i) * 100, 'b');
        absl::StatusOr<Response> r = client.Perform(request);
        if (r.ok() && r->body == absl::StrCat("POST /", t, " ", request.body)) {
          ++ok;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(ok.load(), 200);
  EXPECT_EQ(server->connections_accepted(), 8u);
}

TEST(HttpServerTest, StopUnderLoad) {
  auto server = MustStart({}, [](const ServerRequest& r) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return Text(200, r.body);
  });
  ASSERT_NE(server, nullptr);
  const std::string url = server->url() + "/load";
  std::atomic<int> done{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      HttpClient client;
      for (int i = 0; i < 2000; ++i) {
        Request request;
        request.method = "POST";
        request.url = url;
        request.body = std::string(5000, 'l');
        request.timeout = absl::Seconds(5);
        if (t % 2 == 0) request.headers.emplace_back("Connection", "close");
        if (!client.Perform(request).ok()) break;  // the server has gone
        ++done;
      }
    });
  }
  while (done < 50) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  absl::Time start = absl::Now();
  server->Stop();
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  for (std::thread& t : threads) t.join();
}

TEST(HttpServerTest, StopWaitsForHandlersAndLongPollsSeeCancelled) {
  std::atomic<bool> entered{false};
  std::atomic<bool> returned{false};
  auto server = MustStart({}, [&](const ServerRequest& r) {
    entered = true;
    while (!r.cancelled()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    returned = true;
    return Text(200, "stopped");
  });
  ASSERT_NE(server, nullptr);
  std::thread poller([&] {
    HttpClient client;
    Request request;
    request.url = server->url() + "/poll";
    (void)client.Perform(request);
  });
  while (!entered) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  absl::Time start = absl::Now();
  server->Stop();
  EXPECT_TRUE(returned.load());  // Stop waited for the handler
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  poller.join();
}

TEST(HttpServerTest, ClientGoneCancelsALongPoll) {
  std::atomic<bool> entered{false};
  std::atomic<bool> saw_cancel{false};
  auto server = MustStart({}, [&](const ServerRequest& r) {
    entered = true;
    absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline) {
      if (r.cancelled()) {
        saw_cancel = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return Text(200, "late");
  });
  ASSERT_NE(server, nullptr);
  auto raw = std::make_unique<RawClient>(server->port());
  ASSERT_TRUE(raw->Send("GET /poll HTTP/1.1\r\nHost: x\r\n\r\n"));
  while (!entered) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  raw.reset();  // the client gives up
  absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (!saw_cancel && absl::Now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(saw_cancel.load());
}

TEST(HttpServerTest, ConnectionsBeyondTheLimitGet503WhenNoneIsIdle) {
  Recorder recorder;
  std::atomic<bool> release{false};
  Handler record = recorder.handler();
  ServerOptions options;
  options.max_connections = 1;
  auto server = MustStart(options, [&](const ServerRequest& r) {
    // The first connection stays busy: no room can be made by evicting it.
    while (r.path == "/1" && !release) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return record(r);
  });
  ASSERT_NE(server, nullptr);
  auto first = std::make_unique<RawClient>(server->port());
  ASSERT_TRUE(first->Send("GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"));
  while (recorder.seen().empty() && server->connections_accepted() < 1) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));

  RawClient second(server->port());
  ASSERT_TRUE(second.Send("GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::optional<RawResponse> r = second.Read();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->headers["retry-after"], "1");
  EXPECT_TRUE(second.ClosedWithin(absl::Seconds(5)));
  release = true;
  ASSERT_TRUE(first->Read().has_value());
  EXPECT_EQ(server->connections_evicted(), 0u);

  // Once the first goes, a new one is served.
  first.reset();
  HttpClient client;
  Request request;
  request.url = server->url() + "/3";
  int status = 0;
  for (int i = 0; i < 100 && status != 200; ++i) {
    absl::StatusOr<Response> again = client.Perform(request);
    if (again.ok()) status = again->status;
    if (status != 200)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(status, 200);
  std::vector<Seen> seen = recorder.seen();
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.front().path, "/1");
  for (const Seen& s : seen) EXPECT_NE(s.path, "/2");
}

TEST(HttpServerTest, IdleConnectionsAreClosed) {
  Recorder recorder;
  ServerOptions options;
  options.idle_timeout = absl::Milliseconds(200);
  auto server = MustStart(options, recorder.handler());
  ASSERT_NE(server, nullptr);
  RawClient raw(server->port());
  ASSERT_TRUE(raw.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(raw.Read().has_value());
  absl::Time start = absl::Now();
  EXPECT_TRUE(raw.ClosedWithin(absl::Seconds(5)));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(150));
}

TEST(HttpServerTest, SlowRequestIs408) {
  Recorder recorder;
  ServerOptions options;
  options.head_timeout = absl::Milliseconds(200);
  options.read_timeout = absl::Milliseconds(200);
  auto server = MustStart(options, recorder.handler());
  ASSERT_NE(server, nullptr);
  {
    RawClient raw(server->port());
    ASSERT_TRUE(raw.Send("GET / HTTP/1.1\r\nHost: x\r\n"));  // no end
    std::optional<RawResponse> r = raw.Read();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status, 408);
  }
  {
    RawClient raw(server->port());
    ASSERT_TRUE(raw.Send("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"));
    std::optional<RawResponse> r = raw.Read();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status, 408);
  }
  EXPECT_TRUE(recorder.seen().empty());
}

TEST(HttpServerTest, BindErrorNamesTheAddress) {
  Recorder recorder;
  auto first = MustStart({}, recorder.handler());
  ASSERT_NE(first, nullptr);
  ServerOptions options;
  options.port = first->port();
  absl::StatusOr<std::unique_ptr<HttpServer>> second =
      HttpServer::Start(options, recorder.handler());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()),
              HasSubstr(absl::StrCat("127.0.0.1:", first->port())));
  EXPECT_THAT(std::string(second.status().message()),
              HasSubstr("address already in use"));

  options.address = "203.0.113.7";  // TEST-NET-3: not this host's
  options.port = 0;
  second = HttpServer::Start(options, recorder.handler());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(second.status().message()),
              HasSubstr("203.0.113.7:0"));

  options.address = "127.0.0.1";
  options.port = 70000;
  EXPECT_EQ(HttpServer::Start(options, recorder.handler()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(HttpServerTest, ListensOnEveryInterface) {
  Recorder recorder;
  ServerOptions options;
  options.address = "0.0.0.0";
  auto server = MustStart(options, recorder.handler());
  ASSERT_NE(server, nullptr);
  EXPECT_THAT(server->url(), StartsWith("http://127.0.0.1:"));
  HttpClient client;
  Request request;
  request.url = server->url() + "/any";
  absl::StatusOr<Response> r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->body, "GET /any ");
}

TEST(HttpServerTest, ListensOnIpv6Loopback) {
  Recorder recorder;
  ServerOptions options;
  options.address = "[::1]";  // as in HTTPS_BIND=[::1]:3000
  absl::StatusOr<std::unique_ptr<HttpServer>> server =
      HttpServer::Start(options, recorder.handler());
  if (!server.ok()) GTEST_SKIP() << "no IPv6 here: " << server.status();
  EXPECT_THAT((*server)->url(), StartsWith("http://[::1]:"));
  HttpClient client;
  Request request;
  request.url = (*server)->url() + "/six";
  absl::StatusOr<Response> r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->body, "GET /six ");
  std::vector<Seen> seen = recorder.seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_THAT(seen[0].peer, StartsWith("[::1]:"));
}

TEST(HttpServerTest, RedirectIsReturnedNotFollowed) {
  Recorder recorder;
  Handler record = recorder.handler();
  auto server = MustStart({}, [&](const ServerRequest& r) {
    ServerResponse response = record(r);
    if (r.path == "/start") {
      response.status = 302;
      response.headers.emplace_back("Location", "/elsewhere");
    }
    return response;
  });
  ASSERT_NE(server, nullptr);
  HttpClient client;
  Request request;
  request.url = server->url() + "/start";
  absl::StatusOr<Response> r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 302);
  EXPECT_EQ(r->header("location"), "/elsewhere");
  ASSERT_EQ(recorder.seen().size(), 1u);
}

// --- TLS ---

class HttpTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<TestCa>> ca = TestCa::Create();
    ASSERT_TRUE(ca.ok()) << ca.status();
    ca_ = std::move(*ca);
  }

  ServerOptions TlsOptions(bool require_client_cert = false) {
    ServerOptions options;
    options.tls =
        ServerTlsOptions{ca_->server().cert_file, ca_->server().key_file,
                         require_client_cert ? ca_->ca_file() : ""};
    options.on_error = [this](std::string_view message) {
      std::lock_guard<std::mutex> lock(mu_);
      errors_.emplace_back(message);
    };
    return options;
  }

  std::vector<std::string> errors() {
    std::lock_guard<std::mutex> lock(mu_);
    return errors_;
  }

  std::unique_ptr<TestCa> ca_;
  Recorder recorder_;
  std::mutex mu_;
  std::vector<std::string> errors_;  // guarded by mu_
};

TEST_F(HttpTlsTest, ClientTrustingTheCaSucceeds) {
  auto server = MustStart(TlsOptions(), recorder_.handler());
  ASSERT_NE(server, nullptr);
  EXPECT_THAT(server->url(), StartsWith("https://127.0.0.1:"));
  HttpClient client;
  for (const std::string& base :
       {server->url(), absl::StrCat("https://localhost:", server->port())}) {
    for (int i = 0; i < 3; ++i) {
      Request request;
      request.method = "POST";
      request.url = base + "/secure";
      request.body = std::string(70000, 's');  // several TLS records
      request.tls.ca_file = ca_->ca_file();
      absl::StatusOr<Response> r = client.Perform(request);
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->status, 200);
      EXPECT_EQ(r->body, "POST /secure " + request.body);
    }
  }
  // Kept alive: one connection per host name.
  EXPECT_EQ(server->connections_accepted(), 2u);
}

TEST_F(HttpTlsTest, ClientNotTrustingTheCaFailsClearly) {
  auto server = MustStart(TlsOptions(), recorder_.handler());
  ASSERT_NE(server, nullptr);
  HttpClient client;
  Request request;
  request.url = server->url() + "/x?token=secret";
  request.headers.emplace_back("Authorization", "Bearer hidden-token");
  absl::StatusOr<Response> r = client.Perform(request);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  std::string message(r.status().message());
  EXPECT_THAT(message, HasSubstr(server->url() + "/x: TLS: "));
  EXPECT_THAT(message, HasSubstr("certificate"));
  EXPECT_THAT(message, Not(HasSubstr("secret")));
  EXPECT_THAT(message, Not(HasSubstr("hidden-token")));
  EXPECT_TRUE(recorder_.seen().empty());

  // Unless verification is off.
  request.tls.verify_peer = false;
  r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
}

TEST_F(HttpTlsTest, ExtraCaFilesAddToTheTrustStore) {
  auto server = MustStart(TlsOptions(), recorder_.handler());
  ASSERT_NE(server, nullptr);
  HttpClient client;
  Request request;
  request.url = server->url() + "/extra";
  // On top of the system's store.
  request.tls.extra_ca_files = {ca_->ca_file()};
  absl::StatusOr<Response> r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  // Without them the same server is not trusted: the connection verified
  // with the extra CA is not reused for a request that lacks it.
  request.tls.extra_ca_files = {};
  r = client.Perform(request);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  request.tls.extra_ca_files = {ca_->ca_file()};
  r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(server->connections_accepted(), 2u);  // the first one, reused

  // On top of ca_file, which alone would not do.
  absl::StatusOr<std::unique_ptr<TestCa>> other = TestCa::Create("other CA");
  ASSERT_TRUE(other.ok()) << other.status();
  request.tls.ca_file = (*other)->ca_file();
  request.tls.extra_ca_files = {};
  r = client.Perform(request);
  EXPECT_FALSE(r.ok());
  request.tls.extra_ca_files = {(*other)->ca_file(), ca_->ca_file()};
  r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);

  // An unusable file is the caller's error, and says which.
  request.tls.extra_ca_files = {ca_->dir() + "/missing.pem"};
  r = client.Perform(request);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument)
      << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("missing.pem"));
  request.tls.extra_ca_files = {ca_->server().key_file};  // no certificate
  r = client.Perform(request);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument)
      << r.status();
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("no PEM certificate"));
  request.tls.extra_ca_files = {};
  request.tls.ca_file = ca_->dir() + "/absent-ca.pem";
  r = client.Perform(request);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument)
      << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("absent-ca.pem"));
}

TEST_F(HttpTlsTest, MutualTls) {
  auto server =
      MustStart(TlsOptions(/*require_client_cert=*/true), recorder_.handler());
  ASSERT_NE(server, nullptr);
  HttpClient client;
  Request request;
  request.url = server->url() + "/mtls";
  request.tls.ca_file = ca_->ca_file();
  absl::StatusOr<Response> r = client.Perform(request);
  ASSERT_FALSE(r.ok()) << "served without a client certificate";
  // TLS 1.3: the client learns it from the server's alert.
  EXPECT_THAT(std::string(r.status().message()), HasSubstr(": TLS: "));
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("certificate required"));
  EXPECT_TRUE(recorder_.seen().empty());

  request.tls.client_cert = ca_->client().cert_file;
  request.tls.client_key = ca_->client().key_file;
  r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  std::vector<Seen> seen = recorder_.seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].subject, "test-client");

  // A certificate from a CA the server does not trust.
  absl::StatusOr<std::unique_ptr<TestCa>> other = TestCa::Create("other CA");
  ASSERT_TRUE(other.ok()) << other.status();
  HttpClient fresh;
  request.tls.client_cert = (*other)->client().cert_file;
  request.tls.client_key = (*other)->client().key_file;
  r = fresh.Perform(request);
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(recorder_.seen().size(), 1u);

  // A client certificate that cannot be read.
  request.tls.client_cert = ca_->dir() + "/nope.crt";
  r = fresh.Perform(request);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument)
      << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("TLS: "));

  bool handshake_reported = false;
  for (const std::string& e : errors()) {
    if (absl::StrContains(e, "TLS handshake with 127.0.0.1:")) {
      handshake_reported = true;
    }
  }
  EXPECT_TRUE(handshake_reported);
}

TEST_F(HttpTlsTest, StopIsPromptWithAnIdleTlsConnection) {
  auto server = MustStart(TlsOptions(), recorder_.handler());
  ASSERT_NE(server, nullptr);
  HttpClient client;
  Request request;
  request.url = server->url() + "/";
  request.tls.ca_file = ca_->ca_file();
  ASSERT_TRUE(client.Perform(request).ok());
  RawClient handshaking(server->port());  // never says hello
  absl::Time start = absl::Now();
  server->Stop();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TEST_F(HttpTlsTest, BadServerFilesAreNamed) {
  ServerOptions options = TlsOptions();
  options.tls->cert_file = ca_->dir() + "/absent.crt";
  absl::StatusOr<std::unique_ptr<HttpServer>> server =
      HttpServer::Start(options, recorder_.handler());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(server.status().message()), HasSubstr("absent.crt"));

  options = TlsOptions();
  options.tls->key_file = ca_->client().key_file;  // not the server's key
  server = HttpServer::Start(options, recorder_.handler());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(server.status().message()), HasSubstr("key"));
}

// --- proxies ---

// Sets an environment variable for the scope, putting back what was there.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value != nullptr) {
      setenv(name, value, 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_.has_value()) {
      setenv(name_, old_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(HttpProxyTest, RequestGoesThroughTheProxy) {
  Recorder proxy_seen;
  auto proxy = MustStart({}, proxy_seen.handler());
  ASSERT_NE(proxy, nullptr);
  HttpClient client;
  Request request;
  request.url = "http://example.invalid/x?y=1";
  request.proxy = absl::StrCat("http://user:pass@127.0.0.1:", proxy->port());
  absl::StatusOr<Response> r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  std::vector<Seen> seen = proxy_seen.seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].target, "http://example.invalid/x?y=1");
  EXPECT_EQ(seen[0].path, "/x");
  std::map<std::string, std::string> headers;
  for (const auto& [name, value] : seen[0].headers) {
    headers[absl::AsciiStrToLower(name)] = value;
  }
  EXPECT_EQ(headers["host"], "example.invalid");
  EXPECT_EQ(headers["proxy-authorization"], "Basic dXNlcjpwYXNz");
}

TEST(HttpProxyTest, NoProxyGoesDirect) {
  Recorder proxy_seen, direct_seen;
  auto proxy = MustStart({}, proxy_seen.handler());
  auto direct = MustStart({}, direct_seen.handler());
  ASSERT_NE(proxy, nullptr);
  ASSERT_NE(direct, nullptr);
  HttpClient client;
  Request request;
  request.url = direct->url() + "/direct";
  request.proxy = proxy->url();
  request.no_proxy = "localhost,127.0.0.1";
  absl::StatusOr<Response> r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(direct_seen.seen().size(), 1u);
  EXPECT_EQ(proxy_seen.seen().size(), 0u);
}

TEST(HttpProxyTest, EnvironmentProxyOnlyWhenAsked) {
  Recorder proxy_seen, direct_seen;
  auto proxy = MustStart({}, proxy_seen.handler());
  auto direct = MustStart({}, direct_seen.handler());
  ASSERT_NE(proxy, nullptr);
  ASSERT_NE(direct, nullptr);
  ScopedEnv http_proxy("http_proxy", proxy->url().c_str());
  ScopedEnv all_proxy("ALL_PROXY", proxy->url().c_str());
  ScopedEnv no_proxy("no_proxy", nullptr);
  ScopedEnv no_proxy_upper("NO_PROXY", nullptr);
  HttpClient client;
  Request request;
  request.url = direct->url() + "/direct";
  absl::StatusOr<Response> r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(direct_seen.seen().size(), 1u);
  EXPECT_EQ(proxy_seen.seen().size(), 0u);

  request.url = "http://example.invalid/env";
  request.use_env_proxy = true;
  r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<Seen> seen = proxy_seen.seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].target, "http://example.invalid/env");
}

TEST(HttpProxyTest, TheProcessNoProxyIsNotReadUnlessAsked) {
  Recorder proxy_seen, direct_seen;
  auto proxy = MustStart({}, proxy_seen.handler());
  auto direct = MustStart({}, direct_seen.handler());
  ASSERT_NE(proxy, nullptr);
  ASSERT_NE(direct, nullptr);
  // libcurl reads these when CURLOPT_NOPROXY is unset, even with an
  // explicit proxy.
  ScopedEnv no_proxy("no_proxy", "*");
  ScopedEnv no_proxy_upper("NO_PROXY", "*");
  HttpClient client;
  Request request;
  request.url = direct->url() + "/via-proxy";
  request.proxy = proxy->url();
  absl::StatusOr<Response> r = client.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(proxy_seen.seen().size(), 1u);
  EXPECT_EQ(direct_seen.seen().size(), 0u);
}

TEST(HttpProxyTest, ProxyErrorsHideCredentials) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  int port = ntohs(addr.sin_port);
  close(fd);  // nothing listens there

  HttpClient client;
  Request request;
  request.url = "http://user:urlpass@example.invalid/x?token=secret";
  request.proxy = absl::StrCat("http://proxyuser:hunter2@127.0.0.1:", port);
  absl::StatusOr<Response> r = client.Perform(request);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  std::string message(r.status().message());
  EXPECT_THAT(message,
              HasSubstr(absl::StrCat("GET http://example.invalid/x via proxy "
                                     "http://127.0.0.1:",
                                     port)));
  EXPECT_THAT(message, Not(HasSubstr("hunter2")));
  EXPECT_THAT(message, Not(HasSubstr("urlpass")));
  EXPECT_THAT(message, Not(HasSubstr("secret")));
}

}  // namespace
}  // namespace delegate::http

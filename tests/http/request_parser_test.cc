#include "http/request_parser.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace delegate::http {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;
using Status = RequestParser::Status;

RequestLimits Limits(size_t max_header_bytes = size_t{64} << 10,
                     size_t max_body_bytes = size_t{64} << 20) {
  RequestLimits limits;
  limits.max_header_bytes = max_header_bytes;
  limits.max_body_bytes = max_body_bytes;
  return limits;
}

// Feeds `input` one byte at a time, as the slowest client would send it,
// answering kSendContinue as the server does. Returns the final status.
Status FeedByteByByte(RequestParser& parser, std::string_view input,
                      std::string* buffer) {
  Status status = parser.Parse(buffer);
  for (char c : input) {
    if (status != Status::kNeedMore && status != Status::kSendContinue) break;
    buffer->push_back(c);
    status = parser.Parse(buffer);
  }
  return status;
}

TEST(RequestParserTest, CompleteRequest) {
  RequestParser parser(Limits());
  std::string buffer =
      "GET /a%20b/c?x=1&y=two HTTP/1.1\r\n"
      "Host: example.com\r\n"
      "X-Spaced:   padded value \t\r\n"
      "\r\n";
  ASSERT_EQ(parser.Parse(&buffer), Status::kDone);
  const ServerRequest& r = parser.request();
  EXPECT_EQ(r.method, "GET");
  EXPECT_EQ(r.target, "/a%20b/c?x=1&y=two");
  EXPECT_EQ(r.path, "/a b/c");
  EXPECT_EQ(r.query("y"), "two");
  EXPECT_THAT(r.headers, ElementsAre(Pair("Host", "example.com"),
                                     Pair("X-Spaced", "padded value")));
  EXPECT_EQ(r.body, "");
  EXPECT_EQ(parser.minor_version(), 1);
  EXPECT_TRUE(parser.keep_alive());
  EXPECT_TRUE(buffer.empty());
  // Done stays done, and consumes nothing more.
  buffer = "GET /next HTTP/1.1\r\n\r\n";
  EXPECT_EQ(parser.Parse(&buffer), Status::kDone);
  EXPECT_EQ(buffer, "GET /next HTTP/1.1\r\n\r\n");
}

TEST(RequestParserTest, BareLineFeedsAndOtherTargetForms) {
  {
    RequestParser parser(Limits());
    std::string buffer = "GET http://proxy.example:8080/p%2Fq?x HTTP/1.1\n\n";
    ASSERT_EQ(parser.Parse(&buffer), Status::kDone);
    EXPECT_EQ(parser.request().path, "/p/q");
  }
  {
    RequestParser parser(Limits());
    std::string buffer = "OPTIONS * HTTP/1.1\r\n\r\n";
    ASSERT_EQ(parser.Parse(&buffer), Status::kDone);
    EXPECT_EQ(parser.request().path, "*");
  }
  {
    RequestParser parser(Limits());
    std::string buffer = "CONNECT host:443 HTTP/1.1\r\n\r\n";
    ASSERT_EQ(parser.Parse(&buffer), Status::kDone);
    EXPECT_EQ(parser.request().target, "host:443");
    EXPECT_EQ(parser.request().path, "");
  }
}

TEST(RequestParserTest, RequestSplitAcrossReads) {
  const std::string request =
      "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n"
      "hello world";
  RequestParser parser(Limits());
  std::string buffer = "\r\n\r\n";  // stray empty lines before it
  EXPECT_EQ(parser.Parse(&buffer), Status::kNeedMore);
  EXPECT_FALSE(parser.started());
  EXPECT_TRUE(buffer.empty());

  buffer.push_back(request[0]);
  EXPECT_EQ(parser.Parse(&buffer), Status::kNeedMore);
  EXPECT_TRUE(parser.started());
  EXPECT_FALSE(parser.reading_body());
  EXPECT_EQ(FeedByteByByte(parser, request.substr(1), &buffer), Status::kDone);
  EXPECT_FALSE(parser.reading_body());
  EXPECT_EQ(parser.request().method, "POST");
  EXPECT_EQ(parser.request().body, "hello world");
  EXPECT_TRUE(buffer.empty());
}

TEST(RequestParserTest, PipelinedRequestsAreLeftForTheNextParser) {
  std::string buffer =
      "PUT /1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
      "GET /2 HTTP/1.1\r\n\r\n"
      "GET /3 HT";
  RequestParser first(Limits());
  ASSERT_EQ(first.Parse(&buffer), Status::kDone);
  EXPECT_EQ(first.request().body, "abc");
  RequestParser second(Limits());
  ASSERT_EQ(second.Parse(&buffer), Status::kDone);
  EXPECT_EQ(second.request().path, "/2");
  RequestParser third(Limits());
  EXPECT_EQ(third.Parse(&buffer), Status::kNeedMore);
  EXPECT_EQ(buffer, "GET /3 HT");
}

TEST(RequestParserTest, ContentLengthBodyWaitsForEveryByte) {
  RequestParser parser(Limits());
  std::string buffer = "POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n01234";
  EXPECT_EQ(parser.Parse(&buffer), Status::kNeedMore);
  EXPECT_TRUE(parser.reading_body());
  buffer += "56789GET";
  ASSERT_EQ(parser.Parse(&buffer), Status::kDone);
  EXPECT_EQ(parser.request().body, "0123456789");
  EXPECT_EQ(buffer, "GET");
}

TEST(RequestParserTest, ChunkedBodyWithExtensionsAndTrailers) {
  const std::string request =
      "POST /chunks HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5;name=value\r\nhello\r\n"
      "7\nchunked\n"  // bare LFs are taken for CRLFs
      "0\r\nX-Trailer: ignored\r\n\r\n";
  {
    RequestParser parser(Limits());
    std::string buffer = request + "next";
    ASSERT_EQ(parser.Parse(&buffer), Status::kDone);
    EXPECT_EQ(parser.request().body, "hellochunked");
    EXPECT_THAT(parser.request().headers,
                ElementsAre(Pair("Transfer-Encoding", "chunked")));
    EXPECT_EQ(buffer, "next");
  }
  {
    RequestParser parser(Limits());
    std::string buffer;
    EXPECT_EQ(FeedByteByByte(parser, request, &buffer), Status::kDone);
    EXPECT_EQ(parser.request().body, "hellochunked");
  }
}

TEST(RequestParserTest, KeepAliveFollowsTheVersionAndConnectionHeader) {
  const std::pair<const char*, bool> cases[] = {
      {"GET / HTTP/1.1\r\n\r\n", true},
      {"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n", false},
      {"GET / HTTP/1.1\r\nConnection: upgrade, close\r\n\r\n", false},
      {"GET / HTTP/1.0\r\n\r\n", false},
      {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
  };
  for (const auto& [request, keep_alive] : cases) {
    RequestParser parser(Limits());
    std::string buffer = request;
    ASSERT_EQ(parser.Parse(&buffer), Status::kDone) << absl::CEscape(request);
    EXPECT_EQ(parser.keep_alive(), keep_alive) << absl::CEscape(request);
  }
}

TEST(RequestParserTest, ExpectContinueOnlyWhenTheClientWaitsForIt) {
  const std::string head =
      "PUT /big HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
  {
    RequestParser parser(Limits());
    std::string buffer = head;
    EXPECT_EQ(parser.Parse(&buffer), Status::kSendContinue);
    EXPECT_EQ(parser.Parse(&buffer), Status::kNeedMore);
    buffer = "body";
    ASSERT_EQ(parser.Parse(&buffer), Status::kDone);
    EXPECT_EQ(parser.request().body, "body");
  }
  {
    // The body came along anyway: no interim answer.
    RequestParser parser(Limits());
    std::string buffer = head + "bo";
    EXPECT_EQ(parser.Parse(&buffer), Status::kNeedMore);
  }
  {
    // Nothing to wait for without a body.
    RequestParser parser(Limits());
    std::string buffer = "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n";
    EXPECT_EQ(parser.Parse(&buffer), Status::kDone);
  }
  {
    // HTTP/1.0 clients do not understand 1xx.
    RequestParser parser(Limits());
    std::string buffer =
        "PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
    EXPECT_EQ(parser.Parse(&buffer), Status::kNeedMore);
  }
}

struct ErrorCase {
  std::string request;
  int status;
  std::string message;
};

void ExpectErrors(const RequestLimits& limits,
                  const std::vector<ErrorCase>& cases) {
  for (const ErrorCase& c : cases) {
    RequestParser parser(limits);
    std::string buffer = c.request;
    EXPECT_EQ(parser.Parse(&buffer), Status::kError)
        << absl::CEscape(c.request);
    EXPECT_EQ(parser.error_status(), c.status) << absl::CEscape(c.request);
    EXPECT_EQ(parser.error_message(), c.message) << absl::CEscape(c.request);
    // An error is final.
    buffer += "GET / HTTP/1.1\r\n\r\n";
    EXPECT_EQ(parser.Parse(&buffer), Status::kError);
  }
}

TEST(RequestParserTest, MalformedRequestLinesAre400) {
  ExpectErrors(
      Limits(),
      {
          {"GARBAGE\r\n\r\n", 400, "malformed request line"},
          {"GET /\r\n\r\n", 400, "malformed request line"},
          {"GET / HTTP/1.1 extra\r\n\r\n", 400, "malformed request line"},
          {"GET  / HTTP/1.1\r\n\r\n", 400, "malformed request line"},
          {"G(T / HTTP/1.1\r\n\r\n", 400, "malformed method"},
          {"GET nopath HTTP/1.1\r\n\r\n", 400, "malformed request target"},
          {"GET / HTTX/1.1\r\n\r\n", 400, "malformed HTTP version"},
          {"GET / HTTP/1.10\r\n\r\n", 400, "malformed HTTP version"},
          {"GET / HTTP/2.0\r\n\r\n", 505, "only HTTP/1.x is served"},
          {"GET /%zz HTTP/1.1\r\n\r\n", 400,
           "malformed percent escape in the path"},
      });
}

TEST(RequestParserTest, MalformedHeadersAre400) {
  ExpectErrors(Limits(), {
                             {"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", 400,
                              "malformed header line"},
                             {"GET / HTTP/1.1\r\nBad name: x\r\n\r\n", 400,
                              "malformed header line"},
                             {"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400,
                              "malformed header line"},
                             {std::string("GET / HTTP/1.1\r\nA: b\x01\r\n\r\n"),
                              400, "control character in a header value"},
                             {"GET / HTTP/1.1\r\nExpect: something\r\n\r\n",
                              417, "unsupported expectation"},
                         });
}

TEST(RequestParserTest, ErrorAnswersKeepTheRequestVersion) {
  RequestParser before(Limits());
  std::string buffer = "GET / HTTP/2.0\r\n\r\n";
  ASSERT_EQ(before.Parse(&buffer), Status::kError);
  EXPECT_EQ(before.minor_version(), 1);

  RequestParser after(Limits());
  buffer = "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
  ASSERT_EQ(after.Parse(&buffer), Status::kError);
  EXPECT_EQ(after.error_status(), 400);
  EXPECT_EQ(after.error_message(), "Transfer-Encoding in an HTTP/1.0 request");
  EXPECT_EQ(after.minor_version(), 0);
}

TEST(RequestParserTest, OversizedHeadersAre431) {
  const RequestLimits limits = Limits(/*max_header_bytes=*/64);
  // A whole head over the limit.
  ExpectErrors(limits, {{absl::StrCat("GET / HTTP/1.1\r\nX-Big: ",
                                      std::string(64, 'h'), "\r\n\r\n"),
                         431, "request headers too large"}});
  // A head that never ends is cut off once the limit is passed.
  RequestParser parser(limits);
  std::string buffer = "GET / HTTP/1.1\r\n";
  EXPECT_EQ(parser.Parse(&buffer), Status::kNeedMore);
  buffer += std::string(64 - buffer.size(), 'v');
  EXPECT_EQ(parser.Parse(&buffer), Status::kNeedMore);
  buffer += "v";
  ASSERT_EQ(parser.Parse(&buffer), Status::kError);
  EXPECT_EQ(parser.error_status(), 431);
  EXPECT_EQ(parser.error_message(), "request headers too large");
  // Exactly the limit is fine.
  RequestParser fits(limits);
  buffer =
      absl::StrCat("GET / HTTP/1.1\r\nX: ", std::string(41, 'v'), "\r\n\r\n");
  ASSERT_EQ(buffer.size(), 64u);
  EXPECT_EQ(fits.Parse(&buffer), Status::kDone);
}

TEST(RequestParserTest, BodyFramingErrors) {
  ExpectErrors(
      Limits(),
      {
          {"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400,
           "malformed Content-Length"},
          {"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400,
           "malformed Content-Length"},
          {"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
           400, "malformed Content-Length"},
          {"POST / HTTP/1.1\r\nContent-Length: 3\r\n"
           "Transfer-Encoding: chunked\r\n\r\n",
           400, "both Transfer-Encoding and Content-Length"},
          {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501,
           "only the chunked transfer coding is supported"},
          {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501,
           "only the chunked transfer coding is supported"},
      });
}

TEST(RequestParserTest, MalformedChunksAre400) {
  const std::string head =
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
  ExpectErrors(
      Limits(),
      {
          {head + "zz\r\n", 400, "malformed chunk size"},
          {head + "5 x\r\n", 400, "malformed chunk size"},
          {head + "3\r\nabcX", 400, "malformed chunk: no CRLF after the data"},
          {head + std::string(4097, '0'), 400, "chunk size line too long"},
      });
}

TEST(RequestParserTest, OversizedBodiesAre413) {
  const RequestLimits limits =
      Limits(/*max_header_bytes=*/64, /*max_body_bytes=*/10);
  ExpectErrors(
      limits,
      {
          {"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 413,
           "request body larger than 10 bytes"},
          // Chunked bodies are counted as they arrive.
          {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
           "6\r\nabcdef\r\n5\r\n",
           413, "request body larger than 10 bytes"},
          {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
           "fffffffffffffffff\r\n",
           413, "request body larger than 10 bytes"},
          // Trailers have the headers' limit.
          {absl::StrCat("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "0\r\nX-T: ",
                        std::string(60, 't'), "\r\n"),
           431, "request trailers too large"},
      });
  // Exactly the limit is fine.
  RequestParser parser(limits);
  std::string buffer =
      "POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
  EXPECT_EQ(parser.Parse(&buffer), Status::kDone);
}

TEST(RequestParserTest, LongRequestLinesAndTooManyHeaders) {
  RequestLimits limits;
  limits.max_request_line_bytes = 32;
  limits.max_header_count = 3;
  ExpectErrors(
      limits,
      {
          // Known before the line ends.
          {absl::StrCat("GET /", std::string(40, 'a')), 414,
           "request line longer than 32 bytes"},
          {"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", 431,
           "more than 3 header fields"},
      });
  RequestParser parser(limits);
  std::string buffer = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
  EXPECT_EQ(parser.Parse(&buffer), Status::kDone);
}

TEST(RequestParserTest, GetAndHeadWithABodyAreRefusedAtTheHead) {
  ExpectErrors(
      Limits(),
      {
          {"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", 400,
           "a GET request must not have a body"},
          {"HEAD / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
           "a HEAD request must not have a body"},
      });
  RequestParser parser(Limits());
  std::string buffer = "GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
  EXPECT_EQ(parser.Parse(&buffer), Status::kDone);
}

TEST(RequestParserTest, BodyLimitPerRoute) {
  RequestLimits limits = Limits(/*max_header_bytes=*/1024,
                                /*max_body_bytes=*/100);
  limits.body_limit = [](const ServerRequest& head) -> size_t {
    return head.path == "/small" ? 3 : 1000;  // never above max_body_bytes
  };
  ExpectErrors(limits,
               {
                   {"POST /small HTTP/1.1\r\nContent-Length: 4\r\n\r\n", 413,
                    "request body larger than 3 bytes"},
                   {"POST /big HTTP/1.1\r\nContent-Length: 101\r\n\r\n",
                    413, "request body larger than 100 bytes"},
               });
  RequestParser parser(limits);
  std::string buffer = "POST /small HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
  EXPECT_EQ(parser.Parse(&buffer), Status::kDone);
  EXPECT_EQ(parser.body_limit(), 3u);
}

}  // namespace
}  // namespace delegate::http

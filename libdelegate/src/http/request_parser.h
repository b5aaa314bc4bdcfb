// An incremental HTTP/1.1 request parser (RFC 9112): the request line, the
// header fields, and a body framed by Content-Length or the chunked transfer
// coding, within size limits. It does no I/O: the caller appends what it
// receives to a buffer and asks again, so that every rule can be tested on
// bytes alone.
#ifndef DELEGATE_HTTP_REQUEST_PARSER_H_
#define DELEGATE_HTTP_REQUEST_PARSER_H_

#include <cstddef>
#include <functional>
#include <string>

#include "http/server_request.h"

namespace delegate::http {

struct RequestLimits {
  // The request line and headers, and a chunked body's trailers, each
  // counted on its own; larger is answered 431.
  size_t max_header_bytes = size_t{64} << 10;
  // The request line alone (method, target, version); longer is answered
  // 414, before the headers are waited for.
  size_t max_request_line_bytes = size_t{8} << 10;
  // Header fields (trailers not counted); more are answered 431.
  size_t max_header_count = 100;
  // The body, after de-chunking; larger is answered 413.
  size_t max_body_bytes = size_t{64} << 20;
  // When set, called once the head is parsed (the request has no body yet)
  // for that request's body limit, e.g. by route; the lower of it and
  // max_body_bytes applies.
  std::function<size_t(const ServerRequest& head)> body_limit;
};

// Parses one request from the front of a buffer that the caller owns and
// fills. What the request spans is consumed from the buffer; what follows it
// (a pipelined request) is left there for the next parser. Not thread-safe.
class RequestParser {
 public:
  enum class Status {
    // Append more input to the buffer and call Parse again.
    kNeedMore,
    // The head is parsed, and the client waits for "100 Continue" before it
    // sends the body: send that, then call Parse again. At most once.
    kSendContinue,
    // request() is whole.
    kDone,
    // The request is malformed or too large (a GET or HEAD with a body is
    // refused before its body is read): answer error_status() with
    // error_message(), then close the connection (whatever follows cannot
    // be framed).
    kError,
  };

  explicit RequestParser(RequestLimits limits) : limits_(limits) {}
  RequestParser(const RequestParser&) = delete;
  RequestParser& operator=(const RequestParser&) = delete;

  // Consumes what it can from the front of *buffer. Once it returned kDone
  // or kError, returns that again and consumes nothing.
  Status Parse(std::string* buffer);

  // True once the request's first byte has arrived. Empty lines before it
  // are discarded and do not count (RFC 9112 2.2).
  bool started() const { return started_; }
  // True once the head is parsed and the body is expected.
  bool reading_body() const;
  // The body limit that applies to this request (see RequestLimits); valid
  // once the head is parsed.
  size_t body_limit() const { return body_limit_; }

  // The request as far as it is parsed: method, target, path and headers
  // once the head is, the body at kDone. The caller may move from it then.
  ServerRequest& request() { return request_; }
  const ServerRequest& request() const { return request_; }
  // The x of the request's "HTTP/1.x"; 1 until the request line is parsed,
  // so that an error answer says "HTTP/1.1".
  int minor_version() const { return minor_; }
  // Whether the connection may carry another request after this one, from
  // the version and the Connection header. Valid once the head is parsed.
  bool keep_alive() const { return keep_alive_; }

  // For kError: the status to answer, and a line that says why.
  int error_status() const { return error_status_; }
  const std::string& error_message() const { return error_message_; }

 private:
  enum class Phase {
    kHead,
    kLengthBody,
    kChunkSize,
    kChunkData,
    kTrailers,
    kDone,
    kError,
  };

  // Each takes one step from the front of *buffer: true when it consumed
  // something or moved to another phase, false when it needs more input.
  bool ParseHead(std::string* buffer);
  // Decides how the body is framed, from the head just parsed.
  bool StartBody(const std::string& buffer);
  bool ParseLengthBody(std::string* buffer);
  bool ParseChunkSize(std::string* buffer);
  bool ParseChunkData(std::string* buffer);
  bool ParseTrailer(std::string* buffer);
  // Ends the parse with an error answer; returns true.
  bool Fail(int status, std::string message);
  bool FailTooLargeBody();

  const RequestLimits limits_;
  size_t body_limit_ = 0;  // set once the head is parsed
  Phase phase_ = Phase::kHead;
  bool started_ = false;
  size_t scanned_ = 0;  // of the head, for its end, from the buffer's front
  ServerRequest request_;
  int minor_ = 1;
  bool keep_alive_ = true;
  bool send_continue_ = false;  // kSendContinue is due
  size_t length_ = 0;           // kLengthBody: the Content-Length
  size_t chunk_size_ = 0;       // kChunkData: the current chunk's
  size_t trailer_bytes_ = 0;    // kTrailers: received so far
  int error_status_ = 0;
  std::string error_message_;
};

}  // namespace delegate::http

#endif  // DELEGATE_HTTP_REQUEST_PARSER_H_

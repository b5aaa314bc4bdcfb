#include "http/request_parser.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "http/http_syntax.h"
#include "util/strings.h"

namespace delegate::http {
namespace {

// A chunk-size line, extensions included.
constexpr size_t kMaxChunkLine = 4096;

// The offset just past the empty line that ends a request head, searching
// from `from`; npos when it has not arrived. Lines may end in LF alone.
size_t FindHeadEnd(std::string_view buf, size_t from) {
  for (size_t i = buf.find('\n', from); i != std::string_view::npos;
       i = buf.find('\n', i + 1)) {
    if (i + 1 < buf.size() && buf[i + 1] == '\n') return i + 2;
    if (i + 2 < buf.size() && buf[i + 1] == '\r' && buf[i + 2] == '\n') {
      return i + 3;
    }
  }
  return std::string_view::npos;
}

// Parses the request line and headers (without the final empty line) into
// `request`. Returns 0, or the status to answer.
int ParseHeadLines(std::string_view head, size_t max_header_count,
                   ServerRequest* request, int* minor, std::string* why) {
  std::vector<std::string_view> lines;
  for (absl::string_view line : absl::StrSplit(AbslView(head), '\n')) {
    std::string_view l = StdView(line);
    if (l.ends_with('\r')) l.remove_suffix(1);
    lines.push_back(l);
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  if (lines.empty()) {
    *why = "empty request";
    return 400;
  }
  if (lines.size() - 1 > max_header_count) {
    *why = absl::StrCat("more than ", max_header_count, " header fields");
    return 431;
  }
  // request-line = method SP request-target SP HTTP-version
  std::string_view line = lines[0];
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos ||
      line.find(' ', sp2 + 1) != std::string_view::npos) {
    *why = "malformed request line";
    return 400;
  }
  std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (!IsToken(method)) {
    *why = "malformed method";
    return 400;
  }
  if (target.empty() || std::any_of(target.begin(), target.end(), [](char c) {
        return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f;
      })) {
    *why = "malformed request target";
    return 400;
  }
  if (version.size() != 8 || !version.starts_with("HTTP/") ||
      !absl::ascii_isdigit(static_cast<unsigned char>(version[5])) ||
      version[6] != '.' ||
      !absl::ascii_isdigit(static_cast<unsigned char>(version[7]))) {
    *why = "malformed HTTP version";
    return 400;
  }
  if (version[5] != '1') {
    *why = "only HTTP/1.x is served";
    return 505;
  }
  *minor = version[7] - '0';

  request->method = std::string(method);
  request->target = std::string(target);
  std::string_view raw_path;
  if (target.front() == '/') {
    raw_path = target.substr(0, target.find_first_of("?#"));
  } else if (size_t scheme_end = target.find("://");
             scheme_end != std::string_view::npos && scheme_end > 0 &&
             std::all_of(
                 target.begin(), target.begin() + scheme_end, [](char c) {
                   return absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
                          c == '+' || c == '-' || c == '.';
                 })) {
    // absolute-form, as sent to a forward proxy
    std::string_view rest = target.substr(scheme_end + 3);
    size_t slash = rest.find_first_of("/?#");
    raw_path =
        slash == std::string_view::npos || rest[slash] != '/'
            ? std::string_view("/")
            : rest.substr(slash, rest.find_first_of("?#", slash) - slash);
  } else if (target == "*" && method == "OPTIONS") {
    raw_path = "*";
  } else if (method == "CONNECT") {
    raw_path = "";  // authority-form
  } else {
    *why = "malformed request target";
    return 400;
  }
  if (!PercentDecode(raw_path, false, &request->path)) {
    *why = "malformed percent escape in the path";
    return 400;
  }

  for (size_t i = 1; i < lines.size(); ++i) {
    std::string_view l = lines[i];
    if (l.empty() || l.front() == ' ' || l.front() == '\t') {
      *why = "malformed header line";  // obsolete folding, or a stray CRLF
      return 400;
    }
    size_t colon = l.find(':');
    if (colon == std::string_view::npos || !IsToken(l.substr(0, colon))) {
      *why = "malformed header line";
      return 400;
    }
    std::string_view value = TrimOws(l.substr(colon + 1));
    if (std::any_of(value.begin(), value.end(), [](char c) {
          return (static_cast<unsigned char>(c) < 0x20 && c != '\t') ||
                 c == 0x7f;
        })) {
      *why = "control character in a header value";
      return 400;
    }
    request->headers.emplace_back(std::string(l.substr(0, colon)),
                                  std::string(value));
  }
  return 0;
}

enum class Line { kFound, kTooLong, kNeedMore };

// Whether `buffer` starts with a line of at most `limit` bytes before its LF,
// at *nl.
Line FindLine(const std::string& buffer, size_t limit, size_t* nl) {
  *nl = buffer.find('\n');
  if (*nl != std::string::npos && *nl <= limit) return Line::kFound;
  if (buffer.size() > limit) return Line::kTooLong;
  return Line::kNeedMore;
}

}  // namespace

RequestParser::Status RequestParser::Parse(std::string* buffer) {
  for (;;) {
    bool progressed = false;
    switch (phase_) {
      case Phase::kHead:
        progressed = ParseHead(buffer);
        break;
      case Phase::kLengthBody:
        progressed = ParseLengthBody(buffer);
        break;
      case Phase::kChunkSize:
        progressed = ParseChunkSize(buffer);
        break;
      case Phase::kChunkData:
        progressed = ParseChunkData(buffer);
        break;
      case Phase::kTrailers:
        progressed = ParseTrailer(buffer);
        break;
      case Phase::kDone:
        return Status::kDone;
      case Phase::kError:
        return Status::kError;
    }
    if (send_continue_) {
      send_continue_ = false;
      return Status::kSendContinue;
    }
    if (!progressed) return Status::kNeedMore;
  }
}

bool RequestParser::reading_body() const {
  return phase_ == Phase::kLengthBody || phase_ == Phase::kChunkSize ||
         phase_ == Phase::kChunkData || phase_ == Phase::kTrailers;
}

bool RequestParser::ParseHead(std::string* buffer) {
  if (!started_) {
    // Stray empty lines between requests are ignored (RFC 9112 2.2).
    size_t skip = buffer->find_first_not_of("\r\n");
    buffer->erase(0, skip == std::string::npos ? buffer->size() : skip);
    if (buffer->empty()) return false;
    started_ = true;
  }
  // The request line's end, or how far it has come without one.
  const size_t line_end = std::min(buffer->find('\n'), buffer->size());
  if (line_end > limits_.max_request_line_bytes) {
    return Fail(414, absl::StrCat("request line longer than ",
                                  limits_.max_request_line_bytes, " bytes"));
  }
  size_t head_end = FindHeadEnd(*buffer, scanned_);
  if (head_end == std::string::npos) {
    scanned_ = buffer->size() < 2 ? 0 : buffer->size() - 2;
    if (buffer->size() > limits_.max_header_bytes) {
      return Fail(431, "request headers too large");
    }
    return false;
  }
  if (head_end > limits_.max_header_bytes) {
    return Fail(431, "request headers too large");
  }
  std::string why;
  int status = ParseHeadLines(std::string_view(*buffer).substr(0, head_end),
                              limits_.max_header_count, &request_, &minor_,
                              &why);
  buffer->erase(0, head_end);
  if (status != 0) return Fail(status, why);
  return StartBody(*buffer);
}

bool RequestParser::StartBody(const std::string& buffer) {
  bool close_token = false;
  bool keep_alive_token = false;
  ForEachListElement(request_.headers, "connection", [&](std::string_view e) {
    if (absl::EqualsIgnoreCase(AbslView(e), "close")) close_token = true;
    if (absl::EqualsIgnoreCase(AbslView(e), "keep-alive")) {
      keep_alive_token = true;
    }
  });
  keep_alive_ = !close_token && (minor_ >= 1 || keep_alive_token);

  // The body's framing (RFC 9112 6.3).
  std::vector<std::string_view> codings;
  bool has_te = false;
  for (const auto& [name, value] : request_.headers) {
    if (absl::EqualsIgnoreCase(AbslView(name), "transfer-encoding")) {
      has_te = true;
    }
  }
  ForEachListElement(request_.headers, "transfer-encoding",
                     [&](std::string_view e) { codings.push_back(e); });
  bool chunked = false;
  std::optional<size_t> length;
  bool has_length = false;
  bool bad_length = false;
  ForEachListElement(
      request_.headers, "content-length", [&](std::string_view e) {
        has_length = true;
        size_t n = 0;
        if (!std::all_of(e.begin(), e.end(),
                         [](char c) { return c >= '0' && c <= '9'; }) ||
            !absl::SimpleAtoi(AbslView(e), &n) ||
            (length.has_value() && *length != n)) {
          bad_length = true;
        }
        length = n;
      });
  if (has_te) {
    if (minor_ == 0) {
      return Fail(400, "Transfer-Encoding in an HTTP/1.0 request");
    }
    if (has_length) {
      return Fail(400, "both Transfer-Encoding and Content-Length");
    }
    if (codings.size() != 1 ||
        !absl::EqualsIgnoreCase(AbslView(codings[0]), "chunked")) {
      return Fail(501, "only the chunked transfer coding is supported");
    }
    chunked = true;
  } else if (bad_length) {
    return Fail(400, "malformed Content-Length");
  }
  const bool has_body = chunked || (length.has_value() && *length > 0);
  // A body on GET or HEAD means nothing (RFC 9110 9.3.1) and is only a way
  // to make the server read and hold bytes: refused before it is read.
  if (has_body && (request_.method == "GET" || request_.method == "HEAD")) {
    return Fail(400, absl::StrCat("a ", request_.method,
                                  " request must not have a body"));
  }
  body_limit_ = limits_.max_body_bytes;
  if (limits_.body_limit) {
    body_limit_ = std::min(body_limit_, limits_.body_limit(request_));
  }
  if (!chunked && has_length && *length > body_limit_) {
    return FailTooLargeBody();
  }

  bool expect_continue = false;
  for (const auto& [name, value] : request_.headers) {
    if (!absl::EqualsIgnoreCase(AbslView(name), "expect")) continue;
    if (absl::EqualsIgnoreCase(AbslView(value), "100-continue")) {
      expect_continue = true;
    } else {
      return Fail(417, "unsupported expectation");
    }
  }
  // HTTP/1.0 clients do not understand 1xx (RFC 9110 10.1.1); a client that
  // already sends the body does not wait for one.
  send_continue_ = expect_continue && has_body && minor_ >= 1 && buffer.empty();

  if (chunked) {
    phase_ = Phase::kChunkSize;
  } else if (has_body) {
    length_ = *length;
    phase_ = Phase::kLengthBody;
  } else {
    phase_ = Phase::kDone;
  }
  return true;
}

bool RequestParser::ParseLengthBody(std::string* buffer) {
  if (buffer->size() < length_) return false;
  if (buffer->size() == length_) {
    // The common case: the buffer holds the body alone; no copy of it.
    request_.body = std::move(*buffer);
    buffer->clear();
  } else {
    request_.body = buffer->substr(0, length_);
    buffer->erase(0, length_);
  }
  phase_ = Phase::kDone;
  return true;
}

// Chunks are parsed as RFC 9112 7.1 has them: a hex size (with extensions,
// ignored), CRLF, the data, CRLF; a zero size ends them, then trailer fields,
// which are discarded, up to an empty line. A bare LF is taken for CRLF.
bool RequestParser::ParseChunkSize(std::string* buffer) {
  size_t nl = 0;
  switch (FindLine(*buffer, kMaxChunkLine, &nl)) {
    case Line::kNeedMore:
      return false;
    case Line::kTooLong:
      return Fail(400, "chunk size line too long");
    case Line::kFound:
      break;
  }
  std::string_view line(buffer->data(), nl);
  if (line.ends_with('\r')) line.remove_suffix(1);
  size_t size = 0;
  size_t digits = 0;
  for (; digits < line.size() && HexValue(line[digits]) >= 0; ++digits) {
    if (size > (SIZE_MAX >> 4)) return FailTooLargeBody();
    size = size * 16 + static_cast<size_t>(HexValue(line[digits]));
  }
  std::string_view rest = TrimOws(line.substr(digits));
  if (digits == 0 || (!rest.empty() && rest.front() != ';')) {
    return Fail(400, "malformed chunk size");
  }
  buffer->erase(0, nl + 1);
  if (size == 0) {
    phase_ = Phase::kTrailers;
    return true;
  }
  if (size > body_limit_ - request_.body.size()) {
    return FailTooLargeBody();
  }
  chunk_size_ = size;
  phase_ = Phase::kChunkData;
  return true;
}

bool RequestParser::ParseChunkData(std::string* buffer) {
  const std::string& b = *buffer;
  // The data, then CRLF (or LF).
  if (b.size() < chunk_size_ + 1 ||
      (b[chunk_size_] == '\r' && b.size() < chunk_size_ + 2)) {
    return false;
  }
  size_t after = chunk_size_;
  if (b[after] == '\r' && b[after + 1] == '\n') {
    after += 2;
  } else if (b[after] == '\n') {
    after += 1;
  } else {
    return Fail(400, "malformed chunk: no CRLF after the data");
  }
  request_.body.append(b, 0, chunk_size_);
  buffer->erase(0, after);
  phase_ = Phase::kChunkSize;
  return true;
}

bool RequestParser::ParseTrailer(std::string* buffer) {
  size_t limit = limits_.max_header_bytes -
                 std::min(limits_.max_header_bytes, trailer_bytes_);
  size_t nl = 0;
  switch (FindLine(*buffer, limit, &nl)) {
    case Line::kNeedMore:
      return false;
    case Line::kTooLong:
      return Fail(431, "request trailers too large");
    case Line::kFound:
      break;
  }
  const bool empty = nl == 0 || (nl == 1 && (*buffer)[0] == '\r');
  buffer->erase(0, nl + 1);
  trailer_bytes_ += nl + 1;
  if (empty) phase_ = Phase::kDone;
  return true;
}

bool RequestParser::Fail(int status, std::string message) {
  phase_ = Phase::kError;
  error_status_ = status;
  error_message_ = std::move(message);
  return true;
}

bool RequestParser::FailTooLargeBody() {
  return Fail(413, absl::StrCat("request body larger than ", body_limit_,
                                " bytes"));
}

}  // namespace delegate::http

// The HTTP/1.1 request parser of the ops server (:3000) and of the
// reference manager and its log service, fed the way a connection feeds it:
// in chunks of any size, pipelined requests one after the other. Each parse
// ends in a whole request within its limits or in an error answer; none
// loops without consuming input.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_input.h"
#include "http/request_parser.h"

namespace {

using delegate::http::RequestLimits;
using delegate::http::RequestParser;

RequestLimits Limits(uint8_t which) {
  RequestLimits limits;
  switch (which % 3) {
    case 0:  // the ops server: no bodies
      limits.max_body_bytes = 0;
      break;
    case 1:  // small, so that every limit is reached
      limits.max_header_bytes = 256;
      limits.max_request_line_bytes = 64;
      limits.max_header_count = 4;
      limits.max_body_bytes = 128;
      break;
    default:  // the reference manager: a limit by route
      limits.body_limit = [](const delegate::http::ServerRequest& head) {
        return head.path == "/log" ? size_t{64} : size_t{1} << 20;
      };
      break;
  }
  return limits;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  delegate::fuzz::FuzzInput in(data, size);
  const uint8_t which = in.Byte();
  const size_t first_chunk = in.Range(1, 300);
  std::string_view wire = in.Rest();

  std::string buffer;
  size_t fed = 0;
  size_t chunk = first_chunk;
  for (int requests = 0; requests < 64; ++requests) {
    RequestParser parser(Limits(which));
    RequestParser::Status status = RequestParser::Status::kNeedMore;
    for (;;) {
      const size_t before = buffer.size();
      status = parser.Parse(&buffer);
      if (status == RequestParser::Status::kSendContinue) continue;
      if (status != RequestParser::Status::kNeedMore) break;
      FUZZ_CHECK(buffer.size() <= before, "the parser grew the buffer");
      if (fed == wire.size()) break;  // the client closed
      buffer.append(wire.substr(fed, chunk));
      fed += std::min(chunk, wire.size() - fed);
      chunk = chunk * 5 % 293 + 1;
    }
    if (status == RequestParser::Status::kError) {
      const int code = parser.error_status();
      FUZZ_CHECK(code >= 400 && code <= 505, std::to_string(code));
      FUZZ_CHECK(!parser.error_message().empty(), "an error without words");
      return 0;
    }
    if (status != RequestParser::Status::kDone) return 0;
    const delegate::http::ServerRequest& request = parser.request();
    FUZZ_CHECK(!request.method.empty(), "a request without a method");
    FUZZ_CHECK(request.body.size() <= parser.body_limit(), "over the limit");
    (void)request.query("a");
    (void)request.header("content-type");
    if (!parser.keep_alive()) return 0;
  }
  return 0;
}

// A request as the HTTP server hands it to its handler.
#ifndef DELEGATE_HTTP_SERVER_REQUEST_H_
#define DELEGATE_HTTP_SERVER_REQUEST_H_

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "http/http_client.h"  // Header

namespace delegate::http {

struct ServerRequest {
  std::string method;  // as received, e.g. "GET"
  // The request target as received: "/a%20b?x=1", or the absolute form
  // "http://host/a?x=1" that a forward proxy receives.
  std::string target;
  // The target's path, percent-decoded, without the query; for the
  // absolute form, without the scheme and authority ("/a b").
  std::string path;
  std::vector<Header> headers;  // names as received, in order
  std::string body;             // de-chunked
  std::string peer_address;     // "127.0.0.1:53412", "[::1]:53412"
  // With mutual TLS, the common name of the verified client certificate's
  // subject; empty otherwise.
  std::string client_cert_subject;
  // True once the server is stopping or the client has closed its end of the
  // connection: a handler that waits (a long poll) checks it and returns
  // early. Set on every request the server hands out; valid only while the
  // handler runs, on its thread.
  std::function<bool()> cancelled;

  // The first header named `name`, compared case-insensitively; empty when
  // absent.
  std::string_view header(std::string_view name) const;
  // The first query parameter named `name` (compared exactly), with '+' and
  // percent escapes decoded; nullopt when absent. "?a" and "?a=" give "".
  std::optional<std::string> query(std::string_view name) const;
};

}  // namespace delegate::http

#endif  // DELEGATE_HTTP_SERVER_REQUEST_H_

#include "http/server_request.h"

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "http/http_syntax.h"
#include "util/strings.h"

namespace delegate::http {

std::string_view ServerRequest::header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (absl::EqualsIgnoreCase(AbslView(key), AbslView(name))) return value;
  }
  return {};
}

std::optional<std::string> ServerRequest::query(std::string_view name) const {
  size_t q = target.find('?');
  if (q == std::string::npos) return std::nullopt;
  std::string_view query = std::string_view(target).substr(q + 1);
  query = query.substr(0, query.find('#'));
  for (absl::string_view part : absl::StrSplit(AbslView(query), '&')) {
    std::string_view p = StdView(part);
    size_t eq = p.find('=');
    std::string key;
    if (!PercentDecode(p.substr(0, eq), true, &key)) key = p.substr(0, eq);
    if (key != name) continue;
    if (eq == std::string_view::npos) return std::string();
    std::string value;
    if (!PercentDecode(p.substr(eq + 1), true, &value)) {
      value = p.substr(eq + 1);  // kept as sent
    }
    return value;
  }
  return std::nullopt;
}

}  // namespace delegate::http

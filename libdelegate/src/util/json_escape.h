// JSON string escaping for the hand-written JSON lines of the event log and
// the log service (where a RapidJSON writer per line would cost more).
#ifndef DELEGATE_UTIL_JSON_ESCAPE_H_
#define DELEGATE_UTIL_JSON_ESCAPE_H_

#include <string>
#include <string_view>

namespace delegate {

// Appends `s` to `out` as a JSON string body (no quotes): control characters,
// quotes and backslashes escaped, invalid UTF-8 bytes replaced by U+FFFD.
void AppendJsonEscaped(std::string& out, std::string_view s);

}  // namespace delegate

#endif  // DELEGATE_UTIL_JSON_ESCAPE_H_

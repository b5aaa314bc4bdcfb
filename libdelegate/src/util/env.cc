#include "util/env.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "util/strings.h"

extern char** environ;

namespace delegate {
namespace {

// Env files are a handful of lines; anything this large is a wrong path (a
// log, a binary) and is refused rather than read into memory.
constexpr size_t kMaxEnvFileBytes = 1 << 20;

// One env file line, already stripped of leading blanks, non-empty and not a
// comment. Returns false when malformed.
bool ParseEnvLine(absl::string_view line, std::string* key,
                  std::string* value) {
  if (absl::StartsWith(line, "export") && line.size() > 6 &&
      (line[6] == ' ' || line[6] == '\t')) {
    line = absl::StripLeadingAsciiWhitespace(line.substr(6));
  }
  size_t eq = line.find('=');
  if (eq == absl::string_view::npos) return false;
  absl::string_view k = absl::StripTrailingAsciiWhitespace(line.substr(0, eq));
  if (k.empty()) return false;
  for (size_t i = 0; i < k.size(); ++i) {
    const char c = k[i];
    const bool ok =
        c == '_' || absl::ascii_isalpha(c) || (i > 0 && absl::ascii_isdigit(c));
    if (!ok) return false;
  }
  absl::string_view raw = line.substr(eq + 1);
  absl::string_view v = absl::StripLeadingAsciiWhitespace(raw);
  std::string out;
  if (!v.empty() && (v[0] == '"' || v[0] == '\'')) {
    const char quote = v[0];
    size_t i = 1;
    bool closed = false;
    for (; i < v.size(); ++i) {
      const char c = v[i];
      if (c == quote) {
        closed = true;
        ++i;
        break;
      }
      if (quote == '"' && c == '\\' && i + 1 < v.size()) {
        const char n = v[i + 1];
        if (n == '"' || n == '\\') {
          out += n;
          ++i;
          continue;
        }
        if (n == 'n') {
          out += '\n';
          ++i;
          continue;
        }
        // Any other backslash is kept as written, like most dotenv readers.
      }
      out += c;
    }
    if (!closed) return false;
    // After the closing quote only blanks or a comment may follow.
    absl::string_view tail = absl::StripLeadingAsciiWhitespace(v.substr(i));
    if (!tail.empty() && tail[0] != '#') return false;
  } else {
    // An unquoted "#" starts a comment only after a blank, so "a#b" and
    // "KEY=#b" keep their "#" while "KEY= # note" is empty.
    absl::string_view text = raw;
    for (size_t i = 1; i < raw.size(); ++i) {
      if (raw[i] == '#' && (raw[i - 1] == ' ' || raw[i - 1] == '\t')) {
        text = raw.substr(0, i);
        break;
      }
    }
    out = std::string(absl::StripAsciiWhitespace(text));
  }
  *key = std::string(k);
  *value = std::move(out);
  return true;
}

}  // namespace

EnvMap ProcessEnvironment() {
  EnvMap env;
  if (environ == nullptr) return env;
  for (char** p = environ; *p != nullptr; ++p) {
    absl::string_view entry(*p);
    size_t eq = entry.find('=');
    if (eq == absl::string_view::npos || eq == 0) continue;
    // getenv() returns the first of duplicate entries; so do we.
    env.emplace(std::string(entry.substr(0, eq)),
                std::string(entry.substr(eq + 1)));
  }
  return env;
}

namespace {

// True when `entry` ("NAME=VALUE") names one of `names`; `value` is then
// where its value starts.
bool Names(const char* entry, const std::vector<std::string>& names,
           char** value) {
  for (const std::string& name : names) {
    if (std::strncmp(entry, name.data(), name.size()) == 0 &&
        entry[name.size()] == '=') {
      *value = const_cast<char*>(entry) + name.size() + 1;
      return true;
    }
  }
  return false;
}

// The block the kernel shows as /proc/self/environ: [env_start, env_end),
// fields 50 and 51 of /proc/self/stat (counted after the command name,
// which may hold spaces and parentheses).
bool EnvironBlock(uintptr_t* start, uintptr_t* end) {
  std::ifstream in("/proc/self/stat");
  std::string stat;
  if (!std::getline(in, stat)) return false;
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return false;
  std::vector<std::string> fields =
      absl::StrSplit(stat.substr(paren + 2), ' ', absl::SkipEmpty());
  // fields[0] is field 3 (state): field N is fields[N - 3].
  if (fields.size() < 49) return false;
  uint64_t s = 0, e = 0;
  if (!absl::SimpleAtoi(fields[47], &s) || !absl::SimpleAtoi(fields[48], &e) ||
      s == 0 || e <= s) {
    return false;
  }
  *start = static_cast<uintptr_t>(s);
  *end = static_cast<uintptr_t>(e);
  return true;
}

}  // namespace

int ScrubEnvironment(const std::vector<std::string>& names) {
  int cleared = 0;
  // The block the process started with: what /proc/<pid>/environ reads,
  // whatever environ points to now.
  uintptr_t start = 0, end = 0;
  if (EnvironBlock(&start, &end)) {
    char* p = reinterpret_cast<char*>(start);
    char* const stop = reinterpret_cast<char*>(end);
    while (p < stop) {
      char* entry_end = static_cast<char*>(std::memchr(p, '\0', stop - p));
      if (entry_end == nullptr) entry_end = stop;
      char* value = nullptr;
      if (Names(p, names, &value) && value < entry_end && *value != '\0') {
        std::memset(value, 0, entry_end - value);
        ++cleared;
      }
      p = entry_end + 1;
    }
  }
  // Copies setenv/putenv made elsewhere, then the entries themselves.
  if (environ != nullptr) {
    for (char** e = environ; *e != nullptr; ++e) {
      char* value = nullptr;
      if (Names(*e, names, &value) && *value != '\0') {
        std::memset(value, 0, std::strlen(value));
        ++cleared;
      }
    }
  }
  for (const std::string& name : names) unsetenv(name.c_str());
  return cleared;
}

absl::StatusOr<EnvMap> ReadEnvFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("env file ", path));
  }
  // Read by size rather than trusting fstat, so a pipe or /dev/stdin is
  // capped as well.
  std::string content;
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return absl::ErrnoToStatus(err, absl::StrCat("env file ", path));
    }
    if (n == 0) break;
    content.append(buf, static_cast<size_t>(n));
    if (content.size() > kMaxEnvFileBytes) {
      ::close(fd);
      return absl::InvalidArgumentError(
          absl::StrCat("env file ", path, ": larger than 1 MiB"));
    }
  }
  ::close(fd);
  return ParseEnvText(content, path);
}

absl::StatusOr<EnvMap> ParseEnvText(std::string_view content,
                                    std::string_view source) {
  absl::string_view text = AbslView(content);
  if (absl::StartsWith(text, "\xEF\xBB\xBF")) text.remove_prefix(3);
  EnvMap env;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (absl::EndsWith(line, "\r")) line.remove_suffix(1);
    line = absl::StripLeadingAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    std::string key;
    std::string value;
    if (!ParseEnvLine(line, &key, &value)) {
      // The line itself is never echoed: it may hold the token.
      return absl::InvalidArgumentError(
          absl::StrCat(AbslView(source), ":", line_no, ": expected KEY=VALUE"));
    }
    // A later line wins, as when the file is sourced by a shell.
    env[key] = std::move(value);
  }
  return env;
}

std::optional<std::string> EnvValue(const EnvMap& env, std::string_view name) {
  auto it = env.find(name);
  if (it == env.end()) return std::nullopt;
  absl::string_view v = absl::StripAsciiWhitespace(it->second);
  if (v.empty()) return std::nullopt;
  return std::string(v);
}

std::optional<EnvSetting> FirstSet(const EnvMap& env,
                                   std::span<const std::string_view> names) {
  for (std::string_view name : names) {
    if (std::optional<std::string> v = EnvValue(env, name)) {
      return EnvSetting{name, *std::move(v)};
    }
  }
  return std::nullopt;
}

std::vector<std::string> SplitList(std::string_view list) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(AbslView(list), ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (!part.empty()) out.emplace_back(part);
  }
  return out;
}

std::string HostName() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "unknown";
  return buf;
}

}  // namespace delegate

#include "delegate/config.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "util/env.h"
#include "util/strings.h"
#include "util/url.h"

namespace delegate {
namespace {

// absl here is built with its own string_view (not std::string_view), so this
// file works in absl::string_view and converts only for EnvMap lookups.

// Values echoed in errors are cut to this many bytes so that one error stays
// one readable line.
constexpr size_t kMaxEchoBytes = 80;

constexpr int kMaxStagesLimit = 1000000;

// Alias lists, in precedence order (first set wins). Keep in step with the
// table in config.h.
constexpr absl::string_view kAccountIdNames[] = {"HARNESS_ACCOUNT_ID",
                                                 "ACCOUNT_ID"};
constexpr absl::string_view kTokenNames[] = {
    "HARNESS_TOKEN", "TOKEN", "DELEGATE_TOKEN", "HARNESS_DELEGATE_TOKEN"};
constexpr absl::string_view kUrlNames[] = {"HARNESS_URL", "URL",
                                           "MANAGER_HOST_AND_PORT"};
constexpr absl::string_view kNameNames[] = {"HARNESS_NAME", "NAME",
                                            "DELEGATE_NAME"};
constexpr absl::string_view kTagsNames[] = {"HARNESS_TAGS", "TAGS",
                                            "DELEGATE_TAGS"};

constexpr absl::string_view kTokenFileVar = "HARNESS_TOKEN_FILE";
constexpr absl::string_view kMaxPayloadVar = "DELEGATE_MAX_TASK_PAYLOAD_BYTES";
// A token file is a line; anything larger is the wrong file.
constexpr size_t kMaxTokenFileBytes = 64 * 1024;
constexpr absl::string_view kMaxStagesVar = "MAX_STAGES";
constexpr absl::string_view kParallelWorkersVar = "PARALLEL_WORKERS";
constexpr absl::string_view kPollIntervalVar = "POLL_INTERVAL_MILLISECS";
constexpr absl::string_view kGracePeriodVar = "CLEANUP_GRACE_PERIOD_SECONDS";
constexpr absl::string_view kWorkdirVar = "HARNESS_WORKDIR";
constexpr absl::string_view kStateDirVar = "DELEGATE_STATE_DIR";
constexpr absl::string_view kLogSpoolVar = "DELEGATE_LOG_SPOOL_MIB";
constexpr absl::string_view kIdleWaitVar = "IDLE_WAIT_SECS_BEFORE_STOP";
constexpr absl::string_view kOpsBindVar = "HTTPS_BIND";
constexpr absl::string_view kManagerTimeoutVar =
    "DELEGATE_MANAGER_TIMEOUT_SECS";
constexpr absl::string_view kCertsDirVar = "HARNESS_CERTS_DIR";
constexpr absl::string_view kClientCertVar = "HARNESS_CLIENT_CERT_FILE";
constexpr absl::string_view kClientKeyVar = "HARNESS_CLIENT_KEY_FILE";
constexpr absl::string_view kProxyHostVar = "PROXY_HOST";
constexpr absl::string_view kProxyPortVar = "PROXY_PORT";
constexpr absl::string_view kProxySchemeVar = "PROXY_SCHEME";
constexpr absl::string_view kProxyUserVar = "PROXY_USER";
constexpr absl::string_view kProxyPasswordVar = "PROXY_PASSWORD";
constexpr absl::string_view kDefaultSource = "default";

// Credentials that are not settings of the delegate but that it holds (the
// AWS SDKs' names): masked in stage output like the token.
constexpr absl::string_view kCredentialVars[] = {"AWS_SECRET_ACCESS_KEY",
                                                 "AWS_SESSION_TOKEN"};

template <size_t N>
using Names = const absl::string_view (&)[N];

absl::string_view Trim(absl::string_view s) {
  return absl::StripAsciiWhitespace(s);
}

// Control characters escaped so that a value can never break a log line (a
// double-quoted env file value may hold "\n").
std::string EscapeControl(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (u < 0x20 || u == 0x7f) {
      absl::StrAppendFormat(&out, "\\x%02x", u);
    } else {
      out += c;
    }
  }
  return out;
}

// Makes a non-secret value safe to show: any occurrence of the token (a user
// may paste it into the wrong variable) is replaced, control characters are
// escaped, and long values are cut.
std::string Shown(absl::string_view value, const std::string& token) {
  std::string s(value);
  if (!token.empty()) s = absl::StrReplaceAll(s, {{token, "<redacted>"}});
  s = EscapeControl(s);
  if (s.size() > kMaxEchoBytes) {
    s.resize(kMaxEchoBytes);
    s += "...";
  }
  return s;
}

// The value of `name` trimmed, or nullopt when absent or blank: a blank value
// counts as not set, so the next alias (or the default) applies.
std::optional<std::string> Lookup(const EnvMap& env, absl::string_view name) {
  return EnvValue(env, std::string_view(name.data(), name.size()));
}

std::vector<std::string> SplitTags(absl::string_view raw) {
  std::vector<std::string> tags;
  for (absl::string_view piece : absl::StrSplit(raw, ',')) {
    std::string tag(Trim(piece));
    if (tag.empty()) continue;
    bool seen = false;
    for (const std::string& t : tags) seen = seen || t == tag;
    if (!seen) tags.push_back(std::move(tag));
  }
  return tags;
}

absl::string_view StripTrailingSlashes(absl::string_view url) {
  while (!url.empty() && url.back() == '/') url.remove_suffix(1);
  return url;
}

// The winner among a setting's aliases.
struct Pick {
  std::string source;  // variable name, or "default"
  std::string value;   // trimmed; empty when source is "default"
  bool set() const { return source != kDefaultSource; }
};

// Picks the first set alias. Each later alias that is set to something that
// means a different value (per `same`) gets a warning naming both variables;
// values are never printed.
template <size_t N, typename Same>
Pick PickAlias(const EnvMap& env, Names<N> names, Same same,
               std::vector<std::string>* warnings) {
  Pick pick{std::string(kDefaultSource), ""};
  for (absl::string_view name : names) {
    std::optional<std::string> v = Lookup(env, name);
    if (!v.has_value()) continue;
    if (!pick.set()) {
      pick = Pick{std::string(name), *std::move(v)};
    } else if (!same(pick.value, *v)) {
      warnings->push_back(absl::StrCat(pick.source, " and ", name,
                                       " are both set and differ; using ",
                                       pick.source));
    }
  }
  return pick;
}

bool SameText(const std::string& a, const std::string& b) { return a == b; }

bool SameUrl(const std::string& a, const std::string& b) {
  return StripTrailingSlashes(a) == StripTrailingSlashes(b);
}

bool SameTags(const std::string& a, const std::string& b) {
  return SplitTags(a) == SplitTags(b);
}

// Decimal digits only (no sign, no spaces: values are already trimmed), in
// [0, INT_MAX]. nullopt when malformed or out of range.
std::optional<int> ParseNonNegativeInt(absl::string_view s) {
  if (s.empty()) return std::nullopt;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
    if (v > std::numeric_limits<int>::max()) return std::nullopt;
  }
  return static_cast<int>(v);
}

bool HasWhitespace(absl::string_view s) {
  for (char c : s) {
    if (absl::ascii_isspace(static_cast<unsigned char>(c))) return true;
  }
  return false;
}

// http:// or https://, then a non-empty host (optionally [IPv6], optionally
// user info before it and a numeric port after it). No whitespace or control
// characters anywhere.
bool IsManagerUrl(absl::string_view url) {
  for (char c : url) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u == 0x7f) return false;
  }
  absl::string_view rest;
  if (absl::StartsWithIgnoreCase(url, "https://")) {
    rest = url.substr(8);
  } else if (absl::StartsWithIgnoreCase(url, "http://")) {
    rest = url.substr(7);
  } else {
    return false;
  }
  absl::string_view authority = rest.substr(0, rest.find_first_of("/?#"));
  if (size_t at = authority.rfind('@'); at != absl::string_view::npos) {
    authority.remove_prefix(at + 1);
  }
  absl::string_view host;
  absl::string_view port;
  bool has_port = false;
  if (absl::StartsWith(authority, "[")) {
    size_t close = authority.find(']');
    if (close == absl::string_view::npos || close == 1) return false;
    host = authority.substr(0, close + 1);
    absl::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return false;
      has_port = true;
      port = after.substr(1);
    }
  } else {
    size_t colon = authority.find(':');
    host = authority.substr(0, colon);
    if (colon != absl::string_view::npos) {
      has_port = true;
      port = authority.substr(colon + 1);
    }
  }
  if (host.empty()) return false;
  if (has_port) {
    std::optional<int> p = ParseNonNegativeInt(port);
    if (!p.has_value() || *p < 1 || *p > 65535) return false;
  }
  return true;
}

// "FIRST is not set: set it (or SECOND, ...) to WHAT".
template <size_t N>
absl::Status MissingError(Names<N> names, absl::string_view what) {
  std::string msg = absl::StrCat(names[0], " is not set: set it");
  if (N > 1) {
    std::vector<absl::string_view> others(std::begin(names) + 1,
                                          std::end(names));
    absl::StrAppend(&msg, " (or ", absl::StrJoin(others, ", "), ")");
  }
  absl::StrAppend(&msg, " to ", what);
  return absl::InvalidArgumentError(msg);
}

std::string FormatSeconds(absl::Duration d) {
  if (d == absl::ZeroDuration()) return "0s";
  return absl::FormatDuration(d);
}

// A path setting made absolute against the current directory, so that it
// means the same wherever it is used (host steps run in their own workspace).
absl::StatusOr<std::string> AbsolutePath(absl::string_view var,
                                         const std::string& path) {
  std::error_code ec;
  std::filesystem::path absolute = std::filesystem::absolute(path, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat(var, ": cannot make '", EscapeControl(path),
                     "' absolute: ", ec.message(), "; give an absolute path"));
  }
  return absolute.lexically_normal().string();
}

// The token from HARNESS_TOKEN_FILE: trailing whitespace (the newline an
// editor adds) trimmed. Errors name the variable and the path, never the
// content.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  auto fail = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat(kTokenFileVar, ": cannot read the token from '",
                     EscapeControl(path), "': ", why));
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(std::strerror(errno));
  std::string content;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return fail(std::strerror(err));
    }
    if (n == 0) break;
    content.append(buf, static_cast<size_t>(n));
    if (content.size() > kMaxTokenFileBytes) {
      ::close(fd);
      return fail("larger than 64 KiB, not a token file");
    }
  }
  ::close(fd);
  absl::string_view token = absl::StripTrailingAsciiWhitespace(content);
  if (token.empty()) return fail("the file is empty");
  return std::string(token);
}

// Every variable LoadConfig reads, for the "blank in the process environment
// hides the env file's value" warning.
std::vector<absl::string_view> AllConfigVariables() {
  std::vector<absl::string_view> all;
  for (auto v : kAccountIdNames) all.push_back(v);
  for (auto v : kTokenNames) all.push_back(v);
  for (auto v : kUrlNames) all.push_back(v);
  for (auto v : kNameNames) all.push_back(v);
  for (auto v : kTagsNames) all.push_back(v);
  for (auto names : {std::span<const std::string_view>(kNoProxyVars),
                     std::span<const std::string_view>(kHttpsProxyVars),
                     std::span<const std::string_view>(kHttpProxyVars)}) {
    for (std::string_view v : names) all.push_back(AbslView(v));
  }
  for (auto v :
       {kTokenFileVar,    kMaxPayloadVar,  kMaxStagesVar, kParallelWorkersVar,
        kPollIntervalVar, kGracePeriodVar, kWorkdirVar,   kStateDirVar,
        kLogSpoolVar,     kIdleWaitVar,    kOpsBindVar,   kManagerTimeoutVar,
        kCertsDirVar,     kClientCertVar,  kClientKeyVar, kProxyHostVar,
        kProxyPortVar,    kProxySchemeVar, kProxyUserVar, kProxyPasswordVar}) {
    all.push_back(v);
  }
  return all;
}

}  // namespace

std::string DelegateConfig::StateDir() const {
  if (!state_dir.empty()) return state_dir;
  // One directory per delegate name (two servers of different names on one
  // machine do not share one), under the work root; in the shared temporary
  // directory, one per user too.
  std::string base;
  if (!workdir.empty()) {
    base = absl::StrCat(workdir, "/.delegate-state");
  } else {
    const char* tmp = getenv("TMPDIR");
    base = absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp",
                        "/delegate-state-", geteuid());
  }
  std::string leaf;
  for (char c : name) {
    leaf += absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' ||
                    c == '_' || c == '.'
                ? c
                : '_';
  }
  if (leaf.empty() || leaf == "." || leaf == "..") leaf = "_";
  return absl::StrCat(base, "/", leaf);
}

std::string DelegateConfig::Dump() const {
  const std::string& secret = token.reveal();
  auto line = [&](absl::string_view key, const std::string& value) {
    std::string out = absl::StrCat(key, " = ", value);
    auto it = sources.find(std::string(key));
    if (it != sources.end()) absl::StrAppend(&out, " (", it->second, ")");
    out += "\n";
    return out;
  };
  auto text = [&](const std::string& v) {
    return v.empty() ? std::string("<unset>") : Shown(v, secret);
  };
  std::string tags_text;
  if (tags.empty()) {
    tags_text = "<none>";
  } else {
    std::vector<std::string> shown;
    for (const std::string& t : tags) shown.push_back(Shown(t, secret));
    tags_text = absl::StrJoin(shown, ",");
  }
  std::string out;
  out += line("account_id", text(account_id));
  out += line("token", token.empty() ? "<unset>" : "<set>");
  out += line("manager_url", text(RedactUrl(manager_url)));
  out += line("name", text(name));
  out += line("tags", tags_text);
  out += line("max_stages", max_stages.has_value() ? absl::StrCat(*max_stages)
                                                   : std::string("unbounded"));
  out += line("parallel_workers", absl::StrCat(parallel_workers));
  out += line("max_task_payload_bytes", absl::StrCat(max_task_payload_bytes));
  out += line("poll_interval", FormatSeconds(poll_interval));
  out += line("cleanup_grace_period", FormatSeconds(cleanup_grace_period));
  out += line("workdir", workdir.empty() ? std::string("$TMPDIR or /tmp")
                                         : Shown(workdir, secret));
  out += line("state_dir", Shown(StateDir(), secret));
  out += line("log_spool_mib", absl::StrCat(log_spool_mib));
  out += line("idle_wait_before_stop", FormatSeconds(idle_wait_before_stop));
  out += line("manager_timeout", FormatSeconds(manager_timeout));
  out += line("ops_bind", text(ops_bind));
  out += line("certs_dir", text(certs_dir));
  out += line("client_cert_file", text(client_cert_file));
  out += line("client_key_file", text(client_key_file));
  out += line("proxy", proxy.empty() ? "<unset>" : "<set>");
  out += line("no_proxy", text(no_proxy));
  return out;
}

std::vector<std::string> DelegateConfig::MaskedValues() const {
  std::vector<std::string> values;
  if (!token.empty()) {
    const std::string& raw = token.reveal();
    values.push_back(raw);
    // The Harness UI shows the token base64-encoded, the manager's protocol
    // uses it decoded: mask both forms.
    std::string decoded;
    if (absl::Base64Unescape(Trim(raw), &decoded) && !decoded.empty()) {
      bool printable = true;
      for (char c : decoded) {
        printable =
            printable && absl::ascii_isgraph(static_cast<unsigned char>(c));
      }
      if (printable) values.push_back(decoded);
    }
  }
  for (const SecretString& c : credentials) {
    if (!c.empty()) values.push_back(c.reveal());
  }
  return values;
}

std::vector<std::string> TokenVariables() {
  std::vector<std::string> names;
  for (absl::string_view name : kTokenNames) names.emplace_back(name);
  return names;
}

absl::StatusOr<DelegateConfig> LoadConfig(const EnvMap& process,
                                          const EnvMap& file, ConfigNeed need) {
  DelegateConfig cfg;
  std::vector<std::string>& warnings = cfg.warnings;

  EnvMap env = file;
  for (const auto& [k, v] : process) env[k] = v;

  // A blank process value overrides the file (the deployment decides) but
  // that is easy to do by accident with a manifest template, so say so.
  for (absl::string_view name : AllConfigVariables()) {
    auto p = process.find(std::string_view(name.data(), name.size()));
    if (p == process.end() || !Trim(p->second).empty()) continue;
    if (Lookup(file, name).has_value()) {
      warnings.push_back(absl::StrCat(
          name,
          " is blank in the process environment, which overrides its value "
          "in the env file"));
    }
  }

  // The token first: every later message is scrubbed of it.
  Pick token = PickAlias(env, kTokenNames, SameText, &warnings);
  if (std::optional<std::string> path = Lookup(env, kTokenFileVar)) {
    if (token.set()) {
      warnings.push_back(absl::StrCat(token.source, " and ", kTokenFileVar,
                                      " are both set; using ", token.source));
    } else {
      absl::StatusOr<std::string> read = ReadTokenFile(*path);
      if (!read.ok()) return read.status();
      token = Pick{std::string(kTokenFileVar), *std::move(read)};
    }
  }
  const std::string& secret = token.value;
  cfg.token = SecretString(token.value);
  cfg.sources["token"] = token.source;

  Pick account = PickAlias(env, kAccountIdNames, SameText, &warnings);
  Pick url = PickAlias(env, kUrlNames, SameUrl, &warnings);
  Pick name = PickAlias(env, kNameNames, SameText, &warnings);
  Pick tags = PickAlias(env, kTagsNames, SameTags, &warnings);

  // Settings are checked in the header's order and the first problem is
  // returned, so a user fixes one line at a time.
  if (account.set()) {
    if (HasWhitespace(account.value)) {
      return absl::InvalidArgumentError(absl::StrCat(
          account.source, ": expected an account id without whitespace, got '",
          Shown(account.value, secret), "'"));
    }
  } else if (need == ConfigNeed::kServer) {
    return MissingError(kAccountIdNames, "the account id from Harness");
  }
  cfg.account_id = account.value;
  cfg.sources["account_id"] = account.source;

  if (!token.set() && need == ConfigNeed::kServer) {
    return MissingError(kTokenNames, "the delegate token from Harness");
  }

  if (url.set()) {
    absl::string_view trimmed = StripTrailingSlashes(url.value);
    if (!IsManagerUrl(trimmed)) {
      return absl::InvalidArgumentError(absl::StrCat(
          url.source, ": expected a URL like https://app.harness.io, got '",
          Shown(RedactUrl(url.value), secret), "'"));
    }
    cfg.manager_url = std::string(trimmed);
  } else if (need == ConfigNeed::kServer) {
    return MissingError(kUrlNames,
                        "the Harness manager URL, like https://app.harness.io");
  }
  cfg.sources["manager_url"] = url.source;

  if (name.set()) cfg.name = name.value;
  cfg.sources["name"] = name.source;

  cfg.tags = SplitTags(tags.value);
  cfg.sources["tags"] = tags.source;

  cfg.sources["max_stages"] = std::string(kDefaultSource);
  if (std::optional<std::string> v = Lookup(env, kMaxStagesVar)) {
    std::optional<int> n = ParseNonNegativeInt(*v);
    if (!n.has_value() || *n < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(kMaxStagesVar, ": expected a positive integer, got '",
                       Shown(*v, secret), "'"));
    }
    if (*n > kMaxStagesLimit) {
      return absl::InvalidArgumentError(
          absl::StrCat(kMaxStagesVar, ": expected a positive integer up to ",
                       kMaxStagesLimit, ", got '", Shown(*v, secret), "'"));
    }
    cfg.max_stages = *n;
    cfg.sources["max_stages"] = std::string(kMaxStagesVar);
  }

  cfg.sources["max_task_payload_bytes"] = std::string(kDefaultSource);
  if (std::optional<std::string> v = Lookup(env, kMaxPayloadVar)) {
    std::optional<int> n = ParseNonNegativeInt(*v);
    if (!n.has_value() || *n < 1024) {
      return absl::InvalidArgumentError(absl::StrCat(
          kMaxPayloadVar, ": expected a number of bytes, 1024 or more, got '",
          Shown(*v, secret), "'"));
    }
    cfg.max_task_payload_bytes = static_cast<size_t>(*n);
    cfg.sources["max_task_payload_bytes"] = std::string(kMaxPayloadVar);
  }

  cfg.sources["parallel_workers"] = std::string(kDefaultSource);
  if (std::optional<std::string> v = Lookup(env, kParallelWorkersVar)) {
    std::optional<int> n = ParseNonNegativeInt(*v);
    if (!n.has_value() || *n < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          kParallelWorkersVar, ": expected a positive integer, got '",
          Shown(*v, secret), "'"));
    }
    cfg.parallel_workers = *n;
    cfg.sources["parallel_workers"] = std::string(kParallelWorkersVar);
  }

  cfg.sources["poll_interval"] = std::string(kDefaultSource);
  if (std::optional<std::string> v = Lookup(env, kPollIntervalVar)) {
    std::optional<int> n = ParseNonNegativeInt(*v);
    if (!n.has_value() || *n < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(kPollIntervalVar,
                       ": expected a positive integer (milliseconds), got '",
                       Shown(*v, secret), "'"));
    }
    cfg.poll_interval = absl::Milliseconds(*n);
    cfg.sources["poll_interval"] = std::string(kPollIntervalVar);
  }

  cfg.sources["cleanup_grace_period"] = std::string(kDefaultSource);
  if (std::optional<std::string> v = Lookup(env, kGracePeriodVar)) {
    std::optional<int> n = ParseNonNegativeInt(*v);
    if (!n.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat(kGracePeriodVar,
                       ": expected a whole number of seconds, 0 or more, got '",
                       Shown(*v, secret), "'"));
    }
    cfg.cleanup_grace_period = absl::Seconds(*n);
    cfg.sources["cleanup_grace_period"] = std::string(kGracePeriodVar);
  }

  cfg.sources["workdir"] = std::string(kDefaultSource);
  if (std::optional<std::string> v = Lookup(env, kWorkdirVar)) {
    absl::StatusOr<std::string> path = AbsolutePath(kWorkdirVar, *v);
    if (!path.ok()) return path.status();
    cfg.workdir = *std::move(path);
    cfg.sources["workdir"] = std::string(kWorkdirVar);
  }

  cfg.sources["state_dir"] = std::string(kDefaultSource);
  if (std::optional<std::string> v = Lookup(env, kStateDirVar)) {
    absl::StatusOr<std::string> path = AbsolutePath(kStateDirVar, *v);
    if (!path.ok()) return path.status();
    cfg.state_dir = *std::move(path);
    cfg.sources["state_dir"] = std::string(kStateDirVar);
  }

  cfg.sources["log_spool_mib"] = std::string(kDefaultSource);
  if (std::optional<std::string> v = Lookup(env, kLogSpoolVar)) {
    std::optional<int> n = ParseNonNegativeInt(*v);
    if (!n.has_value() || *n < 1 || *n > 1024 * 1024) {
      return absl::InvalidArgumentError(absl::StrCat(
          kLogSpoolVar,
          ": expected a whole number of MiB from 1 to 1048576, got '",
          Shown(*v, secret), "'"));
    }
    cfg.log_spool_mib = *n;
    cfg.sources["log_spool_mib"] = std::string(kLogSpoolVar);
  }

  cfg.sources["idle_wait_before_stop"] = std::string(kDefaultSource);
  if (std::optional<std::string> v = Lookup(env, kIdleWaitVar)) {
    std::optional<int> n = ParseNonNegativeInt(*v);
    if (!n.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat(kIdleWaitVar,
                       ": expected a whole number of seconds, 0 or more, got '",
                       Shown(*v, secret), "'"));
    }
    cfg.idle_wait_before_stop = absl::Seconds(*n);
    cfg.sources["idle_wait_before_stop"] = std::string(kIdleWaitVar);
  }

  cfg.sources["manager_timeout"] = std::string(kDefaultSource);
  if (std::optional<std::string> v = Lookup(env, kManagerTimeoutVar)) {
    std::optional<int> n = ParseNonNegativeInt(*v);
    if (!n.has_value() || *n < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          kManagerTimeoutVar, ": expected a positive number of seconds, got '",
          Shown(*v, secret), "'"));
    }
    cfg.manager_timeout = absl::Seconds(*n);
    cfg.sources["manager_timeout"] = std::string(kManagerTimeoutVar);
  }

  cfg.sources["ops_bind"] = std::string(kDefaultSource);
  if (std::optional<std::string> v = Lookup(env, kOpsBindVar)) {
    const size_t colon = v->rfind(':');
    int port = -1;
    if (colon != std::string::npos) {
      port = ParseNonNegativeInt(v->substr(colon + 1)).value_or(-1);
    }
    if (port < 0 || port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat(
          kOpsBindVar,
          ": expected [HOST]:PORT like :3000 or 127.0.0.1:3000, got '",
          Shown(*v, secret), "'"));
    }
    cfg.ops_bind = *v;
    cfg.sources["ops_bind"] = std::string(kOpsBindVar);
  }

  for (auto [var, field, key] :
       {std::tuple{kCertsDirVar, &cfg.certs_dir, "certs_dir"},
        std::tuple{kClientCertVar, &cfg.client_cert_file, "client_cert_file"},
        std::tuple{kClientKeyVar, &cfg.client_key_file, "client_key_file"}}) {
    cfg.sources[key] = std::string(kDefaultSource);
    if (std::optional<std::string> v = Lookup(env, var)) {
      absl::StatusOr<std::string> path = AbsolutePath(var, *v);
      if (!path.ok()) return path.status();
      *field = *std::move(path);
      cfg.sources[key] = std::string(var);
    }
  }
  if (cfg.client_cert_file.empty() != cfg.client_key_file.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        cfg.client_cert_file.empty() ? kClientCertVar : kClientKeyVar,
        ": mutual TLS needs both ", kClientCertVar, " and ", kClientKeyVar));
  }

  // The proxy: the PROXY_* keys of the Harness install docs win over the
  // conventional HTTPS_PROXY/HTTP_PROXY.
  cfg.sources["proxy"] = std::string(kDefaultSource);
  if (std::optional<std::string> host = Lookup(env, kProxyHostVar)) {
    std::string scheme = Lookup(env, kProxySchemeVar).value_or("http");
    absl::AsciiStrToLower(&scheme);
    if (scheme != "http" && scheme != "https" && scheme != "socks5" &&
        scheme != "socks5h") {
      return absl::InvalidArgumentError(absl::StrCat(
          kProxySchemeVar, ": expected http, https, socks5 or socks5h, got '",
          Shown(scheme, secret), "'"));
    }
    std::string url = scheme + "://";
    if (std::optional<std::string> user = Lookup(env, kProxyUserVar)) {
      url += UrlEncode(*user);
      if (std::optional<std::string> pw = Lookup(env, kProxyPasswordVar)) {
        url += ":" + UrlEncode(*pw);
      }
      url += "@";
    }
    url += *host;
    if (std::optional<std::string> port = Lookup(env, kProxyPortVar)) {
      std::optional<int> n = ParseNonNegativeInt(*port);
      if (!n || *n < 1 || *n > 65535) {
        return absl::InvalidArgumentError(
            absl::StrCat(kProxyPortVar, ": expected a port number, got '",
                         Shown(*port, secret), "'"));
      }
      url += absl::StrCat(":", *n);
    }
    cfg.proxy = SecretString(std::move(url));
    cfg.sources["proxy"] = std::string(kProxyHostVar);
  } else {
    // The manager is reached over https, yet HTTP_PROXY serves when no
    // https one is set.
    std::optional<EnvSetting> v = FirstSet(env, kHttpsProxyVars);
    if (!v) v = FirstSet(env, kHttpProxyVars);
    if (v) {
      cfg.proxy = SecretString(std::move(v->value));
      cfg.sources["proxy"] = std::string(v->name);
    }
  }
  const std::string* const urls[] = {&cfg.manager_url, &cfg.proxy.reveal()};
  for (const std::string* url : urls) {
    if (std::optional<std::string> pw = UrlPassword(*url);
        pw.has_value() && !pw->empty()) {
      cfg.credentials.push_back(SecretString(*std::move(pw)));
    }
  }
  for (absl::string_view var : kCredentialVars) {
    if (std::optional<std::string> v = Lookup(env, var)) {
      cfg.credentials.push_back(SecretString(*std::move(v)));
    }
  }
  cfg.sources["no_proxy"] = std::string(kDefaultSource);
  if (std::optional<EnvSetting> v = FirstSet(env, kNoProxyVars)) {
    cfg.no_proxy = std::move(v->value);
    cfg.sources["no_proxy"] = std::string(v->name);
  }

  return cfg;
}

}  // namespace delegate

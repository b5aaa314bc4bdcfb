#include "aws/transport.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "util/env.h"
#include "util/strings.h"
#include "util/url.h"

namespace delegate::aws {
namespace {

// A CA bundle is at most a few hundred KiB; anything this large is another
// file.
constexpr size_t kMaxCaBundleBytes = size_t{16} << 20;

// What to do about an unusable AWS_CA_BUNDLE.
constexpr std::string_view kCaBundleHelp =
    "; set it to a PEM file of the CA certificates that sign the AWS "
    "endpoints' certificates (or those of a TLS-inspecting proxy), or unset "
    "it to verify against the system's CA store";

// The proxy of the first of `names` that is set: empty when none is.
absl::StatusOr<SecretString> ProxyFrom(
    const EnvMap& env, std::span<const std::string_view> names) {
  std::optional<EnvSetting> v = FirstSet(env, names);
  if (!v) return SecretString();
  const size_t scheme_end = v->value.find("://");
  if (scheme_end != std::string::npos) {
    const std::string scheme =
        absl::AsciiStrToLower(AbslView(v->value.substr(0, scheme_end)));
    if (scheme != "http" && scheme != "https" && scheme != "socks4" &&
        scheme != "socks4a" && scheme != "socks5" && scheme != "socks5h") {
      return absl::InvalidArgumentError(
          absl::StrCat(AbslView(v->name),
                       ": expected an http://, https:// or socks5:// "
                       "proxy URL, got '",
                       RedactUrl(v->value), "'"));
    }
  }
  return SecretString(std::move(v->value));
}

absl::Status CheckCaBundle(const std::string& path) {
  const auto fail = [&](std::string_view why) {
    return absl::FailedPreconditionError(
        absl::StrCat(kCaBundleVar, ": cannot use \"", path,
                     "\": ", AbslView(why), AbslView(kCaBundleHelp)));
  };
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return fail(std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return fail("not a regular file");
  if (static_cast<size_t>(st.st_size) > kMaxCaBundleBytes) {
    return fail("larger than a CA bundle can be");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return fail(std::strerror(errno));
  const std::string text((std::istreambuf_iterator<char>(in)),
                         std::istreambuf_iterator<char>());
  if (in.bad()) return fail("read error");
  if (!absl::StrContains(text, "-----BEGIN CERTIFICATE-----")) {
    return fail("no PEM certificate in it");
  }
  return absl::OkStatus();
}

}  // namespace

void Transport::Apply(http::Request& request) const {
  const bool https = absl::StartsWithIgnoreCase(request.url, "https://");
  request.proxy = (https ? https_proxy : http_proxy).reveal();
  request.no_proxy = no_proxy;
  request.use_env_proxy = false;
  if (https) request.tls.ca_file = ca_bundle;
}

std::string Transport::TlsHint() const {
  if (!ca_bundle.empty()) {
    return absl::StrCat(" (verified against ", kCaBundleVar, " \"", ca_bundle,
                        "\")");
  }
  return absl::StrCat(
      " (verified against the system's CA store; when the endpoint or a "
      "TLS-inspecting proxy uses a private CA, set ",
      kCaBundleVar, " to its PEM file)");
}

absl::StatusOr<Transport> TransportFromEnv(const EnvMap& env) {
  Transport t;
  absl::StatusOr<SecretString> https = ProxyFrom(env, kHttpsProxyVars);
  if (!https.ok()) return https.status();
  t.https_proxy = *std::move(https);
  absl::StatusOr<SecretString> http = ProxyFrom(env, kHttpProxyVars);
  if (!http.ok()) return http.status();
  t.http_proxy = *std::move(http);
  if (std::optional<EnvSetting> v = FirstSet(env, kNoProxyVars)) {
    t.no_proxy = std::move(v->value);
  }
  if (std::optional<std::string> bundle = EnvValue(env, kCaBundleVar)) {
    if (absl::Status s = CheckCaBundle(*bundle); !s.ok()) return s;
    t.ca_bundle = *std::move(bundle);
  }
  return t;
}

}  // namespace delegate::aws

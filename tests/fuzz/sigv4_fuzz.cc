// SigV4 canonicalisation and signing of any request: the input is a request
// in the form of the AWS SigV4 test suite's .req files (request line,
// header lines, a blank line, the body), so the suite seeds the corpus. The
// signed header list is lower-case and sorted, the signature is 64 hex
// digits, and the secret key is not in it.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/time/time.h"
#include "aws/sigv4.h"
#include "fuzz_input.h"

namespace aws = delegate::aws;

namespace {

aws::SignableRequest Read(std::string_view text) {
  aws::SignableRequest r;
  r.headers.clear();
  auto line = [&text]() {
    size_t nl = text.find('\n');
    std::string_view l = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    return l;
  };
  std::string_view first = line();
  size_t sp = first.find(' ');
  r.method = std::string(first.substr(0, sp));
  std::string_view target =
      sp == std::string_view::npos ? "/" : first.substr(sp + 1);
  if (size_t v = target.rfind(" HTTP/"); v != std::string_view::npos) {
    target = target.substr(0, v);
  }
  size_t q = target.find('?');
  r.path = std::string(target.substr(0, q));
  if (q != std::string_view::npos) r.query = std::string(target.substr(q + 1));
  while (!text.empty()) {
    std::string_view l = line();
    if (l.empty()) break;
    size_t colon = l.find(':');
    if (colon == std::string_view::npos) {
      // A continuation of the previous value (get-header-value-multiline).
      if (!r.headers.empty()) r.headers.back().second.append("\n").append(l);
      continue;
    }
    // Header names are the delegate's own constants, always HTTP tokens:
    // others (";" in a name would make the signed header list ambiguous)
    // are not signed here.
    std::string_view name = l.substr(0, colon);
    if (name.empty() || name.find_first_not_of("!#$%&'*+-.^_`|~0123456789"
                                               "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                               "abcdefghijklmnopqrstuvwxyz") !=
                            std::string_view::npos) {
      continue;
    }
    r.headers.emplace_back(std::string(name), std::string(l.substr(colon + 1)));
  }
  r.body = std::string(text);
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  delegate::fuzz::FuzzInput in(data, size);
  aws::SigningOptions options;
  options.region = "us-east-1";
  options.service = in.Bool() ? "ecs" : "service";
  options.time = absl::FromUnixSeconds(1440938160);
  options.normalize_path = in.Bool();
  options.sign_session_token = in.Bool();
  aws::Credentials credentials;
  credentials.access_key_id = "AKIDEXAMPLE";
  credentials.secret_access_key =
      delegate::SecretString("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
  if (in.Bool()) credentials.session_token = delegate::SecretString("token");
  aws::SignableRequest request = Read(in.Rest());

  std::string signed_headers;
  const std::string canonical =
      aws::CanonicalRequest(request, options, &signed_headers);
  FUZZ_CHECK(canonical.rfind(request.method + "\n", 0) == 0, canonical);
  std::string previous;
  size_t start = 0;
  while (start <= signed_headers.size() && !signed_headers.empty()) {
    size_t semi = signed_headers.find(';', start);
    std::string name = signed_headers.substr(start, semi - start);
    FUZZ_CHECK(name == absl::AsciiStrToLower(name), signed_headers);
    FUZZ_CHECK(previous.empty() || previous < name, signed_headers);
    previous = name;
    if (semi == std::string::npos) break;
    start = semi + 1;
  }

  aws::SignableRequest once = request;
  aws::Sign(credentials, options, once);
  std::string authorization;
  for (const auto& [name, value] : once.headers) {
    if (name == "Authorization") authorization = value;
  }
  const size_t at = authorization.find("Signature=");
  FUZZ_CHECK(at != std::string::npos, authorization);
  const std::string signature = authorization.substr(at + 10);
  FUZZ_CHECK(signature.size() == 64, authorization);
  FUZZ_CHECK(
      signature.find_first_not_of("0123456789abcdef") == std::string::npos,
      authorization);
  FUZZ_CHECK(authorization.find("wJalrXUtnFEMI") == std::string::npos,
             "the secret key in the header");
  return 0;
}

// AWS Signature Version 4 for the ECS and CloudWatch Logs clients: the
// canonical request, the string to sign, the signing key and the
// Authorization header, as the AWS SigV4 test suite
// (../shared/testdata/aws/sigv4/) defines them. Pure functions, no I/O.
#ifndef DELEGATE_AWS_SIGV4_H_
#define DELEGATE_AWS_SIGV4_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "delegate/config.h"

namespace delegate::aws {

struct Credentials {
  std::string access_key_id;
  SecretString secret_access_key;
  SecretString session_token;  // empty for long-term keys
};

// A request as it will go on the wire.
struct SignableRequest {
  std::string method = "POST";
  // The path, not percent-encoded ("/", "/example space/"); the signer
  // encodes it.
  std::string path = "/";
  // The query string without '?', as written ("a=1&b=%E1%88%B4"); empty for
  // none.
  std::string query;
  // In order; a name may repeat. Names are case-insensitive.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

struct SigningOptions {
  std::string region;   // "us-east-1"
  std::string service;  // the signing name: "ecs", "logs"
  absl::Time time;      // X-Amz-Date, when the request has none
  // Removes "." and ".." segments and repeated slashes from the path, as
  // every service but S3 expects.
  bool normalize_path = true;
  // Whether X-Amz-Security-Token (for a session token) is part of what is
  // signed (true, as the SDKs do) or added after signing.
  bool sign_session_token = true;
};

// Adds X-Amz-Date (when missing), X-Amz-Security-Token (for a session token)
// and Authorization to `request`. The secret key never leaves this function
// except as the signature.
void Sign(const Credentials& credentials, const SigningOptions& options,
          SignableRequest& request);

// The steps, for tests and for a verifier (the loopback AWS fake).
std::string CanonicalRequest(const SignableRequest& request,
                             const SigningOptions& options,
                             std::string* signed_headers);
std::string StringToSign(const std::string& canonical_request,
                         const std::string& amz_date,
                         const std::string& scope);
// Hex HMAC-SHA256 of the string to sign under the derived key.
std::string Signature(const SecretString& secret_access_key,
                      const std::string& date, const std::string& region,
                      const std::string& service,
                      const std::string& string_to_sign);
// "20150830T123600Z".
std::string AmzDate(absl::Time t);
// Percent-encodes every byte but A-Z a-z 0-9 - _ . ~ (and '/' when
// keep_slash), upper-case hex.
std::string UriEncode(std::string_view s, bool keep_slash);
std::string HexSha256(std::string_view data);

}  // namespace delegate::aws

#endif  // DELEGATE_AWS_SIGV4_H_

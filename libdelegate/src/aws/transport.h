// How the AWS service calls (ECS, CloudWatch Logs) reach their endpoints:
// the proxy and CA bundle variables the AWS SDKs read, taken from the
// EnvMap the caller passes, never from the process environment behind it.
//
//   - HTTPS_PROXY/https_proxy for an https:// endpoint, HTTP_PROXY/
//     http_proxy for an http:// one: the proxy is chosen by the endpoint's
//     scheme, as botocore (ProxyConfiguration.proxy_url_for) and Go's
//     net/http do; ALL_PROXY is not read (botocore does not either). A URL
//     without a scheme is an http:// proxy; "user:password@" in it is sent as
//     Basic proxy authentication and never appears in a message.
//   - NO_PROXY/no_proxy: hosts reached directly, in libcurl's forms ("*",
//     comma-separated names matched as domain suffixes, IP addresses, CIDR
//     ranges such as 10.0.0.0/8).
//   - AWS_CA_BUNDLE: a PEM file of the CAs the endpoints' certificates are
//     verified against instead of the system's store, as botocore's `verify`
//     and the Go SDK's custom CA bundle do. It is checked when read: a
//     missing or certificate-less file is an error naming the variable.
//
// The metadata and credential endpoints (IMDS at 169.254.169.254, the ECS
// container credentials at 169.254.170.2 or AWS_CONTAINER_CREDENTIALS_
// FULL_URI, the task metadata at ECS_CONTAINER_METADATA_URI_V4) do not go
// through this: they are always reached directly, with the system's CAs, as
// the SDK for Java v2 does (its metadata client opens every connection with
// Proxy.NO_PROXY) and botocore does for the container endpoint. They are
// link-local or loopback addresses that only the host itself can reach: a
// proxy would reach its own instance's metadata, not ours, or nothing (the
// AWS CLI's guide has users exempt 169.254.169.254 in NO_PROXY for that
// reason).
#ifndef DELEGATE_AWS_TRANSPORT_H_
#define DELEGATE_AWS_TRANSPORT_H_

#include "absl/status/statusor.h"
#include "delegate/config.h"
#include "delegate/env.h"
#include "http/http_client.h"

namespace delegate::aws {

inline constexpr char kCaBundleVar[] = "AWS_CA_BUNDLE";

struct Transport {
  // "scheme://[user:password@]host:port"; empty: direct. Secret: the URL
  // may hold a password.
  SecretString https_proxy;  // for https:// endpoints
  SecretString http_proxy;   // for http:// endpoints
  std::string no_proxy;      // libcurl's CURLOPT_NOPROXY forms
  std::string ca_bundle;     // empty: the system's CA store

  // Sets the proxy, the hosts that bypass it and the CAs of a request to a
  // service endpoint (request.url already set): nothing else of the
  // process's environment applies to it.
  void Apply(http::Request& request) const;
  // For the end of a TLS failure's message: which CAs the endpoint was
  // verified against, and how to trust another.
  std::string TlsHint() const;
};

// The variables above, from `env`. InvalidArgument naming the variable for a
// proxy URL of a scheme libcurl cannot use (the URL shown without its
// password); FailedPrecondition naming AWS_CA_BUNDLE and what to do when
// its file cannot be read or holds no PEM certificate.
absl::StatusOr<Transport> TransportFromEnv(const EnvMap& env);

}  // namespace delegate::aws

#endif  // DELEGATE_AWS_TRANSPORT_H_

#include "aws/endpoints.h"

#include <optional>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "util/env.h"
#include "util/strings.h"

namespace delegate::aws {
namespace {

bool IsTrue(const EnvMap& env, std::string_view name) {
  std::optional<std::string> v = EnvValue(env, name);
  return v && absl::AsciiStrToLower(AbslView(*v)) == "true";
}

// "us-east-1", "cn-north-1", "us-gov-west-1", "local" for emulators.
bool ValidRegion(std::string_view region) {
  if (region.empty() || region.size() > 63) return false;
  for (char c : region) {
    if (!absl::ascii_islower(c) && !absl::ascii_isdigit(c) && c != '-') {
      return false;
    }
  }
  return region.front() != '-' && region.back() != '-';
}

absl::StatusOr<std::string> CheckUrl(std::string url, std::string_view var) {
  const bool https = absl::StartsWithIgnoreCase(url, "https://");
  if (!https && !absl::StartsWithIgnoreCase(url, "http://")) {
    return absl::InvalidArgumentError(absl::StrCat(
        AbslView(var),
        ": expected http://HOST[:PORT] or https://HOST[:PORT], got '", url,
        "'"));
  }
  const std::string_view rest = std::string_view(url).substr(https ? 8 : 7);
  if (rest.empty() || rest.front() == '/' || rest.front() == ':' ||
      rest.find_first_of("?#@ ") != std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        AbslView(var),
        ": expected http://HOST[:PORT][/PATH] with no query, user or "
        "spaces, got '",
        url, "'"));
  }
  while (!url.empty() && url.back() == '/') url.pop_back();
  return url;
}

}  // namespace

absl::StatusOr<std::string> ResolveEndpoint(const ServiceSpec& service,
                                            const std::string& region,
                                            const EnvMap& env) {
  if (!IsTrue(env, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")) {
    const std::string own =
        absl::StrCat("AWS_ENDPOINT_URL_", AbslView(service.env_id));
    if (std::optional<std::string> url = EnvValue(env, own)) {
      return CheckUrl(*url, own);
    }
    if (std::optional<std::string> url = EnvValue(env, "AWS_ENDPOINT_URL")) {
      return CheckUrl(*url, "AWS_ENDPOINT_URL");
    }
  }
  if (!ValidRegion(region)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AWS region '", region,
                     "' is not a region name like us-east-1; set AWS_REGION"));
  }
  const bool fips = IsTrue(env, "AWS_USE_FIPS_ENDPOINT");
  const char* suffix =
      absl::StartsWith(region, "cn-") ? "amazonaws.com.cn" : "amazonaws.com";
  return absl::StrCat("https://", AbslView(service.endpoint_prefix),
                      fips ? "-fips" : "", ".", region, ".", suffix);
}

absl::StatusOr<Arn> ParseArn(std::string_view arn) {
  std::vector<std::string> parts =
      absl::StrSplit(AbslView(arn), absl::MaxSplits(':', 5));
  if (parts.size() != 6 || parts[0] != "arn" || parts[1].empty() ||
      parts[2].empty() || parts[5].empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", AbslView(arn),
                     "' is not an ARN (arn:PARTITION:SERVICE:REGION:ACCOUNT:"
                     "RESOURCE)"));
  }
  return Arn{parts[1], parts[2], parts[3], parts[4], parts[5]};
}

absl::StatusOr<std::string> ResolveRegion(const EnvMap& env,
                                          std::string_view task_arn) {
  for (const char* var : {"AWS_REGION", "AWS_DEFAULT_REGION"}) {
    if (std::optional<std::string> region = EnvValue(env, var)) {
      if (!ValidRegion(*region)) {
        return absl::InvalidArgumentError(absl::StrCat(
            var, ": '", *region, "' is not a region name like us-east-1"));
      }
      return *region;
    }
  }
  if (!task_arn.empty()) {
    absl::StatusOr<Arn> arn = ParseArn(task_arn);
    if (arn.ok() && ValidRegion(arn->region)) return arn->region;
  }
  return absl::NotFoundError(
      "no AWS region: set AWS_REGION (ECS and Fargate set it for tasks), or "
      "AWS_DEFAULT_REGION");
}

}  // namespace delegate::aws

// Which AWS service a client talks to, where, and in which region: the
// endpoint rules of the AWS SDKs (AWS_ENDPOINT_URL and the per-service
// AWS_ENDPOINT_URL_<SERVICE> overrides, FIPS, the China partition) and the
// region from AWS_REGION, AWS_DEFAULT_REGION or the ECS task's ARN.
#ifndef DELEGATE_AWS_ENDPOINTS_H_
#define DELEGATE_AWS_ENDPOINTS_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "delegate/config.h"

namespace delegate::aws {

// What the JSON 1.1 protocol needs to know about a service.
struct ServiceSpec {
  std::string_view title;            // for messages: "ECS"
  std::string_view target_prefix;    // X-Amz-Target before the '.'
  std::string_view signing_name;     // SigV4 scope
  std::string_view endpoint_prefix;  // the host's first label
  // The SDKs' service id in capitals with '_': AWS_ENDPOINT_URL_<this>.
  std::string_view env_id;
};

inline constexpr ServiceSpec kEcs = {
    .title = "ECS",
    .target_prefix = "AmazonEC2ContainerServiceV20141113",
    .signing_name = "ecs",
    .endpoint_prefix = "ecs",
    .env_id = "ECS",
};

inline constexpr ServiceSpec kCloudWatchLogs = {
    .title = "CloudWatch Logs",
    .target_prefix = "Logs_20140328",
    .signing_name = "logs",
    .endpoint_prefix = "logs",
    .env_id = "CLOUDWATCH_LOGS",
};

// The service's base URL, without a trailing '/':
// AWS_ENDPOINT_URL_<env_id>, else AWS_ENDPOINT_URL (both ignored when
// AWS_IGNORE_CONFIGURED_ENDPOINT_URLS is true), else
// https://PREFIX[-fips].REGION.amazonaws.com (".com.cn" for cn-* regions;
// -fips with AWS_USE_FIPS_ENDPOINT=true). InvalidArgument naming the
// variable for a URL that is not http(s)://HOST[:PORT][/PATH], or for an
// empty or malformed region.
absl::StatusOr<std::string> ResolveEndpoint(const ServiceSpec& service,
                                            const std::string& region,
                                            const EnvMap& env);

// AWS_REGION, else AWS_DEFAULT_REGION, else the region of `task_arn`
// ("arn:aws:ecs:REGION:ACCOUNT:task/..."; empty when not on ECS). NotFound
// saying what to set when none gives one.
absl::StatusOr<std::string> ResolveRegion(const EnvMap& env,
                                          std::string_view task_arn = "");

// The fields of an ARN "arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE";
// InvalidArgument when `arn` is not one.
struct Arn {
  std::string partition, service, region, account, resource;
};
absl::StatusOr<Arn> ParseArn(std::string_view arn);

}  // namespace delegate::aws

#endif  // DELEGATE_AWS_ENDPOINTS_H_

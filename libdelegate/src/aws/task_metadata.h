// The ECS task metadata endpoint v4: where the delegate itself runs when it is
// an ECS task (cluster, task ARN, launch type), so that step tasks can run
// next to it without being configured. Reached directly, never through a
// proxy (aws/transport.h says why).
#ifndef DELEGATE_AWS_TASK_METADATA_H_
#define DELEGATE_AWS_TASK_METADATA_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "http/http_client.h"

namespace delegate::aws {

struct TaskMetadata {
  std::string cluster;   // as sent: a short name on EC2, an ARN on Fargate
  std::string task_arn;  // arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/ID
  std::string family;
  std::string revision;
  std::string launch_type;  // "FARGATE", "EC2"
  std::string availability_zone;
  std::string region;   // from task_arn
  std::string account;  // from task_arn
};

// The name of the variable ECS sets in every container.
inline constexpr char kMetadataUriVar[] = "ECS_CONTAINER_METADATA_URI_V4";

// GET `base_uri`/task. Unavailable when it cannot be read, with the URL;
// InvalidArgument when the answer lacks Cluster or a TaskARN.
absl::StatusOr<TaskMetadata> FetchTaskMetadata(http::HttpClient& http,
                                               const std::string& base_uri);

// The answer of GET `url` (the task metadata endpoint's /task), as above.
absl::StatusOr<TaskMetadata> ParseTaskMetadata(std::string_view body,
                                               const std::string& url);

}  // namespace delegate::aws

#endif  // DELEGATE_AWS_TASK_METADATA_H_

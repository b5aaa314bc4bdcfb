#include "aws/task_metadata.h"

#include "absl/strings/str_cat.h"
#include "aws/endpoints.h"
#include "rapidjson/document.h"
#include "util/json.h"

namespace delegate::aws {
absl::StatusOr<TaskMetadata> ParseTaskMetadata(std::string_view body,
                                               const std::string& url) {
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ECS task metadata: GET ", url, ": not a JSON object"));
  }
  TaskMetadata out;
  out.cluster = json::StringMember(doc, "Cluster");
  out.task_arn = json::StringMember(doc, "TaskARN");
  out.family = json::StringMember(doc, "Family");
  out.revision = json::StringMember(doc, "Revision");
  out.launch_type = json::StringMember(doc, "LaunchType");
  out.availability_zone = json::StringMember(doc, "AvailabilityZone");
  absl::StatusOr<Arn> arn = ParseArn(out.task_arn);
  if (out.cluster.empty() || !arn.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ECS task metadata: GET ", url,
                     ": the answer has no Cluster or no TaskARN"));
  }
  out.region = arn->region;
  out.account = arn->account;
  return out;
}

absl::StatusOr<TaskMetadata> FetchTaskMetadata(http::HttpClient& http,
                                               const std::string& base_uri) {
  std::string url = base_uri;
  while (!url.empty() && url.back() == '/') url.pop_back();
  url += "/task";
  http::Request request;
  request.url = url;
  request.connect_timeout = absl::Seconds(2);
  request.timeout = absl::Seconds(5);
  absl::StatusOr<http::Response> response = http.Perform(request);
  if (!response.ok()) {
    return absl::UnavailableError(
        absl::StrCat("ECS task metadata (", kMetadataUriVar,
                     "): ", response.status().message()));
  }
  if (response->status != 200) {
    return absl::UnavailableError(absl::StrCat("ECS task metadata: GET ", url,
                                               ": HTTP ", response->status));
  }
  return ParseTaskMetadata(response->body, url);
}

}  // namespace delegate::aws

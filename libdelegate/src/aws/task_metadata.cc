#include "aws/task_metadata.h"

#include "absl/strings/str_cat.h"
#include "aws/endpoints.h"
#include "rapidjson/document.h"

namespace delegate::aws {
namespace {

std::string Str(const rapidjson::Value& v, const char* name) {
  auto it = v.FindMember(name);
  if (it == v.MemberEnd() || !it->value.IsString()) return "";
  return std::string(it->value.GetString(), it->value.GetStringLength());
}

}  // namespace

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
  rapidjson::Document doc;
  doc.Parse(response->body.data(), response->body.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ECS task metadata: GET ", url, ": not a JSON object"));
  }
  TaskMetadata out;
  out.cluster = Str(doc, "Cluster");
  out.task_arn = Str(doc, "TaskARN");
  out.family = Str(doc, "Family");
  out.revision = Str(doc, "Revision");
  out.launch_type = Str(doc, "LaunchType");
  out.availability_zone = Str(doc, "AvailabilityZone");
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

}  // namespace delegate::aws

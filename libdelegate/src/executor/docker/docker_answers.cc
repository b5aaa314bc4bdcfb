#include "executor/docker/docker_answers.h"

#include <rapidjson/document.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "util/strings.h"

namespace delegate::docker {
namespace {

// Returns false when `body` is not a JSON document.
bool Parse(std::string_view body, rapidjson::Document& doc) {
  doc.Parse(body.data(), body.size());
  return !doc.HasParseError();
}

std::string_view GetString(const rapidjson::Value& object, const char* key) {
  if (!object.IsObject()) return {};
  auto it = object.FindMember(key);
  if (it == object.MemberEnd() || !it->value.IsString()) return {};
  return std::string_view(it->value.GetString(), it->value.GetStringLength());
}

bool GetBool(const rapidjson::Value& object, const char* key) {
  if (!object.IsObject()) return false;
  auto it = object.FindMember(key);
  return it != object.MemberEnd() && it->value.IsBool() && it->value.GetBool();
}

// object[key] when both are objects; nullptr otherwise.
const rapidjson::Value* GetObject(const rapidjson::Value& object,
                                  const char* key) {
  if (!object.IsObject()) return nullptr;
  auto it = object.FindMember(key);
  return it != object.MemberEnd() && it->value.IsObject() ? &it->value
                                                          : nullptr;
}

std::optional<int64_t> GetInt(const rapidjson::Value& object, const char* key) {
  if (!object.IsObject()) return std::nullopt;
  auto it = object.FindMember(key);
  if (it == object.MemberEnd() || !it->value.IsInt64()) return std::nullopt;
  return it->value.GetInt64();
}

}  // namespace

std::string DaemonMessage(int http_status, std::string_view body) {
  rapidjson::Document doc;
  if (Parse(body, doc)) {
    std::string_view message = GetString(doc, "message");
    if (!message.empty()) return std::string(message);
  }
  std::string text(absl::StripAsciiWhitespace(AbslView(body)));
  if (text.size() > 512) text = absl::StrCat(text.substr(0, 512), "...");
  if (text.empty()) return absl::StrCat("HTTP ", http_status);
  return text;
}

absl::Status DaemonError(int http_status, std::string_view body,
                         std::string_view what) {
  std::string message = DaemonMessage(http_status, body);
  absl::StatusCode code;
  switch (http_status) {
    case 400:
      code = absl::StatusCode::kInvalidArgument;
      break;
    case 401:
    case 403:
      code = absl::StatusCode::kPermissionDenied;
      break;
    case 404:
      code = absl::StatusCode::kNotFound;
      break;
    case 409:
      // The daemon uses 409 both for name clashes and for "not in the right
      // state" (not running, in use).
      code = absl::StrContains(message, "already exists") ||
                     absl::StrContains(message, "already in use")
                 ? absl::StatusCode::kAlreadyExists
                 : absl::StatusCode::kFailedPrecondition;
      break;
    case 502:
    case 503:
    case 504:
      code = absl::StatusCode::kUnavailable;
      break;
    default:
      code = absl::StatusCode::kInternal;
      break;
  }
  return absl::Status(code, absl::StrCat(AbslView(what), ": ", message));
}

absl::StatusCode PullErrorCode(std::string_view message) {
  std::string lower = absl::AsciiStrToLower(AbslView(message));
  if (absl::StrContains(lower, "unauthorized") ||
      absl::StrContains(lower, "denied") ||
      absl::StrContains(lower, "authentication required")) {
    return absl::StatusCode::kPermissionDenied;
  }
  if (absl::StrContains(lower, "not found") ||
      absl::StrContains(lower, "manifest unknown") ||
      absl::StrContains(lower, "does not exist")) {
    return absl::StatusCode::kNotFound;
  }
  return absl::StatusCode::kUnavailable;
}

std::optional<std::pair<int, int>> ParseApiVersion(std::string_view v) {
  size_t dot = v.find('.');
  if (dot == std::string_view::npos) return std::nullopt;
  int major = 0;
  int minor = 0;
  if (!absl::SimpleAtoi(AbslView(v.substr(0, dot)), &major) ||
      !absl::SimpleAtoi(AbslView(v.substr(dot + 1)), &minor)) {
    return std::nullopt;
  }
  return std::make_pair(major, minor);
}

std::string VersionAnswerApiVersion(std::string_view body) {
  rapidjson::Document doc;
  if (!Parse(body, doc)) return {};
  return std::string(GetString(doc, "ApiVersion"));
}

std::optional<PullLine> ParsePullLine(std::string_view line) {
  line = StdView(absl::StripAsciiWhitespace(AbslView(line)));
  if (line.empty()) return std::nullopt;
  rapidjson::Document doc;
  if (!Parse(line, doc) || !doc.IsObject()) return std::nullopt;
  PullLine out;
  if (doc.HasMember("error")) {
    out.error = true;
    std::string_view message;
    if (auto it = doc.FindMember("errorDetail"); it != doc.MemberEnd()) {
      message = GetString(it->value, "message");
    }
    if (message.empty()) message = GetString(doc, "error");
    out.text = std::string(message);
    return out;
  }
  if (std::string_view id = GetString(doc, "id"); !id.empty()) {
    absl::StrAppend(&out.text, AbslView(id), ": ");
  }
  absl::StrAppend(&out.text, AbslView(GetString(doc, "status")));
  if (std::string_view p = GetString(doc, "progress"); !p.empty()) {
    absl::StrAppend(&out.text, " ", AbslView(p));
  }
  return out;
}

absl::StatusOr<int> ParseWaitAnswer(std::string_view body,
                                    std::string_view what) {
  rapidjson::Document doc;
  if (!Parse(body, doc) || !doc.IsObject()) {
    return absl::InternalError(
        absl::StrCat(AbslView(what), ": unreadable answer: ", AbslView(body)));
  }
  if (auto it = doc.FindMember("Error");
      it != doc.MemberEnd() && it->value.IsObject()) {
    if (std::string_view m = GetString(it->value, "Message"); !m.empty()) {
      return absl::InternalError(
          absl::StrCat(AbslView(what), ": ", AbslView(m)));
    }
  }
  std::optional<int64_t> code = GetInt(doc, "StatusCode");
  if (!code) {
    return absl::InternalError(
        absl::StrCat(AbslView(what), ": no StatusCode in ", AbslView(body)));
  }
  return static_cast<int>(*code);
}

absl::StatusOr<ContainerState> ParseInspectAnswer(std::string_view body,
                                                  std::string_view what) {
  rapidjson::Document doc;
  if (!Parse(body, doc) || !doc.IsObject() || !doc.HasMember("State")) {
    return absl::InternalError(
        absl::StrCat(AbslView(what), ": unreadable answer"));
  }
  const rapidjson::Value& state = doc["State"];
  ContainerState result;
  result.id = std::string(GetString(doc, "Id"));
  result.status = std::string(GetString(state, "Status"));
  result.running = GetBool(state, "Running");
  result.exit_code = static_cast<int>(GetInt(state, "ExitCode").value_or(0));
  result.oom_killed = GetBool(state, "OOMKilled");
  result.error = std::string(GetString(state, "Error"));
  if (const rapidjson::Value* health = GetObject(state, "Health")) {
    result.health = std::string(GetString(*health, "Status"));
  }
  const rapidjson::Value* settings = GetObject(doc, "NetworkSettings");
  if (const rapidjson::Value* networks =
          settings ? GetObject(*settings, "Networks") : nullptr) {
    for (const auto& n : networks->GetObject()) {
      const std::string_view ip = GetString(n.value, "IPAddress");
      if (!ip.empty()) result.ip_addresses[n.name.GetString()] = ip;
    }
  }
  return result;
}

absl::StatusOr<ExecState> ParseExecInspectAnswer(std::string_view body,
                                                 std::string_view what) {
  rapidjson::Document doc;
  if (!Parse(body, doc) || !doc.IsObject()) {
    return absl::InternalError(
        absl::StrCat(AbslView(what), ": unreadable answer"));
  }
  ExecState state;
  state.running = GetBool(doc, "Running");
  state.exit_code = GetInt(doc, "ExitCode");
  return state;
}

bool EventsHaveOom(std::string_view body) {
  while (!body.empty()) {
    const size_t end = std::min(body.find('\n'), body.size());
    const std::string_view line = body.substr(0, end);
    body.remove_prefix(std::min(end + 1, body.size()));
    rapidjson::Document doc;
    if (!Parse(line, doc) || !doc.IsObject()) continue;
    const std::string_view type = GetString(doc, "Type");
    if (!type.empty() && type != "container") continue;
    if (GetString(doc, "Action") == "oom" ||
        GetString(doc, "status") == "oom") {
      return true;
    }
  }
  return false;
}

absl::StatusOr<std::string> ParseIdAnswer(std::string_view body,
                                          std::string_view what) {
  rapidjson::Document doc;
  std::string_view id;
  if (Parse(body, doc)) id = GetString(doc, "Id");
  if (id.empty()) {
    return absl::InternalError(
        absl::StrCat(AbslView(what), ": no Id in answer: ", AbslView(body)));
  }
  return std::string(id);
}

absl::StatusOr<std::vector<std::string>> ParseListAnswer(std::string_view body,
                                                         std::string_view what,
                                                         const char* array_key,
                                                         const char* field) {
  rapidjson::Document doc;
  if (!Parse(body, doc)) {
    return absl::InternalError(
        absl::StrCat(AbslView(what), ": unreadable answer"));
  }
  const rapidjson::Value* array = &doc;
  if (array_key != nullptr) {
    // MemberEnd() of a value that is not an object is undefined (found by
    // tests/fuzz/docker_answers_fuzz.cc): test the type first.
    if (!doc.IsObject()) return std::vector<std::string>{};
    auto it = doc.FindMember(array_key);
    if (it == doc.MemberEnd() || it->value.IsNull()) {
      return std::vector<std::string>{};  // "Volumes": null when none
    }
    array = &it->value;
  }
  std::vector<std::string> result;
  if (!array->IsArray()) return result;
  for (const rapidjson::Value& item : array->GetArray()) {
    std::string_view value = GetString(item, field);
    if (!value.empty()) result.emplace_back(value);
  }
  return result;
}

absl::StatusOr<std::vector<Listed>> ParseListedAnswer(std::string_view body,
                                                      std::string_view what,
                                                      ObjectKind kind) {
  rapidjson::Document doc;
  if (!Parse(body, doc)) {
    return absl::InternalError(
        absl::StrCat(AbslView(what), ": unreadable answer"));
  }
  const rapidjson::Value* array = &doc;
  if (kind == ObjectKind::kVolume) {
    if (!doc.IsObject()) return std::vector<Listed>{};
    auto it = doc.FindMember("Volumes");
    if (it == doc.MemberEnd()) return std::vector<Listed>{};
    array = &it->value;  // null when there are none
  }
  std::vector<Listed> result;
  if (!array->IsArray()) return result;
  for (const rapidjson::Value& item : array->GetArray()) {
    // FindMember of a value that is not an object is undefined.
    if (!item.IsObject()) continue;
    Listed listed;
    if (kind == ObjectKind::kContainer) {
      listed.id = std::string(GetString(item, "Id"));
      // "Names": ["/name", ...]: its own first, then (old Engines) links.
      if (auto it = item.FindMember("Names");
          it != item.MemberEnd() && it->value.IsArray() && !it->value.Empty() &&
          it->value[0].IsString()) {
        listed.name =
            std::string(absl::StripPrefix(it->value[0].GetString(), "/"));
      }
    } else {
      listed.name = std::string(GetString(item, "Name"));
      listed.id = kind == ObjectKind::kVolume
                      ? listed.name
                      : std::string(GetString(item, "Id"));
    }
    if (listed.id.empty()) continue;
    if (auto it = item.FindMember("Labels");
        it != item.MemberEnd() && it->value.IsObject()) {
      for (const auto& label : it->value.GetObject()) {
        if (!label.name.IsString() || !label.value.IsString()) continue;
        listed.labels.emplace(
            std::string(label.name.GetString(), label.name.GetStringLength()),
            std::string(label.value.GetString(),
                        label.value.GetStringLength()));
      }
    }
    result.push_back(std::move(listed));
  }
  return result;
}

absl::StatusOr<std::string> ParseArchiveMember(std::string_view tar,
                                               std::string_view what,
                                               size_t max_bytes) {
  if (tar.size() < 512) {
    return absl::DataLossError(absl::StrCat(AbslView(what), ": short archive"));
  }
  if (tar[156] != '0' && tar[156] != '\0') {
    return absl::FailedPreconditionError(
        absl::StrCat(AbslView(what), ": not a regular file"));
  }
  // At most 12 octal digits: below 2^36, so 512 + size cannot wrap.
  size_t size = 0;
  for (size_t i = 124; i < 136 && tar[i] >= '0' && tar[i] <= '7'; ++i) {
    size = size * 8 + static_cast<size_t>(tar[i] - '0');
  }
  if (512 + size > tar.size()) {
    return absl::DataLossError(
        absl::StrCat(AbslView(what), ": truncated archive"));
  }
  return std::string(tar.substr(512, std::min(size, max_bytes)));
}

}  // namespace delegate::docker

#include "manager/harness/task_secrets.h"

#include <optional>

#include "absl/strings/str_cat.h"
#include "manager/harness/base64.h"
#include "manager/harness/json_fields.h"
#include "rapidjson/document.h"
#include "stage/secrets.h"

namespace delegate::harness {
namespace {

using Value = rapidjson::Value;

// The secrets of a secret/static task whose path is `prefix` ("task",
// "secrets[2]"); errors name "<prefix>.data...".
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> StaticSecrets(
    const Task& task, std::string_view prefix) {
  rapidjson::Document doc;
  absl::StatusOr<Fields> data =
      ParseObject(task.data_json, Child(prefix, "data"), doc);
  if (!data.ok()) return data.status();
  std::vector<std::pair<std::string, std::string>> out;
  absl::Status read = data->ForEachObject("secrets", [&](const Fields& entry) {
    std::string id, value;
    bool base64 = false;
    absl::Status s;
    if (s = entry.String("id", id); !s.ok()) return s;
    if (s = entry.String("value", value); !s.ok()) return s;
    if (s = entry.Bool("base64", base64); !s.ok()) return s;
    if (base64) {
      std::optional<std::string> decoded = Base64Decode(value);
      if (!decoded) {
        return Invalid(entry.PathOf("value"),
                       "base64 is true but the value is not base64");
      }
      value = *std::move(decoded);
    }
    out.emplace_back(std::move(id), std::move(value));
    return absl::OkStatus();
  });
  if (!read.ok()) return read;
  return out;
}

// The value a secret/static task resolves to: its first secret's.
absl::StatusOr<std::string> FirstStaticSecret(const Task& task,
                                              std::string_view prefix) {
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> values =
      StaticSecrets(task, prefix);
  if (!values.ok()) return values.status();
  if (values->empty()) {
    return Invalid(Child(Child(prefix, "data"), "secrets"),
                   "empty; a secret/static task needs one");
  }
  return std::move(values->front().second);
}

// Replaces secret references in every string value under `v`, depth-first.
absl::Status SubstituteIn(Value& v, const std::string& path,
                          const std::map<std::string, std::string>& secrets,
                          rapidjson::Document::AllocatorType& alloc) {
  if (v.IsObject()) {
    // By index: C++20 finds rapidjson's mutable member iterators' !=
    // ambiguous (-Wambiguous-reversed-operator).
    for (rapidjson::SizeType i = 0; i < v.MemberCount(); ++i) {
      auto& m = v.MemberBegin()[i];
      if (absl::Status s =
              SubstituteIn(m.value, Child(path, Text(m.name)), secrets, alloc);
          !s.ok()) {
        return s;
      }
    }
  } else if (v.IsArray()) {
    for (size_t i = 0; i < v.Size(); ++i) {
      if (absl::Status s = SubstituteIn(v[static_cast<rapidjson::SizeType>(i)],
                                        Index(path, i), secrets, alloc);
          !s.ok()) {
        return s;
      }
    }
  } else if (v.IsString()) {
    const std::string_view text(v.GetString(), v.GetStringLength());
    std::string unknown;
    bool missing = false;
    ForEachSecretReference(text, [&](std::string_view id) {
      if (!missing && secrets.find(std::string(id)) == secrets.end()) {
        missing = true;
        unknown = std::string(id);
      }
    });
    if (missing) {
      return Invalid(path, absl::StrCat("${{secrets.", unknown,
                                        "}} is not among the task's secrets"));
    }
    absl::StatusOr<std::string> replaced =
        ::delegate::SubstituteSecrets(text, secrets, path);
    if (!replaced.ok()) return replaced.status();
    if (*replaced != text) {
      v.SetString(replaced->data(),
                  static_cast<rapidjson::SizeType>(replaced->size()), alloc);
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
ResolveStaticSecrets(const Task& task) {
  return StaticSecrets(task, "task");
}

absl::StatusOr<std::string> StaticSecretResponseData(const Task& task) {
  absl::StatusOr<std::string> value = FirstStaticSecret(task, "task");
  if (!value.ok()) return value.status();
  return WriteObject(
      [&](json::Writer& w) { json::StringField(w, "value", *value); });
}

absl::StatusOr<std::map<std::string, std::string>> ResolveRequestSecrets(
    const TaskRequest& request) {
  std::map<std::string, std::string> out;
  for (size_t i = 0; i < request.secrets.size(); ++i) {
    const Task& sub = request.secrets[i];
    const std::string path = Index("secrets", i);
    if (sub.type != "secret/static") {
      return absl::UnimplementedError(absl::StrCat(
          path, ".type: secret tasks of type '", sub.type,
          "' are not supported by this delegate (only secret/static)"));
    }
    if (sub.id.empty()) {
      return Invalid(Child(path, "id"),
                     "missing; ${{secrets.ID}} refers to a secret task by id");
    }
    absl::StatusOr<std::string> value = FirstStaticSecret(sub, path);
    if (!value.ok()) return value.status();
    out[sub.id] = *std::move(value);
  }
  return out;
}

absl::StatusOr<std::string> SubstituteSecrets(
    std::string_view data_json,
    const std::map<std::string, std::string>& secrets) {
  rapidjson::Document doc;
  absl::StatusOr<Fields> top = ParseObject(data_json, "task.data", doc);
  if (!top.ok()) return top.status();
  if (absl::Status s =
          SubstituteIn(doc, "task.data", secrets, doc.GetAllocator());
      !s.ok()) {
    return s;
  }
  return Serialize(doc);
}

}  // namespace delegate::harness

#include "manager/harness/task_request.h"

#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "manager/harness/base64.h"
#include "manager/harness/json_fields.h"
#include "rapidjson/document.h"
#include "util/strings.h"

namespace delegate::harness {
namespace {

// go-task Task.data / Task.config: base64 of JSON (Go []byte), an inline
// object, or JSON text in a string; absent, null, "" or JSON null is "{}".
absl::StatusOr<std::string> NormalizeJsonField(const rapidjson::Value* v,
                                               const std::string& path) {
  if (v == nullptr) return std::string("{}");
  if (v->IsObject()) return Serialize(*v);
  if (!v->IsString()) {
    return Invalid(path, "expected an object, or a base64 string of one");
  }
  const std::string_view raw(v->GetString(), v->GetStringLength());
  const std::string_view trimmed =
      StdView(absl::StripAsciiWhitespace(AbslView(raw)));
  if (trimmed.empty()) return std::string("{}");
  std::string text;
  if (trimmed.front() == '{') {
    text = std::string(trimmed);  // '{' is not in the base64 alphabet
  } else {
    std::optional<std::string> decoded = Base64Decode(trimmed);
    if (!decoded) {
      return Invalid(path,
                     "expected an object, or a base64 string of one; the "
                     "string is not base64");
    }
    text = *std::move(decoded);
  }
  const bool inline_text = trimmed.front() == '{';
  rapidjson::Document doc;
  if (absl::Status s = ParseJson(text, path, doc,
                                 inline_text ? "not valid JSON"
                                             : "the base64 text does not "
                                               "decode to valid JSON");
      !s.ok()) {
    return s;
  }
  if (doc.IsNull()) return std::string("{}");
  if (!doc.IsObject()) {
    return Invalid(path, "expected the decoded JSON to be an object");
  }
  return Serialize(doc);
}

absl::Status ParseLogger(const Fields& f, TaskLogger& out) {
  absl::Status s;
  if (s = f.String("address", out.address); !s.ok()) return s;
  if (s = f.Bool("insecure", out.insecure); !s.ok()) return s;
  if (s = f.Secret("token", out.token); !s.ok()) return s;
  if (s = f.String("key", out.key); !s.ok()) return s;
  if (s = f.String("account", out.account); !s.ok()) return s;
  if (s = f.Bool("indirect_upload", out.indirect_upload); !s.ok()) return s;
  if (s = f.Bool("skip_opening_stream", out.skip_opening_stream); !s.ok()) {
    return s;
  }
  if (s = f.Bool("skip_closing_stream", out.skip_closing_stream); !s.ok()) {
    return s;
  }
  if (s = f.Bool("trim_new_line_suffix", out.trim_new_line_suffix); !s.ok()) {
    return s;
  }
  if (s = f.Bool("increase_log_limit", out.increase_log_limit); !s.ok()) {
    return s;
  }
  return f.Strings("masks", out.masks);
}

absl::Status ParseForward(const Fields& f, TaskForward& out) {
  absl::Status s;
  if (s = f.String("address", out.address); !s.ok()) return s;
  if (s = f.String("string", out.address); !s.ok()) return s;  // go-task's tag
  if (s = f.Bool("insecure", out.insecure); !s.ok()) return s;
  absl::StatusOr<std::optional<Fields>> certs = f.Object("certs");
  if (!certs.ok()) return certs.status();
  if (*certs) {
    if (s = (*certs)->String("public", out.cert_public); !s.ok()) return s;
    if (s = (*certs)->Secret("private", out.cert_private); !s.ok()) return s;
    if (s = (*certs)->String("ca", out.cert_ca); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<Task> ParseTask(const Fields& f) {
  Task task;
  absl::Status s;
  if (s = f.String("id", task.id); !s.ok()) return s;
  if (s = f.String("type", task.type); !s.ok()) return s;
  if (s = f.String("driver", task.driver); !s.ok()) return s;
  absl::StatusOr<std::string> data =
      NormalizeJsonField(f.Get("data"), f.PathOf("data"));
  if (!data.ok()) return data.status();
  task.data_json = *std::move(data);
  absl::StatusOr<std::string> config =
      NormalizeJsonField(f.Get("config"), f.PathOf("config"));
  if (!config.ok()) return config.status();
  task.config_json = *std::move(config);
  absl::StatusOr<std::optional<Fields>> forward = f.Object("forward");
  if (!forward.ok()) return forward.status();
  if (*forward) {
    if (s = ParseForward(**forward, task.forward); !s.ok()) return s;
  }
  absl::StatusOr<std::optional<Fields>> logger = f.Object("logger");
  if (!logger.ok()) return logger.status();
  if (*logger) {
    if (s = ParseLogger(**logger, task.logger); !s.ok()) return s;
  }
  return task;
}

absl::StatusOr<TaskRequest> ParseRequest(const Fields& f) {
  TaskRequest request;
  absl::Status s;
  if (s = f.String("id", request.id); !s.ok()) return s;
  if (s = f.String("account", request.account); !s.ok()) return s;
  absl::StatusOr<std::optional<Fields>> task = f.Object("task");
  if (!task.ok()) return task.status();
  if (!*task) return Invalid(f.PathOf("task"), "missing");
  absl::StatusOr<Task> primary = ParseTask(**task);
  if (!primary.ok()) return primary.status();
  request.task = *std::move(primary);
  s = f.ForEachObject("secrets", [&](const Fields& sub) {
    absl::StatusOr<Task> secret = ParseTask(sub);
    if (!secret.ok()) return secret.status();
    request.secrets.push_back(*std::move(secret));
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return request;
}

}  // namespace

absl::StatusOr<std::vector<RunnerEvent>> ParseRunnerEvents(
    std::string_view body) {
  std::vector<RunnerEvent> events;
  if (absl::StripAsciiWhitespace(AbslView(body)).empty()) return events;
  rapidjson::Document doc;
  absl::StatusOr<Fields> top = ParseBody(body, "runner events", doc);
  if (!top.ok()) return top.status();
  absl::Status read =
      top->ForEachObject("delegateRunnerEvents", [&](const Fields& f) {
        RunnerEvent event;
        absl::Status s;
        if (s = f.String("accountId", event.account_id); !s.ok()) return s;
        if (s = f.String("taskId", event.task_id); !s.ok()) return s;
        if (s = f.String("runnerType", event.runner_type); !s.ok()) return s;
        if (s = f.String("taskType", event.task_type); !s.ok()) return s;
        if (event.task_id.empty()) {
          return Invalid(f.PathOf("taskId"),
                         "missing; an event names its task");
        }
        events.push_back(std::move(event));
        return absl::OkStatus();
      });
  if (!read.ok()) return read;
  return events;
}

absl::StatusOr<std::vector<TaskRequest>> ParseAcquireResponse(
    std::string_view body) {
  rapidjson::Document doc;
  absl::StatusOr<Fields> top = ParseBody(body, "acquire response", doc);
  if (!top.ok()) return top.status();
  std::vector<TaskRequest> requests;
  absl::Status read = top->ForEachObject("requests", [&](const Fields& f) {
    absl::StatusOr<TaskRequest> request = ParseRequest(f);
    if (!request.ok()) return request.status();
    requests.push_back(*std::move(request));
    return absl::OkStatus();
  });
  if (!read.ok()) return read;
  return requests;
}

}  // namespace delegate::harness

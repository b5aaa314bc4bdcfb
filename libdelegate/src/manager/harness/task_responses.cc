#include "manager/harness/task_responses.h"

#include "absl/strings/str_cat.h"
#include "manager/harness/base64.h"
#include "manager/harness/json_fields.h"
#include "util/json.h"

namespace delegate::harness {
namespace {

using json::Key;
using json::String;

const char* ExecutionStatus(StepStatus status) {
  switch (status) {
    case StepStatus::kSuccess:
      return "SUCCESS";
    case StepStatus::kTimeout:
      return "TIMEOUT";
    default:
      return "FAILURE";
  }
}

std::string StepErrorMessage(const StepResult& r) {
  if (!r.error.empty()) return r.error;
  if (r.exit_code && *r.exit_code != 0) {
    return absl::StrCat("exit status ", *r.exit_code);
  }
  switch (r.status) {
    case StepStatus::kSuccess:
      return "";
    case StepStatus::kTimeout:
      return "step timed out";
    case StepStatus::kCancelled:
      return "step cancelled";
    case StepStatus::kSkipped:
      return "step skipped";
    case StepStatus::kFailure:
      return "step failed";
  }
  return "step failed";
}

// The members init and cleanup responses end with; the error only on
// failure.
void WriteOutcome(json::Writer& w, bool ok, std::string_view error) {
  Key(w, "command_execution_status");
  String(w, ok ? "SUCCESS" : "FAILURE");
  Key(w, "error_message");
  String(w, ok ? std::string_view() : error);
}

}  // namespace

std::string TaskResponseBody(std::string_view task_id, std::string_view type,
                             bool ok, std::string_view error,
                             std::string_view data_json) {
  std::string data(data_json);
  if (data.empty()) {
    data = ok ? "{}" : WriteObject([&](json::Writer& w) {
      Key(w, "error_message");
      String(w, error);
    });
  }
  return WriteObject([&](json::Writer& w) {
    Key(w, "id");
    String(w, task_id);
    Key(w, "type");
    String(w, type);
    Key(w, "code");
    String(w, ok ? "OK" : "FAILED");
    Key(w, "error");
    String(w, error);
    Key(w, "data");
    String(w, Base64Encode(data));
  });
}

std::string ExecutionResponseData(const StepResult& r) {
  return WriteObject([&](json::Writer& w) {
    Key(w, "command_execution_status");
    String(w, ExecutionStatus(r.status));
    Key(w, "error_message");
    String(w, StepErrorMessage(r));
    Key(w, "output_vars");
    w.StartObject();
    for (const auto& [name, value] : r.outputs) {
      Key(w, name);
      String(w, value);
    }
    w.EndObject();
    Key(w, "outputs");
    w.StartArray();
    for (const auto& [name, value] : r.outputs) {
      w.StartObject();
      Key(w, "key");
      String(w, name);
      Key(w, "value");
      String(w, value);
      Key(w, "type");
      String(w, "STRING");
      w.EndObject();
    }
    w.EndArray();
  });
}

std::string InitResponseData(bool ok, std::string_view error,
                             std::string_view delegate_id) {
  return WriteObject([&](json::Writer& w) {
    Key(w, "ip_address");
    String(w, "127.0.0.1");
    Key(w, "delegate_meta_info");
    w.StartObject();
    Key(w, "id");
    String(w, delegate_id);
    w.EndObject();
    Key(w, "infra_type");
    String(w, "");
    WriteOutcome(w, ok, error);
  });
}

std::string CleanupResponseData(bool ok, std::string_view error) {
  return WriteObject([&](json::Writer& w) { WriteOutcome(w, ok, error); });
}

}  // namespace delegate::harness

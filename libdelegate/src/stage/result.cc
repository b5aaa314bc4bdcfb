#include "stage/result.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "rapidjson/stringbuffer.h"
#include "rapidjson/writer.h"
#include "util/json.h"

namespace delegate {

const char* StepStatusName(StepStatus status) {
  switch (status) {
    case StepStatus::kSuccess:
      return "SUCCESS";
    case StepStatus::kFailure:
      return "FAILURE";
    case StepStatus::kTimeout:
      return "TIMEOUT";
    case StepStatus::kSkipped:
      return "SKIPPED";
    case StepStatus::kCancelled:
      return "CANCELLED";
  }
  return "FAILURE";
}

using json::String;
using json::StringField;

std::string StageResultToJson(const StageResult& result) {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
  w.StartObject();
  StringField(w, "stage", result.stage);
  StringField(w, "task_id", result.task_id);
  StringField(w, "status", StepStatusName(result.status));
  StringField(w, "error", result.error);
  w.Key("duration_ms");
  w.Int64(absl::ToInt64Milliseconds(result.duration));
  w.Key("steps");
  w.StartArray();
  for (const StepResult& step : result.steps) {
    w.StartObject();
    StringField(w, "id", step.id);
    StringField(w, "status", StepStatusName(step.status));
    w.Key("exit_code");
    if (step.exit_code) {
      w.Int(*step.exit_code);
    } else {
      w.Null();
    }
    StringField(w, "error", step.error);
    w.Key("outputs");
    w.StartObject();
    for (const auto& [key, value] : step.outputs) {
      String(w, key);
      String(w, value);
    }
    w.EndObject();
    w.Key("duration_ms");
    w.Int64(absl::ToInt64Milliseconds(step.duration));
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  return std::string(buffer.GetString(), buffer.GetSize());
}

}  // namespace delegate

namespace delegate {

std::string FormatSummary(const StageResult& result) {
  size_t id_width = 4;
  for (const StepResult& step : result.steps) {
    id_width = std::max(id_width, step.id.size());
  }
  auto pad = [](std::string s, size_t width) {
    if (s.size() < width) s.append(width - s.size(), ' ');
    return s;
  };
  auto seconds = [](absl::Duration d) {
    return absl::StrFormat("%.2fs", absl::ToDoubleSeconds(d));
  };
  std::string out = absl::StrCat(pad("STEP", id_width), "  ", pad("STATUS", 9),
                                 "  EXIT  ", pad("TIME", 8), "  ERROR\n");
  for (const StepResult& step : result.steps) {
    absl::StrAppend(
        &out, pad(step.id, id_width), "  ", pad(StepStatusName(step.status), 9),
        "  ", pad(step.exit_code ? absl::StrCat(*step.exit_code) : "-", 4),
        "  ",
        pad(step.status == StepStatus::kSkipped ? "-" : seconds(step.duration),
            8),
        "  ", step.error, "\n");
  }
  absl::StrAppend(
      &out, "stage ", result.stage, ": ", StepStatusName(result.status), " in ",
      seconds(result.duration),
      result.error.empty() ? "" : absl::StrCat(" (", result.error, ")"), "\n");
  return out;
}

StageResult NotRunResult(std::string task_id, const Stage& stage,
                         StepStatus status, std::string why,
                         const std::string& step_why) {
  StageResult result;
  result.task_id = std::move(task_id);
  result.stage = stage.name;
  result.status = status;
  result.error = std::move(why);
  result.steps.reserve(stage.steps.size());
  for (const Step& step : stage.steps) {
    StepResult r;
    r.id = step.id;
    r.status = StepStatus::kSkipped;
    r.error = step_why;
    result.steps.push_back(std::move(r));
  }
  return result;
}

}  // namespace delegate

#include "manager/harness/payloads.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "executor/names.h"
#include "rapidjson/document.h"
#include "rapidjson/error/en.h"
#include "rapidjson/stringbuffer.h"
#include "rapidjson/writer.h"
#include "stage/secrets.h"
#include "util/json.h"
#include "util/strings.h"

namespace delegate::harness {
namespace {

using Value = rapidjson::Value;
using JsonWriter = json::Writer;

// Iterative parsing keeps deep input off the stack; the depth limit then
// bounds the recursive walks and writers that follow.
constexpr unsigned kParseFlags =
    rapidjson::kParseIterativeFlag | rapidjson::kParseFullPrecisionFlag;
constexpr int kMaxDepth = 64;
constexpr int64_t kMiB = 1024 * 1024;
constexpr size_t kMaxStepIdBytes = 128;

// ------------------------------------------------------------ errors, paths

absl::Status Invalid(std::string_view path, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(AbslView(path), ": ", AbslView(what)));
}

// "a.b" for plain keys, a["x y"] for others (map keys such as env names).
std::string Child(std::string_view path, std::string_view key) {
  if (!IsPlainKey(key)) {
    return absl::StrCat(AbslView(path), "[\"", AbslView(key), "\"]");
  }
  if (path.empty()) return std::string(key);
  return absl::StrCat(AbslView(path), ".", AbslView(key));
}

std::string Index(std::string_view path, size_t i) {
  return absl::StrCat(AbslView(path), "[", i, "]");
}

// ------------------------------------------------------------ JSON in

bool DepthWithin(const Value& v, int budget) {
  if (budget < 0) return false;
  if (v.IsObject()) {
    for (const auto& m : v.GetObject()) {
      if (!DepthWithin(m.value, budget - 1)) return false;
    }
  } else if (v.IsArray()) {
    for (const Value& item : v.GetArray()) {
      if (!DepthWithin(item, budget - 1)) return false;
    }
  }
  return true;
}

// Parses `text` into `doc`. Errors name `what` and say where the JSON breaks,
// never what it holds.
absl::Status ParseJson(std::string_view text, std::string_view what,
                       rapidjson::Document& doc,
                       std::string_view not_json = "not valid JSON") {
  if (absl::StripAsciiWhitespace(AbslView(text)).empty()) {
    return Invalid(what, absl::StrCat(AbslView(not_json), " (empty)"));
  }
  doc.Parse<kParseFlags>(text.data(), text.size());
  if (doc.HasParseError()) {
    return Invalid(
        what, absl::StrCat(AbslView(not_json), " (",
                           rapidjson::GetParseError_En(doc.GetParseError()),
                           " at offset ", doc.GetErrorOffset(), ")"));
  }
  if (!DepthWithin(doc, kMaxDepth)) {
    return Invalid(what,
                   absl::StrCat("nested deeper than ", kMaxDepth, " levels"));
  }
  return absl::OkStatus();
}

std::string Text(const Value& v) {
  return std::string(v.GetString(), v.GetStringLength());
}

// A JSON object and its path, with typed reads of its members. A member that
// is absent or null leaves the output untouched; one of the wrong type is an
// error naming its path. No message holds a value.
class Fields {
 public:
  Fields(const Value& object, std::string path)
      : object_(&object), path_(std::move(path)) {}

  static absl::StatusOr<Fields> Of(const Value& v, std::string path) {
    if (!v.IsObject()) return Invalid(path, "expected an object");
    return Fields(v, std::move(path));
  }

  const std::string& path() const { return path_; }
  std::string PathOf(std::string_view name) const { return Child(path_, name); }

  // The member, or nullptr when absent or null.
  const Value* Get(const char* name) const {
    auto it = object_->FindMember(name);
    if (it == object_->MemberEnd() || it->value.IsNull()) return nullptr;
    return &it->value;
  }

  absl::Status String(const char* name, std::string& out) const {
    const Value* v = Get(name);
    if (v == nullptr) return absl::OkStatus();
    if (!v->IsString()) return Invalid(PathOf(name), "expected a string");
    out = Text(*v);
    return absl::OkStatus();
  }

  absl::Status Secret(const char* name, SecretString& out) const {
    std::string value;
    if (absl::Status s = String(name, value); !s.ok()) return s;
    if (Get(name) != nullptr) out = SecretString(std::move(value));
    return absl::OkStatus();
  }

  absl::Status Bool(const char* name, bool& out) const {
    const Value* v = Get(name);
    if (v == nullptr) return absl::OkStatus();
    if (!v->IsBool()) return Invalid(PathOf(name), "expected true or false");
    out = v->GetBool();
    return absl::OkStatus();
  }

  // Integers, and numbers with no fractional part (1e3).
  absl::Status Int64(const char* name, int64_t& out) const {
    const Value* v = Get(name);
    if (v == nullptr) return absl::OkStatus();
    if (v->IsInt64()) {
      out = v->GetInt64();
      return absl::OkStatus();
    }
    if (v->IsDouble()) {
      const double d = v->GetDouble();
      if (d == static_cast<double>(static_cast<int64_t>(d)) && d > -9.2e18 &&
          d < 9.2e18) {
        out = static_cast<int64_t>(d);
        return absl::OkStatus();
      }
    }
    return Invalid(PathOf(name), "expected a whole number");
  }

  absl::Status NonNegative(const char* name, int64_t& out) const {
    if (absl::Status s = Int64(name, out); !s.ok()) return s;
    if (out < 0) return Invalid(PathOf(name), "must not be negative");
    return absl::OkStatus();
  }

  absl::Status Strings(const char* name, std::vector<std::string>& out) const {
    const Value* v = Get(name);
    if (v == nullptr) return absl::OkStatus();
    const std::string path = PathOf(name);
    if (!v->IsArray()) return Invalid(path, "expected an array of strings");
    out.clear();
    for (size_t i = 0; i < v->Size(); ++i) {
      const Value& item = (*v)[static_cast<rapidjson::SizeType>(i)];
      if (!item.IsString()) return Invalid(Index(path, i), "expected a string");
      out.push_back(Text(item));
    }
    return absl::OkStatus();
  }

  absl::Status StringMap(const char* name,
                         std::map<std::string, std::string>& out) const {
    const Value* v = Get(name);
    if (v == nullptr) return absl::OkStatus();
    const std::string path = PathOf(name);
    if (!v->IsObject()) {
      return Invalid(path, "expected an object of string values");
    }
    for (const auto& m : v->GetObject()) {
      const std::string key = Text(m.name);
      if (!m.value.IsString()) {
        return Invalid(Child(path, key), "expected a string");
      }
      out[key] = Text(m.value);
    }
    return absl::OkStatus();
  }

  // The member as an object; nullopt when absent or null.
  absl::StatusOr<std::optional<Fields>> Object(const char* name) const {
    const Value* v = Get(name);
    if (v == nullptr) return std::optional<Fields>();
    absl::StatusOr<Fields> f = Of(*v, PathOf(name));
    if (!f.ok()) return f.status();
    return std::optional<Fields>(*std::move(f));
  }

  // The member as an array; nullptr when absent or null.
  absl::StatusOr<const Value*> Array(const char* name) const {
    const Value* v = Get(name);
    if (v != nullptr && !v->IsArray()) {
      return Invalid(PathOf(name), "expected an array");
    }
    return v;
  }

 private:
  const Value* object_;
  std::string path_;
};

// The top of a body or of task data: an object.
absl::StatusOr<Fields> TopObject(std::string_view text, std::string_view what,
                                 rapidjson::Document& doc) {
  if (absl::Status s = ParseJson(text, what, doc); !s.ok()) return s;
  return Fields::Of(doc, std::string(what));
}

// ------------------------------------------------------------ JSON out

using json::Key;
using json::String;

std::string Serialize(const Value& v) {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  v.Accept(w);
  return std::string(buffer.GetString(), buffer.GetSize());
}

std::string Finish(const rapidjson::StringBuffer& buffer) {
  return std::string(buffer.GetString(), buffer.GetSize());
}

// ------------------------------------------------------------ tasks

// go-task Task.data / Task.config: base64 of JSON (Go []byte), an inline
// object, or JSON text in a string; absent, null, "" or JSON null is "{}".
absl::StatusOr<std::string> NormalizeJsonField(const Value* v,
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

absl::StatusOr<Task> ParseTask(const Value& v, std::string path) {
  absl::StatusOr<Fields> f = Fields::Of(v, std::move(path));
  if (!f.ok()) return f.status();
  Task task;
  absl::Status s;
  if (s = f->String("id", task.id); !s.ok()) return s;
  if (s = f->String("type", task.type); !s.ok()) return s;
  if (s = f->String("driver", task.driver); !s.ok()) return s;
  absl::StatusOr<std::string> data =
      NormalizeJsonField(f->Get("data"), f->PathOf("data"));
  if (!data.ok()) return data.status();
  task.data_json = *std::move(data);
  absl::StatusOr<std::string> config =
      NormalizeJsonField(f->Get("config"), f->PathOf("config"));
  if (!config.ok()) return config.status();
  task.config_json = *std::move(config);
  absl::StatusOr<std::optional<Fields>> forward = f->Object("forward");
  if (!forward.ok()) return forward.status();
  if (*forward) {
    if (s = ParseForward(**forward, task.forward); !s.ok()) return s;
  }
  absl::StatusOr<std::optional<Fields>> logger = f->Object("logger");
  if (!logger.ok()) return logger.status();
  if (*logger) {
    if (s = ParseLogger(**logger, task.logger); !s.ok()) return s;
  }
  return task;
}

// ------------------------------------------------------------ secrets

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> StaticSecrets(
    const Task& task, std::string_view prefix) {
  const std::string root = Child(prefix, "data");
  rapidjson::Document doc;
  absl::StatusOr<Fields> data = TopObject(task.data_json, root, doc);
  if (!data.ok()) return data.status();
  absl::StatusOr<const Value*> list = data->Array("secrets");
  if (!list.ok()) return list.status();
  std::vector<std::pair<std::string, std::string>> out;
  if (*list == nullptr) return out;
  const std::string list_path = data->PathOf("secrets");
  for (size_t i = 0; i < (*list)->Size(); ++i) {
    absl::StatusOr<Fields> entry = Fields::Of(
        (**list)[static_cast<rapidjson::SizeType>(i)], Index(list_path, i));
    if (!entry.ok()) return entry.status();
    std::string id, value;
    bool base64 = false;
    absl::Status s;
    if (s = entry->String("id", id); !s.ok()) return s;
    if (s = entry->String("value", value); !s.ok()) return s;
    if (s = entry->Bool("base64", base64); !s.ok()) return s;
    if (base64) {
      std::optional<std::string> decoded = Base64Decode(value);
      if (!decoded) {
        return Invalid(entry->PathOf("value"),
                       "base64 is true but the value is not base64");
      }
      value = *std::move(decoded);
    }
    out.emplace_back(std::move(id), std::move(value));
  }
  return out;
}

// Replaces secret references in every string value under `v`, depth-first.
absl::Status SubstituteIn(Value& v, const std::string& path,
                          const std::map<std::string, std::string>& secrets,
                          rapidjson::Document::AllocatorType& alloc) {
  if (v.IsObject()) {
    for (auto& m : v.GetObject()) {
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

// ------------------------------------------------------------ local_*

// stage_runtime_id when set, else the fallback (network id).
absl::StatusOr<std::string> TransactionKey(const Fields& data,
                                           std::string fallback,
                                           std::string_view fallback_path) {
  std::string stage_runtime_id;
  if (absl::Status s = data.String("stage_runtime_id", stage_runtime_id);
      !s.ok()) {
    return s;
  }
  if (!stage_runtime_id.empty()) return stage_runtime_id;
  if (!fallback.empty()) return fallback;
  return Invalid(
      fallback_path,
      absl::StrCat("empty, and so is ", data.PathOf("stage_runtime_id"),
                   "; one of them must name the stage so that its "
                   "init, execute and cleanup tasks meet"));
}

int64_t CeilMiB(int64_t bytes) { return bytes / kMiB + (bytes % kMiB ? 1 : 0); }

absl::Status ParseVolume(const Fields& entry, InitPayload& out) {
  absl::StatusOr<std::optional<Fields>> temp = entry.Object("temp");
  if (!temp.ok()) return temp.status();
  absl::StatusOr<std::optional<Fields>> host = entry.Object("host");
  if (!host.ok()) return host.status();
  if (*temp && *host) {
    return Invalid(entry.path(), "has both temp and host; give one");
  }
  if (!*temp && !*host) {
    return Invalid(entry.path(), "expected a temp or a host volume");
  }
  const Fields& f = *temp ? **temp : **host;
  Volume volume;
  std::string id;
  absl::Status s;
  if (s = f.String("id", id); !s.ok()) return s;
  if (s = f.String("name", volume.name); !s.ok()) return s;
  if (volume.name.empty()) volume.name = id;
  if (volume.name.empty()) {
    return Invalid(f.PathOf("name"), "empty, and so is id; a volume needs one");
  }
  if (*temp) {
    int64_t size_limit = 0;
    if (s = f.NonNegative("size_limit", size_limit); !s.ok()) return s;
    EmptyDirVolume dir;
    if (size_limit > 0) dir.size_mib = CeilMiB(size_limit);
    volume.source = dir;
  } else {
    HostPathVolume path;
    HostDir host_dir;
    if (s = f.String("path", path.path); !s.ok()) return s;
    if (path.path.empty()) {
      return Invalid(f.PathOf("path"), "a host volume needs a path");
    }
    if (s = f.Bool("read_only", path.read_only); !s.ok()) return s;
    if (s = f.Bool("create", host_dir.create); !s.ok()) return s;
    if (s = f.Bool("remove", host_dir.remove); !s.ok()) return s;
    host_dir.path = path.path;
    out.host_dirs.push_back(std::move(host_dir));
    volume.source = std::move(path);
  }
  out.stage.volumes.push_back(std::move(volume));
  return absl::OkStatus();
}

// The uid and gid of "1000" or "1000:1000".
absl::Status ParseUser(std::string_view user, const std::string& path,
                       SecurityContext& out) {
  auto number = [](std::string_view text) -> std::optional<int64_t> {
    if (text.empty() || text.size() > 10) return std::nullopt;
    for (char c : text) {
      if (c < '0' || c > '9') return std::nullopt;
    }
    int64_t n = 0;
    if (!absl::SimpleAtoi(AbslView(text), &n) ||
        n > std::numeric_limits<uint32_t>::max()) {
      return std::nullopt;
    }
    return n;
  };
  const size_t colon = user.find(':');
  std::optional<int64_t> uid = number(user.substr(0, colon));
  std::optional<int64_t> gid;
  if (colon != std::string_view::npos) gid = number(user.substr(colon + 1));
  if (!uid || (colon != std::string_view::npos && !gid)) {
    return Invalid(path,
                   "use a numeric uid, or uid:gid (\"1000\" or \"1000:1000\"); "
                   "user names cannot be resolved outside the image");
  }
  out.run_as_user = *uid;
  if (gid) out.run_as_group = *gid;
  return absl::OkStatus();
}

absl::StatusOr<PullPolicy> ParsePull(std::string_view pull,
                                     const std::string& path) {
  const std::string p = absl::AsciiStrToLower(AbslView(pull));
  if (p.empty() || p == "default") return PullPolicy::kDefault;
  if (p == "always") return PullPolicy::kAlways;
  if (p == "ifnotpresent") return PullPolicy::kIfNotPresent;
  if (p == "never") return PullPolicy::kNever;
  return Invalid(path, "expected Always, IfNotPresent, Never or default");
}

struct CommandBlock {
  std::string path;
  std::vector<std::string> commands;
  std::vector<std::string> entrypoint;
};

// The step's command: "run", or "run_test" / "run_test_v2" as `kind` says
// (RunTest, RunTestsV2). Without a kind, or when the block the kind names is
// absent, the first of run, run_test_v2, run_test holding a command.
absl::StatusOr<CommandBlock> ParseCommand(const Fields& data) {
  std::string kind;
  if (absl::Status s = data.String("kind", kind); !s.ok()) return s;
  const char* preferred = "run";
  if (kind == "RunTest") preferred = "run_test";
  if (kind == "RunTestsV2") preferred = "run_test_v2";
  const char* order[] = {preferred, "run", "run_test_v2", "run_test"};
  std::optional<CommandBlock> first_present;
  for (const char* name : order) {
    absl::StatusOr<std::optional<Fields>> f = data.Object(name);
    if (!f.ok()) return f.status();
    if (!*f) continue;
    CommandBlock block{(*f)->path(), {}, {}};
    absl::Status s;
    if (s = (*f)->Strings("commands", block.commands); !s.ok()) return s;
    if (s = (*f)->Strings("entrypoint", block.entrypoint); !s.ok()) return s;
    if (!block.commands.empty() || !block.entrypoint.empty()) return block;
    if (!first_present) first_present = std::move(block);
  }
  if (first_present) return *std::move(first_present);
  return CommandBlock{data.PathOf(preferred), {}, {}};
}

absl::Status ParseStepResources(const Fields& data, Resources& out) {
  int64_t mem_limit = 0, cpu_quota = 0, cpu_period = 0;
  absl::Status s;
  if (s = data.NonNegative("mem_limit", mem_limit); !s.ok()) return s;
  if (s = data.NonNegative("cpu_quota", cpu_quota); !s.ok()) return s;
  if (s = data.NonNegative("cpu_period", cpu_period); !s.ok()) return s;
  if (mem_limit > 0) out.memory_mib = CeilMiB(mem_limit);
  if (cpu_quota > 0 && cpu_period > 0) {
    out.cpus = static_cast<double>(cpu_quota) / static_cast<double>(cpu_period);
  }
  return absl::OkStatus();
}

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

}  // namespace

// ------------------------------------------------------------ base64

std::string Base64Encode(std::string_view bytes) {
  std::string out;
  absl::Base64Escape(AbslView(bytes), &out);
  return out;
}

std::optional<std::string> Base64Decode(std::string_view text) {
  std::string out;
  if (!absl::Base64Unescape(AbslView(text), &out)) return std::nullopt;
  return out;
}

// ------------------------------------------------------------ task flow

absl::StatusOr<std::vector<RunnerEvent>> ParseRunnerEvents(
    std::string_view body) {
  std::vector<RunnerEvent> events;
  if (absl::StripAsciiWhitespace(AbslView(body)).empty()) return events;
  rapidjson::Document doc;
  if (absl::Status s = ParseJson(body, "runner events", doc); !s.ok()) {
    return s;
  }
  absl::StatusOr<Fields> top = Fields::Of(doc, "");
  if (!top.ok()) return Invalid("runner events", "expected an object");
  absl::StatusOr<const Value*> list = top->Array("delegateRunnerEvents");
  if (!list.ok()) return list.status();
  if (*list == nullptr) return events;
  for (size_t i = 0; i < (*list)->Size(); ++i) {
    absl::StatusOr<Fields> f =
        Fields::Of((**list)[static_cast<rapidjson::SizeType>(i)],
                   Index("delegateRunnerEvents", i));
    if (!f.ok()) return f.status();
    RunnerEvent event;
    absl::Status s;
    if (s = f->String("accountId", event.account_id); !s.ok()) return s;
    if (s = f->String("taskId", event.task_id); !s.ok()) return s;
    if (s = f->String("runnerType", event.runner_type); !s.ok()) return s;
    if (s = f->String("taskType", event.task_type); !s.ok()) return s;
    if (event.task_id.empty()) {
      return Invalid(f->PathOf("taskId"), "missing; an event names its task");
    }
    events.push_back(std::move(event));
  }
  return events;
}

absl::StatusOr<std::vector<TaskRequest>> ParseAcquireResponse(
    std::string_view body) {
  rapidjson::Document doc;
  if (absl::Status s = ParseJson(body, "acquire response", doc); !s.ok()) {
    return s;
  }
  absl::StatusOr<Fields> top = Fields::Of(doc, "");
  if (!top.ok()) return Invalid("acquire response", "expected an object");
  absl::StatusOr<const Value*> list = top->Array("requests");
  if (!list.ok()) return list.status();
  std::vector<TaskRequest> requests;
  if (*list == nullptr) return requests;
  for (size_t i = 0; i < (*list)->Size(); ++i) {
    absl::StatusOr<Fields> f = Fields::Of(
        (**list)[static_cast<rapidjson::SizeType>(i)], Index("requests", i));
    if (!f.ok()) return f.status();
    TaskRequest request;
    absl::Status s;
    if (s = f->String("id", request.id); !s.ok()) return s;
    if (s = f->String("account", request.account); !s.ok()) return s;
    const Value* task = f->Get("task");
    if (task == nullptr) return Invalid(f->PathOf("task"), "missing");
    absl::StatusOr<Task> primary = ParseTask(*task, f->PathOf("task"));
    if (!primary.ok()) return primary.status();
    request.task = *std::move(primary);
    absl::StatusOr<const Value*> secrets = f->Array("secrets");
    if (!secrets.ok()) return secrets.status();
    if (*secrets != nullptr) {
      for (size_t k = 0; k < (*secrets)->Size(); ++k) {
        absl::StatusOr<Task> sub =
            ParseTask((**secrets)[static_cast<rapidjson::SizeType>(k)],
                      Index(f->PathOf("secrets"), k));
        if (!sub.ok()) return sub.status();
        request.secrets.push_back(*std::move(sub));
      }
    }
    requests.push_back(std::move(request));
  }
  return requests;
}

// ------------------------------------------------------------ secrets

absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
ResolveStaticSecrets(const Task& task) {
  return StaticSecrets(task, "task");
}

absl::StatusOr<std::string> StaticSecretResponseData(const Task& task) {
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> secrets =
      ResolveStaticSecrets(task);
  if (!secrets.ok()) return secrets.status();
  if (secrets->empty()) {
    return Invalid("task.data.secrets",
                   "empty; a secret/static task needs one");
  }
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  Key(w, "value");
  String(w, secrets->front().second);
  w.EndObject();
  return Finish(buffer);
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
    absl::StatusOr<std::vector<std::pair<std::string, std::string>>> values =
        StaticSecrets(sub, path);
    if (!values.ok()) return values.status();
    if (values->empty()) {
      return Invalid(absl::StrCat(path, ".data.secrets"),
                     "empty; a secret/static task needs one");
    }
    out[sub.id] = values->front().second;
  }
  return out;
}

absl::StatusOr<std::string> SubstituteSecrets(
    std::string_view data_json,
    const std::map<std::string, std::string>& secrets) {
  rapidjson::Document doc;
  absl::StatusOr<Fields> top = TopObject(data_json, "task.data", doc);
  if (!top.ok()) return top.status();
  if (absl::Status s =
          SubstituteIn(doc, "task.data", secrets, doc.GetAllocator());
      !s.ok()) {
    return s;
  }
  return Serialize(doc);
}

// ------------------------------------------------------------ local_*

absl::StatusOr<InitPayload> ParseInitPayload(std::string_view data_json) {
  rapidjson::Document doc;
  absl::StatusOr<Fields> data = TopObject(data_json, "task.data", doc);
  if (!data.ok()) return data.status();
  InitPayload out;
  absl::Status s;
  absl::StatusOr<std::optional<Fields>> network = data->Object("network");
  if (!network.ok()) return network.status();
  if (*network) {
    if (s = (*network)->String("id", out.network_id); !s.ok()) return s;
  }
  absl::StatusOr<std::string> key = TransactionKey(
      *data, out.network_id, Child(data->PathOf("network"), "id"));
  if (!key.ok()) return key.status();
  out.transaction_key = *std::move(key);
  if (s = data->String("log_key", out.log_key); !s.ok()) return s;

  out.stage.name = out.transaction_key;
  out.stage.platform = "local";
  if (s = data->StringMap("envs", out.stage.env); !s.ok()) return s;
  absl::StatusOr<const Value*> volumes = data->Array("volumes");
  if (!volumes.ok()) return volumes.status();
  if (*volumes != nullptr) {
    for (size_t i = 0; i < (*volumes)->Size(); ++i) {
      absl::StatusOr<Fields> entry =
          Fields::Of((**volumes)[static_cast<rapidjson::SizeType>(i)],
                     Index(data->PathOf("volumes"), i));
      if (!entry.ok()) return entry.status();
      if (s = ParseVolume(*entry, out); !s.ok()) return s;
    }
  }
  return out;
}

absl::StatusOr<ExecutePayload> ParseExecutePayload(std::string_view data_json) {
  rapidjson::Document doc;
  absl::StatusOr<Fields> data = TopObject(data_json, "task.data", doc);
  if (!data.ok()) return data.status();
  ExecutePayload out;
  Step& step = out.step;
  absl::Status s;

  std::string network;
  if (s = data->String("network", network); !s.ok()) return s;
  absl::StatusOr<std::string> key =
      TransactionKey(*data, network, data->PathOf("network"));
  if (!key.ok()) return key.status();
  out.transaction_key = *std::move(key);
  if (s = data->String("log_key", out.log_key); !s.ok()) return s;

  if (s = data->String("id", out.step_id); !s.ok()) return s;
  if (out.step_id.empty()) {
    return Invalid(data->PathOf("id"), "missing; a step needs an id");
  }
  step.id = SanitizeName(out.step_id, '_', kMaxStepIdBytes);
  if (s = data->String("name", step.name); !s.ok()) return s;
  if (s = data->String("image", step.image); !s.ok()) return s;

  absl::StatusOr<CommandBlock> command = ParseCommand(*data);
  if (!command.ok()) return command.status();
  if (command->entrypoint.empty()) {
    if (command->commands.empty() && step.image.empty()) {
      return Invalid(Child(command->path, "commands"),
                     "a host step needs commands (a step without an image "
                     "runs them on the delegate's machine)");
    }
    step.commands = std::move(command->commands);
  } else {
    step.entrypoint = std::move(command->entrypoint);
    step.args = std::move(command->commands);
  }

  if (s = data->StringMap("environment", step.envs); !s.ok()) return s;
  if (s = data->String("working_dir", step.working_dir); !s.ok()) return s;
  int64_t timeout = 0;
  if (s = data->NonNegative("timeout", timeout); !s.ok()) return s;
  if (timeout > 0) step.timeout = absl::Seconds(timeout);
  if (s = data->Strings("output_vars", step.outputs); !s.ok()) return s;

  std::string user;
  if (s = data->String("user", user); !s.ok()) return s;
  if (!user.empty()) {
    if (s = ParseUser(user, data->PathOf("user"), step.security_context);
        !s.ok()) {
      return s;
    }
  }
  bool privileged = false;
  if (s = data->Bool("privileged", privileged); !s.ok()) return s;
  if (privileged) step.security_context.privileged = true;

  absl::StatusOr<const Value*> mounts = data->Array("volumes");
  if (!mounts.ok()) return mounts.status();
  if (*mounts != nullptr) {
    for (size_t i = 0; i < (*mounts)->Size(); ++i) {
      absl::StatusOr<Fields> m =
          Fields::Of((**mounts)[static_cast<rapidjson::SizeType>(i)],
                     Index(data->PathOf("volumes"), i));
      if (!m.ok()) return m.status();
      VolumeMount mount;
      if (s = m->String("name", mount.name); !s.ok()) return s;
      if (s = m->String("path", mount.path); !s.ok()) return s;
      if (mount.name.empty()) {
        return Invalid(m->PathOf("name"), "a volume mount needs a name");
      }
      if (mount.path.empty()) {
        return Invalid(m->PathOf("path"), "a volume mount needs a path");
      }
      step.volume_mounts.push_back(std::move(mount));
    }
  }

  std::string pull;
  if (s = data->String("pull", pull); !s.ok()) return s;
  absl::StatusOr<PullPolicy> policy = ParsePull(pull, data->PathOf("pull"));
  if (!policy.ok()) return policy.status();
  step.pull = *policy;

  absl::StatusOr<std::optional<Fields>> auth = data->Object("auth");
  if (!auth.ok()) return auth.status();
  if (*auth) {
    RegistryCredentials credentials;
    if (s = (*auth)->String("address", credentials.server); !s.ok()) return s;
    if (s = (*auth)->String("username", credentials.username); !s.ok()) {
      return s;
    }
    if (s = (*auth)->String("password", credentials.password); !s.ok()) {
      return s;
    }
    if (!credentials.username.empty()) {
      if (!credentials.password.empty()) {
        out.masks.push_back(credentials.password);
      }
      step.registry = std::move(credentials);
    }
  }

  if (s = ParseStepResources(*data, step.resources); !s.ok()) return s;

  std::vector<std::string> secrets;
  if (s = data->Strings("secrets", secrets); !s.ok()) return s;
  for (std::string& value : secrets) {
    if (!value.empty() && std::find(out.masks.begin(), out.masks.end(),
                                    value) == out.masks.end()) {
      out.masks.push_back(std::move(value));
    }
  }
  return out;
}

absl::StatusOr<CleanupPayload> ParseCleanupPayload(std::string_view data_json) {
  rapidjson::Document doc;
  absl::StatusOr<Fields> data = TopObject(data_json, "task.data", doc);
  if (!data.ok()) return data.status();
  CleanupPayload out;
  absl::Status s;
  std::string network;
  if (s = data->String("network", network); !s.ok()) return s;
  absl::StatusOr<std::string> key =
      TransactionKey(*data, network, data->PathOf("network"));
  if (!key.ok()) return key.status();
  out.transaction_key = *std::move(key);

  absl::StatusOr<const Value*> volumes = data->Array("volumes");
  if (!volumes.ok()) return volumes.status();
  if (*volumes != nullptr) {
    for (size_t i = 0; i < (*volumes)->Size(); ++i) {
      absl::StatusOr<Fields> entry =
          Fields::Of((**volumes)[static_cast<rapidjson::SizeType>(i)],
                     Index(data->PathOf("volumes"), i));
      if (!entry.ok()) return entry.status();
      absl::StatusOr<std::optional<Fields>> host = entry->Object("host");
      if (!host.ok()) return host.status();
      if (!*host) continue;  // temp volumes go with the containers
      std::string path;
      bool remove = false;
      if (s = (*host)->String("path", path); !s.ok()) return s;
      if (s = (*host)->Bool("remove", remove); !s.ok()) return s;
      if (remove && path.empty()) {
        return Invalid((*host)->PathOf("path"),
                       "empty in a host volume marked remove");
      }
      if (remove) out.host_paths.push_back(std::move(path));
    }
  }

  absl::StatusOr<std::optional<Fields>> containers = data->Object("containers");
  if (!containers.ok()) return containers.status();
  if (*containers) {
    if (s = (*containers)->StringMap("labels", out.labels); !s.ok()) return s;
  }
  return out;
}

// ------------------------------------------------------------ responses

std::string TaskResponseBody(std::string_view task_id, std::string_view type,
                             bool ok, std::string_view error,
                             std::string_view data_json) {
  std::string data(data_json);
  if (data.empty()) {
    if (ok) {
      data = "{}";
    } else {
      rapidjson::StringBuffer buffer;
      JsonWriter w(buffer);
      w.StartObject();
      Key(w, "error_message");
      String(w, error);
      w.EndObject();
      data = Finish(buffer);
    }
  }
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
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
  w.EndObject();
  return Finish(buffer);
}

std::string ExecutionResponseData(const StepResult& r) {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
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
  w.EndObject();
  return Finish(buffer);
}

std::string InitResponseData(bool ok, std::string_view error,
                             std::string_view delegate_id) {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  Key(w, "ip_address");
  String(w, "127.0.0.1");
  Key(w, "delegate_meta_info");
  w.StartObject();
  Key(w, "id");
  String(w, delegate_id);
  w.EndObject();
  Key(w, "infra_type");
  String(w, "");
  Key(w, "command_execution_status");
  String(w, ok ? "SUCCESS" : "FAILURE");
  Key(w, "error_message");
  String(w, ok ? std::string_view() : error);
  w.EndObject();
  return Finish(buffer);
}

std::string CleanupResponseData(bool ok, std::string_view error) {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  Key(w, "command_execution_status");
  String(w, ok ? "SUCCESS" : "FAILURE");
  Key(w, "error_message");
  String(w, ok ? std::string_view() : error);
  w.EndObject();
  return Finish(buffer);
}

// ------------------------------------------------------------ lifecycle

std::string RegisterRequestJson(const RegisterInfo& info) {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  Key(w, "accountId");
  String(w, info.account_id);
  Key(w, "delegateName");
  String(w, info.delegate_name);
  Key(w, "lastHeartBeat");
  w.Int64(absl::ToUnixMillis(info.now));
  if (!info.delegate_id.empty()) {
    Key(w, "delegateId");
    String(w, info.delegate_id);
  }
  Key(w, "delegateType");
  String(w, "DOCKER");
  Key(w, "ng");
  w.Bool(true);
  Key(w, "pollingModeEnabled");
  w.Bool(true);
  Key(w, "hostName");
  String(w, info.host_name);
  Key(w, "ip");
  String(w, info.ip);
  Key(w, "tags");
  w.StartArray();
  for (const std::string& tag : info.tags) {
    if (!tag.empty()) String(w, tag);
  }
  w.EndArray();
  Key(w, "heartbeatAsObject");
  w.Bool(true);
  Key(w, "version");
  String(w, info.version);
  Key(w, "capacityConfig");
  w.StartObject();
  Key(w, "maxStages");
  if (info.max_stages) {
    w.Int(*info.max_stages);
  } else {
    w.Null();
  }
  w.EndObject();
  Key(w, "runner");
  w.Bool(true);
  w.EndObject();
  return Finish(buffer);
}

std::string UnregisterRequestJson(const RegisterInfo& info) {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  Key(w, "delegateId");
  String(w, info.delegate_id);
  Key(w, "hostName");
  String(w, info.host_name);
  Key(w, "ng");
  w.Bool(true);
  Key(w, "delegateType");
  String(w, "DOCKER");
  Key(w, "ipAddress");
  String(w, info.ip);
  w.EndObject();
  return Finish(buffer);
}

absl::StatusOr<std::string> ParseRegisterResponse(std::string_view body) {
  rapidjson::Document doc;
  if (absl::Status s = ParseJson(body, "register response", doc); !s.ok()) {
    return s;
  }
  absl::StatusOr<Fields> top = Fields::Of(doc, "");
  if (!top.ok()) return Invalid("register response", "expected an object");
  absl::StatusOr<std::optional<Fields>> resource = top->Object("resource");
  if (!resource.ok()) return resource.status();
  std::string id;
  if (*resource) {
    if (absl::Status s = (*resource)->String("delegateId", id); !s.ok()) {
      return s;
    }
  }
  if (id.empty()) {
    return Invalid("resource.delegateId",
                   "missing from the register response; the manager did not "
                   "accept the registration");
  }
  return id;
}

}  // namespace delegate::harness

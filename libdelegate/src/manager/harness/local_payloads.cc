#include "manager/harness/local_payloads.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <utility>

#include "absl/functional/function_ref.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "executor/names.h"
#include "manager/harness/json_fields.h"
#include "rapidjson/document.h"
#include "util/strings.h"

namespace delegate::harness {
namespace {

constexpr int64_t kMiB = 1024 * 1024;
constexpr size_t kMaxStepIdBytes = 128;

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

// The transaction key of execute and cleanup data, which name the network as
// a string ("network"), where init has an object ("network":{"id"}).
absl::StatusOr<std::string> NetworkTransactionKey(const Fields& data) {
  std::string network;
  if (absl::Status s = data.String("network", network); !s.ok()) return s;
  return TransactionKey(data, std::move(network), data.PathOf("network"));
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

absl::Status ParseVolumeMount(const Fields& m, Step& step) {
  VolumeMount mount;
  absl::Status s;
  if (s = m.String("name", mount.name); !s.ok()) return s;
  if (s = m.String("path", mount.path); !s.ok()) return s;
  if (mount.name.empty()) {
    return Invalid(m.PathOf("name"), "a volume mount needs a name");
  }
  if (mount.path.empty()) {
    return Invalid(m.PathOf("path"), "a volume mount needs a path");
  }
  step.volume_mounts.push_back(std::move(mount));
  return absl::OkStatus();
}

// The host path of a cleanup volume entry to delete, if it is one.
absl::Status ParseCleanupVolume(const Fields& entry, CleanupPayload& out) {
  absl::StatusOr<std::optional<Fields>> host = entry.Object("host");
  if (!host.ok()) return host.status();
  if (!*host) return absl::OkStatus();  // temp volumes go with the containers
  std::string path;
  bool remove = false;
  absl::Status s;
  if (s = (*host)->String("path", path); !s.ok()) return s;
  if (s = (*host)->Bool("remove", remove); !s.ok()) return s;
  if (remove && path.empty()) {
    return Invalid((*host)->PathOf("path"),
                   "empty in a host volume marked remove");
  }
  if (remove) out.host_paths.push_back(std::move(path));
  return absl::OkStatus();
}

// Parses `data_json` as task data and reads a T from it with `read`.
template <typename T>
absl::StatusOr<T> ParseTaskData(
    std::string_view data_json,
    absl::FunctionRef<absl::Status(const Fields&, T&)> read) {
  rapidjson::Document doc;
  absl::StatusOr<Fields> data = ParseObject(data_json, "task.data", doc);
  if (!data.ok()) return data.status();
  T out;
  if (absl::Status s = read(*data, out); !s.ok()) return s;
  return out;
}

absl::Status ReadInit(const Fields& data, InitPayload& out) {
  absl::Status s;
  absl::StatusOr<std::optional<Fields>> network = data.Object("network");
  if (!network.ok()) return network.status();
  if (*network) {
    if (s = (*network)->String("id", out.network_id); !s.ok()) return s;
  }
  absl::StatusOr<std::string> key =
      TransactionKey(data, out.network_id, Child(data.PathOf("network"), "id"));
  if (!key.ok()) return key.status();
  out.transaction_key = *std::move(key);
  if (s = data.String("log_key", out.log_key); !s.ok()) return s;

  out.stage.name = out.transaction_key;
  out.stage.platform = "local";
  if (s = data.StringMap("envs", out.stage.env); !s.ok()) return s;
  return data.ForEachObject(
      "volumes", [&](const Fields& entry) { return ParseVolume(entry, out); });
}

absl::Status ReadExecute(const Fields& data, ExecutePayload& out) {
  Step& step = out.step;
  absl::Status s;

  absl::StatusOr<std::string> key = NetworkTransactionKey(data);
  if (!key.ok()) return key.status();
  out.transaction_key = *std::move(key);
  if (s = data.String("log_key", out.log_key); !s.ok()) return s;

  if (s = data.String("id", out.step_id); !s.ok()) return s;
  if (out.step_id.empty()) {
    return Invalid(data.PathOf("id"), "missing; a step needs an id");
  }
  step.id = SanitizeName(out.step_id, '_', kMaxStepIdBytes);
  if (s = data.String("name", step.name); !s.ok()) return s;
  if (s = data.String("image", step.image); !s.ok()) return s;

  absl::StatusOr<CommandBlock> command = ParseCommand(data);
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

  if (s = data.StringMap("environment", step.envs); !s.ok()) return s;
  if (s = data.String("working_dir", step.working_dir); !s.ok()) return s;
  int64_t timeout = 0;
  if (s = data.NonNegative("timeout", timeout); !s.ok()) return s;
  if (timeout > 0) step.timeout = absl::Seconds(timeout);
  if (s = data.Strings("output_vars", step.outputs); !s.ok()) return s;

  std::string user;
  if (s = data.String("user", user); !s.ok()) return s;
  if (!user.empty()) {
    if (s = ParseUser(user, data.PathOf("user"), step.security_context);
        !s.ok()) {
      return s;
    }
  }
  bool privileged = false;
  if (s = data.Bool("privileged", privileged); !s.ok()) return s;
  if (privileged) step.security_context.privileged = true;

  if (s = data.ForEachObject(
          "volumes",
          [&](const Fields& m) { return ParseVolumeMount(m, step); });
      !s.ok()) {
    return s;
  }

  std::string pull;
  if (s = data.String("pull", pull); !s.ok()) return s;
  absl::StatusOr<PullPolicy> policy = ParsePull(pull, data.PathOf("pull"));
  if (!policy.ok()) return policy.status();
  step.pull = *policy;

  absl::StatusOr<std::optional<Fields>> auth = data.Object("auth");
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

  if (s = ParseStepResources(data, step.resources); !s.ok()) return s;

  std::vector<std::string> secrets;
  if (s = data.Strings("secrets", secrets); !s.ok()) return s;
  for (std::string& value : secrets) {
    if (!value.empty() && std::find(out.masks.begin(), out.masks.end(),
                                    value) == out.masks.end()) {
      out.masks.push_back(std::move(value));
    }
  }
  return absl::OkStatus();
}

absl::Status ReadCleanup(const Fields& data, CleanupPayload& out) {
  absl::Status s;
  absl::StatusOr<std::string> key = NetworkTransactionKey(data);
  if (!key.ok()) return key.status();
  out.transaction_key = *std::move(key);

  if (s = data.ForEachObject(
          "volumes",
          [&](const Fields& entry) { return ParseCleanupVolume(entry, out); });
      !s.ok()) {
    return s;
  }

  absl::StatusOr<std::optional<Fields>> containers = data.Object("containers");
  if (!containers.ok()) return containers.status();
  if (*containers) {
    if (s = (*containers)->StringMap("labels", out.labels); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<InitPayload> ParseInitPayload(std::string_view data_json) {
  return ParseTaskData<InitPayload>(data_json, ReadInit);
}

absl::StatusOr<ExecutePayload> ParseExecutePayload(std::string_view data_json) {
  return ParseTaskData<ExecutePayload>(data_json, ReadExecute);
}

absl::StatusOr<CleanupPayload> ParseCleanupPayload(std::string_view data_json) {
  return ParseTaskData<CleanupPayload>(data_json, ReadCleanup);
}

}  // namespace delegate::harness

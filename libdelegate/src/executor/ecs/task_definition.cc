#include "executor/ecs/task_definition.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "aws/endpoints.h"
#include "aws/sigv4.h"
#include "executor/shell.h"
#include "rapidjson/stringbuffer.h"
#include "rapidjson/writer.h"
#include "util/json.h"
#include "util/strings.h"

namespace delegate::ecs {
namespace {

using json::Writer;

// ECS's overrides limit.
constexpr size_t kMaxOverrides = 8192;

// Fargate's task sizes: cpu units -> memory MiB (min, max, step).
struct FargateRow {
  int cpu;
  std::vector<int> memory;
};

std::vector<int> Range(int from, int to, int step) {
  std::vector<int> out;
  for (int m = from; m <= to; m += step) out.push_back(m);
  return out;
}

const std::vector<FargateRow>& FargateTable() {
  static const std::vector<FargateRow>* table = new std::vector<FargateRow>{
      {256, {512, 1024, 2048}},
      {512, {1024, 2048, 3072, 4096}},
      {1024, Range(2048, 8192, 1024)},
      {2048, Range(4096, 16384, 1024)},
      {4096, Range(8192, 30720, 1024)},
      {8192, Range(16384, 61440, 4096)},
      {16384, Range(32768, 122880, 8192)},
  };
  return *table;
}

std::string Vcpus(int units) {
  return absl::StrCat(static_cast<double>(units) / 1024.0);
}

std::string ListMemory(const std::vector<int>& memory) {
  if (memory.size() <= 4) return absl::StrJoin(memory, ", ");
  return absl::StrCat(memory.front(), " to ", memory.back(), " in steps of ",
                      memory[1] - memory[0]);
}

std::string Field(size_t index, std::string_view rest) {
  return absl::StrCat("steps[", index, "].", AbslView(rest));
}

// The container path of a mount, made absolute under the workspace.
std::string MountPath(const std::string& path) {
  if (absl::StartsWith(path, "/")) return path;
  return absl::StrCat(kWorkspacePath, "/", path);
}

std::string VolumeName(const std::string& name) {
  return "v-" + EcsName(name, 200);
}

std::string CapabilityName(std::string_view cap) {
  std::string c = absl::AsciiStrToUpper(AbslView(cap));
  if (absl::StartsWith(c, "CAP_")) c.erase(0, 4);
  return c;
}

// A mount a task's containers get besides the step's own.
struct ExtraMount {
  const char* volume;
  const char* path;
  bool read_only;
};

// family, compatibilities, network mode, the Fargate size and platform,
// and the roles: the start of every task definition.
void WriteTaskHeader(Writer& w, const std::string& family, bool fargate,
                     const std::string& network_mode, const TaskSize& size,
                     const EcsExecutorOptions& options) {
  json::StringField(w, "family", family);
  json::Key(w, "requiresCompatibilities");
  json::StringList(w, {fargate ? "FARGATE" : "EC2"});
  json::StringField(w, "networkMode", network_mode);
  if (fargate) {
    json::StringField(w, "cpu", absl::StrCat(size.cpu_units));
    json::StringField(w, "memory", absl::StrCat(size.memory_mib));
    json::Key(w, "runtimePlatform");
    w.StartObject();
    json::StringField(w, "operatingSystemFamily", "LINUX");
    w.EndObject();
  }
  if (!options.execution_role_arn.empty()) {
    json::StringField(w, "executionRoleArn", options.execution_role_arn);
  }
  if (!options.task_role_arn.empty()) {
    json::StringField(w, "taskRoleArn", options.task_role_arn);
  }
}

// "volumes": the task's own (`own`: the workspace, and in a stage task the
// runner's), then the stage's volumes that are `mounted`; on Fargate, then
// ephemeralStorage for their empty_dir sizes.
void WriteVolumes(Writer& w, const Stage& stage,
                  const std::vector<std::string>& own,
                  const std::set<std::string>& mounted, bool fargate) {
  int64_t ephemeral_mib = 0;
  json::Key(w, "volumes");
  w.StartArray();
  for (const std::string& name : own) {
    w.StartObject();
    json::StringField(w, "name", name);
    w.EndObject();
  }
  for (const Volume& v : stage.volumes) {
    if (!mounted.contains(v.name)) continue;
    w.StartObject();
    json::StringField(w, "name", VolumeName(v.name));
    if (const auto* e = std::get_if<EmptyDirVolume>(&v.source)) {
      ephemeral_mib += e->size_mib.value_or(0);
    } else if (const auto* h = std::get_if<HostPathVolume>(&v.source)) {
      json::Key(w, "host");
      w.StartObject();
      json::StringField(w, "sourcePath", h->path);
      w.EndObject();
    } else if (const auto* efs = std::get_if<EfsVolume>(&v.source)) {
      json::Key(w, "efsVolumeConfiguration");
      w.StartObject();
      json::StringField(w, "fileSystemId", efs->filesystem_id);
      if (!efs->root_directory.empty()) {
        json::StringField(w, "rootDirectory", efs->root_directory);
      }
      json::StringField(w, "transitEncryption",
                        efs->transit_encryption ? "ENABLED" : "DISABLED");
      if (!efs->access_point_id.empty() || efs->iam) {
        json::Key(w, "authorizationConfig");
        w.StartObject();
        if (!efs->access_point_id.empty()) {
          json::StringField(w, "accessPointId", efs->access_point_id);
        }
        json::StringField(w, "iam", efs->iam ? "ENABLED" : "DISABLED");
        w.EndObject();
      }
      w.EndObject();
    }
    w.EndObject();
  }
  w.EndArray();
  if (fargate && ephemeral_mib > 0) {
    json::Key(w, "ephemeralStorage");
    w.StartObject();
    json::Key(w, "sizeInGiB");
    w.Int64(std::clamp<int64_t>((ephemeral_mib + 1023) / 1024, 21, 200));
    w.EndObject();
  }
}

// The container's user, privilege, read-only root and capabilities;
// `init`: ECS's init process as PID 1.
void WriteSecurity(Writer& w, const SecurityContext& sc, bool init) {
  if (sc.run_as_user || sc.run_as_group) {
    json::StringField(w, "user",
                      sc.run_as_group ? absl::StrCat(sc.run_as_user.value_or(0),
                                                     ":", *sc.run_as_group)
                                      : absl::StrCat(*sc.run_as_user));
  }
  if (sc.privileged) {
    json::Key(w, "privileged");
    w.Bool(*sc.privileged);
  }
  if (sc.read_only_root_filesystem) {
    json::Key(w, "readonlyRootFilesystem");
    w.Bool(*sc.read_only_root_filesystem);
  }
  json::Key(w, "linuxParameters");
  w.StartObject();
  if (init) {
    json::Key(w, "initProcessEnabled");
    w.Bool(true);
  }
  if (!sc.add_capability.empty() || !sc.drop_capability.empty()) {
    json::Key(w, "capabilities");
    w.StartObject();
    for (const auto& [key, names] : {std::pair{"add", &sc.add_capability},
                                     std::pair{"drop", &sc.drop_capability}}) {
      if (names->empty()) continue;
      json::Key(w, key);
      w.StartArray();
      for (const std::string& c : *names) json::String(w, CapabilityName(c));
      w.EndArray();
    }
    w.EndObject();
  }
  w.EndObject();
}

// "mountPoints": `extra` first, then the step's volume mounts.
void WriteMountPoints(Writer& w, const Stage& stage,
                      const std::vector<ExtraMount>& extra,
                      const std::vector<VolumeMount>& mounts) {
  json::Key(w, "mountPoints");
  w.StartArray();
  for (const ExtraMount& m : extra) {
    w.StartObject();
    json::StringField(w, "sourceVolume", m.volume);
    json::StringField(w, "containerPath", m.path);
    if (m.read_only) {
      json::Key(w, "readOnly");
      w.Bool(true);
    }
    w.EndObject();
  }
  for (const VolumeMount& m : mounts) {
    const Volume* v = stage.FindVolume(m.name);
    if (!v) continue;
    w.StartObject();
    json::StringField(w, "sourceVolume", VolumeName(v->name));
    json::StringField(w, "containerPath", MountPath(m.path));
    if (const auto* h = std::get_if<HostPathVolume>(&v->source);
        h && h->read_only) {
      json::Key(w, "readOnly");
      w.Bool(true);
    }
    w.EndObject();
  }
  w.EndArray();
}

// The awslogs driver, to options.log_group under `prefix`.
void WriteAwsLogs(Writer& w, const EcsExecutorOptions& options,
                  const std::string& region, const std::string& prefix) {
  json::Key(w, "logConfiguration");
  w.StartObject();
  json::StringField(w, "logDriver", "awslogs");
  json::Key(w, "options");
  w.StartObject();
  json::StringField(w, "awslogs-group", options.log_group);
  json::StringField(w, "awslogs-region", region);
  json::StringField(w, "awslogs-stream-prefix", prefix);
  // Completeness over availability: a CI log with holes is worse than a
  // step that waits for CloudWatch.
  json::StringField(w, "mode", "blocking");
  w.EndObject();
  w.EndObject();
}

// The step's env whose values are Secrets Manager or SSM ARNs: ECS gives
// them to its container as `secrets`.
std::map<std::string, std::string> SecretArnEnv(const Step& step) {
  std::map<std::string, std::string> out;
  for (const auto& [name, value] : step.envs) {
    if (IsSecretArn(value)) out[name] = value;
  }
  return out;
}

// "secrets": the container's env from secret ARNs.
void WriteSecrets(Writer& w, const std::map<std::string, std::string>& arns) {
  if (arns.empty()) return;
  json::Key(w, "secrets");
  w.StartArray();
  for (const auto& [name, arn] : arns) {
    w.StartObject();
    json::StringField(w, "name", name);
    json::StringField(w, "valueFrom", arn);
    w.EndObject();
  }
  w.EndArray();
}

// repositoryCredentials, when the step's registry has a password (by then
// a Secrets Manager ARN: CheckStageForEcs).
void WriteRegistry(Writer& w, const Step& step) {
  if (!step.registry || step.registry->password.empty()) return;
  json::Key(w, "repositoryCredentials");
  w.StartObject();
  json::StringField(w, "credentialsParameter", step.registry->password);
  w.EndObject();
}

// stopTimeout: the grace after SIGTERM, within what ECS allows.
void WriteStopTimeout(Writer& w, const EcsExecutorOptions& options) {
  json::Key(w, "stopTimeout");
  w.Int64(
      std::clamp<int64_t>(absl::ToInt64Seconds(options.grace_period), 2, 120));
}

// Ends a definition: its key is of everything but the tags (which name the
// stage), then the tags; `key` and `json` get both.
void FinishDefinition(
    const rapidjson::StringBuffer& b, Writer& w,
    const std::vector<std::pair<std::string, std::string>>& tags,
    std::string* key, std::string* json) {
  *key = aws::HexSha256(std::string(b.GetString()) + "}");
  if (!tags.empty()) {
    json::Key(w, "tags");
    WriteTags(w, tags);
  }
  w.EndObject();
  *json = b.GetString();
}

}  // namespace

std::string EcsName(std::string_view s, size_t max) {
  std::string out;
  for (char c : s) {
    if (out.size() >= max) break;
    out += absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' ||
                   c == '-'
               ? c
               : '-';
  }
  return out;
}

void WriteTags(json::Writer& w,
               const std::vector<std::pair<std::string, std::string>>& tags) {
  w.StartArray();
  for (const auto& [key, value] : tags) {
    w.StartObject();
    json::StringField(w, "key", key);
    json::StringField(w, "value", value);
    w.EndObject();
  }
  w.EndArray();
}

std::string TaskFamily(std::string_view delegate_name) {
  return "libdelegate-" + EcsName(delegate_name, 200);
}

std::string EcsTagValue(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (out.size() >= 256) break;
    const bool ok =
        absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
        std::string_view("_.:/=+-@ ").find(c) != std::string_view::npos;
    out += ok ? c : '_';
  }
  return out;
}

bool IsSecretArn(std::string_view value) {
  absl::StatusOr<aws::Arn> arn = aws::ParseArn(value);
  return arn.ok() && (arn->service == "secretsmanager" ||
                      (arn->service == "ssm" &&
                       absl::StartsWith(arn->resource, "parameter")));
}

absl::StatusOr<TaskSize> FargateTaskSize(const Resources& resources,
                                         const std::string& field) {
  const auto& table = FargateTable();
  if (!resources.cpus && !resources.memory_mib) return TaskSize{1024, 2048};
  const FargateRow* row = nullptr;
  if (resources.cpus) {
    const double units = *resources.cpus * 1024.0;
    for (const FargateRow& r : table) {
      if (std::fabs(r.cpu - units) < 0.5) row = &r;
    }
    if (!row) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".cpus: Fargate has no task size of ", *resources.cpus,
          " vCPU; use 0.25, 0.5, 1, 2, 4, 8 or 16"));
    }
  }
  if (!resources.memory_mib) return TaskSize{row->cpu, row->memory.front()};
  const int64_t memory = *resources.memory_mib;
  if (row) {
    if (std::find(row->memory.begin(), row->memory.end(), memory) ==
        row->memory.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".memory_mib: ", memory, " MiB does not go with ",
                       Vcpus(row->cpu), " vCPU on Fargate; use ",
                       ListMemory(row->memory), " MiB"));
    }
    return TaskSize{row->cpu, static_cast<int>(memory)};
  }
  for (const FargateRow& r : table) {
    if (std::find(r.memory.begin(), r.memory.end(), memory) != r.memory.end()) {
      return TaskSize{r.cpu, static_cast<int>(memory)};
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      field, ".memory_mib: Fargate has no task size with ", memory,
      " MiB; use 512, 1024, 2048, ... (multiples of 1024 up to 30720 for 4 "
      "vCPU; see the Fargate task size table)"));
}

namespace {
std::string ContainerShape(const Step& step);
}  // namespace

std::vector<std::string> CheckStageForEcs(const Stage& stage, LaunchType launch,
                                          bool stage_task) {
  std::vector<std::string> problems;
  std::vector<std::string> secret_values;
  for (const auto& [id, value] : stage.secrets) {
    if (!value.empty()) secret_values.push_back(value);
  }
  auto holds_secret = [&](std::string_view text) {
    if (stage_task) return false;  // over the runner's channel only
    for (const std::string& s : secret_values) {
      if (text.find(s) != std::string_view::npos) return true;
    }
    return false;
  };
  constexpr char kSecretAdvice[] =
      " holds a secret value, which ECS would show in the task's overrides "
      "and CloudTrail; store it in AWS Secrets Manager and set the variable "
      "to the secret's ARN (arn:aws:secretsmanager:...), which the step then "
      "sees as the value";
  for (size_t i = 0; i < stage.steps.size(); ++i) {
    const Step& step = stage.steps[i];
    for (const auto& [name, value] : step.envs) {
      if (holds_secret(value)) {
        problems.push_back(
            absl::StrCat(Field(i, absl::StrCat("envs.", name)), kSecretAdvice));
      }
    }
    auto check_list = [&](const std::vector<std::string>& list,
                          std::string_view what) {
      for (size_t j = 0; j < list.size(); ++j) {
        if (holds_secret(list[j])) {
          problems.push_back(absl::StrCat(
              Field(i, absl::StrCat(AbslView(what), "[", j, "]")),
              " holds a secret value, which ECS would show in the task's "
              "overrides and CloudTrail; pass it through an environment "
              "variable set to a Secrets Manager ARN instead"));
        }
      }
    };
    check_list(step.commands, "commands");
    check_list(step.entrypoint, "entrypoint");
    check_list(step.args, "args");
    if (step.registry && !step.registry->password.empty() &&
        !IsSecretArn(step.registry->password)) {
      problems.push_back(absl::StrCat(
          Field(i, "registry.password"),
          ": ECS reads registry credentials from AWS Secrets Manager; store "
          "{\"username\",\"password\"} there and give the secret's ARN as the "
          "password (ECR images need no credentials: the execution role "
          "pulls them)"));
    }
    if (!step.outputs.empty() && !stage_task) {
      problems.push_back(absl::StrCat(
          Field(i, "outputs"),
          ": output variables are not read back from ECS tasks yet; print "
          "them to the log or write them to an EFS volume"));
    }
    if (step.image.empty()) {
      problems.push_back(absl::StrCat(Field(i, "image"),
                                      ": every step on ECS needs an image"));
    }
    if (stage_task && step.commands.empty() && step.entrypoint.empty()) {
      problems.push_back(absl::StrCat(
          Field(i, "commands"),
          ": in an ECS stage task a step needs commands or an entrypoint "
          "(the image's own command is replaced by the step agent)"));
    }
    if (launch == LaunchType::kFargate) {
      absl::StatusOr<TaskSize> size =
          FargateTaskSize(step.resources, Field(i, "resources"));
      if (!size.ok()) problems.push_back(std::string(size.status().message()));
      int64_t ephemeral = 0;
      for (const VolumeMount& m : step.volume_mounts) {
        const Volume* v = stage.FindVolume(m.name);
        if (!v) continue;
        if (const auto* e = std::get_if<EmptyDirVolume>(&v->source)) {
          ephemeral += e->size_mib.value_or(0);
        }
      }
      if (ephemeral > 200 * 1024) {
        problems.push_back(
            absl::StrCat(Field(i, "volume_mounts"),
                         ": the step's empty_dir volumes add up "
                         "to ",
                         ephemeral,
                         " MiB; a Fargate task has at most 204800 MiB "
                         "(200 GiB) of ephemeral storage"));
      }
    }
  }
  if (stage_task) {
    std::set<std::string> shapes;
    for (const Step& step : stage.steps) shapes.insert(ContainerShape(step));
    if (shapes.size() > kMaxStepContainers) {
      problems.push_back(absl::StrCat(
          "steps: ", shapes.size(),
          " distinct images, security contexts, mounts and resources need as "
          "many step containers; an ECS stage task holds at most ",
          kMaxStepContainers, "; make steps share them"));
    }
  }
  return problems;
}

absl::StatusOr<StepTask> BuildStepTask(const Stage& stage, const Step& step,
                                       const StepTaskInputs& in) {
  const EcsExecutorOptions& options = *in.options;
  const bool fargate = in.launch == LaunchType::kFargate;

  // What the container runs, and with which variables.
  std::vector<std::string> entry_point;
  std::vector<std::string> command;
  const std::string working_dir =
      step.working_dir.empty() ? kWorkspacePath : MountPath(step.working_dir);
  if (!step.commands.empty()) {
    entry_point = {"/bin/sh", "-c"};
    command = {absl::StrCat("mkdir -p ", ShellQuote(working_dir), " && cd ",
                            ShellQuote(working_dir), " || exit 1\n",
                            CommandScript(step.commands))};
  } else {
    entry_point = step.entrypoint;
    command = step.args;
  }
  std::map<std::string, std::string> plain_env;
  std::map<std::string, std::string> secrets;
  for (const auto& [name, value] : step.envs) {
    (IsSecretArn(value) ? secrets : plain_env)[name] = value;
  }
  plain_env["HARNESS_WORKSPACE"] = kWorkspacePath;

  auto write_env = [&](Writer& w) {
    w.StartArray();
    for (const auto& [name, value] : plain_env) {
      w.StartObject();
      json::StringField(w, "name", name);
      json::StringField(w, "value", value);
      w.EndObject();
    }
    w.EndArray();
  };

  // The overrides, unless they are too long for ECS.
  std::string overrides;
  {
    rapidjson::StringBuffer b;
    Writer w(b);
    w.StartObject();
    json::Key(w, "containerOverrides");
    w.StartArray();
    w.StartObject();
    json::StringField(w, "name", kStepContainer);
    if (!command.empty()) {
      json::Key(w, "command");
      json::StringList(w, command);
    }
    json::Key(w, "environment");
    write_env(w);
    w.EndObject();
    w.EndArray();
    w.EndObject();
    overrides = b.GetString();
  }
  const bool inline_run = overrides.size() > kMaxOverrides;
  if (inline_run) overrides.clear();

  // The volumes this step mounts, plus its scratch workspace.
  std::set<std::string> mounted;
  for (const VolumeMount& m : step.volume_mounts) mounted.insert(m.name);

  TaskSize size;
  if (fargate) {
    absl::StatusOr<TaskSize> fargate_size =
        FargateTaskSize(step.resources, "step " + step.id + " resources");
    if (!fargate_size.ok()) return fargate_size.status();
    size = *fargate_size;
  }
  rapidjson::StringBuffer b;
  Writer w(b);
  w.StartObject();
  WriteTaskHeader(w, in.family, fargate, in.network_mode, size, options);
  WriteVolumes(w, stage, {"workspace"}, mounted, fargate);

  json::Key(w, "containerDefinitions");
  w.StartArray();
  w.StartObject();
  json::StringField(w, "name", kStepContainer);
  json::StringField(w, "image", step.image);
  json::Key(w, "essential");
  w.Bool(true);
  if (!entry_point.empty()) {
    json::Key(w, "entryPoint");
    json::StringList(w, entry_point);
  }
  if (inline_run) {
    if (!command.empty()) {
      json::Key(w, "command");
      json::StringList(w, command);
    }
    json::Key(w, "environment");
    write_env(w);
  }
  json::StringField(w, "workingDirectory",
                    step.commands.empty() ? working_dir : kWorkspacePath);
  if (!fargate) {
    json::Key(w, "memory");
    w.Int64(step.resources.memory_mib.value_or(512));
    if (step.resources.cpus) {
      json::Key(w, "cpu");
      w.Int64(static_cast<int64_t>(std::llround(*step.resources.cpus * 1024)));
    }
  }
  // The shell gets the stop signal and reaps orphans, as under Docker's
  // --init.
  WriteSecurity(w, step.security_context, /*init=*/true);
  WriteMountPoints(w, stage, {{"workspace", kWorkspacePath, false}},
                   step.volume_mounts);
  WriteSecrets(w, secrets);
  WriteRegistry(w, step);
  WriteStopTimeout(w, options);
  WriteAwsLogs(w, options, in.region, options.log_stream_prefix);
  w.EndObject();
  w.EndArray();

  // Everything above decides whether two steps can share a revision; the
  // tags (which name the stage) do not.
  StepTask out;
  FinishDefinition(b, w, in.tags, &out.definition_key, &out.register_json);
  out.overrides_json = std::move(overrides);
  return out;
}

namespace {

// What makes two steps need different step containers: what ECS sets per
// container.
// dependsOn: the install container, successfully ended.
void WriteDependsOnInstall(Writer& w) {
  json::Key(w, "dependsOn");
  w.StartArray();
  w.StartObject();
  json::StringField(w, "containerName", kInstallContainer);
  json::StringField(w, "condition", "SUCCESS");
  w.EndObject();
  w.EndArray();
}

std::string ContainerShape(const Step& step) {
  const SecurityContext& sc = step.security_context;
  std::vector<std::string> mounts;
  for (const VolumeMount& m : step.volume_mounts) {
    mounts.push_back(absl::StrCat(m.name, "=", m.path));
  }
  std::sort(mounts.begin(), mounts.end());
  return absl::StrCat(
      step.image, "\n", sc.run_as_user.value_or(-1), ":",
      sc.run_as_group.value_or(-1), "\n", sc.privileged.value_or(false),
      sc.read_only_root_filesystem.value_or(false), "\n",
      absl::StrJoin(sc.add_capability, ","), "\n",
      absl::StrJoin(sc.drop_capability, ","), "\n", absl::StrJoin(mounts, ","),
      "\n", step.registry ? step.registry->password : "", "\n",
      step.resources.cpus.value_or(0), "/",
      step.resources.memory_mib.value_or(0), "\n",
      absl::StrJoin(SecretArnEnv(step), ",", absl::PairFormatter("=")));
}

// The smallest Fargate size with at least `cpu_units` and `memory_mib`
// (each step's own size is valid; the largest of each may not be a pair).
TaskSize CoveringFargateSize(int cpu_units, int memory_mib) {
  for (const FargateRow& row : FargateTable()) {
    if (row.cpu < cpu_units) continue;
    for (int m : row.memory) {
      if (m >= memory_mib) return TaskSize{row.cpu, m};
    }
  }
  const FargateRow& last = FargateTable().back();
  return TaskSize{last.cpu, last.memory.back()};
}

}  // namespace

absl::StatusOr<StageTask> BuildStageTask(const Stage& stage,
                                         const StageTaskInputs& in) {
  const EcsExecutorOptions& options = *in.options;
  const bool fargate = in.launch == LaunchType::kFargate;
  StageTask out;
  // One step container per shape, named in the order steps first need it.
  std::map<std::string, std::string> by_shape;
  std::vector<const Step*> first_of;
  int cpu_units = 0;
  int memory_mib = 0;
  std::set<std::string> mounted;
  for (const Step& step : stage.steps) {
    auto [it, added] = by_shape.try_emplace(
        ContainerShape(step), absl::StrCat("step-", by_shape.size() + 1));
    if (added) {
      out.containers.push_back(it->second);
      first_of.push_back(&step);
    }
    out.step_containers.push_back(it->second);
    for (const VolumeMount& m : step.volume_mounts) mounted.insert(m.name);
    if (fargate) {
      absl::StatusOr<TaskSize> own =
          FargateTaskSize(step.resources, "step " + step.id + " resources");
      if (!own.ok()) return own.status();
      cpu_units = std::max(cpu_units, own->cpu_units);
      memory_mib = std::max(memory_mib, own->memory_mib);
    }
  }
  if (stage.steps.empty()) {
    return absl::FailedPreconditionError(
        "a stage task needs its steps when the stage begins (a stage whose "
        "steps arrive one at a time cannot run as one ECS task yet)");
  }
  if (out.containers.size() > kMaxStepContainers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the stage needs ", out.containers.size(),
        " step containers (one per distinct image, security context, mounts "
        "and resources); an ECS task holds at most ",
        kMaxStepContainers, " besides the runner's two"));
  }
  const TaskSize size =
      fargate ? CoveringFargateSize(cpu_units, memory_mib) : TaskSize{};

  rapidjson::StringBuffer b;
  Writer w(b);
  w.StartObject();
  WriteTaskHeader(w, in.family, fargate, "awsvpc", size, options);
  WriteVolumes(w, stage, {"workspace", "delegate", "engine"}, mounted, fargate);
  json::Key(w, "containerDefinitions");
  w.StartArray();
  auto runner_env = [&](Writer& w) {
    json::Key(w, "environment");
    w.StartArray();
    w.StartObject();
    json::StringField(w, "name", "DELEGATE_RUNNER_DIR");
    json::StringField(w, "value", kRunnerDir);
    w.EndObject();
    w.StartObject();
    json::StringField(w, "name", "DELEGATE_RUNNER_SHARED");
    json::StringField(w, "value",
                      absl::StrCat(kWorkspacePath, ",", kEnginePath));
    w.EndObject();
    w.StartObject();
    json::StringField(w, "name", "DELEGATE_RUNNER_LISTEN");
    json::StringField(w, "value", absl::StrCat("0.0.0.0:", kRunnerPort));
    w.EndObject();
    w.EndArray();
  };
  auto ec2_memory = [&](Writer& w, int64_t mib) {
    if (fargate) return;
    json::Key(w, "memory");
    w.Int64(mib);
  };
  // The install container puts delegate-step into the shared directory and
  // ends; the step containers start once it has succeeded.
  w.StartObject();
  json::StringField(w, "name", kInstallContainer);
  json::StringField(w, "image", in.runner_image);
  json::Key(w, "essential");
  w.Bool(false);
  json::Key(w, "command");
  json::StringList(w, {"runner", "--install"});
  // Root: task volumes start root-owned 0755; it opens them to the runner
  // and to steps that run as other users (as the docker executor does).
  json::StringField(w, "user", "0");
  runner_env(w);
  ec2_memory(w, 64);
  WriteMountPoints(w, stage,
                   {{"delegate", kRunnerDir, false},
                    {"workspace", kWorkspacePath, false},
                    {"engine", kEnginePath, false}},
                   {});
  WriteAwsLogs(w, options, in.region, "stage");
  w.EndObject();
  // The runner: the task lives as long as it does.
  w.StartObject();
  json::StringField(w, "name", kRunnerContainer);
  json::StringField(w, "image", in.runner_image);
  json::Key(w, "essential");
  w.Bool(true);
  json::Key(w, "command");
  json::StringList(w, {"runner"});
  runner_env(w);
  ec2_memory(w, 256);
  WriteDependsOnInstall(w);
  json::Key(w, "portMappings");
  w.StartArray();
  w.StartObject();
  json::Key(w, "containerPort");
  w.Int(kRunnerPort);
  json::StringField(w, "protocol", "tcp");
  w.EndObject();
  w.EndArray();
  WriteMountPoints(w, stage,
                   {{"delegate", kRunnerDir, false},
                    {"workspace", kWorkspacePath, false},
                    {"engine", kEnginePath, false}},
                   {});
  WriteStopTimeout(w, options);
  WriteAwsLogs(w, options, in.region, "stage");
  w.EndObject();
  for (size_t i = 0; i < out.containers.size(); ++i) {
    const Step& step = *first_of[i];
    w.StartObject();
    json::StringField(w, "name", out.containers[i]);
    json::StringField(w, "image", step.image);
    json::Key(w, "essential");
    w.Bool(false);
    json::Key(w, "entryPoint");
    json::StringList(w, {absl::StrCat(kRunnerDir, "/delegate-step"), "--socket",
                         absl::StrCat(kRunnerDir, "/runner.sock"), "--name",
                         out.containers[i]});
    // No command: the image's own would be the agent's arguments.
    json::Key(w, "command");
    json::StringList(w, {"--"});
    WriteDependsOnInstall(w);
    json::StringField(w, "workingDirectory", kWorkspacePath);
    ec2_memory(w, step.resources.memory_mib.value_or(512));
    if (!fargate && step.resources.cpus) {
      json::Key(w, "cpu");
      w.Int64(static_cast<int64_t>(std::llround(*step.resources.cpus * 1024)));
    }
    // The agent is PID 1: it reaps and passes the stop signal on itself.
    WriteSecurity(w, step.security_context, /*init=*/false);
    WriteMountPoints(w, stage,
                     {{"delegate", kRunnerDir, true},
                      {"workspace", kWorkspacePath, false},
                      {"engine", kEnginePath, false}},
                     step.volume_mounts);
    // Env values that are secret ARNs: ECS puts the secret itself into the
    // container's env, which the step's inherits.
    WriteSecrets(w, SecretArnEnv(step));
    WriteRegistry(w, step);
    WriteStopTimeout(w, options);
    WriteAwsLogs(w, options, in.region, "stage");
    w.EndObject();
  }
  w.EndArray();
  FinishDefinition(b, w, in.tags, &out.definition_key, &out.register_json);
  return out;
}

std::string StageTaskOverrides(
    const std::string& client_sha256,
    const std::vector<std::pair<std::string, std::string>>& container_tokens) {
  rapidjson::StringBuffer b;
  Writer w(b);
  auto env = [&](Writer& w, const char* name, const std::string& value) {
    json::Key(w, "environment");
    w.StartArray();
    w.StartObject();
    json::StringField(w, "name", name);
    json::StringField(w, "value", value);
    w.EndObject();
    w.EndArray();
  };
  w.StartObject();
  json::Key(w, "containerOverrides");
  w.StartArray();
  w.StartObject();
  json::StringField(w, "name", kRunnerContainer);
  env(w, "DELEGATE_RUNNER_CLIENT_SHA256", client_sha256);
  w.EndObject();
  for (const auto& [container, token] : container_tokens) {
    w.StartObject();
    json::StringField(w, "name", container);
    env(w, "DELEGATE_STEP_TOKEN", token);
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  return b.GetString();
}

}  // namespace delegate::ecs

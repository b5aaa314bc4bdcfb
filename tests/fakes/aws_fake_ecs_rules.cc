// The rules ECS checks in a task definition beyond its model: Fargate's
// (task sizes, what it does not support), container names, volumes,
// capabilities, what needs an execution role, health checks and container
// dependencies.
#include <algorithm>
#include <functional>
#include <map>
#include <regex>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "tests/fakes/aws_fake_internal.h"
#include "util/strings.h"

namespace delegate::testing::aws_fake {
namespace {

// Fargate task sizes (cpu units -> allowed memory in MiB).
bool FargateSize(int cpu, int memory) {
  auto step = [&](int lo, int hi, int by) {
    return memory >= lo && memory <= hi && (memory - lo) % by == 0;
  };
  switch (cpu) {
    case 256:
      return memory == 512 || memory == 1024 || memory == 2048;
    case 512:
      return step(1024, 4096, 1024);
    case 1024:
      return step(2048, 8192, 1024);
    case 2048:
      return step(4096, 16384, 1024);
    case 4096:
      return step(8192, 30720, 1024);
    case 8192:
      return step(16384, 61440, 4096);
    case 16384:
      return step(32768, 122880, 8192);
    default:
      return false;
  }
}

// "1024" -> 1024; with `unit` ("1 vCPU", "2GB") -> that many times 1024.
std::optional<int> ParseSize(const std::string& text, std::string_view unit) {
  const std::string lower = absl::AsciiStrToLower(text);
  absl::string_view s = lower;
  if (absl::ConsumeSuffix(&s, AbslView(unit))) {
    double n = 0;
    if (!absl::SimpleAtod(absl::StripAsciiWhitespace(s), &n)) {
      return std::nullopt;
    }
    return static_cast<int>(n * 1024);
  }
  int units = 0;
  if (!absl::SimpleAtoi(s, &units)) return std::nullopt;
  return units;
}

std::optional<int> ParseCpu(const std::string& s) {
  return ParseSize(s, "vcpu");
}
std::optional<int> ParseMemory(const std::string& s) {
  return ParseSize(s, "gb");
}

// KernelCapabilities' valid values (the model's documentation).
const std::set<std::string>& Capabilities() {
  static const auto* kCapabilities = new std::set<std::string>{
      "ALL",        "AUDIT_CONTROL",   "AUDIT_WRITE",      "BLOCK_SUSPEND",
      "CHOWN",      "DAC_OVERRIDE",    "DAC_READ_SEARCH",  "FOWNER",
      "FSETID",     "IPC_LOCK",        "IPC_OWNER",        "KILL",
      "LEASE",      "LINUX_IMMUTABLE", "MAC_ADMIN",        "MAC_OVERRIDE",
      "MKNOD",      "NET_ADMIN",       "NET_BIND_SERVICE", "NET_BROADCAST",
      "NET_RAW",    "SETFCAP",         "SETGID",           "SETPCAP",
      "SETUID",     "SYS_ADMIN",       "SYS_BOOT",         "SYS_CHROOT",
      "SYS_MODULE", "SYS_NICE",        "SYS_PACCT",        "SYS_PTRACE",
      "SYS_RAWIO",  "SYS_RESOURCE",    "SYS_TIME",         "SYS_TTY_CONFIG",
      "SYSLOG",     "WAKE_ALARM"};
  return *kCapabilities;
}

// A container's healthCheck within the ranges the model's documentation
// gives.
std::optional<Reply> CheckHealthCheck(const std::string& container,
                                      const rapidjson::Value& check) {
  const std::vector<std::string> command = Strings(check, "command");
  if (command.empty() || (command[0] != "CMD" && command[0] != "CMD-SHELL")) {
    return ClientError(absl::StrCat(
        "Container '", container,
        "': healthCheck.command must start with CMD or CMD-SHELL."));
  }
  struct Range {
    const char* name;
    int64_t min;
    int64_t max;
  };
  for (const Range& r :
       {Range{"interval", 5, 300}, Range{"timeout", 2, 60},
        Range{"retries", 1, 10}, Range{"startPeriod", 0, 300}}) {
    std::optional<int64_t> value = Int(check, r.name);
    if (value && (*value < r.min || *value > r.max)) {
      return ClientError(absl::StrCat(
          "Container '", container, "': healthCheck.", r.name,
          " must be between ", r.min, " and ", r.max, ", not ", *value, "."));
    }
  }
  return std::nullopt;
}

// dependsOn: names of the task's containers, no cycle, COMPLETE and SUCCESS
// only on non-essential containers, HEALTHY only on one with a healthCheck.
std::optional<Reply> CheckDependencies(const rapidjson::Value& containers) {
  std::map<std::string, const rapidjson::Value*> by_name;
  for (const auto& c : containers.GetArray()) by_name[Str(c, "name")] = &c;
  std::map<std::string, std::vector<std::string>> edges;
  for (const auto& [name, c] : by_name) {
    const rapidjson::Value* deps = Array(*c, "dependsOn");
    if (deps == nullptr) continue;
    for (const auto& d : deps->GetArray()) {
      const std::string target = Str(d, "containerName");
      const std::string condition = Str(d, "condition");
      auto it = by_name.find(target);
      if (it == by_name.end()) {
        return ClientError(absl::StrCat(
            "Container '", name, "' dependsOn container '", target,
            "', which is not a container of the task definition."));
      }
      if ((condition == "COMPLETE" || condition == "SUCCESS") &&
          Bool(*it->second, "essential", true)) {
        return ClientError(absl::StrCat(
            "Container '", name, "' dependsOn '", target, "' with condition ",
            condition, ", but '", target,
            "' is essential: COMPLETE and SUCCESS cannot be set on an "
            "essential container."));
      }
      if (condition == "HEALTHY" && !Object(*it->second, "healthCheck")) {
        return ClientError(absl::StrCat("Container '", name, "' dependsOn '",
                                        target,
                                        "' with condition HEALTHY, but '",
                                        target, "' has no healthCheck."));
      }
      edges[name].push_back(target);
    }
  }
  // Depth-first: a container met again while on the path closes a cycle.
  std::map<std::string, int> state;  // 1: on the path, 2: done
  std::vector<std::string> path;
  std::function<std::optional<std::string>(const std::string&)> visit =
      [&](const std::string& name) -> std::optional<std::string> {
    if (state[name] == 2) return std::nullopt;
    path.push_back(name);
    if (state[name] == 1) {
      auto first = std::find(path.begin(), path.end(), name);
      return absl::StrJoin(first, path.end(), " -> ");
    }
    state[name] = 1;
    for (const std::string& next : edges[name]) {
      if (std::optional<std::string> cycle = visit(next)) return cycle;
    }
    state[name] = 2;
    path.pop_back();
    return std::nullopt;
  };
  for (const auto& [name, c] : by_name) {
    if (std::optional<std::string> cycle = visit(name)) {
      return ClientError(absl::StrCat(
          "Container dependencies (dependsOn) form a cycle: ", *cycle, "."));
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<Reply> CheckTags(const std::map<std::string, std::string>& tags) {
  for (const auto& [k, v] : tags) {
    if (absl::StartsWithIgnoreCase(k, "aws:")) {
      return InvalidParameter(
          absl::StrCat("Tag key '", k, "' uses the reserved prefix 'aws:'"));
    }
  }
  if (tags.size() > 50) {
    return InvalidParameter(
        absl::StrCat(tags.size(), " tags are more than the 50 allowed"));
  }
  return std::nullopt;
}

std::optional<Reply> CheckFargateSize(const std::string& cpu,
                                      const std::string& memory) {
  if (cpu.empty()) {
    return ClientError(
        "Fargate requires that 'cpu' be defined at the task level.");
  }
  if (memory.empty()) {
    return ClientError(
        "Fargate requires that 'memory' be defined at the task level.");
  }
  std::optional<int> c = ParseCpu(cpu);
  static const std::set<int> kCpus = {256, 512, 1024, 2048, 4096, 8192, 16384};
  if (!c || !kCpus.contains(*c)) {
    return ClientError("Invalid 'cpu' setting for task.");
  }
  std::optional<int> m = ParseMemory(memory);
  if (!m || !FargateSize(*c, *m)) {
    return ClientError(absl::StrCat(
        "Invalid 'memory' setting for task. No Fargate configuration exists "
        "for given values: ",
        cpu, " CPU, ", memory,
        " memory. See the Amazon ECS documentation for the valid values."));
  }
  return std::nullopt;
}

// What Fargate refuses in a task definition; nullopt when it can run there.
std::optional<Reply> CheckFargate(const rapidjson::Value& def) {
  const std::string network_mode = Str(def, "networkMode");
  if (network_mode != "awsvpc") {
    return ClientError(
        absl::StrCat("Fargate only supports network mode 'awsvpc', not '",
                     network_mode.empty() ? "bridge" : network_mode, "'."));
  }
  if (std::optional<Reply> bad =
          CheckFargateSize(Str(def, "cpu"), Str(def, "memory"))) {
    return bad;
  }
  for (const char* unsupported : {"ipcMode", "placementConstraints"}) {
    if (def.HasMember(unsupported) &&
        !(def[unsupported].IsArray() && def[unsupported].Empty())) {
      return ClientError(
          absl::StrCat("'", unsupported, "' is not supported on Fargate."));
    }
  }
  if (Str(def, "pidMode") == "host") {
    return ClientError("Fargate only supports pidMode 'task'.");
  }
  if (const rapidjson::Value* volumes = Array(def, "volumes")) {
    for (const auto& v : volumes->GetArray()) {
      const rapidjson::Value* host = Object(v, "host");
      if (host && !Str(*host, "sourcePath").empty()) {
        return ClientError(absl::StrCat(
            "Volume '", Str(v, "name"),
            "': host.sourcePath is not supported on Fargate; use a volume "
            "with only a name (task storage) or EFS."));
      }
      if (Object(v, "dockerVolumeConfiguration")) {
        return ClientError(absl::StrCat(
            "Volume '", Str(v, "name"),
            "': dockerVolumeConfiguration is not supported on Fargate."));
      }
    }
  }
  for (const auto& c : def["containerDefinitions"].GetArray()) {
    const std::string name = Str(c, "name");
    if (Bool(c, "privileged", false)) {
      return ClientError(
          absl::StrCat("Container '", name,
                       "': privileged mode is not supported on Fargate."));
    }
    for (const char* unsupported :
         {"disableNetworking", "dnsSearchDomains", "dnsServers",
          "dockerSecurityOptions", "extraHosts", "links"}) {
      if (c.HasMember(unsupported) && !c[unsupported].IsNull()) {
        return ClientError(absl::StrCat("Container '", name, "': '",
                                        unsupported,
                                        "' is not supported on Fargate."));
      }
    }
    if (const rapidjson::Value* linux = Object(c, "linuxParameters")) {
      for (const char* unsupported :
           {"devices", "sharedMemorySize", "tmpfs", "maxSwap", "swappiness"}) {
        if (linux->HasMember(unsupported) && !(*linux)[unsupported].IsNull()) {
          return ClientError(absl::StrCat("Container '", name,
                                          "': linuxParameters.", unsupported,
                                          " is not supported on Fargate."));
        }
      }
      if (const rapidjson::Value* caps = Object(*linux, "capabilities")) {
        for (const std::string& cap : Strings(*caps, "add")) {
          if (cap != "SYS_PTRACE") {
            return ClientError(absl::StrCat(
                "Container '", name, "': linuxParameters.capabilities.add '",
                cap,
                "' is not supported on Fargate; only SYS_PTRACE can be "
                "added."));
          }
        }
      }
    }
    if (const rapidjson::Value* log = Object(c, "logConfiguration")) {
      const std::string driver = Str(*log, "logDriver");
      if (driver != "awslogs" && driver != "splunk" &&
          driver != "awsfirelens") {
        return ClientError(absl::StrCat(
            "Container '", name, "': log driver '", driver,
            "' is not supported on Fargate (awslogs, splunk, awsfirelens)."));
      }
      const rapidjson::Value* options = Object(*log, "options");
      if (driver == "awslogs" &&
          (options == nullptr ||
           Str(*options, "awslogs-stream-prefix").empty())) {
        return ClientError(
            "Log driver awslogs option 'awslogs-stream-prefix' should not "
            "be null or empty.");
      }
      if (driver == "awslogs" && Str(def, "executionRoleArn").empty()) {
        return ClientError(
            "Fargate requires task definition to have execution role ARN to "
            "support log driver awslogs.");
      }
    }
    if (std::optional<int64_t> stop = Int(c, "stopTimeout");
        stop && (*stop < 2 || *stop > 120)) {
      return ClientError(absl::StrCat("Container '", name,
                                      "': stopTimeout must be 2 to 120 "
                                      "seconds on Fargate, not ",
                                      *stop, "."));
    }
  }
  return std::nullopt;
}

// What ECS refuses in any task definition.
std::optional<Reply> CheckTaskDefinition(const rapidjson::Value& def,
                                         bool fargate) {
  static const std::regex kName("[A-Za-z0-9_-]{1,255}");
  const std::string family = Str(def, "family");
  if (!std::regex_match(family, kName)) {
    return ClientError(absl::StrCat(
        "Family '", family,
        "' is invalid: up to 255 letters (uppercase and lowercase), numbers, "
        "hyphens and underscores are allowed."));
  }
  const rapidjson::Value& containers = def["containerDefinitions"];
  if (containers.Empty()) {
    return ClientError("Container list cannot be empty.");
  }
  std::set<std::string> volumes;
  if (const rapidjson::Value* vs = Array(def, "volumes")) {
    for (const auto& v : vs->GetArray()) {
      const std::string name = Str(v, "name");
      if (name.empty() && Object(v, "efsVolumeConfiguration")) {
        return ClientError("An EFS volume requires a 'name'.");
      }
      if (!volumes.insert(name).second) {
        return ClientError(
            absl::StrCat("Volume name '", name, "' is used more than once."));
      }
    }
  }
  std::set<std::string> names;
  bool essential = false;
  const bool has_execution_role = !Str(def, "executionRoleArn").empty();
  const bool task_memory = !Str(def, "memory").empty();
  for (rapidjson::SizeType i = 0; i < containers.Size(); ++i) {
    const rapidjson::Value& c = containers[i];
    const std::string name = Str(c, "name");
    if (name.empty()) {
      return ClientError("Container.name should not be null or empty.");
    }
    if (!std::regex_match(name, kName)) {
      return ClientError(absl::StrCat(
          "Container name '", name,
          "' is invalid: up to 255 letters (uppercase and lowercase), "
          "numbers, hyphens and underscores are allowed."));
    }
    if (!names.insert(name).second) {
      return ClientError(absl::StrCat("Container name '", name,
                                      "' is used more than once; container "
                                      "names must be unique."));
    }
    if (Str(c, "image").empty()) {
      return ClientError("Container.image should not be null or empty.");
    }
    essential = essential || Bool(c, "essential", true);
    if (const rapidjson::Value* mounts = Array(c, "mountPoints")) {
      for (const auto& m : mounts->GetArray()) {
        const std::string source = Str(m, "sourceVolume");
        if (!volumes.contains(source)) {
          return ClientError(absl::StrCat(
              "Container '", name, "': mountPoints sourceVolume '", source,
              "' is not a volume of the task definition (volumes: ",
              absl::StrJoin(volumes, ", "), ")."));
        }
        if (Str(m, "containerPath").empty()) {
          return ClientError(absl::StrCat(
              "Container '", name, "': a mountPoint needs a containerPath."));
        }
      }
    }
    // The model has strings; its documentation lists the valid names.
    if (const rapidjson::Value* linux = Object(c, "linuxParameters")) {
      if (const rapidjson::Value* caps = Object(*linux, "capabilities")) {
        for (const char* list : {"add", "drop"}) {
          const std::vector<std::string> names = Strings(*caps, list);
          for (size_t n = 0; n < names.size(); ++n) {
            if (!Capabilities().contains(names[n])) {
              return ClientError(absl::StrCat(
                  "containerDefinitions[", i, "].linuxParameters.capabilities.",
                  list, "[", n, "]: value '", names[n], "' is not one of ",
                  absl::StrJoin(Capabilities(), ", "), "."));
            }
          }
        }
      }
    }
    if (Array(c, "secrets") && !Array(c, "secrets")->Empty() &&
        !has_execution_role) {
      return ClientError(
          "When you are specifying container secrets, you must also specify "
          "a value for 'executionRoleArn'.");
    }
    if (const rapidjson::Value* log = Object(c, "logConfiguration");
        log && Str(*log, "logDriver") == "awslogs") {
      const rapidjson::Value* options = Object(*log, "options");
      for (const char* required : {"awslogs-group", "awslogs-region"}) {
        if (options == nullptr || Str(*options, required).empty()) {
          return ClientError(absl::StrCat(
              "Container '", name, "': log driver awslogs option '", required,
              "' should not be null or empty."));
        }
      }
    }
    if (const rapidjson::Value* check = Object(c, "healthCheck")) {
      if (std::optional<Reply> bad = CheckHealthCheck(name, *check)) {
        return bad;
      }
    }
    if (!fargate && !task_memory && !Int(c, "memory") &&
        !Int(c, "memoryReservation")) {
      return ClientError(absl::StrCat(
          "Invalid setting for container '", name,
          "'. At least one of 'memory' or 'memoryReservation' must be "
          "specified."));
    }
  }
  if (!essential) {
    return ClientError(
        "Task definition must have at least one essential container.");
  }
  if (std::optional<Reply> bad = CheckDependencies(containers)) return bad;
  if (const rapidjson::Value* storage = Object(def, "ephemeralStorage")) {
    std::optional<int64_t> gib = Int(*storage, "sizeInGiB");
    if (!gib || *gib < 21 || *gib > 200) {
      return ClientError(
          "The ephemeral storage size (ephemeralStorage.sizeInGiB) must be "
          "between 21 and 200 GiB.");
    }
  }
  for (const char* size : {"cpu", "memory"}) {
    const std::string value = Str(def, size);
    if (!value.empty() &&
        !(size[0] == 'c' ? ParseCpu(value) : ParseMemory(value))) {
      return ClientError(
          absl::StrCat("Invalid '", size, "' setting for task."));
    }
  }
  if (fargate) return CheckFargate(def);
  return std::nullopt;
}

}  // namespace delegate::testing::aws_fake

// The ECS operations of the AWS fake: task definitions and tasks. The rules
// a task definition must pass are in aws_fake_ecs_rules.cc, the task
// lifecycle and its JSON in aws_fake_tasks.cc.
#include <algorithm>
#include <functional>
#include <regex>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "tests/fakes/aws_fake_internal.h"
#include "util/strings.h"

namespace delegate::testing::aws_fake {
namespace {

constexpr int kMaxOverridesChars = 8192;

// ----------------------------------------------------------------- helpers

std::map<std::string, std::string> TagsOf(const rapidjson::Value& v,
                                          const char* name) {
  std::map<std::string, std::string> out;
  if (const rapidjson::Value* tags = Array(v, name)) {
    for (const auto& t : tags->GetArray()) out[Str(t, "key")] = Str(t, "value");
  }
  return out;
}

struct DefinitionRef {
  std::string family;
  int revision = 0;  // 0: none given
  bool valid = false;
};

// "family", "family:3" or "arn:aws:ecs:R:A:task-definition/family:3".
DefinitionRef ParseDefinitionRef(const Fake& fake, std::string ref) {
  DefinitionRef out;
  if (absl::StartsWith(ref, "arn:")) {
    const std::string prefix = fake.RegionalArn("ecs", "task-definition/");
    if (!absl::StartsWith(ref, prefix)) return out;
    ref = ref.substr(prefix.size());
    if (ref.find(':') == std::string::npos) return out;  // ARNs need a rev
  }
  const size_t colon = ref.find(':');
  out.family = ref.substr(0, colon);
  if (colon != std::string::npos &&
      (!absl::SimpleAtoi(ref.substr(colon + 1), &out.revision) ||
       out.revision <= 0)) {
    return out;
  }
  out.valid = !out.family.empty();
  return out;
}

// nullptr when there is no such revision (or, for a bare family, no ACTIVE
// one).
FakeTaskDefinition* FindDefinition(Fake& fake, const DefinitionRef& ref)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  if (!ref.valid) return nullptr;
  auto it = fake.families.find(ref.family);
  if (it == fake.families.end()) return nullptr;
  std::vector<FakeTaskDefinition>& revisions = it->second;
  if (ref.revision > 0) {
    if (ref.revision > static_cast<int>(revisions.size())) return nullptr;
    return &revisions[ref.revision - 1];
  }
  for (auto r = revisions.rbegin(); r != revisions.rend(); ++r) {
    if (r->status == "ACTIVE") return &*r;
  }
  return nullptr;
}

// The TaskDefinition JSON ECS answers: the registered body with ECS's
// defaults and bookkeeping.
void WriteDefinition(Fake& fake, JsonWriter& w, const FakeTaskDefinition& td)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  rapidjson::Document doc;
  doc.Parse(td.json.data(), td.json.size());
  auto& a = doc.GetAllocator();
  doc.RemoveMember("tags");
  auto set = [&](const char* name, rapidjson::Value value) {
    doc.RemoveMember(name);
    doc.AddMember(rapidjson::Value(name, a), value, a);
  };
  auto str = [&](std::string_view s) {
    return rapidjson::Value(s.data(),
                            static_cast<rapidjson::SizeType>(s.size()), a);
  };
  for (auto& c : doc["containerDefinitions"].GetArray()) {
    if (!c.HasMember("essential")) c.AddMember("essential", true, a);
    if (!c.HasMember("cpu")) c.AddMember("cpu", 0, a);
    for (const char* list :
         {"portMappings", "environment", "mountPoints", "volumesFrom"}) {
      if (!c.HasMember(list)) {
        c.AddMember(rapidjson::StringRef(list),
                    rapidjson::Value(rapidjson::kArrayType), a);
      }
    }
  }
  for (const char* list : {"volumes", "placementConstraints"}) {
    if (!doc.HasMember(list)) {
      doc.AddMember(rapidjson::StringRef(list),
                    rapidjson::Value(rapidjson::kArrayType), a);
    }
  }
  if (!doc.HasMember("networkMode")) {
    doc.AddMember("networkMode", "bridge", a);
  }
  const TaskDefinitionExtra& extra = fake.task_definition_extras[td.arn];
  set("taskDefinitionArn", str(td.arn));
  set("revision", rapidjson::Value(td.revision));
  set("status", str(td.status));
  rapidjson::Value compat(rapidjson::kArrayType);
  for (const std::string& c : extra.compatibilities) compat.PushBack(str(c), a);
  set("compatibilities", std::move(compat));
  set("requiresAttributes", rapidjson::Value(rapidjson::kArrayType));
  set("registeredAt",
      rapidjson::Value(absl::ToUnixMillis(extra.registered_at) / 1000.0));
  set("registeredBy",
      str(absl::StrCat("arn:aws:iam::", fake.options.account_id, ":root")));
  if (extra.deregistered_at != kUnset) {
    set("deregisteredAt",
        rapidjson::Value(absl::ToUnixMillis(extra.deregistered_at) / 1000.0));
  }
  w.Key("taskDefinition");
  doc.Accept(w);
}

std::string ClusterName(const Fake& fake, const rapidjson::Value& body) {
  std::string cluster = Str(body, "cluster");
  const std::string prefix = fake.RegionalArn("ecs", "cluster/");
  if (absl::StartsWith(cluster, prefix))
    cluster = cluster.substr(prefix.size());
  return cluster.empty() ? "default" : cluster;
}

// A task by ARN or id, in `cluster`.
TaskState* FindTask(Fake& fake, const std::string& cluster,
                    const std::string& ref)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  std::string arn = ref;
  if (!absl::StartsWith(ref, "arn:")) {
    arn = fake.RegionalArn("ecs", absl::StrCat("task/", cluster, "/", ref));
  }
  auto it = fake.tasks.find(arn);
  if (it == fake.tasks.end() || it->second.pub.cluster != cluster) {
    return nullptr;
  }
  return &it->second;
}

// --------------------------------------------------------------- operations

Reply RegisterTaskDefinition(Fake& fake, const rapidjson::Document& body,
                             const std::string& raw)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  const std::vector<std::string> requires_ =
      Strings(body, "requiresCompatibilities");
  const bool fargate = std::find(requires_.begin(), requires_.end(),
                                 "FARGATE") != requires_.end();
  if (std::optional<Reply> bad = CheckTaskDefinition(body, fargate)) {
    return *bad;
  }
  const std::map<std::string, std::string> tags = TagsOf(body, "tags");
  if (std::optional<Reply> bad = CheckTags(tags)) return *bad;
  const std::string family = Str(body, "family");
  std::vector<FakeTaskDefinition>& revisions = fake.families[family];
  FakeTaskDefinition td;
  td.family = family;
  td.revision = static_cast<int>(revisions.size()) + 1;
  td.arn = fake.RegionalArn(
      "ecs", absl::StrCat("task-definition/", family, ":", td.revision));
  td.status = "ACTIVE";
  td.json = raw;
  td.tags = tags;
  TaskDefinitionExtra& extra = fake.task_definition_extras[td.arn];
  extra.registered_at = fake.clock->Now();
  extra.compatibilities = {"EC2"};
  if (fargate || !CheckFargate(body))
    extra.compatibilities.push_back("FARGATE");
  revisions.push_back(td);
  return Ok([&](JsonWriter& w) {
    WriteDefinition(fake, w, td);
    PutTags(w, td.tags);
  });
}

Reply DescribeTaskDefinition(Fake& fake, const rapidjson::Document& body,
                             const std::string&)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  FakeTaskDefinition* td = FindDefinition(
      fake, ParseDefinitionRef(fake, Str(body, "taskDefinition")));
  if (td == nullptr) return ClientError("Unable to describe task definition.");
  const std::vector<std::string> include = Strings(body, "include");
  const bool tags =
      std::find(include.begin(), include.end(), "TAGS") != include.end();
  return Ok([&](JsonWriter& w) {
    WriteDefinition(fake, w, *td);
    if (tags) PutTags(w, td->tags);
  });
}

Reply DeregisterTaskDefinition(Fake& fake, const rapidjson::Document& body,
                               const std::string&)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  const std::string ref = Str(body, "taskDefinition");
  DefinitionRef parsed = ParseDefinitionRef(fake, ref);
  if (parsed.valid && parsed.revision == 0) {
    return ClientError(absl::StrCat(
        "Revision is required: '", ref,
        "' names a family; give family:revision or the full ARN."));
  }
  FakeTaskDefinition* td = FindDefinition(fake, parsed);
  if (td == nullptr || td->status == "DELETE_IN_PROGRESS") {
    return ClientError("The specified task definition does not exist.");
  }
  if (td->status == "ACTIVE") {
    td->status = "INACTIVE";
    fake.task_definition_extras[td->arn].deregistered_at = fake.clock->Now();
  }
  return Ok([&](JsonWriter& w) { WriteDefinition(fake, w, *td); });
}

Reply DeleteTaskDefinitions(Fake& fake, const rapidjson::Document& body,
                            const std::string&)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  const std::vector<std::string> refs = Strings(body, "taskDefinitions");
  if (refs.empty() || refs.size() > 10) {
    return InvalidParameter(absl::StrCat(
        "taskDefinitions must have 1 to 10 items, not ", refs.size()));
  }
  std::vector<FakeTaskDefinition*> deleted;
  std::vector<std::pair<std::string, std::string>> failures;
  for (const std::string& ref : refs) {
    DefinitionRef parsed = ParseDefinitionRef(fake, ref);
    FakeTaskDefinition* td =
        parsed.revision > 0 ? FindDefinition(fake, parsed) : nullptr;
    if (td == nullptr) {
      failures.emplace_back(ref,
                            "The specified task definition does not exist.");
    } else if (td->status == "ACTIVE") {
      failures.emplace_back(
          td->arn,
          "The specified task definition is still in ACTIVE status. Please "
          "deregister the target and try again.");
    } else {
      td->status = "DELETE_IN_PROGRESS";
      deleted.push_back(td);
    }
  }
  return Ok([&](JsonWriter& w) {
    w.Key("taskDefinitions");
    w.StartArray();
    for (FakeTaskDefinition* td : deleted) {
      // WriteDefinition writes a "taskDefinition" key; unwrap it here.
      rapidjson::StringBuffer one;
      JsonWriter ow(one);
      ow.StartObject();
      WriteDefinition(fake, ow, *td);
      ow.EndObject();
      rapidjson::Document doc;
      doc.Parse(one.GetString());
      doc["taskDefinition"].Accept(w);
    }
    w.EndArray();
    PutPairs(w, "failures", failures, "arn", "reason");
  });
}

Reply ListTaskDefinitions(Fake& fake, const rapidjson::Document& body,
                          const std::string&)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  // Despite its name, the whole family (the model: "The full family name
  // to filter the ListTaskDefinitions results with").
  const std::string only = Str(body, "familyPrefix");
  std::string status = Str(body, "status");
  if (status.empty()) status = "ACTIVE";
  std::vector<std::string> arns;
  for (const auto& [family, revisions] : fake.families) {
    if (!only.empty() && family != only) continue;
    for (const FakeTaskDefinition& td : revisions) {
      if (td.status == status) arns.push_back(td.arn);
    }
  }
  if (Str(body, "sort") == "DESC") std::reverse(arns.begin(), arns.end());
  return PagedList(body, arns, "taskDefinitionArns", "maxResults", 100);
}

Reply ListTaskDefinitionFamilies(Fake& fake, const rapidjson::Document& body,
                                 const std::string&)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  const std::string prefix = Str(body, "familyPrefix");
  const std::string status = Str(body, "status");
  std::vector<std::string> families;
  for (const auto& [family, revisions] : fake.families) {
    if (!absl::StartsWith(family, prefix)) continue;
    const bool active = std::any_of(
        revisions.begin(), revisions.end(),
        [](const FakeTaskDefinition& td) { return td.status == "ACTIVE"; });
    if ((status == "ACTIVE" && !active) || (status == "INACTIVE" && active)) {
      continue;
    }
    families.push_back(family);
  }
  return PagedList(body, families, "families", "maxResults", 100);
}

// The container of a task as its definition and the overrides make it.
TaskContainer MakeContainer(Fake& fake, const TaskState& task,
                            const rapidjson::Value& def,
                            const rapidjson::Value* override)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  TaskContainer c;
  c.spec.name = Str(def, "name");
  c.spec.image = Str(def, "image");
  c.spec.entry_point = Strings(def, "entryPoint");
  c.spec.command = Strings(def, "command");
  if (const rapidjson::Value* env = Array(def, "environment")) {
    for (const auto& e : env->GetArray()) {
      c.spec.environment[Str(e, "name")] = Str(e, "value");
    }
  }
  if (const rapidjson::Value* secrets = Array(def, "secrets")) {
    for (const auto& s : secrets->GetArray()) {
      c.spec.secrets[Str(s, "name")] = Str(s, "valueFrom");
    }
  }
  c.spec.user = Str(def, "user");
  c.spec.working_directory = Str(def, "workingDirectory");
  if (override != nullptr) {
    if (Array(*override, "command"))
      c.spec.command = Strings(*override, "command");
    if (const rapidjson::Value* env = Array(*override, "environment")) {
      for (const auto& e : env->GetArray()) {
        c.spec.environment[Str(e, "name")] = Str(e, "value");
      }
    }
  }
  c.arn = fake.RegionalArn(
      "ecs", absl::StrCat("container/", task.pub.cluster, "/", task.id, "/",
                          fake.RandomHex(8), "-", fake.RandomHex(4), "-",
                          fake.RandomHex(4), "-", fake.RandomHex(4), "-",
                          fake.RandomHex(12)));
  c.essential = Bool(def, "essential", true);
  c.privileged = Bool(def, "privileged", false);
  c.read_only_root = Bool(def, "readonlyRootFilesystem", false);
  if (const rapidjson::Value* linux = Object(def, "linuxParameters")) {
    if (const rapidjson::Value* caps = Object(*linux, "capabilities")) {
      c.cap_add = Strings(*caps, "add");
      c.cap_drop = Strings(*caps, "drop");
    }
  }
  if (const rapidjson::Value* mounts = Array(def, "mountPoints")) {
    for (const auto& m : mounts->GetArray()) {
      c.mounts.push_back({Str(m, "sourceVolume"), Str(m, "containerPath"),
                          Bool(m, "readOnly", false)});
    }
  }
  if (const rapidjson::Value* log = Object(def, "logConfiguration")) {
    c.log_driver = Str(*log, "logDriver");
    if (const rapidjson::Value* options = Object(*log, "options")) {
      for (const auto& o : options->GetObject()) {
        if (o.value.IsString())
          c.log_options[o.name.GetString()] = o.value.GetString();
      }
    }
  }
  if (std::optional<int64_t> stop = Int(def, "stopTimeout")) {
    c.stop_timeout_seconds = static_cast<int>(*stop);
  }
  if (const rapidjson::Value* deps = Array(def, "dependsOn")) {
    for (const auto& d : deps->GetArray()) {
      c.depends_on.push_back({Str(d, "containerName"), Str(d, "condition")});
    }
  }
  if (const rapidjson::Value* check = Object(def, "healthCheck")) {
    // ECS's defaults: Docker's, but for the timeout (5 s, not 30 s).
    docker::HealthCheck h;
    h.test = Strings(*check, "command");
    h.interval = absl::Seconds(Int(*check, "interval").value_or(30));
    h.timeout = absl::Seconds(Int(*check, "timeout").value_or(5));
    h.retries = static_cast<int>(Int(*check, "retries").value_or(3));
    h.start_period = absl::Seconds(Int(*check, "startPeriod").value_or(0));
    c.health_check = std::move(h);
  }
  c.runtime_id = fake.RandomHex(64);
  return c;
}

std::string CanonicalJson(const std::string& raw) {
  rapidjson::Document doc;
  doc.Parse(raw.data(), raw.size());
  return ToJson(doc);
}

// RunTask's answer: the tasks as they are now, no failures.
Reply TasksStarted(Fake& fake, const std::vector<std::string>& arns)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  return Ok([&](JsonWriter& w) {
    w.Key("tasks");
    w.StartArray();
    for (const std::string& arn : arns) {
      fake.WriteTask(w, fake.tasks.at(arn), false);
    }
    w.EndArray();
    w.Key("failures");
    w.StartArray();
    w.EndArray();
  });
}

Reply RunTask(Fake& fake, const rapidjson::Document& body,
              const std::string& raw) ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  const absl::Time now = fake.clock->Now();
  const std::string cluster = ClusterName(fake, body);
  const std::string token = Str(body, "clientToken");
  if (!token.empty()) {
    const bool printable = std::all_of(
        token.begin(), token.end(), [](char c) { return c >= 33 && c <= 126; });
    if (token.size() > 64 || !printable) {
      return InvalidParameter(
          "clientToken must be up to 64 characters in the range 33-126.");
    }
    auto it = fake.client_tokens.find({cluster, token});
    if (it != fake.client_tokens.end()) {
      rapidjson::Document before;
      before.Parse(it->second.body.data(), it->second.body.size());
      if (!(before == body)) {
        Reply r = Error(400, "ConflictException",
                        "The clientToken is already in use with a different "
                        "RunTask request.");
        r.body = Answer([&](JsonWriter& w) {
          Put(w, "__type", r.code);
          Put(w, "message", r.message);
          PutStrings(w, "resourceIds", it->second.task_arns);
        });
        return r;
      }
      return TasksStarted(fake, it->second.task_arns);
    }
  }

  const int64_t count = Int(body, "count").value_or(1);
  if (count < 1 || count > 10) {
    return InvalidParameter(
        absl::StrCat("count must be between 1 and 10, not ", count, "."));
  }
  const rapidjson::Value* strategy = Array(body, "capacityProviderStrategy");
  std::string launch_type = Str(body, "launchType");
  if (!launch_type.empty() && strategy != nullptr) {
    return InvalidParameter(
        "Specifying both a launch type and capacity provider strategy is not "
        "supported. Remove one and try again.");
  }
  if (strategy != nullptr) {
    launch_type = "EC2";
    for (const auto& s : strategy->GetArray()) {
      const std::string provider = Str(s, "capacityProvider");
      if (provider == "FARGATE" || provider == "FARGATE_SPOT") {
        launch_type = "FARGATE";
      }
    }
  }
  if (launch_type.empty()) launch_type = "EC2";

  const std::string ref = Str(body, "taskDefinition");
  FakeTaskDefinition* td = FindDefinition(fake, ParseDefinitionRef(fake, ref));
  if (td == nullptr) {
    return ClientError(absl::StrCat("TaskDefinition not found: '", ref,
                                    "' (no such revision, or a family with "
                                    "no ACTIVE revision)."));
  }
  if (td->status != "ACTIVE") {
    return ClientError(absl::StrCat("TaskDefinition is inactive: ", td->arn));
  }
  const TaskDefinitionExtra& extra = fake.task_definition_extras[td->arn];
  if (std::find(extra.compatibilities.begin(), extra.compatibilities.end(),
                launch_type) == extra.compatibilities.end()) {
    return ClientError(
        absl::StrCat("Task definition does not support "
                     "launch_type ",
                     launch_type, "."));
  }
  const std::string platform = Str(body, "platformVersion");
  if (!platform.empty()) {
    if (launch_type != "FARGATE") {
      return InvalidParameter(
          "platformVersion is only supported for the FARGATE launch type.");
    }
    if (platform != "LATEST" && platform != "1.4.0" && platform != "1.3.0") {
      return Error(400, "PlatformUnknownException",
                   absl::StrCat("The specified platform version '", platform,
                                "' does not exist."));
    }
  }
  rapidjson::Document def;
  def.Parse(td->json.data(), td->json.size());
  std::string network_mode = Str(def, "networkMode");
  if (network_mode.empty()) network_mode = "bridge";
  const rapidjson::Value* network = Object(body, "networkConfiguration");
  const rapidjson::Value* vpc =
      network ? Object(*network, "awsvpcConfiguration") : nullptr;
  std::vector<std::string> subnets;
  std::vector<std::string> groups;
  if (vpc) {
    subnets = Strings(*vpc, "subnets");
    groups = Strings(*vpc, "securityGroups");
  }
  if (network_mode == "awsvpc") {
    if (subnets.empty()) {
      return InvalidParameter(
          "Network Configuration must be provided when networkMode 'awsvpc' "
          "is specified.");
    }
    if (subnets.size() > 16) {
      return InvalidParameter("subnets can have at most 16 items.");
    }
    if (groups.size() > 5) {
      return InvalidParameter("securityGroups can have at most 5 items.");
    }
    for (const std::string& s : subnets) {
      if (!absl::StartsWith(s, "subnet-")) {
        return InvalidParameter(
            absl::StrCat("Error retrieving subnet information for [", s,
                         "]: The subnet ID '", s, "' is malformed"));
      }
    }
    for (const std::string& g : groups) {
      if (!absl::StartsWith(g, "sg-")) {
        return InvalidParameter(
            absl::StrCat("Error retrieving security group information for [", g,
                         "]: The security group ID '", g, "' is malformed"));
      }
    }
    if (launch_type != "FARGATE" && Str(*vpc, "assignPublicIp") == "ENABLED") {
      return InvalidParameter(
          "Assign public IP is not supported for this launch type.");
    }
  } else if (network != nullptr) {
    return InvalidParameter(
        "Network Configuration is not valid for the given networkMode of "
        "this task definition.");
  }

  const rapidjson::Value* overrides = Object(body, "overrides");
  std::map<std::string, const rapidjson::Value*> container_overrides;
  std::string cpu = Str(def, "cpu");
  std::string memory = Str(def, "memory");
  int ephemeral = 20;
  if (const rapidjson::Value* s = Object(def, "ephemeralStorage")) {
    ephemeral = static_cast<int>(Int(*s, "sizeInGiB").value_or(20));
  }
  if (overrides) {
    const size_t size = ToJson(*overrides).size();
    if (size > kMaxOverridesChars) {
      return InvalidParameter(
          absl::StrCat("Container Overrides length must be at most ",
                       kMaxOverridesChars, " (it is ", size, ")."));
    }
    std::set<std::string> names;
    for (const auto& c : def["containerDefinitions"].GetArray()) {
      names.insert(Str(c, "name"));
    }
    if (const rapidjson::Value* list =
            Array(*overrides, "containerOverrides")) {
      for (const auto& o : list->GetArray()) {
        const std::string name = Str(o, "name");
        if (!names.contains(name)) {
          return InvalidParameter(
              absl::StrCat("Override for container named ", name,
                           " is not a container in the TaskDefinition."));
        }
        container_overrides[name] = &o;
      }
    }
    if (!Str(*overrides, "cpu").empty()) cpu = Str(*overrides, "cpu");
    if (!Str(*overrides, "memory").empty()) memory = Str(*overrides, "memory");
    if (const rapidjson::Value* s = Object(*overrides, "ephemeralStorage")) {
      std::optional<int64_t> gib = Int(*s, "sizeInGiB");
      if (!gib || *gib < 21 || *gib > 200) {
        return InvalidParameter(
            "overrides.ephemeralStorage.sizeInGiB must be between 21 and "
            "200.");
      }
      ephemeral = static_cast<int>(*gib);
    }
    if (launch_type == "FARGATE" &&
        (overrides->HasMember("cpu") || overrides->HasMember("memory"))) {
      if (std::optional<Reply> bad = CheckFargateSize(cpu, memory)) return *bad;
    }
  }
  const std::string started_by = Str(body, "startedBy");
  static const std::regex kStartedBy("[A-Za-z0-9_/-]{0,128}");
  if (!std::regex_match(started_by, kStartedBy)) {
    return InvalidParameter(
        "startedBy must be up to 128 letters (uppercase and lowercase), "
        "numbers, hyphens (-), forward slashes (/) and underscores (_).");
  }
  const std::string propagate = Str(body, "propagateTags");
  if (propagate == "SERVICE") {
    return InvalidParameter(
        "The specified propagateTags value SERVICE is not supported for "
        "RunTask; use TASK_DEFINITION or NONE.");
  }
  std::map<std::string, std::string> tags = TagsOf(body, "tags");
  if (propagate == "TASK_DEFINITION") {
    for (const auto& [k, v] : td->tags) tags.emplace(k, v);
  }
  if (std::optional<Reply> bad = CheckTags(tags)) return *bad;

  std::vector<std::string> arns;
  for (int64_t n = 0; n < count; ++n) {
    TaskState t;
    t.id = fake.RandomHex(32);
    t.pub.arn =
        fake.RegionalArn("ecs", absl::StrCat("task/", cluster, "/", t.id));
    t.pub.cluster = cluster;
    t.pub.task_definition_arn = td->arn;
    t.pub.launch_type = launch_type;
    t.pub.last_status = "PROVISIONING";
    t.pub.desired_status = "RUNNING";
    t.pub.started_by = started_by;
    t.pub.client_token = token;
    t.pub.tags = tags;
    t.pub.request_json = raw;
    t.family = td->family;
    t.revision = td->revision;
    t.network_mode = network_mode;
    t.cpu = cpu;
    t.memory = memory;
    t.ephemeral_gib = ephemeral;
    t.fargate = launch_type == "FARGATE";
    t.overrides_json = overrides ? ToJson(*overrides) : "";
    t.awsvpc = network_mode == "awsvpc";
    if (t.awsvpc) {
      t.subnet = subnets[0];
      t.security_group = groups.empty() ? "" : groups[0];
      t.attachment_id = absl::StrCat(
          fake.RandomHex(8), "-", fake.RandomHex(4), "-", fake.RandomHex(4),
          "-", fake.RandomHex(4), "-", fake.RandomHex(12));
      t.eni = "eni-" + fake.RandomHex(17);
      // On Docker, the pause container's address, once it runs.
      if (!fake.docker) {
        t.private_ip = absl::StrCat("10.0.", fake.rng() % 250 + 1, ".",
                                    fake.rng() % 250 + 2);
      }
      t.mac = absl::StrCat("0e:", fake.RandomHex(2), ":", fake.RandomHex(2),
                           ":", fake.RandomHex(2), ":", fake.RandomHex(2), ":",
                           fake.RandomHex(2));
    }
    t.created_at = now;
    t.phase_since = now;
    for (const auto& c : def["containerDefinitions"].GetArray()) {
      auto o = container_overrides.find(Str(c, "name"));
      t.containers.push_back(MakeContainer(
          fake, t, c, o == container_overrides.end() ? nullptr : o->second));
    }
    if (const rapidjson::Value* volumes = Array(def, "volumes")) {
      for (const auto& v : volumes->GetArray()) {
        TaskVolume volume;
        volume.name = Str(v, "name");
        if (const rapidjson::Value* host = Object(v, "host")) {
          volume.host_path = Str(*host, "sourcePath");
        }
        if (const rapidjson::Value* efs = Object(v, "efsVolumeConfiguration")) {
          volume.efs_key = absl::StrCat(Str(*efs, "fileSystemId"),
                                        Str(*efs, "rootDirectory"));
        }
        t.volumes.push_back(std::move(volume));
      }
    }
    if (fake.options.behaviour && !fake.docker) {
      for (TaskContainer& c : t.containers) {
        c.behaviour = fake.options.behaviour(c.spec);
      }
    }
    arns.push_back(t.pub.arn);
    fake.task_order.push_back(t.pub.arn);
    fake.tasks.emplace(t.pub.arn, std::move(t));
  }
  if (!token.empty()) {
    fake.client_tokens[{cluster, token}] = {CanonicalJson(raw), arns};
  }
  return TasksStarted(fake, arns);
}

Reply DescribeTasks(Fake& fake, const rapidjson::Document& body,
                    const std::string&) ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  const std::string cluster = ClusterName(fake, body);
  const std::vector<std::string> refs = Strings(body, "tasks");
  if (refs.empty()) return InvalidParameter("Tasks cannot be empty.");
  if (refs.size() > 100) {
    return InvalidParameter(absl::StrCat(
        "Tasks cannot be longer than 100 (got ", refs.size(), ")."));
  }
  const std::vector<std::string> include = Strings(body, "include");
  const bool tags =
      std::find(include.begin(), include.end(), "TAGS") != include.end();
  return Ok([&](JsonWriter& w) {
    std::vector<std::string> missing;
    w.Key("tasks");
    w.StartArray();
    for (const std::string& ref : refs) {
      if (TaskState* t = FindTask(fake, cluster, ref)) {
        fake.WriteTask(w, *t, tags);
      } else {
        missing.push_back(
            absl::StartsWith(ref, "arn:")
                ? ref
                : fake.RegionalArn("ecs",
                                   absl::StrCat("task/", cluster, "/", ref)));
      }
    }
    w.EndArray();
    std::vector<std::pair<std::string, std::string>> failures;
    for (const std::string& arn : missing)
      failures.emplace_back(arn, "MISSING");
    PutPairs(w, "failures", failures, "arn", "reason");
  });
}

Reply StopTask(Fake& fake, const rapidjson::Document& body, const std::string&)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  const std::string cluster = ClusterName(fake, body);
  TaskState* t = FindTask(fake, cluster, Str(body, "task"));
  if (t == nullptr || t->own) {
    return InvalidParameter("The referenced task was not found.");
  }
  if (!t->stop_requested && t->pub.last_status != "STOPPED" &&
      t->pub.last_status != "DEPROVISIONING" &&
      t->pub.desired_status != "STOPPED") {
    const absl::Time now = fake.clock->Now();
    t->stop_requested = true;
    t->stop_requested_at = now;
    t->stopping_at = now;
    t->pub.desired_status = "STOPPED";
    t->pub.stop_code = "UserInitiated";
    const std::string reason = Str(body, "reason");
    t->pub.stopped_reason = reason.empty() ? "Task stopped by user" : reason;
    ++t->version;
  }
  return Ok([&](JsonWriter& w) {
    w.Key("task");
    fake.WriteTask(w, *t, false);
  });
}

Reply ListTasks(Fake& fake, const rapidjson::Document& body, const std::string&)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  const std::string cluster = ClusterName(fake, body);
  const std::string started_by = Str(body, "startedBy");
  const std::string family = Str(body, "family");
  const std::string launch_type = Str(body, "launchType");
  const std::string service = Str(body, "serviceName");
  const std::string instance = Str(body, "containerInstance");
  if (!started_by.empty() && (!family.empty() || !launch_type.empty() ||
                              !service.empty() || !instance.empty())) {
    return InvalidParameter(
        "When you specify startedBy as the filter, it must be the only "
        "filter that you use (desiredStatus aside).");
  }
  std::string desired = Str(body, "desiredStatus");
  if (desired.empty()) desired = "RUNNING";
  std::vector<std::string> arns;
  std::vector<const TaskState*> ordered;
  for (const auto& [arn, t] : fake.tasks) ordered.push_back(&t);
  std::sort(ordered.begin(), ordered.end(),
            [](const TaskState* a, const TaskState* b) {
              return a->created_at < b->created_at;
            });
  for (const TaskState* t : ordered) {
    if (t->pub.cluster != cluster || t->pub.desired_status != desired) continue;
    if (!started_by.empty() && t->pub.started_by != started_by) continue;
    if (!family.empty() && t->family != family) continue;
    if (!launch_type.empty() && t->pub.launch_type != launch_type) continue;
    if (!service.empty() || !instance.empty()) continue;
    arns.push_back(t->pub.arn);
  }
  return PagedList(body, arns, "taskArns", "maxResults", 100);
}

// The tags of a task definition or task ARN; nullptr when there is none.
std::map<std::string, std::string>* TagsOfResource(Fake& fake,
                                                   const std::string& arn)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  if (auto t = fake.tasks.find(arn); t != fake.tasks.end()) {
    return &t->second.pub.tags;
  }
  DefinitionRef ref = ParseDefinitionRef(fake, arn);
  if (absl::StartsWith(arn, "arn:") && ref.revision > 0) {
    if (FakeTaskDefinition* td = FindDefinition(fake, ref)) return &td->tags;
  }
  return nullptr;
}

Reply TagResource(Fake& fake, const rapidjson::Document& body,
                  const std::string&) ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  std::map<std::string, std::string>* tags =
      TagsOfResource(fake, Str(body, "resourceArn"));
  if (tags == nullptr) {
    return InvalidParameter("The specified resource could not be found.");
  }
  std::map<std::string, std::string> merged = *tags;
  for (const auto& [k, v] : TagsOf(body, "tags")) merged[k] = v;
  if (std::optional<Reply> bad = CheckTags(merged)) return *bad;
  *tags = merged;
  return Ok([](JsonWriter&) {});
}

Reply UntagResource(Fake& fake, const rapidjson::Document& body,
                    const std::string&) ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  std::map<std::string, std::string>* tags =
      TagsOfResource(fake, Str(body, "resourceArn"));
  if (tags == nullptr) {
    return InvalidParameter("The specified resource could not be found.");
  }
  for (const std::string& k : Strings(body, "tagKeys")) tags->erase(k);
  return Ok([](JsonWriter&) {});
}

Reply ListTagsForResource(Fake& fake, const rapidjson::Document& body,
                          const std::string&)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  std::map<std::string, std::string>* tags =
      TagsOfResource(fake, Str(body, "resourceArn"));
  if (tags == nullptr) {
    return InvalidParameter("The specified resource could not be found.");
  }
  return Ok([&](JsonWriter& w) { PutTags(w, *tags); });
}

}  // namespace

Operation EcsOperation(std::string_view name) {
  static const auto* kOperations = new std::map<std::string_view, Operation>{
      {"RegisterTaskDefinition", &RegisterTaskDefinition},
      {"DescribeTaskDefinition", &DescribeTaskDefinition},
      {"DeregisterTaskDefinition", &DeregisterTaskDefinition},
      {"DeleteTaskDefinitions", &DeleteTaskDefinitions},
      {"ListTaskDefinitions", &ListTaskDefinitions},
      {"ListTaskDefinitionFamilies", &ListTaskDefinitionFamilies},
      {"RunTask", &RunTask},
      {"DescribeTasks", &DescribeTasks},
      {"StopTask", &StopTask},
      {"ListTasks", &ListTasks},
      {"TagResource", &TagResource},
      {"UntagResource", &UntagResource},
      {"ListTagsForResource", &ListTagsForResource},
  };
  auto it = kOperations->find(name);
  return it == kOperations->end() ? nullptr : it->second;
}

}  // namespace delegate::testing::aws_fake

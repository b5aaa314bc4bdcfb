// The files in deploy/ecs/ that an operator hands to AWS: each task
// definition is a valid RegisterTaskDefinition input and each service a
// valid CreateService input of the ECS model (ecs-model/service-2.json), and
// they keep the rules a model cannot say: Fargate sizes and networking, the
// delegate's image, the token only as a Secrets Manager secret, an
// environment the delegate itself accepts, and IAM policies that grant what
// the ECS executor calls.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "delegate/builtin_executors.h"
#include "delegate/config.h"
#include "executor/ecs/task_definition.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rapidjson/document.h"
#include "rapidjson/error/en.h"
#include "tests/fakes/aws_fake.h"
#include "tests/fakes/aws_model.h"

namespace delegate::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::Contains;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAreArray;

const fs::path& DeployDir() {
  static const fs::path* dir =
      new fs::path(fs::path(DELEGATE_SOURCE_DIR) / "deploy" / "ecs");
  return *dir;
}

std::string Read(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot read " << path;
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct JsonFile {
  std::string name;  // relative to deploy/ecs/
  std::string text;
  rapidjson::Document doc;
};

JsonFile Load(const std::string& name) {
  JsonFile f;
  f.name = name;
  f.text = Read(DeployDir() / name);
  f.doc.Parse(f.text.c_str());
  EXPECT_FALSE(f.doc.HasParseError())
      << name
      << ": not JSON: " << rapidjson::GetParseError_En(f.doc.GetParseError())
      << " at offset " << f.doc.GetErrorOffset();
  EXPECT_TRUE(f.doc.IsObject()) << name << ": not a JSON object";
  return f;
}

const AwsModel& EcsModel() {
  static const AwsModel* model = [] {
    const std::string path =
        (fs::path(AwsTestdataDir()) / "ecs-model" / "service-2.json").string();
    absl::StatusOr<AwsModel> m = AwsModel::Load(path);
    if (!m.ok()) {
      ADD_FAILURE() << m.status();
      std::abort();
    }
    return new AwsModel(*std::move(m));
  }();
  return *model;
}

std::string Str(const rapidjson::Value& v, const char* member) {
  if (!v.IsObject()) return "";
  auto it = v.FindMember(member);
  return it != v.MemberEnd() && it->value.IsString() ? it->value.GetString()
                                                     : "";
}

std::vector<std::string> Strings(const rapidjson::Value& v) {
  std::vector<std::string> out;
  if (v.IsString()) out.push_back(v.GetString());
  if (v.IsArray()) {
    for (const auto& e : v.GetArray()) {
      if (e.IsString()) out.push_back(e.GetString());
    }
  }
  return out;
}

const rapidjson::Value* Member(const rapidjson::Value& v, const char* name) {
  if (!v.IsObject()) return nullptr;
  auto it = v.FindMember(name);
  return it == v.MemberEnd() ? nullptr : &it->value;
}

// The placeholders the files use for what only the operator knows.
constexpr char kAccountPlaceholder[] = "PUT_YOUR_AWS_ACCOUNT_ID";

// arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE, with a 12-digit account or
// the placeholder; empty when fine, else why not.
std::string ArnProblem(const std::string& arn, const std::string& service) {
  std::vector<std::string> p = absl::StrSplit(arn, absl::MaxSplits(':', 5));
  if (p.size() != 6 || p[0] != "arn") return "not arn:...:...:...:...:...";
  if (p[1] != "aws" && p[1] != "aws-cn" && p[1] != "aws-us-gov") {
    return absl::StrCat("partition '", p[1], "'");
  }
  if (p[2] != service)
    return absl::StrCat("service '", p[2], "', not ", service);
  static const std::regex kRegion("[a-z]{2}(-gov)?-[a-z]+-[0-9]");
  if (service == "iam" ? !p[3].empty() : !std::regex_match(p[3], kRegion)) {
    return absl::StrCat("region '", p[3], "'");
  }
  static const std::regex kAccount("[0-9]{12}");
  if (p[4] != kAccountPlaceholder && !std::regex_match(p[4], kAccount)) {
    return absl::StrCat("account '", p[4], "'");
  }
  if (p[5].empty()) return "no resource";
  return "";
}

// Whether Fargate offers a task of `cpu` units and `memory` MiB (the
// executor's table, which its own tests check against the ECS model's).
bool FargateSizeValid(int cpu, int memory) {
  absl::StatusOr<ecs::TaskSize> size =
      ecs::FargateTaskSize(Resources{cpu / 1024.0, memory}, "task");
  return size.ok() && size->cpu_units == cpu && size->memory_mib == memory;
}

int Int(const std::string& s) {
  int v = -1;
  std::istringstream in(s);
  in >> v;
  return in && in.eof() ? v : -1;
}

// The files and how they belong together.
struct Deployment {
  const char* launch_type;  // FARGATE or EC2
  const char* task_definition;
  const char* service;
};
constexpr Deployment kDeployments[] = {
    {"FARGATE", "fargate-task-definition.json", "fargate-service.json"},
    {"EC2", "ec2-task-definition.json", "ec2-service.json"},
};
constexpr char kTaskRolePolicy[] = "iam/delegate-task-role-policy.json";
constexpr char kExecutionRolePolicy[] =
    "iam/delegate-execution-role-policy.json";
constexpr char kTrustPolicy[] = "iam/ecs-tasks-trust-policy.json";

// The delegate's token, under each name the delegate reads it from.
constexpr const char* kTokenNames[] = {
    "HARNESS_TOKEN", "TOKEN", "DELEGATE_TOKEN", "HARNESS_DELEGATE_TOKEN"};

const rapidjson::Value& DelegateContainer(const JsonFile& f) {
  static const rapidjson::Value kNull;
  const rapidjson::Value* containers = Member(f.doc, "containerDefinitions");
  if (containers == nullptr || !containers->IsArray() || containers->Empty()) {
    ADD_FAILURE() << f.name << ": no containerDefinitions";
    return kNull;
  }
  for (const auto& c : containers->GetArray()) {
    if (Str(c, "name") == "harness-delegate") return c;
  }
  ADD_FAILURE() << f.name << ": no container named harness-delegate";
  return kNull;
}

EnvMap Environment(const rapidjson::Value& container) {
  EnvMap env;
  if (const rapidjson::Value* e = Member(container, "environment");
      e != nullptr && e->IsArray()) {
    for (const auto& kv : e->GetArray())
      env[Str(kv, "name")] = Str(kv, "value");
  }
  return env;
}

std::map<std::string, std::string> Secrets(const rapidjson::Value& container) {
  std::map<std::string, std::string> secrets;
  if (const rapidjson::Value* s = Member(container, "secrets");
      s != nullptr && s->IsArray()) {
    for (const auto& kv : s->GetArray()) {
      secrets[Str(kv, "name")] = Str(kv, "valueFrom");
    }
  }
  return secrets;
}

TEST(DeployFilesTest, EveryJsonFileIsOneThisTestChecks) {
  std::vector<std::string> known = {kTaskRolePolicy, kExecutionRolePolicy,
                                    kTrustPolicy};
  for (const Deployment& d : kDeployments) {
    known.push_back(d.task_definition);
    known.push_back(d.service);
  }
  std::vector<std::string> found;
  for (const auto& entry : fs::recursive_directory_iterator(DeployDir())) {
    if (entry.path().extension() == ".json") {
      found.push_back(fs::relative(entry.path(), DeployDir()).string());
    }
  }
  EXPECT_THAT(found, UnorderedElementsAreArray(known))
      << "a JSON file in deploy/ecs/ that this test does not know is not "
         "checked: add it to kDeployments or the IAM checks";
}

TEST(DeployFilesTest, TaskDefinitionsAreValidRegisterTaskDefinitionInputs) {
  for (const Deployment& d : kDeployments) {
    JsonFile f = Load(d.task_definition);
    EXPECT_THAT(EcsModel().ValidateInput("RegisterTaskDefinition", f.text),
                IsEmpty())
        << d.task_definition;
  }
}

TEST(DeployFilesTest, ServicesAreValidCreateServiceInputs) {
  for (const Deployment& d : kDeployments) {
    JsonFile f = Load(d.service);
    EXPECT_THAT(EcsModel().ValidateInput("CreateService", f.text), IsEmpty())
        << d.service;
  }
}

TEST(DeployFilesTest, TaskDefinitionsFitTheirLaunchType) {
  for (const Deployment& d : kDeployments) {
    SCOPED_TRACE(d.task_definition);
    JsonFile f = Load(d.task_definition);
    const std::string launch = d.launch_type;
    const rapidjson::Value* compat = Member(f.doc, "requiresCompatibilities");
    ASSERT_NE(compat, nullptr) << "requiresCompatibilities: the launch type is "
                                  "checked at register time only with it";
    EXPECT_EQ(Strings(*compat), std::vector<std::string>{launch});
    const int cpu = Int(Str(f.doc, "cpu"));
    const int memory = Int(Str(f.doc, "memory"));
    const rapidjson::Value& c = DelegateContainer(f);
    if (launch == "FARGATE") {
      EXPECT_EQ(Str(f.doc, "networkMode"), "awsvpc") << "Fargate needs awsvpc";
      EXPECT_TRUE(FargateSizeValid(cpu, memory))
          << "cpu " << Str(f.doc, "cpu") << " with memory "
          << Str(f.doc, "memory") << " is not a Fargate task size";
      EXPECT_FALSE(Str(f.doc, "executionRoleArn").empty())
          << "Fargate needs an execution role for awslogs, ECR and secrets";
      EXPECT_EQ(Member(c, "privileged"), nullptr) << "not on Fargate";
      if (const rapidjson::Value* volumes = Member(f.doc, "volumes")) {
        for (const auto& v : volumes->GetArray()) {
          EXPECT_EQ(Member(v, "host"), nullptr)
              << "host volumes: not on Fargate";
        }
      }
      if (const rapidjson::Value* ports = Member(c, "portMappings")) {
        for (const auto& p : ports->GetArray()) {
          if (const rapidjson::Value* host = Member(p, "hostPort")) {
            EXPECT_EQ(host->GetInt(), Member(p, "containerPort")->GetInt())
                << "awsvpc: hostPort must equal containerPort";
          }
        }
      }
    } else {
      EXPECT_EQ(Str(f.doc, "networkMode"), "bridge");
      EXPECT_GT(cpu, 0);
      EXPECT_GT(memory, 0);
    }
    // Container sizes fit in the task's.
    if (const rapidjson::Value* m = Member(c, "memory")) {
      EXPECT_LE(m->GetInt(), memory);
    }
    if (const rapidjson::Value* u = Member(c, "cpu")) {
      EXPECT_LE(u->GetInt(), cpu);
    }
    // Fargate requires the stream prefix; both write to the shared group.
    const rapidjson::Value* log = Member(c, "logConfiguration");
    ASSERT_NE(log, nullptr);
    EXPECT_EQ(Str(*log, "logDriver"), "awslogs");
    const rapidjson::Value* options = Member(*log, "options");
    ASSERT_NE(options, nullptr);
    EXPECT_EQ(Str(*options, "awslogs-group"), "/ecs/harness-delegates");
    EXPECT_FALSE(Str(*options, "awslogs-stream-prefix").empty());
    EXPECT_EQ(Str(*options, "awslogs-region"), Environment(c)["AWS_REGION"]);
    if (const rapidjson::Value* stop = Member(c, "stopTimeout");
        stop != nullptr && launch == "FARGATE") {
      EXPECT_GE(stop->GetInt(), 2);
      EXPECT_LE(stop->GetInt(), 120) << "Fargate's stopTimeout is 2 to 120 s";
    }
  }
}

TEST(DeployFilesTest, TheContainerIsTheDelegateImage) {
  for (const Deployment& d : kDeployments) {
    SCOPED_TRACE(d.task_definition);
    JsonFile f = Load(d.task_definition);
    const rapidjson::Value& c = DelegateContainer(f);
    const std::string image = Str(c, "image");
    // [REGISTRY/]libdelegate/delegate:TAG
    static const std::regex kImage(
        "([^/]+/)?libdelegate/delegate:[A-Za-z0-9_.-]+");
    EXPECT_TRUE(std::regex_match(image, kImage))
        << "image '" << image << "' is not libdelegate/delegate:TAG";
    const rapidjson::Value* essential = Member(c, "essential");
    EXPECT_TRUE(essential == nullptr || essential->GetBool());
    EXPECT_EQ(Member(c, "entryPoint"), nullptr)
        << "the image's entrypoint is the delegate";
  }
}

TEST(DeployFilesTest, TheTokenIsASecretsManagerSecretNeverPlain) {
  for (const Deployment& d : kDeployments) {
    SCOPED_TRACE(d.task_definition);
    JsonFile f = Load(d.task_definition);
    const rapidjson::Value& c = DelegateContainer(f);
    EnvMap env = Environment(c);
    for (const char* name : kTokenNames) {
      EXPECT_EQ(env.count(name), 0u) << name << " in plain environment";
    }
    std::map<std::string, std::string> secrets = Secrets(c);
    ASSERT_EQ(secrets.count("HARNESS_TOKEN"), 1u);
    EXPECT_EQ(ArnProblem(secrets["HARNESS_TOKEN"], "secretsmanager"), "")
        << secrets["HARNESS_TOKEN"];
    EXPECT_TRUE(absl::StrContains(secrets["HARNESS_TOKEN"], ":secret:"));
    // Nothing that looks like a token value anywhere in the file.
    static const std::regex kHexToken("[0-9a-fA-F]{32}");
    EXPECT_FALSE(std::regex_search(f.text, kHexToken));
  }
}

TEST(DeployFilesTest, EveryArnIsWellFormed) {
  for (const Deployment& d : kDeployments) {
    SCOPED_TRACE(d.task_definition);
    JsonFile f = Load(d.task_definition);
    for (const char* role : {"executionRoleArn", "taskRoleArn"}) {
      const std::string arn = Str(f.doc, role);
      if (!arn.empty()) {
        EXPECT_EQ(ArnProblem(arn, "iam"), "") << role << " " << arn;
      }
    }
    for (const auto& [name, value] : Environment(DelegateContainer(f))) {
      if (absl::StartsWith(value, "arn:")) {
        EXPECT_EQ(ArnProblem(value, "iam"), "") << name << "=" << value;
      }
    }
  }
  for (const char* policy : {kTaskRolePolicy, kExecutionRolePolicy}) {
    JsonFile f = Load(policy);
    for (const auto& s : Member(f.doc, "Statement")->GetArray()) {
      for (const std::string& r : Strings(*Member(s, "Resource"))) {
        if (r == "*") continue;
        std::vector<std::string> p = absl::StrSplit(r, ':');
        ASSERT_GE(p.size(), 3u) << policy << ": " << r;
        EXPECT_EQ(ArnProblem(r, p[2]), "") << policy << ": " << r;
      }
    }
  }
}

TEST(DeployFilesTest, TheDelegateAcceptsTheEnvironment) {
  for (const Deployment& d : kDeployments) {
    SCOPED_TRACE(d.task_definition);
    JsonFile f = Load(d.task_definition);
    EnvMap env = Environment(DelegateContainer(f));
    for (const char* name :
         {"HARNESS_ACCOUNT_ID", "HARNESS_URL", "HARNESS_NAME", "HARNESS_TAGS",
          "AWS_REGION", "DELEGATE_ECS_CLUSTER",
          "DELEGATE_ECS_EXECUTION_ROLE_ARN", "DELEGATE_ECS_TASK_ROLE_ARN",
          "DELEGATE_ECS_LOG_GROUP"}) {
      EXPECT_FALSE(env[name].empty()) << name;
    }
    if (std::string(d.launch_type) == "FARGATE") {
      for (const char* name :
           {"DELEGATE_ECS_SUBNETS", "DELEGATE_ECS_SECURITY_GROUPS",
            "DELEGATE_ECS_ASSIGN_PUBLIC_IP"}) {
        EXPECT_FALSE(env[name].empty()) << name;
      }
    }
    EXPECT_EQ(env["DELEGATE_ECS_LOG_GROUP"], "/ecs/harness-delegates");
    // ECS puts the secret into the environment; a stand-in for it here.
    EnvMap with_token = env;
    with_token["HARNESS_TOKEN"] = "0123456789abcdef0123456789abcdef";
    absl::StatusOr<DelegateConfig> config =
        LoadConfig(with_token, {}, ConfigNeed::kServer);
    EXPECT_TRUE(config.ok()) << config.status();
    if (config.ok()) {
      EXPECT_EQ(config->name, env["HARNESS_NAME"]);
      EXPECT_THAT(config->warnings, IsEmpty());
    }
    absl::StatusOr<EcsExecutorOptions> ecs = LoadEcsExecutorOptions(env);
    EXPECT_TRUE(ecs.ok()) << ecs.status();
  }
}

TEST(DeployFilesTest, ServicesRunTheirTaskDefinitions) {
  for (const Deployment& d : kDeployments) {
    SCOPED_TRACE(d.service);
    JsonFile service = Load(d.service);
    JsonFile task = Load(d.task_definition);
    EnvMap env = Environment(DelegateContainer(task));
    EXPECT_EQ(Str(service.doc, "launchType"), d.launch_type);
    EXPECT_EQ(Str(service.doc, "taskDefinition"), Str(task.doc, "family"));
    EXPECT_EQ(Str(service.doc, "cluster"), env["DELEGATE_ECS_CLUSTER"])
        << "steps run in the delegate's cluster";
    const rapidjson::Value* network =
        Member(service.doc, "networkConfiguration");
    if (std::string(d.launch_type) == "FARGATE") {
      ASSERT_NE(network, nullptr) << "awsvpc needs networkConfiguration";
      const rapidjson::Value* vpc = Member(*network, "awsvpcConfiguration");
      ASSERT_NE(vpc, nullptr);
      std::vector<std::string> subnets = Strings(*Member(*vpc, "subnets"));
      EXPECT_FALSE(subnets.empty());
      EXPECT_EQ(absl::StrJoin(subnets, ","), env["DELEGATE_ECS_SUBNETS"])
          << "the steps run where the delegate runs";
      EXPECT_EQ(absl::StrJoin(Strings(*Member(*vpc, "securityGroups")), ","),
                env["DELEGATE_ECS_SECURITY_GROUPS"]);
      EXPECT_EQ(Str(*vpc, "assignPublicIp"),
                env["DELEGATE_ECS_ASSIGN_PUBLIC_IP"]);
    } else {
      EXPECT_EQ(network, nullptr)
          << "bridge mode takes no networkConfiguration";
    }
  }
}

// Every action of every Allow statement of a policy document, and the
// statements themselves.
std::set<std::string> Actions(const JsonFile& policy) {
  std::set<std::string> actions;
  EXPECT_EQ(Str(policy.doc, "Version"), "2012-10-17") << policy.name;
  const rapidjson::Value* statements = Member(policy.doc, "Statement");
  EXPECT_TRUE(statements != nullptr && statements->IsArray()) << policy.name;
  if (statements == nullptr || !statements->IsArray()) return actions;
  for (const auto& s : statements->GetArray()) {
    EXPECT_EQ(Str(s, "Effect"), "Allow") << policy.name;
    // A permissions policy names resources; a trust policy, principals.
    EXPECT_TRUE(Member(s, "Resource") != nullptr ||
                Member(s, "Principal") != nullptr)
        << policy.name;
    for (const std::string& a : Strings(*Member(s, "Action"))) {
      EXPECT_FALSE(absl::StrContains(a, "*")) << policy.name << ": " << a;
      actions.insert(a);
    }
  }
  return actions;
}

const rapidjson::Value* StatementWith(const JsonFile& policy,
                                      const std::string& action) {
  for (const auto& s : Member(policy.doc, "Statement")->GetArray()) {
    for (const std::string& a : Strings(*Member(s, "Action"))) {
      if (a == action) return &s;
    }
  }
  return nullptr;
}

// The AWS operations the ECS executor and the Logs client call, read from
// their sources: `Call("Operation"`.
std::set<std::string> CalledOperations(const std::vector<fs::path>& sources) {
  std::set<std::string> ops;
  static const std::regex kCall("Call\\(\\s*\"([A-Za-z]+)\"");
  for (const fs::path& path : sources) {
    if (!fs::exists(path)) continue;
    const std::string text = Read(path);
    for (std::sregex_iterator it(text.begin(), text.end(), kCall), end;
         it != end; ++it) {
      ops.insert((*it)[1].str());
    }
  }
  return ops;
}

TEST(DeployFilesTest, TheTaskRoleGrantsWhatTheExecutorCalls) {
  JsonFile policy = Load(kTaskRolePolicy);
  std::set<std::string> actions = Actions(policy);
  for (const char* action :
       {"ecs:RegisterTaskDefinition", "ecs:DeregisterTaskDefinition",
        "ecs:DeleteTaskDefinitions", "ecs:DescribeTaskDefinition",
        "ecs:ListTaskDefinitions", "ecs:RunTask", "ecs:StopTask",
        "ecs:DescribeTasks", "ecs:ListTasks", "ecs:TagResource", "iam:PassRole",
        "logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
        "logs:GetLogEvents", "logs:DescribeLogStreams"}) {
    EXPECT_THAT(actions, Contains(action));
  }
  // Whatever the sources call, when they are there.
  const fs::path src = fs::path(DELEGATE_SOURCE_DIR) / "libdelegate" / "src";
  std::vector<fs::path> ecs_sources;
  if (fs::exists(src / "executor" / "ecs")) {
    for (const auto& e : fs::directory_iterator(src / "executor" / "ecs")) {
      if (e.path().extension() == ".cc") ecs_sources.push_back(e.path());
    }
  }
  for (const std::string& op : CalledOperations(ecs_sources)) {
    EXPECT_THAT(actions, Contains("ecs:" + op))
        << "libdelegate/src/executor/ecs/ calls " << op;
  }
  for (const std::string& op :
       CalledOperations({src / "aws" / "logs_client.cc"})) {
    EXPECT_THAT(actions, Contains("logs:" + op))
        << "libdelegate/src/aws/logs_client.cc calls " << op;
  }
}

TEST(DeployFilesTest, TheTaskRolePassesOnlyTheStepRolesToEcsTasks) {
  JsonFile policy = Load(kTaskRolePolicy);
  const rapidjson::Value* pass = StatementWith(policy, "iam:PassRole");
  ASSERT_NE(pass, nullptr);
  EXPECT_EQ(Strings(*Member(*pass, "Action")),
            std::vector<std::string>{"iam:PassRole"});
  std::set<std::string> step_roles;
  for (const Deployment& d : kDeployments) {
    EnvMap env = Environment(DelegateContainer(Load(d.task_definition)));
    step_roles.insert(env["DELEGATE_ECS_EXECUTION_ROLE_ARN"]);
    step_roles.insert(env["DELEGATE_ECS_TASK_ROLE_ARN"]);
  }
  std::vector<std::string> resources = Strings(*Member(*pass, "Resource"));
  EXPECT_EQ(std::set<std::string>(resources.begin(), resources.end()),
            step_roles);
  const rapidjson::Value* condition = Member(*pass, "Condition");
  ASSERT_NE(condition, nullptr);
  const rapidjson::Value* equals = Member(*condition, "StringEquals");
  ASSERT_NE(equals, nullptr);
  EXPECT_EQ(Strings(*Member(*equals, "iam:PassedToService")),
            std::vector<std::string>{"ecs-tasks.amazonaws.com"});
}

TEST(DeployFilesTest, TheTaskRoleIsScopedToTheDelegatesClustersAndLogGroup) {
  JsonFile policy = Load(kTaskRolePolicy);
  const rapidjson::Value* run = StatementWith(policy, "ecs:RunTask");
  ASSERT_NE(run, nullptr);
  const rapidjson::Value* condition = Member(*run, "Condition");
  ASSERT_NE(condition, nullptr) << "RunTask anywhere";
  const rapidjson::Value* arn_equals = Member(*condition, "ArnEquals");
  ASSERT_NE(arn_equals, nullptr);
  std::vector<std::string> clusters =
      Strings(*Member(*arn_equals, "ecs:cluster"));
  for (const Deployment& d : kDeployments) {
    EnvMap env = Environment(DelegateContainer(Load(d.task_definition)));
    EXPECT_THAT(clusters,
                Contains(absl::StrCat("arn:aws:ecs:", env["AWS_REGION"], ":",
                                      kAccountPlaceholder, ":cluster/",
                                      env["DELEGATE_ECS_CLUSTER"])));
    const rapidjson::Value* logs = StatementWith(policy, "logs:PutLogEvents");
    ASSERT_NE(logs, nullptr);
    const std::string group = absl::StrCat(
        "arn:aws:logs:", env["AWS_REGION"], ":", kAccountPlaceholder,
        ":log-group:", env["DELEGATE_ECS_LOG_GROUP"]);
    EXPECT_THAT(Strings(*Member(*logs, "Resource")), Contains(group));
    EXPECT_THAT(Strings(*Member(*logs, "Resource")), Contains(group + ":*"));
  }
}

TEST(DeployFilesTest, TheExecutionRoleReadsTheTokenSecretOnly) {
  JsonFile policy = Load(kExecutionRolePolicy);
  EXPECT_EQ(Actions(policy),
            std::set<std::string>{"secretsmanager:GetSecretValue"});
  const rapidjson::Value* read =
      StatementWith(policy, "secretsmanager:GetSecretValue");
  ASSERT_NE(read, nullptr);
  std::vector<std::string> resources = Strings(*Member(*read, "Resource"));
  for (const Deployment& d : kDeployments) {
    std::map<std::string, std::string> secrets =
        Secrets(DelegateContainer(Load(d.task_definition)));
    // Secrets Manager appends six characters to a secret's name in its ARN.
    EXPECT_EQ(resources,
              std::vector<std::string>{secrets["HARNESS_TOKEN"] + "-??????"});
  }
}

TEST(DeployFilesTest, TheTrustPolicyLetsEcsTasksAssumeTheRoles) {
  JsonFile policy = Load(kTrustPolicy);
  EXPECT_EQ(Actions(policy), std::set<std::string>{"sts:AssumeRole"});
  const rapidjson::Value* s = StatementWith(policy, "sts:AssumeRole");
  ASSERT_NE(s, nullptr);
  const rapidjson::Value* principal = Member(*s, "Principal");
  ASSERT_NE(principal, nullptr);
  EXPECT_EQ(Strings(*Member(*principal, "Service")),
            std::vector<std::string>{"ecs-tasks.amazonaws.com"});
}

}  // namespace
}  // namespace delegate::testing

#include "delegate/policy.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "delegate/builtin_executors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace delegate {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

// ------------------------------------------------------------ helpers

Stage MakeStage(std::string platform) {
  Stage stage;
  stage.name = "test";
  stage.platform = std::move(platform);
  return stage;
}

Step& AddStep(Stage& stage, std::string id = "") {
  Step step;
  step.id = id.empty() ? absl::StrCat("s", stage.steps.size()) : id;
  step.commands = {"true"};
  stage.steps.push_back(std::move(step));
  return stage.steps.back();
}

void AddEmptyDir(Stage& stage, std::string name,
                 std::optional<int64_t> size_mib = std::nullopt) {
  stage.volumes.push_back({std::move(name), EmptyDirVolume{size_mib}});
}

void AddHostPath(Stage& stage, std::string name, std::string path,
                 bool read_only = false) {
  stage.volumes.push_back(
      {std::move(name), HostPathVolume{std::move(path), read_only}});
}

void AddEfs(Stage& stage, std::string name, EfsVolume efs) {
  stage.volumes.push_back({std::move(name), std::move(efs)});
}

EfsVolume GoodEfs() {
  EfsVolume efs;
  efs.filesystem_id = "fs-0123456789abcdef0";
  return efs;
}

// "field @ platform" of each violation, for compact expectations.
std::vector<std::string> Where(const std::vector<PolicyViolation>& vs) {
  std::vector<std::string> out;
  for (const PolicyViolation& v : vs) {
    out.push_back(absl::StrCat(v.field, " @ ", v.platform));
  }
  return out;
}

// The built-in executors as the delegate registers them, each with its
// platform's profile.
const ExecutorRegistry& Builtins() {
  static const ExecutorRegistry* registry = [] {
    auto* r = new ExecutorRegistry;
    EXPECT_TRUE(RegisterHostExecutor(*r, {}).ok());
    EXPECT_TRUE(RegisterDockerExecutor(*r, {}).ok());
    EXPECT_TRUE(RegisterEcsExecutors(*r, {}).ok());
    return r;
  }();
  return *registry;
}

const PlatformProfile* FindPlatformProfile(std::string_view name) {
  return Builtins().Profile(name);
}

std::vector<PolicyViolation> Check(const Stage& stage,
                                   const OperatorPolicy& policy = {}) {
  return CheckStagePolicy(stage, policy, FindPlatformProfile(stage.platform));
}

// ------------------------------------------------------------ basics

TEST(PlatformProfileTest, KnownNames) {
  for (const char* name : {"host", "docker", "ecs-ec2", "ecs-fargate"}) {
    const PlatformProfile* p = FindPlatformProfile(name);
    ASSERT_NE(p, nullptr) << name;
    EXPECT_EQ(p->name, name);
  }
  EXPECT_FALSE(FindPlatformProfile("host")->containers);
  EXPECT_TRUE(FindPlatformProfile("docker")->containers);
  EXPECT_FALSE(FindPlatformProfile("ecs-fargate")->privileged);
}

TEST(PlatformProfileTest, OtherNamesHaveNoProfile) {
  EXPECT_EQ(FindPlatformProfile("k8s"), nullptr);
  EXPECT_EQ(FindPlatformProfile(""), nullptr);
  EXPECT_EQ(FindPlatformProfile("Docker"), nullptr);
  EXPECT_EQ(FindPlatformProfile("ecs"), nullptr);
}

// An empty_dir's size_mib is never silently ignored: where the platform
// does not enforce it, a note names the field and says so; on Fargate it is
// the task's ephemeral storage, and no note is given.
TEST(StageNotesTest, SayWhereAnEmptyDirSizeIsNotEnforced) {
  for (const char* platform : {"host", "docker", "ecs-ec2"}) {
    Stage stage = MakeStage(platform);
    AddStep(stage);
    AddEmptyDir(stage, "scratch");
    AddEmptyDir(stage, "cache", 1024);
    EXPECT_THAT(StageNotes(stage, FindPlatformProfile(platform)),
                ElementsAre(AllOf(
                    HasSubstr("volumes[1].empty_dir.size_mib: 1024 MiB is not "
                              "enforced on "),
                    HasSubstr("no size limit"))))
        << platform;
  }
  Stage fargate = MakeStage("ecs-fargate");
  AddStep(fargate);
  AddEmptyDir(fargate, "cache", 30 * 1024);
  EXPECT_THAT(StageNotes(fargate, FindPlatformProfile("ecs-fargate")),
              IsEmpty());
  EXPECT_THAT(StageNotes(fargate, nullptr), IsEmpty());
}

TEST(PolicyViolationTest, ToString) {
  PolicyViolation v{"steps[1].security_context.privileged", "ecs-fargate",
                    "privileged containers are not allowed on Fargate"};
  EXPECT_EQ(v.ToString(),
            "steps[1].security_context.privileged: privileged containers are "
            "not allowed on Fargate (platform ecs-fargate)");
}

TEST(PolicyStatusTest, OkWhenEmpty) { EXPECT_TRUE(PolicyStatus({}).ok()); }

TEST(PolicyStatusTest, OneLinePerViolation) {
  absl::Status s =
      PolicyStatus({{"a", "docker", "bad a"}, {"b", "operator", "bad b"}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "a: bad a (platform docker)\nb: bad b (platform operator)");
}

TEST(CheckStagePolicyTest, EmptyStageIsFineEverywhere) {
  for (const char* p : {"host", "docker", "ecs-ec2", "ecs-fargate", "k8s"}) {
    Stage stage = MakeStage(p);
    AddStep(stage);
    EXPECT_THAT(Check(stage), IsEmpty()) << p;
  }
}

// ------------------------------------------------------------ host

TEST(HostPolicyTest, ImageIsAnError) {
  Stage stage = MakeStage("host");
  AddStep(stage).image = "alpine";
  std::vector<PolicyViolation> vs = Check(stage);
  ASSERT_THAT(vs, SizeIs(1));
  EXPECT_EQ(vs[0].field, "steps[0].image");
  EXPECT_EQ(vs[0].platform, "host");
  EXPECT_THAT(vs[0].rule, HasSubstr("host processes"));
  EXPECT_THAT(vs[0].rule, HasSubstr("use platform docker"));
}

TEST(HostPolicyTest, ContainerSecurityContextIsAnError) {
  Stage stage = MakeStage("host");
  SecurityContext& sc = AddStep(stage).security_context;
  sc.privileged = true;
  sc.read_only_root_filesystem = true;
  sc.add_capability = {"NET_ADMIN"};
  sc.drop_capability = {"ALL"};
  EXPECT_THAT(Where(Check(stage)),
              ElementsAre("steps[0].security_context.privileged @ host",
                          "steps[0].security_context.read_only_root_filesystem "
                          "@ host",
                          "steps[0].security_context.drop_capability @ host",
                          "steps[0].security_context.add_capability @ host"));
}

TEST(HostPolicyTest, RunAsUserAndGroupAndFalseFlagsAreFine) {
  Stage stage = MakeStage("host");
  SecurityContext& sc = AddStep(stage).security_context;
  sc.run_as_user = 1000;
  sc.run_as_group = 1000;
  sc.privileged = false;
  sc.read_only_root_filesystem = false;
  EXPECT_THAT(Check(stage), IsEmpty());
}

TEST(HostPolicyTest, EfsIsAnError) {
  Stage stage = MakeStage("host");
  AddEfs(stage, "shared", GoodEfs());
  std::vector<PolicyViolation> vs = Check(stage);
  ASSERT_THAT(vs, SizeIs(1));
  EXPECT_EQ(vs[0].ToString(),
            "volumes[0].efs: EFS volumes cannot be mounted on host; use a "
            "container platform (docker, ecs-ec2, ecs-fargate) (platform "
            "host)");
}

TEST(HostPolicyTest, HostPathsAsGiven) {
  Stage stage = MakeStage("host");
  AddHostPath(stage, "data", "/data/");
  AddHostPath(stage, "cache", "/var/cache", /*read_only=*/true);
  Step& step = AddStep(stage);
  step.volume_mounts = {{"data", "/data"},    // its own path, normalised
                        {"cache", "cache"}};  // relative: a workspace link
  EXPECT_THAT(Check(stage), IsEmpty());
}

TEST(HostPolicyTest, AbsoluteMountElsewhereIsAnError) {
  Stage stage = MakeStage("host");
  AddHostPath(stage, "data", "/data");
  AddEmptyDir(stage, "scratch");
  Step& step = AddStep(stage);
  step.volume_mounts = {
      {"data", "/mnt/data"}, {"scratch", "/scratch"}, {"scratch", "scratch"}};
  std::vector<PolicyViolation> vs = Check(stage);
  EXPECT_THAT(Where(vs), ElementsAre("steps[0].volume_mounts[0].path @ host",
                                     "steps[0].volume_mounts[1].path @ host"));
  EXPECT_THAT(vs[0].rule, HasSubstr("/mnt/data"));
}

TEST(HostPolicyTest, WorkingDirMustStayInTheWorkspace) {
  for (const char* bad : {"..", "../x", "a/../../b", "./../b"}) {
    Stage stage = MakeStage("host");
    AddStep(stage).working_dir = bad;
    EXPECT_THAT(Where(Check(stage)), ElementsAre("steps[0].working_dir @ host"))
        << bad;
  }
  for (const char* good : {"", "a", "a/../b", "./x", "/abs/../path", "/"}) {
    Stage stage = MakeStage("host");
    AddStep(stage).working_dir = good;
    EXPECT_THAT(Check(stage), IsEmpty()) << good;
  }
}

TEST(HostPolicyTest, EmptyDirOfAnySize) {
  Stage stage = MakeStage("host");
  AddEmptyDir(stage, "a", 1);
  AddEmptyDir(stage, "b", 1 << 30);
  EXPECT_THAT(Check(stage), IsEmpty());
}

// ------------------------------------------------------------ docker, ecs-ec2

class PermissivePlatformTest : public ::testing::TestWithParam<const char*> {};

TEST_P(PermissivePlatformTest, EverythingContainersCanDo) {
  Stage stage = MakeStage(GetParam());
  AddHostPath(stage, "docker-sock", "/var/run/docker.sock");
  AddHostPath(stage, "ro", "/etc/ssl", /*read_only=*/true);
  AddEmptyDir(stage, "tiny", 1);
  AddEmptyDir(stage, "huge", 10'000'000);
  AddEmptyDir(stage, "default");
  EfsVolume efs = GoodEfs();
  efs.root_directory = "/builds";
  efs.transit_encryption = true;
  efs.iam = true;
  AddEfs(stage, "shared", efs);
  Step& step = AddStep(stage);
  step.image = "docker:dind";
  step.working_dir = "../elsewhere";  // inside the container, its own business
  step.security_context.privileged = true;
  step.security_context.read_only_root_filesystem = true;
  step.security_context.run_as_user = 0;
  step.security_context.run_as_group = 0;
  step.security_context.add_capability = {"ALL", "NET_ADMIN", "CAP_SYS_ADMIN"};
  step.security_context.drop_capability = {"ALL", "MKNOD"};
  step.volume_mounts = {{"docker-sock", "/var/run/docker.sock"},
                        {"ro", "/etc/ssl"},
                        {"tiny", "/tiny"},
                        {"shared", "/shared"}};
  step.resources = {4.0, 8192};
  EXPECT_THAT(Check(stage), IsEmpty());
}

INSTANTIATE_TEST_SUITE_P(DockerAndEc2, PermissivePlatformTest,
                         ::testing::Values("docker", "ecs-ec2"));

// ------------------------------------------------------------ ecs-fargate

TEST(FargatePolicyTest, PrivilegedIsAnError) {
  Stage stage = MakeStage("ecs-fargate");
  AddStep(stage);
  AddStep(stage).security_context.privileged = true;
  std::vector<PolicyViolation> vs = Check(stage);
  ASSERT_THAT(vs, SizeIs(1));
  EXPECT_EQ(vs[0].field, "steps[1].security_context.privileged");
  EXPECT_EQ(vs[0].platform, "ecs-fargate");
  EXPECT_EQ(vs[0].ToString(),
            "steps[1].security_context.privileged: privileged containers are "
            "not allowed on Fargate; use platform ecs-ec2 instead (platform "
            "ecs-fargate)");
}

TEST(FargatePolicyTest, PrivilegedFalseIsFine) {
  Stage stage = MakeStage("ecs-fargate");
  AddStep(stage).security_context.privileged = false;
  EXPECT_THAT(Check(stage), IsEmpty());
}

TEST(FargatePolicyTest, HostPathIsAnError) {
  Stage stage = MakeStage("ecs-fargate");
  AddEmptyDir(stage, "ok");
  AddHostPath(stage, "data", "/data", /*read_only=*/true);
  std::vector<PolicyViolation> vs = Check(stage);
  EXPECT_THAT(Where(vs), ElementsAre("volumes[1].host_path @ ecs-fargate"));
  EXPECT_THAT(vs[0].rule, HasSubstr("not allowed on Fargate"));
}

TEST(FargatePolicyTest, OnlySysPtraceMayBeAdded) {
  Stage stage = MakeStage("ecs-fargate");
  AddStep(stage).security_context.add_capability = {"SYS_PTRACE", "NET_ADMIN",
                                                    "CAP_SYS_PTRACE", "ALL"};
  std::vector<PolicyViolation> vs = Check(stage);
  EXPECT_THAT(Where(vs),
              ElementsAre("steps[0].security_context.add_capability[1] @ "
                          "ecs-fargate",
                          "steps[0].security_context.add_capability[3] @ "
                          "ecs-fargate"));
  EXPECT_THAT(vs[0].rule, AllOf(HasSubstr("NET_ADMIN"),
                                HasSubstr("only SYS_PTRACE may be added")));
}

TEST(FargatePolicyTest, WhatFargateAllows) {
  Stage stage = MakeStage("ecs-fargate");
  AddEmptyDir(stage, "scratch");
  EfsVolume efs = GoodEfs();
  efs.transit_encryption = true;
  efs.access_point_id = "fsap-0123456789abcdef0";
  efs.iam = true;
  AddEfs(stage, "shared", efs);
  Step& step = AddStep(stage);
  step.image = "alpine";
  step.security_context.read_only_root_filesystem = true;
  step.security_context.run_as_user = 1000;
  step.security_context.run_as_group = 1000;
  step.security_context.add_capability = {"SYS_PTRACE"};
  step.security_context.drop_capability = {"ALL"};
  step.volume_mounts = {{"scratch", "/scratch"}, {"shared", "/shared"}};
  EXPECT_THAT(Check(stage), IsEmpty());
}

TEST(FargatePolicyTest, EmptyDirSizeBounds) {
  struct Case {
    int64_t size;
    bool ok;
  };
  for (Case c : {Case{1, false}, Case{21503, false}, Case{21504, true},
                 Case{100000, true}, Case{204800, true}, Case{204801, false}}) {
    Stage stage = MakeStage("ecs-fargate");
    AddEmptyDir(stage, "scratch", c.size);
    std::vector<PolicyViolation> vs = Check(stage);
    if (c.ok) {
      EXPECT_THAT(vs, IsEmpty()) << c.size;
    } else {
      ASSERT_THAT(Where(vs),
                  ElementsAre("volumes[0].empty_dir.size_mib @ ecs-fargate"))
          << c.size;
      EXPECT_THAT(vs[0].rule, AllOf(HasSubstr("between 21504 and 204800 MiB"),
                                    HasSubstr(absl::StrCat("got ", c.size))));
    }
  }
}

// ------------------------------------------------------------ EFS

class EfsPolicyTest : public ::testing::TestWithParam<const char*> {
 protected:
  std::vector<std::string> CheckEfs(const EfsVolume& efs) {
    Stage stage = MakeStage(GetParam());
    AddEfs(stage, "shared", efs);
    std::vector<std::string> out;
    for (const PolicyViolation& v : Check(stage)) {
      EXPECT_EQ(v.platform, GetParam());
      out.push_back(v.field);
    }
    return out;
  }
};

TEST_P(EfsPolicyTest, FilesystemId) {
  for (const char* good : {"fs-0123abcd", "fs-0123456789abcdef0"}) {
    EfsVolume efs;
    efs.filesystem_id = good;
    EXPECT_THAT(CheckEfs(efs), IsEmpty()) << good;
  }
  for (const char* bad :
       {"", "fs-", "fs-0123abc", "fs-0123abcde", "fs-0123456789abcdef",
        "fs-0123456789abcdef01", "fs-0123ABCD", "fs-0123abcg", "FS-0123abcd",
        "0123abcd", "fsap-0123456789abcdef0"}) {
    EfsVolume efs;
    efs.filesystem_id = bad;
    EXPECT_THAT(CheckEfs(efs), ElementsAre("volumes[0].efs.filesystem_id"))
        << bad;
  }
}

TEST_P(EfsPolicyTest, RootDirectoryMustBeAbsolute) {
  EfsVolume efs = GoodEfs();
  efs.root_directory = "/builds/cache";
  EXPECT_THAT(CheckEfs(efs), IsEmpty());
  efs.root_directory = "builds";
  EXPECT_THAT(CheckEfs(efs), ElementsAre("volumes[0].efs.root_directory"));
}

TEST_P(EfsPolicyTest, IamNeedsTransitEncryption) {
  EfsVolume efs = GoodEfs();
  efs.iam = true;
  EXPECT_THAT(CheckEfs(efs), ElementsAre("volumes[0].efs.iam"));
  efs.transit_encryption = true;
  EXPECT_THAT(CheckEfs(efs), IsEmpty());
}

TEST_P(EfsPolicyTest, AccessPoint) {
  EfsVolume efs = GoodEfs();
  efs.access_point_id = "fsap-0123456789abcdef0";
  EXPECT_THAT(CheckEfs(efs), ElementsAre("volumes[0].efs.access_point_id"));
  efs.transit_encryption = true;
  EXPECT_THAT(CheckEfs(efs), IsEmpty());
  efs.root_directory = "/";
  EXPECT_THAT(CheckEfs(efs), IsEmpty());
  efs.root_directory = "/data";  // the access point fixes the directory
  EXPECT_THAT(CheckEfs(efs), ElementsAre("volumes[0].efs.root_directory"));
  efs.root_directory.clear();
  for (const char* bad : {"fsap-0123", "fsap-0123456789ABCDEF0",
                          "fs-0123456789abcdef0", "ap-0123456789abcdef0"}) {
    efs.access_point_id = bad;
    EXPECT_THAT(CheckEfs(efs), ElementsAre("volumes[0].efs.access_point_id"))
        << bad;
  }
}

TEST_P(EfsPolicyTest, EveryProblemAtOnce) {
  EfsVolume efs;
  efs.filesystem_id = "efs-1";
  efs.root_directory = "data";
  efs.access_point_id = "fsap-1";
  efs.iam = true;
  EXPECT_THAT(CheckEfs(efs), ElementsAre("volumes[0].efs.filesystem_id",
                                         "volumes[0].efs.root_directory",
                                         "volumes[0].efs.access_point_id",
                                         "volumes[0].efs.access_point_id",
                                         "volumes[0].efs.iam"));
}

INSTANTIATE_TEST_SUITE_P(ContainerPlatforms, EfsPolicyTest,
                         ::testing::Values("docker", "ecs-ec2", "ecs-fargate"));

// ------------------------------------------------------------ every platform

class CommonRulesTest : public ::testing::TestWithParam<const char*> {};

TEST_P(CommonRulesTest, MountMustNameADeclaredVolume) {
  Stage stage = MakeStage(GetParam());
  AddEmptyDir(stage, "cache");
  AddStep(stage);
  AddStep(stage).volume_mounts = {{"cache", "cache"}, {"cahce", "cache2"}};
  std::vector<PolicyViolation> vs = Check(stage);
  EXPECT_THAT(Where(vs), ElementsAre(absl::StrCat(
                             "steps[1].volume_mounts[1].name @ ", GetParam())));
  EXPECT_THAT(vs[0].rule, HasSubstr("no volume named 'cahce'"));
}

TEST_P(CommonRulesTest, CapabilityNamesMustBeKnown) {
  Stage stage = MakeStage(GetParam());
  SecurityContext& sc = AddStep(stage).security_context;
  sc.drop_capability = {"ALL",     "CAP_MKNOD", "MKNOD", "NET_ADMN",
                        "net_raw", "CAP_",      ""};
  std::vector<std::string> fields;
  for (const PolicyViolation& v : Check(stage)) {
    if (v.field.find("drop_capability[") == std::string::npos) continue;
    EXPECT_EQ(v.platform, GetParam());
    EXPECT_THAT(v.rule, HasSubstr("unknown capability"));
    fields.push_back(v.field);
  }
  EXPECT_THAT(fields,
              ElementsAre("steps[0].security_context.drop_capability[3]",
                          "steps[0].security_context.drop_capability[4]",
                          "steps[0].security_context.drop_capability[5]",
                          "steps[0].security_context.drop_capability[6]"));
}

TEST_P(CommonRulesTest, UnknownCapabilityToAdd) {
  Stage stage = MakeStage(GetParam());
  AddStep(stage).security_context.add_capability = {"SYS_PTRACE",
                                                    "SYS_PTRACEE"};
  std::vector<std::string> where = Where(Check(stage));
  EXPECT_THAT(where, ::testing::Contains(absl::StrCat(
                         "steps[0].security_context.add_capability[1] @ ",
                         GetParam())));
}

TEST_P(CommonRulesTest, ResourcesMustBePositive) {
  Stage stage = MakeStage(GetParam());
  AddStep(stage).resources = {0.0, 0};
  AddStep(stage).resources = {-1.0, -5};
  AddStep(stage).resources = {std::nan(""), std::nullopt};
  AddStep(stage).resources = {std::numeric_limits<double>::infinity(), 1};
  AddStep(stage).resources = {0.25, 1};
  const std::string p = GetParam();
  EXPECT_THAT(Where(Check(stage)),
              ElementsAre("steps[0].resources.cpus @ " + p,
                          "steps[0].resources.memory_mib @ " + p,
                          "steps[1].resources.cpus @ " + p,
                          "steps[1].resources.memory_mib @ " + p,
                          "steps[2].resources.cpus @ " + p,
                          "steps[3].resources.cpus @ " + p));
}

INSTANTIATE_TEST_SUITE_P(AllPlatforms, CommonRulesTest,
                         ::testing::Values("host", "docker", "ecs-ec2",
                                           "ecs-fargate", "my-k8s"));

TEST(CustomPlatformTest, OnlyCommonAndOperatorRules) {
  Stage stage = MakeStage("my-k8s");
  AddHostPath(stage, "data", "/data");
  AddEfs(stage, "shared", EfsVolume{"not-an-id", "relative", false, "x", true});
  AddEmptyDir(stage, "tiny", 1);
  Step& step = AddStep(stage);
  step.image = "alpine";
  step.working_dir = "../../x";
  step.security_context.privileged = true;
  step.security_context.add_capability = {"ALL", "NET_ADMIN"};
  step.volume_mounts = {{"data", "/elsewhere"}, {"nope", "/nope"}};
  // Platform-wise only the undeclared volume.
  EXPECT_THAT(Where(Check(stage)),
              ElementsAre("steps[0].volume_mounts[1].name @ my-k8s"));

  OperatorPolicy policy;
  policy.forbid_privileged = true;
  policy.allowed_host_paths = {"/srv"};
  EXPECT_THAT(Where(Check(stage, policy)),
              ElementsAre("volumes[0].host_path.path @ operator",
                          "steps[0].security_context.privileged @ operator",
                          "steps[0].volume_mounts[1].name @ my-k8s"));
}

TEST(CheckStagePolicyTest, EveryViolationAtOnce) {
  Stage stage = MakeStage("ecs-fargate");
  AddHostPath(stage, "sock", "/var/run/docker.sock");
  AddEmptyDir(stage, "small", 1024);
  AddEfs(stage, "shared", EfsVolume{"fs-xyz", "", false, "", true});
  Step& a = AddStep(stage);
  a.security_context.privileged = true;
  a.security_context.add_capability = {"NET_ADMIN", "BOGUS"};
  Step& b = AddStep(stage);
  b.volume_mounts = {{"missing", "/m"}};
  b.resources = {0.0, std::nullopt};
  OperatorPolicy policy;
  policy.forbid_privileged = true;
  policy.max_memory_mib = 512;
  AddStep(stage).resources = {1.0, 1024};

  std::vector<PolicyViolation> vs = Check(stage, policy);
  EXPECT_THAT(
      Where(vs),
      ElementsAre("volumes[0].host_path @ ecs-fargate",
                  "volumes[1].empty_dir.size_mib @ ecs-fargate",
                  "volumes[2].efs.filesystem_id @ ecs-fargate",
                  "volumes[2].efs.iam @ ecs-fargate",
                  "steps[0].security_context.add_capability[1] @ ecs-fargate",
                  "steps[0].security_context.privileged @ ecs-fargate",
                  "steps[0].security_context.add_capability[0] @ ecs-fargate",
                  "steps[0].security_context.privileged @ operator",
                  "steps[1].volume_mounts[0].name @ ecs-fargate",
                  "steps[1].resources.cpus @ ecs-fargate",
                  "steps[2].resources.memory_mib @ operator"));
  absl::Status s = PolicyStatus(vs);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::count(s.message().begin(), s.message().end(), '\n'),
            static_cast<long>(vs.size()) - 1);
}

// ------------------------------------------------------------ operator policy

TEST(OperatorPolicyTest, DefaultRestrictsNothing) {
  Stage stage = MakeStage("docker");
  AddHostPath(stage, "root", "/");
  Step& step = AddStep(stage);
  step.security_context.privileged = true;
  step.security_context.add_capability = {"ALL"};
  step.resources = {64.0, 1 << 20};
  EXPECT_THAT(Check(stage, OperatorPolicy{}), IsEmpty());
}

TEST(OperatorPolicyTest, ForbidPrivilegedOnDocker) {
  Stage stage = MakeStage("docker");
  AddStep(stage).security_context.privileged = false;
  AddStep(stage).security_context.privileged = true;
  OperatorPolicy policy;
  policy.forbid_privileged = true;
  std::vector<PolicyViolation> vs = Check(stage, policy);
  ASSERT_THAT(vs, SizeIs(1));
  EXPECT_EQ(vs[0].ToString(),
            "steps[1].security_context.privileged: privileged containers are "
            "forbidden by the operator (DELEGATE_POLICY_FORBID_PRIVILEGED) "
            "(platform operator)");
}

TEST(OperatorPolicyTest, HostPathAllowListOnComponentBoundaries) {
  OperatorPolicy policy;
  policy.allowed_host_paths = {"/data", "/var/cache/"};
  for (const char* ok : {"/data", "/data/", "/data/x", "/data/x/../y",
                         "/var/cache", "/var/cache/ci", "//data/x"}) {
    Stage stage = MakeStage("docker");
    AddHostPath(stage, "v", ok);
    EXPECT_THAT(Check(stage, policy), IsEmpty()) << ok;
  }
  for (const char* bad : {"/database", "/dat", "/", "/data/../etc",
                          "/var/cache2", "/var", "/etc", "data", ""}) {
    Stage stage = MakeStage("docker");
    AddHostPath(stage, "v", bad);
    std::vector<PolicyViolation> vs = Check(stage, policy);
    ASSERT_THAT(Where(vs), ElementsAre("volumes[0].host_path.path @ operator"))
        << bad;
    EXPECT_THAT(vs[0].rule, HasSubstr("/data, /var/cache/"));
  }
}

TEST(OperatorPolicyTest, RootAllowsEveryAbsolutePath) {
  OperatorPolicy policy;
  policy.allowed_host_paths = {"/"};
  Stage stage = MakeStage("host");
  AddHostPath(stage, "a", "/anything/at/all");
  EXPECT_THAT(Check(stage, policy), IsEmpty());
}

TEST(OperatorPolicyTest, HostPathAllowListAppliesOnHost) {
  OperatorPolicy policy;
  policy.allowed_host_paths = {"/srv/ci"};
  Stage stage = MakeStage("host");
  AddHostPath(stage, "a", "/home/me");
  EXPECT_THAT(Where(Check(stage, policy)),
              ElementsAre("volumes[0].host_path.path @ operator"));
}

TEST(OperatorPolicyTest, ForbidCapabilityAdd) {
  Stage stage = MakeStage("docker");
  AddStep(stage).security_context.drop_capability = {"ALL"};
  AddStep(stage).security_context.add_capability = {"NET_ADMIN"};
  OperatorPolicy policy;
  policy.forbid_capability_add = true;
  std::vector<PolicyViolation> vs = Check(stage, policy);
  ASSERT_THAT(
      Where(vs),
      ElementsAre("steps[1].security_context.add_capability @ operator"));
  EXPECT_THAT(vs[0].rule, HasSubstr("DELEGATE_POLICY_FORBID_CAP_ADD"));
}

TEST(OperatorPolicyTest, ResourceCaps) {
  Stage stage = MakeStage("ecs-ec2");
  AddStep(stage).resources = {2.0, 4096};                   // at the caps
  AddStep(stage).resources = {2.5, 4097};                   // above both
  AddStep(stage).resources = {std::nullopt, std::nullopt};  // asks nothing
  OperatorPolicy policy;
  policy.max_cpus = 2;
  policy.max_memory_mib = 4096;
  std::vector<PolicyViolation> vs = Check(stage, policy);
  ASSERT_THAT(Where(vs),
              ElementsAre("steps[1].resources.cpus @ operator",
                          "steps[1].resources.memory_mib @ operator"));
  EXPECT_THAT(vs[0].rule, AllOf(HasSubstr("2.5"), HasSubstr("cap of 2 "),
                                HasSubstr("DELEGATE_POLICY_MAX_CPUS")));
  EXPECT_THAT(vs[1].rule, AllOf(HasSubstr("4097"), HasSubstr("4096"),
                                HasSubstr("DELEGATE_POLICY_MAX_MEMORY_MIB")));
}

TEST(OperatorPolicyTest, NeverWidensFargate) {
  Stage stage = MakeStage("ecs-fargate");
  AddHostPath(stage, "data", "/data");
  AddEmptyDir(stage, "small", 100);
  Step& step = AddStep(stage);
  step.security_context.privileged = true;
  step.security_context.add_capability = {"NET_ADMIN"};
  // The most permissive operator policy there is, and one that lists the
  // path explicitly: neither can lift a platform rule.
  OperatorPolicy policy;
  policy.allowed_host_paths = {"/data"};
  EXPECT_THAT(
      Where(Check(stage, policy)),
      ElementsAre("volumes[0].host_path @ ecs-fargate",
                  "volumes[1].empty_dir.size_mib @ ecs-fargate",
                  "steps[0].security_context.privileged @ ecs-fargate",
                  "steps[0].security_context.add_capability[0] @ ecs-fargate"));
}

TEST(OperatorPolicyTest, NeverWidensHost) {
  Stage stage = MakeStage("host");
  AddEfs(stage, "shared", GoodEfs());
  AddStep(stage).image = "alpine";
  OperatorPolicy policy;
  policy.max_cpus = 1000;
  EXPECT_THAT(Where(Check(stage, policy)),
              ElementsAre("volumes[0].efs @ host", "steps[0].image @ host"));
}

TEST(OperatorPolicyTest, BothReportedWhenBothDeny) {
  Stage stage = MakeStage("ecs-fargate");
  AddStep(stage).security_context.privileged = true;
  OperatorPolicy policy;
  policy.forbid_privileged = true;
  EXPECT_THAT(Where(Check(stage, policy)),
              ElementsAre("steps[0].security_context.privileged @ ecs-fargate",
                          "steps[0].security_context.privileged @ operator"));
}

// ------------------------------------------------------------
// LoadOperatorPolicy

TEST(LoadOperatorPolicyTest, NothingSet) {
  absl::StatusOr<OperatorPolicy> p =
      LoadOperatorPolicy({{"PATH", "/bin"}, {"HARNESS_NAME", "x"}});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(*p, OperatorPolicy{});
}

TEST(LoadOperatorPolicyTest, EverySetting) {
  absl::StatusOr<OperatorPolicy> p = LoadOperatorPolicy({
      {"DELEGATE_POLICY_FORBID_PRIVILEGED", "true"},
      {"DELEGATE_POLICY_ALLOWED_HOST_PATHS", " /data/ , /var/cache,,/data"},
      {"DELEGATE_POLICY_FORBID_CAP_ADD", "YES"},
      {"DELEGATE_POLICY_MAX_CPUS", "1.5"},
      {"DELEGATE_POLICY_MAX_MEMORY_MIB", " 2048 "},
  });
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->forbid_privileged);
  EXPECT_THAT(p->allowed_host_paths, ElementsAre("/data", "/var/cache"));
  EXPECT_TRUE(p->forbid_capability_add);
  EXPECT_EQ(p->max_cpus, 1.5);
  EXPECT_EQ(p->max_memory_mib, 2048);
}

TEST(LoadOperatorPolicyTest, BoolSpellings) {
  for (const char* t : {"true", "TRUE", "True", "1", "yes", "Yes"}) {
    auto p = LoadOperatorPolicy({{"DELEGATE_POLICY_FORBID_PRIVILEGED", t}});
    ASSERT_TRUE(p.ok()) << t;
    EXPECT_TRUE(p->forbid_privileged) << t;
  }
  for (const char* f : {"false", "FALSE", "0", "no", "No"}) {
    auto p = LoadOperatorPolicy({{"DELEGATE_POLICY_FORBID_CAP_ADD", f}});
    ASSERT_TRUE(p.ok()) << f;
    EXPECT_FALSE(p->forbid_capability_add) << f;
  }
}

TEST(LoadOperatorPolicyTest, EmptyValuesAreUnset) {
  auto p = LoadOperatorPolicy({{"DELEGATE_POLICY_FORBID_PRIVILEGED", ""},
                               {"DELEGATE_POLICY_ALLOWED_HOST_PATHS", "  "},
                               {"DELEGATE_POLICY_MAX_CPUS", ""},
                               {"DELEGATE_POLICY_FILE", ""}});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(*p, OperatorPolicy{});
}

TEST(LoadOperatorPolicyTest, MalformedValues) {
  struct Case {
    const char* var;
    const char* value;
    const char* message;
  };
  for (const Case& c : {
           Case{"DELEGATE_POLICY_FORBID_PRIVILEGED", "maybe",
                "DELEGATE_POLICY_FORBID_PRIVILEGED: expected true or false, "
                "got 'maybe'"},
           Case{"DELEGATE_POLICY_FORBID_CAP_ADD", "on",
                "DELEGATE_POLICY_FORBID_CAP_ADD: expected true or false, got "
                "'on'"},
           Case{"DELEGATE_POLICY_ALLOWED_HOST_PATHS", "/data,cache",
                "DELEGATE_POLICY_ALLOWED_HOST_PATHS: expected absolute paths "
                "separated by commas, like /data,/cache; got 'cache'"},
           Case{"DELEGATE_POLICY_ALLOWED_HOST_PATHS", " , ,",
                "DELEGATE_POLICY_ALLOWED_HOST_PATHS: expected absolute paths "
                "separated by commas, like /data,/cache; got no paths (unset "
                "it to allow any host path)"},
           Case{"DELEGATE_POLICY_MAX_CPUS", "two",
                "DELEGATE_POLICY_MAX_CPUS: expected a positive number of CPUs "
                "like 2 or 0.5, got 'two'"},
           Case{"DELEGATE_POLICY_MAX_CPUS", "0",
                "DELEGATE_POLICY_MAX_CPUS: expected a positive number of CPUs "
                "like 2 or 0.5, got '0'"},
           Case{"DELEGATE_POLICY_MAX_CPUS", "-1",
                "DELEGATE_POLICY_MAX_CPUS: expected a positive number of CPUs "
                "like 2 or 0.5, got '-1'"},
           Case{"DELEGATE_POLICY_MAX_CPUS", "inf",
                "DELEGATE_POLICY_MAX_CPUS: expected a positive number of CPUs "
                "like 2 or 0.5, got 'inf'"},
           Case{"DELEGATE_POLICY_MAX_CPUS", "nan",
                "DELEGATE_POLICY_MAX_CPUS: expected a positive number of CPUs "
                "like 2 or 0.5, got 'nan'"},
           Case{"DELEGATE_POLICY_MAX_MEMORY_MIB", "4G",
                "DELEGATE_POLICY_MAX_MEMORY_MIB: expected a positive whole "
                "number of MiB like 4096, got '4G'"},
           Case{"DELEGATE_POLICY_MAX_MEMORY_MIB", "0",
                "DELEGATE_POLICY_MAX_MEMORY_MIB: expected a positive whole "
                "number of MiB like 4096, got '0'"},
           Case{"DELEGATE_POLICY_MAX_MEMORY_MIB", "1.5",
                "DELEGATE_POLICY_MAX_MEMORY_MIB: expected a positive whole "
                "number of MiB like 4096, got '1.5'"},
       }) {
    absl::StatusOr<OperatorPolicy> p = LoadOperatorPolicy({{c.var, c.value}});
    ASSERT_FALSE(p.ok()) << c.var << "=" << c.value;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(p.status().message(), c.message);
  }
}

TEST(LoadOperatorPolicyTest, UnknownPolicyVariableIsAnError) {
  absl::StatusOr<OperatorPolicy> p =
      LoadOperatorPolicy({{"DELEGATE_POLICY_FORBID_PRIVILIGED", "true"}});
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(p.status().message(),
              AllOf(HasSubstr("DELEGATE_POLICY_FORBID_PRIVILIGED: unknown "
                              "policy setting"),
                    HasSubstr("DELEGATE_POLICY_FORBID_PRIVILEGED")));
  EXPECT_EQ(p.status().message().find('\n'), std::string::npos);
}

class PolicyFileTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& content) {
    const std::string path = absl::StrCat(
        ::testing::TempDir(), "/policy_test_",
        ::testing::UnitTest::GetInstance()->current_test_info()->name(),
        ".env");
    std::ofstream(path, std::ios::trunc) << content;
    return path;
  }
};

TEST_F(PolicyFileTest, ReadsTheFileAndTheEnvironmentWins) {
  const std::string path = Write(
      "# operator policy\n"
      "DELEGATE_POLICY_FORBID_PRIVILEGED=true\n"
      "export DELEGATE_POLICY_MAX_CPUS=4\n"
      "DELEGATE_POLICY_ALLOWED_HOST_PATHS=\"/srv,/data\"\n"
      "DELEGATE_POLICY_FILE=/ignored\n"
      "UNRELATED=1\n");
  absl::StatusOr<OperatorPolicy> p = LoadOperatorPolicy(
      {{"DELEGATE_POLICY_FILE", path}, {"DELEGATE_POLICY_MAX_CPUS", "2"}});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->forbid_privileged);
  EXPECT_EQ(p->max_cpus, 2.0);
  EXPECT_THAT(p->allowed_host_paths, ElementsAre("/srv", "/data"));
}

TEST_F(PolicyFileTest, ErrorsNameTheFile) {
  const std::string path = Write("DELEGATE_POLICY_MAX_MEMORY_MIB=lots\n");
  absl::StatusOr<OperatorPolicy> p =
      LoadOperatorPolicy({{"DELEGATE_POLICY_FILE", path}});
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().message(),
            absl::StrCat("DELEGATE_POLICY_MAX_MEMORY_MIB (in ", path,
                         "): expected a positive whole number of MiB like "
                         "4096, got 'lots'"));
}

TEST_F(PolicyFileTest, UnknownKeyInTheFile) {
  const std::string path = Write("DELEGATE_POLICY_MAX_GPUS=1\n");
  absl::StatusOr<OperatorPolicy> p =
      LoadOperatorPolicy({{"DELEGATE_POLICY_FILE", path}});
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(p.status().message(),
              HasSubstr(absl::StrCat("DELEGATE_POLICY_MAX_GPUS (in ", path,
                                     "): unknown policy setting")));
}

TEST_F(PolicyFileTest, MissingFile) {
  absl::StatusOr<OperatorPolicy> p =
      LoadOperatorPolicy({{"DELEGATE_POLICY_FILE", "/nonexistent/policy.env"}});
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(p.status().message(),
              AllOf(HasSubstr("DELEGATE_POLICY_FILE: "),
                    HasSubstr("/nonexistent/policy.env")));
}

TEST(LoadOperatorPolicyTest, LoadedPolicyNarrows) {
  absl::StatusOr<OperatorPolicy> p = LoadOperatorPolicy(
      {{"DELEGATE_POLICY_ALLOWED_HOST_PATHS", "/data/../srv"}});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_THAT(p->allowed_host_paths, ElementsAre("/srv"));
  Stage stage = MakeStage("docker");
  AddHostPath(stage, "a", "/data/x");
  AddHostPath(stage, "b", "/srv/x");
  EXPECT_THAT(Where(Check(stage, *p)),
              ElementsAre("volumes[0].host_path.path @ operator"));
}

}  // namespace
}  // namespace delegate

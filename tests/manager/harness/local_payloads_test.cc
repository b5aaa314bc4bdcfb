#include "manager/harness/local_payloads.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/manager/harness/payload_test_util.h"

namespace delegate::harness {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Pair;
using ::testing::StartsWith;

// ------------------------------------------------------------ local_init

TEST(PayloadsInitTest, MapsNetworkVolumesAndEnvs) {
  absl::StatusOr<InitPayload> init = ParseInitPayload(R"({
    "network":{"id":"net-1","labels":{"a":"b"},"options":{}},
    "volumes":[
      {"temp":{"id":"tmp-id","name":"scratch","medium":"memory",
               "size_limit":1572864,"labels":{}}},
      {"temp":{"id":"cache"}},
      {"host":{"id":"ws","name":"","path":"/tmp/harness/net-1",
               "create":true,"remove":true,"read_only":false}},
      {"host":{"id":"certs","name":"certs","path":"/etc/certs",
               "read_only":true}}],
    "envs":{"CI":"true","HARNESS_STAGE":"build"},
    "log_key":"acct/stage/init",
    "unknownFutureField":[1,2,3]})");
  ASSERT_TRUE(init.ok()) << init.status();
  EXPECT_EQ(init->transaction_key, "net-1");
  EXPECT_EQ(init->network_id, "net-1");
  EXPECT_EQ(init->log_key, "acct/stage/init");
  const Stage& stage = init->stage;
  EXPECT_EQ(stage.platform, "local");
  EXPECT_EQ(stage.name, "net-1");
  EXPECT_THAT(stage.env,
              ElementsAre(Pair("CI", "true"), Pair("HARNESS_STAGE", "build")));
  ASSERT_EQ(stage.volumes.size(), 4u);
  EXPECT_EQ(stage.volumes[0].name, "scratch");
  const auto* scratch = std::get_if<EmptyDirVolume>(&stage.volumes[0].source);
  ASSERT_NE(scratch, nullptr);
  EXPECT_EQ(scratch->size_mib, 2);            // 1.5 MiB rounded up
  EXPECT_EQ(stage.volumes[1].name, "cache");  // falls back to the id
  EXPECT_EQ(std::get<EmptyDirVolume>(stage.volumes[1].source).size_mib,
            std::nullopt);
  EXPECT_EQ(stage.volumes[2].name, "ws");
  EXPECT_EQ(std::get<HostPathVolume>(stage.volumes[2].source).path,
            "/tmp/harness/net-1");
  EXPECT_FALSE(std::get<HostPathVolume>(stage.volumes[2].source).read_only);
  EXPECT_TRUE(std::get<HostPathVolume>(stage.volumes[3].source).read_only);
  ASSERT_EQ(init->host_dirs.size(), 2u);
  EXPECT_EQ(init->host_dirs[0].path, "/tmp/harness/net-1");
  EXPECT_TRUE(init->host_dirs[0].create);
  EXPECT_TRUE(init->host_dirs[0].remove);
  EXPECT_EQ(init->host_dirs[1].path, "/etc/certs");
  EXPECT_FALSE(init->host_dirs[1].create);
  EXPECT_FALSE(init->host_dirs[1].remove);
}

TEST(PayloadsInitTest, StageRuntimeIdIsTheTransactionKey) {
  absl::StatusOr<InitPayload> init = ParseInitPayload(
      R"({"network":{"id":"net-1"},"stage_runtime_id":"rt-42"})");
  ASSERT_TRUE(init.ok()) << init.status();
  EXPECT_EQ(init->transaction_key, "rt-42");
  EXPECT_EQ(init->stage.name, "rt-42");
  EXPECT_EQ(init->network_id, "net-1");
  init = ParseInitPayload(R"({"stage_runtime_id":"rt-42"})");
  ASSERT_TRUE(init.ok()) << init.status();
  EXPECT_EQ(init->transaction_key, "rt-42");
}

TEST(PayloadsInitTest, ErrorsNameTheField) {
  EXPECT_THAT(Msg(ParseInitPayload(R"({"network":{"id":""}})")),
              StartsWith("task.data.network.id: "));
  EXPECT_THAT(Msg(ParseInitPayload("{}")),
              StartsWith("task.data.network.id: "));
  const std::string net = R"({"network":{"id":"n"},)";
  EXPECT_EQ(Msg(ParseInitPayload(net + R"("volumes":[{},{}]})")),
            "task.data.volumes[0]: expected a temp or a host volume");
  EXPECT_THAT(
      Msg(ParseInitPayload(net + R"("volumes":[{"host":{"id":"h"}}]})")),
      StartsWith("task.data.volumes[0].host.path: "));
  EXPECT_THAT(Msg(ParseInitPayload(
                  net + R"("volumes":[{"temp":{"size_limit":-1,"id":"t"}}]})")),
              StartsWith("task.data.volumes[0].temp.size_limit: "));
  EXPECT_THAT(Msg(ParseInitPayload(net + R"("volumes":[{"temp":{}}]})")),
              StartsWith("task.data.volumes[0].temp.name: "));
  absl::StatusOr<InitPayload> bad_env =
      ParseInitPayload(net + R"("envs":{"TOKEN":"abc","N":5}})");
  EXPECT_EQ(Msg(bad_env), "task.data.envs.N: expected a string");
  EXPECT_THAT(Msg(ParseInitPayload(net + R"("envs":{"a b":1}})")),
              StartsWith(R"(task.data.envs["a b"]: )"));
  EXPECT_THAT(Msg(ParseInitPayload("not json")),
              StartsWith("task.data: not valid JSON"));
}

// ------------------------------------------------------------ local_execute

constexpr const char* kRealisticExecute = R"({
  "id":"stage1 step/build",
  "stage_runtime_id":"rt-7",
  "name":"Build",
  "kind":"Run",
  "network":"net-7",
  "group_id":"rt-7",
  "log_key":"acct/org/proj/build",
  "image":"registry.example.com:5000/build/go:1.22",
  "pull":"ALWAYS",
  "auth":{"address":"registry.example.com:5000","username":"ci",
          "password":"registry-pass-xyz"},
  "user":"1000:1000",
  "privileged":false,
  "environment":{"GOFLAGS":"-mod=vendor","DRONE_BUILD":"7"},
  "secrets":["registry-pass-xyz","env-secret-abc",""],
  "working_dir":"/harness",
  "run":{"commands":["go build ./...","go test ./..."]},
  "output_vars":["VERSION","DIGEST"],
  "timeout":3600,
  "mem_limit":536870912,
  "cpu_quota":150000,
  "cpu_period":100000,
  "volumes":[{"name":"ws","path":"/harness"},{"name":"_docker",
              "path":"/var/run/docker.sock"}],
  "volumes_actual":[{"host":{"id":"ws","name":"ws","path":"/tmp/harness/rt-7"}}],
  "files":[],"mount_docker_socket":true,"detach":false,
  "step_status":{"endpoint":"x"},"newFutureField":{"nested":[1]}
})";

TEST(PayloadsExecuteTest, MapsARealisticContainerStep) {
  absl::StatusOr<ExecutePayload> p = ParseExecutePayload(kRealisticExecute);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->transaction_key, "rt-7");
  EXPECT_EQ(p->step_id, "stage1 step/build");
  EXPECT_EQ(p->log_key, "acct/org/proj/build");
  const Step& s = p->step;
  EXPECT_EQ(s.id, "stage1_step_build");
  EXPECT_EQ(s.name, "Build");
  EXPECT_EQ(s.image, "registry.example.com:5000/build/go:1.22");
  EXPECT_EQ(s.pull, PullPolicy::kAlways);
  ASSERT_TRUE(s.registry.has_value());
  EXPECT_EQ(s.registry->server, "registry.example.com:5000");
  EXPECT_EQ(s.registry->username, "ci");
  EXPECT_EQ(s.registry->password, "registry-pass-xyz");
  EXPECT_EQ(s.security_context.run_as_user, 1000);
  EXPECT_EQ(s.security_context.run_as_group, 1000);
  EXPECT_EQ(s.security_context.privileged, std::nullopt);
  EXPECT_THAT(s.envs, ElementsAre(Pair("DRONE_BUILD", "7"),
                                  Pair("GOFLAGS", "-mod=vendor")));
  EXPECT_EQ(s.working_dir, "/harness");
  EXPECT_THAT(s.commands, ElementsAre("go build ./...", "go test ./..."));
  EXPECT_TRUE(s.entrypoint.empty());
  EXPECT_TRUE(s.args.empty());
  EXPECT_THAT(s.outputs, ElementsAre("VERSION", "DIGEST"));
  EXPECT_EQ(s.timeout, absl::Hours(1));
  EXPECT_EQ(s.resources.memory_mib, 512);
  ASSERT_TRUE(s.resources.cpus.has_value());
  EXPECT_DOUBLE_EQ(*s.resources.cpus, 1.5);
  ASSERT_EQ(s.volume_mounts.size(), 2u);
  EXPECT_EQ(s.volume_mounts[0].name, "ws");
  EXPECT_EQ(s.volume_mounts[0].path, "/harness");
  EXPECT_EQ(s.volume_mounts[1].name, "_docker");
  // Once each: the password is also listed in secrets.
  EXPECT_THAT(p->masks, ElementsAre("registry-pass-xyz", "env-secret-abc"));
}

TEST(PayloadsExecuteTest, EntrypointTakesCommandsAsArgs) {
  absl::StatusOr<ExecutePayload> p = ParseExecutePayload(
      R"({"id":"s","network":"n","image":"plugins/docker",)"
      R"("run":{"entrypoint":["/bin/plugin","--verbose"],"commands":["a","b"]},)"
      R"("user":"0","privileged":true,"pull":"ifnotpresent","timeout":0,)"
      R"("auth":{"address":"r","username":"","password":"p"}})");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_THAT(p->step.entrypoint, ElementsAre("/bin/plugin", "--verbose"));
  EXPECT_THAT(p->step.args, ElementsAre("a", "b"));
  EXPECT_TRUE(p->step.commands.empty());
  EXPECT_EQ(p->step.security_context.run_as_user, 0);
  EXPECT_EQ(p->step.security_context.run_as_group, std::nullopt);
  EXPECT_EQ(p->step.security_context.privileged, true);
  EXPECT_EQ(p->step.pull, PullPolicy::kIfNotPresent);
  EXPECT_EQ(p->step.timeout, std::nullopt);
  EXPECT_FALSE(p->step.registry.has_value());  // no username
  EXPECT_EQ(p->transaction_key, "n");
}

TEST(PayloadsExecuteTest, ImageWithoutCommandsUsesTheImageEntrypoint) {
  absl::StatusOr<ExecutePayload> p =
      ParseExecutePayload(R"({"id":"s","network":"n","image":"nginx"})");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->step.commands.empty());
  EXPECT_TRUE(p->step.entrypoint.empty());
  EXPECT_EQ(p->step.pull, PullPolicy::kDefault);
}

TEST(PayloadsExecuteTest, HostStepWithoutCommandsIsRejected) {
  for (const char* data :
       {R"({"id":"s","network":"n"})",
        R"({"id":"s","network":"n","image":"","run":{"commands":[]}})",
        R"({"id":"s","network":"n","run":{"commands":null}})"}) {
    absl::StatusOr<ExecutePayload> p = ParseExecutePayload(data);
    ASSERT_FALSE(p.ok()) << data;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(
        Msg(p),
        StartsWith("task.data.run.commands: a host step needs commands"))
        << data;
  }
  absl::StatusOr<ExecutePayload> host = ParseExecutePayload(
      R"({"id":"s","network":"n","run":{"commands":["make"]}})");
  ASSERT_TRUE(host.ok()) << host.status();
  EXPECT_EQ(host->step.image, "");
  EXPECT_THAT(host->step.commands, ElementsAre("make"));
}

TEST(PayloadsExecuteTest, AcceptsTestStepCommandBlocks) {
  absl::StatusOr<ExecutePayload> v2 = ParseExecutePayload(
      R"({"id":"s","network":"n","kind":"RunTestsV2",)"
      R"("run_test_v2":{"commands":["pytest"],"test_globs":["**/*.py"]}})");
  ASSERT_TRUE(v2.ok()) << v2.status();
  EXPECT_THAT(v2->step.commands, ElementsAre("pytest"));
  absl::StatusOr<ExecutePayload> v1 = ParseExecutePayload(
      R"({"id":"s","network":"n","run":{},)"
      R"("run_test":{"entrypoint":["sh","-c"],"commands":["mvn test"]}})");
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_THAT(v1->step.entrypoint, ElementsAre("sh", "-c"));
  EXPECT_THAT(v1->step.args, ElementsAre("mvn test"));
}

TEST(PayloadsExecuteTest, UserMustBeNumeric) {
  for (const char* user : {"jenkins", "1000:staff", "1000:", ":1000", "-1",
                           "99999999999", " 1000"}) {
    absl::StatusOr<ExecutePayload> p = ParseExecutePayload(
        std::string(R"({"id":"s","network":"n","image":"i","user":")") + user +
        "\"}");
    ASSERT_FALSE(p.ok()) << user;
    EXPECT_THAT(Msg(p), StartsWith("task.data.user: "));
    EXPECT_THAT(Msg(p), HasSubstr("use a numeric uid"));
  }
  absl::StatusOr<ExecutePayload> p =
      ParseExecutePayload(R"({"id":"s","network":"n","image":"i","user":""})");
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->step.security_context.empty());
}

TEST(PayloadsExecuteTest, ErrorsNameTheFieldAndNeverASecret) {
  const std::string head =
      R"({"id":"s","network":"n","image":"i","secrets":["sup3rsecret"],)"
      R"("environment":{"TOKEN":"sup3rsecret"},)"
      R"("auth":{"username":"u","password":"sup3rsecret"},)";
  struct Case {
    std::string tail;
    std::string message_prefix;
  } cases[] = {
      {R"("run":{"commands":["a","b",3]}})",
       "task.data.run.commands[2]: expected a string"},
      {R"("pull":"sometimes"})", "task.data.pull: "},
      {R"("timeout":"10m"})", "task.data.timeout: expected a whole number"},
      {R"("timeout":1.5})", "task.data.timeout: expected a whole number"},
      {R"("timeout":-5})", "task.data.timeout: must not be negative"},
      {R"("mem_limit":true})", "task.data.mem_limit: "},
      {R"("privileged":"yes"})",
       "task.data.privileged: expected true or false"},
      {R"("volumes":[{"name":"ws"}]})", "task.data.volumes[0].path: "},
      {R"("volumes":[{"path":"/x"}]})", "task.data.volumes[0].name: "},
      {R"("output_vars":"A"})", "task.data.output_vars: expected an array"},
      {R"("user":"sup3rsecret"})", "task.data.user: "},
      {R"("run":"echo"})", "task.data.run: expected an object"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<ExecutePayload> p = ParseExecutePayload(head + c.tail);
    ASSERT_FALSE(p.ok()) << c.tail;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Msg(p), StartsWith(c.message_prefix)) << c.tail;
    EXPECT_THAT(Msg(p), Not(HasSubstr("sup3rsecret"))) << c.tail;
  }
  absl::StatusOr<ExecutePayload> p = ParseExecutePayload(
      R"({"id":"s","network":"n","image":"i","secrets":["sup3rsecret",7]})");
  EXPECT_EQ(Msg(p), "task.data.secrets[1]: expected a string");
  p = ParseExecutePayload(
      R"({"id":"s","image":"i","auth":{"password":{"v":"sup3rsecret"}}})");
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(Msg(p), Not(HasSubstr("sup3rsecret")));
}

TEST(PayloadsExecuteTest, NeedsAnIdAndATransactionKey) {
  absl::StatusOr<ExecutePayload> p =
      ParseExecutePayload(R"({"network":"n","image":"i"})");
  EXPECT_THAT(Msg(p), StartsWith("task.data.id: "));
  p = ParseExecutePayload(R"({"id":"s","image":"i","stage_runtime_id":""})");
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(Msg(p), StartsWith("task.data.network: "));
  EXPECT_THAT(Msg(p), HasSubstr("task.data.stage_runtime_id"));
}

TEST(PayloadsExecuteTest, LongIdsAreCutAndSanitised) {
  const std::string id(200, 'x');
  absl::StatusOr<ExecutePayload> p = ParseExecutePayload(
      R"({"id":")" + id + R"(+é","network":"n","image":"i"})");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->step.id, std::string(128, 'x'));
  EXPECT_EQ(p->step_id, id + "+é");
  p = ParseExecutePayload(R"({"id":"a.b-c_d:e","network":"n","image":"i"})");
  EXPECT_EQ(p->step.id, "a.b-c_d_e");
}

// ------------------------------------------------------------ local_cleanup

TEST(PayloadsCleanupTest, ListsRemovableHostPathsAndLabels) {
  absl::StatusOr<CleanupPayload> c = ParseCleanupPayload(R"({
    "network":"net-3","group_id":"net-3",
    "volumes":[{"host":{"id":"ws","path":"/tmp/harness/net-3","remove":true}},
               {"host":{"id":"cache","path":"/var/cache/ci"}},
               {"temp":{"id":"t"}}],
    "containers":{"labels":{"internal_stage_label":"net-3","x":"y"}}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->transaction_key, "net-3");
  EXPECT_THAT(c->host_paths, ElementsAre("/tmp/harness/net-3"));
  EXPECT_THAT(c->labels, ElementsAre(Pair("internal_stage_label", "net-3"),
                                     Pair("x", "y")));

  c = ParseCleanupPayload(R"({"network":"n","stage_runtime_id":"rt"})");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->transaction_key, "rt");
  EXPECT_TRUE(c->host_paths.empty());
  EXPECT_TRUE(c->labels.empty());
}

TEST(PayloadsCleanupTest, NeedsATransactionKey) {
  absl::StatusOr<CleanupPayload> c = ParseCleanupPayload(R"({"group_id":"g"})");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(Msg(c), StartsWith("task.data.network: "));
  EXPECT_THAT(Msg(c), HasSubstr("task.data.stage_runtime_id"));
  EXPECT_THAT(Msg(ParseCleanupPayload(R"({"network":{"id":"n"}})")),
              StartsWith("task.data.network: expected a string"));
}

}  // namespace
}  // namespace delegate::harness

#include "manager/harness/payloads.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rapidjson/document.h"

namespace delegate::harness {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Pair;
using ::testing::StartsWith;

rapidjson::Document Json(const std::string& text) {
  rapidjson::Document d;
  d.Parse(text.c_str(), text.size());
  EXPECT_FALSE(d.HasParseError()) << text;
  return d;
}

template <typename T>
std::string Msg(const absl::StatusOr<T>& s) {
  return std::string(s.status().message());
}

std::string Str(const rapidjson::Value& v) {
  return std::string(v.GetString(), v.GetStringLength());
}

// An acquire body holding one request whose primary task has `task_fields`
// (JSON members, without braces) and whose secrets are `secrets_json`.
std::string AcquireBody(const std::string& task_fields,
                        const std::string& secrets_json = "[]") {
  return R"({"requests":[{"id":"req-1","account":"acct","task":{)" +
         task_fields + R"(},"secrets":)" + secrets_json + "}]}";
}

// ------------------------------------------------------------ base64

TEST(PayloadsBase64Test, RoundTripsAndAcceptsUnpaddedText) {
  EXPECT_EQ(Base64Encode(R"({"a":1})"), "eyJhIjoxfQ==");
  EXPECT_EQ(Base64Decode("eyJhIjoxfQ=="), R"({"a":1})");
  EXPECT_EQ(Base64Decode("eyJhIjoxfQ"), R"({"a":1})");
  EXPECT_EQ(Base64Decode(""), "");
  EXPECT_EQ(Base64Decode("not base64!"), std::nullopt);
  const std::string binary("\0\xff\x10 x", 5);
  EXPECT_EQ(Base64Decode(Base64Encode(binary)), binary);
}

// ------------------------------------------------------------ runner events

TEST(PayloadsRunnerEventsTest, ParsesEvents) {
  absl::StatusOr<std::vector<RunnerEvent>> events = ParseRunnerEvents(
      R"({"delegateRunnerEvents":[
            {"accountId":"acct","taskId":"t1","runnerType":"RUNNER",
             "taskType":"local_init","futureField":{"x":1}},
            {"accountId":"acct","taskId":"t2"}]})");
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[0].account_id, "acct");
  EXPECT_EQ((*events)[0].task_id, "t1");
  EXPECT_EQ((*events)[0].runner_type, "RUNNER");
  EXPECT_EQ((*events)[0].task_type, "local_init");
  EXPECT_EQ((*events)[1].task_id, "t2");
  EXPECT_EQ((*events)[1].task_type, "");
}

TEST(PayloadsRunnerEventsTest, MissingOrNullListIsNoEvents) {
  for (const char* body : {"{}", R"({"delegateRunnerEvents":null})",
                           R"({"delegateRunnerEvents":[]})", "", "  \n"}) {
    absl::StatusOr<std::vector<RunnerEvent>> events = ParseRunnerEvents(body);
    ASSERT_TRUE(events.ok()) << body << ": " << events.status();
    EXPECT_TRUE(events->empty()) << body;
  }
}

TEST(PayloadsRunnerEventsTest, EventWithoutTaskIdIsAnErrorNamingIt) {
  absl::StatusOr<std::vector<RunnerEvent>> events = ParseRunnerEvents(
      R"({"delegateRunnerEvents":[{"taskId":"t1"},{"accountId":"a"}]})");
  ASSERT_FALSE(events.ok());
  EXPECT_EQ(events.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(events), StartsWith("delegateRunnerEvents[1].taskId: "));
}

TEST(PayloadsRunnerEventsTest, WrongTypesAndBadJsonAreErrors) {
  EXPECT_THAT(Msg(ParseRunnerEvents(R"({"delegateRunnerEvents":{}})")),
              StartsWith("delegateRunnerEvents: expected an array"));
  EXPECT_THAT(
      Msg(ParseRunnerEvents(R"({"delegateRunnerEvents":[{"taskId":7}]})")),
      StartsWith("delegateRunnerEvents[0].taskId: expected a string"));
  EXPECT_THAT(Msg(ParseRunnerEvents("<html>")),
              StartsWith("runner events: not valid JSON"));
}

// ------------------------------------------------------------ acquire

constexpr const char* kExecData =
    R"({"id":"step-1","stage_runtime_id":"stage-9","image":"alpine:3",)"
    R"("run":{"commands":["echo hi"]},"environment":{"A":"1"}})";

TEST(PayloadsAcquireTest, Base64AndInlineDataGiveTheSameParse) {
  const std::string b64 = Base64Encode(kExecData);
  std::string unpadded = b64;
  while (!unpadded.empty() && unpadded.back() == '=') unpadded.pop_back();
  const std::string forms[] = {
      std::string(R"("data":)") + kExecData,
      R"("data":")" + b64 + "\"",
      R"("data":")" + unpadded + "\"",
  };
  std::vector<std::string> data_texts;
  std::vector<ExecutePayload> payloads;
  for (const std::string& form : forms) {
    absl::StatusOr<std::vector<TaskRequest>> requests = ParseAcquireResponse(
        AcquireBody(R"("id":"task-1","type":"local_execute",)" + form));
    ASSERT_TRUE(requests.ok()) << form << ": " << requests.status();
    ASSERT_EQ(requests->size(), 1u);
    data_texts.push_back(requests->front().task.data_json);
    absl::StatusOr<ExecutePayload> payload =
        ParseExecutePayload(requests->front().task.data_json);
    ASSERT_TRUE(payload.ok()) << payload.status();
    payloads.push_back(*payload);
  }
  EXPECT_EQ(data_texts[0], data_texts[1]);
  EXPECT_EQ(data_texts[0], data_texts[2]);
  for (const ExecutePayload& p : payloads) {
    EXPECT_EQ(p.transaction_key, "stage-9");
    EXPECT_EQ(p.step.id, "step-1");
    EXPECT_EQ(p.step.image, "alpine:3");
    EXPECT_THAT(p.step.commands, ElementsAre("echo hi"));
    EXPECT_THAT(p.step.envs, ElementsAre(Pair("A", "1")));
  }
}

TEST(PayloadsAcquireTest, ParsesTheWholeRequest) {
  const std::string config = Base64Encode(R"({"method":"POST"})");
  const std::string secret_data = Base64Encode(
      R"({"secrets":[{"id":"s","value":"hunter2","base64":false}]})");
  absl::StatusOr<std::vector<TaskRequest>> requests =
      ParseAcquireResponse(AcquireBody(
          R"("id":"task-1","type":"local_init","driver":"",)"
          R"("config":")" +
              config +
              R"(",)"
              R"("forward":{"string":"10.0.0.2:9079","insecure":true,)"
              R"(            "certs":{"public":"P","private":"K","ca":"C"}},)"
              R"("logger":{"address":"https://app.harness.io/log-service/",)"
              R"(  "insecure":false,"token":"log-token-123","key":"acct/p/1",)"
              R"(  "account":"acct","indirect_upload":true,)"
              R"(  "skip_opening_stream":true,"skip_closing_stream":false,)"
              R"(  "trim_new_line_suffix":true,"increase_log_limit":true,)"
              R"(  "masks":["m1","m2"],"newLoggerField":1})",
          R"([{"id":"sec-1","type":"secret/static","data":")" + secret_data +
              R"("}])"));
  ASSERT_TRUE(requests.ok()) << requests.status();
  const TaskRequest& r = requests->front();
  EXPECT_EQ(r.id, "req-1");
  EXPECT_EQ(r.account, "acct");
  EXPECT_EQ(r.task.id, "task-1");
  EXPECT_EQ(r.task.type, "local_init");
  EXPECT_EQ(r.task.data_json, "{}");  // absent data
  EXPECT_EQ(r.task.config_json, R"({"method":"POST"})");
  EXPECT_EQ(r.task.forward.address, "10.0.0.2:9079");
  EXPECT_TRUE(r.task.forward.insecure);
  EXPECT_EQ(r.task.forward.cert_private.reveal(), "K");
  const TaskLogger& log = r.task.logger;
  EXPECT_EQ(log.address, "https://app.harness.io/log-service/");
  EXPECT_EQ(log.token.reveal(), "log-token-123");
  EXPECT_EQ(log.key, "acct/p/1");
  EXPECT_EQ(log.account, "acct");
  EXPECT_TRUE(log.indirect_upload);
  EXPECT_TRUE(log.skip_opening_stream);
  EXPECT_FALSE(log.skip_closing_stream);
  EXPECT_TRUE(log.trim_new_line_suffix);
  EXPECT_TRUE(log.increase_log_limit);
  EXPECT_THAT(log.masks, ElementsAre("m1", "m2"));
  ASSERT_EQ(r.secrets.size(), 1u);
  EXPECT_EQ(r.secrets[0].id, "sec-1");
  EXPECT_EQ(r.secrets[0].type, "secret/static");
}

TEST(PayloadsAcquireTest, NullAndEmptyDataAreAnEmptyObject) {
  for (const char* data : {R"("data":null)", R"("data":"")", R"("data":{})"}) {
    absl::StatusOr<std::vector<TaskRequest>> requests =
        ParseAcquireResponse(AcquireBody(std::string(R"("id":"t",)") + data));
    ASSERT_TRUE(requests.ok()) << data << ": " << requests.status();
    EXPECT_EQ(requests->front().task.data_json, "{}") << data;
  }
  EXPECT_TRUE(ParseAcquireResponse(R"({"requests":null})")->empty());
}

TEST(PayloadsAcquireTest, BadDataNamesThePathAndNeverTheSecret) {
  // Base64 of JSON that breaks after a secret value.
  const std::string broken = Base64Encode(R"({"secrets":[{"value":"s3cr3t")");
  absl::StatusOr<std::vector<TaskRequest>> requests =
      ParseAcquireResponse(AcquireBody(
          R"("id":"t","type":"local_init")",
          R"([{"id":"x","type":"secret/static","data":")" + broken + R"("}])"));
  ASSERT_FALSE(requests.ok());
  EXPECT_EQ(requests.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      Msg(requests),
      StartsWith("requests[0].secrets[0].data: the base64 text does not "
                 "decode to valid JSON"));
  EXPECT_THAT(Msg(requests), Not(HasSubstr("s3cr3t")));
  EXPECT_THAT(Msg(requests), Not(HasSubstr(broken)));

  // A string that is neither base64 nor JSON.
  requests = ParseAcquireResponse(
      AcquireBody(R"("id":"t","data":"hunter2 is my password!")"));
  ASSERT_FALSE(requests.ok());
  EXPECT_THAT(Msg(requests),
              StartsWith("requests[0].task.data: expected an object"));
  EXPECT_THAT(Msg(requests), Not(HasSubstr("hunter2")));

  // Base64 (whitespace is skipped) of something that is not JSON.
  requests = ParseAcquireResponse(
      AcquireBody(R"("id":"t","data":"hunter2 is my password")"));
  ASSERT_FALSE(requests.ok());
  EXPECT_THAT(Msg(requests),
              StartsWith("requests[0].task.data: the base64 text does not "
                         "decode to valid JSON"));
  EXPECT_THAT(Msg(requests), Not(HasSubstr("hunter2")));

  // Decodes to JSON, but not an object.
  requests = ParseAcquireResponse(AcquireBody(
      R"("id":"t","data":")" + Base64Encode(R"(["hunter2"])") + "\""));
  ASSERT_FALSE(requests.ok());
  EXPECT_THAT(Msg(requests), StartsWith("requests[0].task.data"));
  EXPECT_THAT(Msg(requests), Not(HasSubstr("hunter2")));
}

TEST(PayloadsAcquireTest, WrongTypeInTheLoggerNamesThePath) {
  absl::StatusOr<std::vector<TaskRequest>> requests = ParseAcquireResponse(
      AcquireBody(R"("id":"t","logger":{"token":"tok-abc","masks":["a",5]})"));
  ASSERT_FALSE(requests.ok());
  EXPECT_EQ(Msg(requests),
            "requests[0].task.logger.masks[1]: expected a string");
  EXPECT_THAT(Msg(requests), Not(HasSubstr("tok-abc")));
  requests = ParseAcquireResponse(AcquireBody(R"("id":"t","logger":"x")"));
  EXPECT_EQ(Msg(requests), "requests[0].task.logger: expected an object");
  EXPECT_THAT(Msg(ParseAcquireResponse(R"({"requests":[{"id":"r"}]})")),
              StartsWith("requests[0].task: missing"));
}

TEST(PayloadsAcquireTest, DeepNestingIsRejectedNotACrash) {
  std::string deep = R"({"requests":[{"task":{"id":"t","data":)";
  for (int i = 0; i < 100000; ++i) deep += "[";
  absl::StatusOr<std::vector<TaskRequest>> requests =
      ParseAcquireResponse(deep);
  EXPECT_FALSE(requests.ok());
  std::string nested = R"({"requests":[{"task":{"id":"t","data":)";
  for (int i = 0; i < 200; ++i) nested += "[";
  for (int i = 0; i < 200; ++i) nested += "]";
  nested += "}}]}";
  requests = ParseAcquireResponse(nested);
  ASSERT_FALSE(requests.ok());
  EXPECT_THAT(Msg(requests), HasSubstr("nested deeper"));
}

// ------------------------------------------------------------ secrets

Task StaticTask(const std::string& data_json) {
  Task t;
  t.id = "sec";
  t.type = "secret/static";
  t.data_json = data_json;
  return t;
}

TEST(PayloadsSecretsTest, ResolvesStaticSecretsAndDecodesBase64Values) {
  const Task task =
      StaticTask(R"({"secrets":[{"id":"a","value":"plain"},)"
                 R"({"id":"b","value":")" +
                 Base64Encode("line1\nline2") + R"(","base64":true}]})");
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> secrets =
      ResolveStaticSecrets(task);
  ASSERT_TRUE(secrets.ok()) << secrets.status();
  EXPECT_THAT(*secrets,
              ElementsAre(Pair("a", "plain"), Pair("b", "line1\nline2")));

  absl::StatusOr<std::string> data = StaticSecretResponseData(task);
  ASSERT_TRUE(data.ok()) << data.status();
  rapidjson::Document d = Json(*data);
  EXPECT_EQ(Str(d["value"]), "plain");
}

TEST(PayloadsSecretsTest, BadBase64SecretNamesThePathNotTheValue) {
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> secrets =
      ResolveStaticSecrets(
          StaticTask(R"({"secrets":[{"id":"a","value":"ok"},)"
                     R"({"id":"b","value":"p@ss word!","base64":true}]})"));
  ASSERT_FALSE(secrets.ok());
  EXPECT_EQ(secrets.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(secrets), StartsWith("task.data.secrets[1].value: "));
  EXPECT_THAT(Msg(secrets), Not(HasSubstr("p@ss")));
  EXPECT_THAT(Msg(StaticSecretResponseData(StaticTask(R"({"secrets":[]})"))),
              StartsWith("task.data.secrets: empty"));
}

TEST(PayloadsSecretsTest, RequestSecretsAreKeyedBySubTaskId) {
  TaskRequest request;
  request.secrets.push_back(StaticTask(
      R"({"secrets":[{"id":"inner","value":"v1"},{"id":"x","value":"v2"}]})"));
  request.secrets.back().id = "docker_pass";
  absl::StatusOr<std::map<std::string, std::string>> secrets =
      ResolveRequestSecrets(request);
  ASSERT_TRUE(secrets.ok()) << secrets.status();
  EXPECT_THAT(*secrets, ElementsAre(Pair("docker_pass", "v1")));

  Task vault;
  vault.id = "v";
  vault.type = "secret/vault/fetch";
  request.secrets.push_back(vault);
  EXPECT_EQ(ResolveRequestSecrets(request).status().code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_THAT(Msg(ResolveRequestSecrets(request)),
              StartsWith("secrets[1].type: "));
}

TEST(PayloadsSubstituteTest, ReplacesReferencesInStringValuesOnly) {
  const std::map<std::string, std::string> secrets = {{"pw", "hunter2"},
                                                      {"user", "bob"}};
  absl::StatusOr<std::string> out = SubstituteSecrets(
      R"({"run":{"commands":["login ${{secrets.user}} ${{ secrets.pw }}"]},)"
      R"("environment":{"${{secrets.pw}}":"${{secrets.pw}}"},)"
      R"("other":"${{ env.HOME }}","n":3,"b":true,"z":null})",
      secrets);
  ASSERT_TRUE(out.ok()) << out.status();
  rapidjson::Document d = Json(*out);
  EXPECT_EQ(Str(d["run"]["commands"][0]), "login bob hunter2");
  // Keys are left alone; values under them are replaced.
  ASSERT_TRUE(d["environment"].HasMember("${{secrets.pw}}"));
  EXPECT_EQ(Str(d["environment"]["${{secrets.pw}}"]), "hunter2");
  EXPECT_EQ(Str(d["other"]), "${{ env.HOME }}");
  EXPECT_EQ(d["n"].GetInt(), 3);
  EXPECT_TRUE(d["b"].GetBool());
  EXPECT_TRUE(d["z"].IsNull());
}

TEST(PayloadsSubstituteTest, ValuesWithQuotesAndNewlinesStayValidJson) {
  const std::string tricky = "a\"b\\c\nd}\t\x01{\"x\":1}";
  absl::StatusOr<std::string> out = SubstituteSecrets(
      R"({"environment":{"K":"pre ${{secrets.t}} post"}})", {{"t", tricky}});
  ASSERT_TRUE(out.ok()) << out.status();
  rapidjson::Document d = Json(*out);
  ASSERT_TRUE(d.IsObject());
  EXPECT_EQ(Str(d["environment"]["K"]), "pre " + tricky + " post");
  // And the substituted data still parses as an execute payload.
  absl::StatusOr<std::string> data = SubstituteSecrets(
      R"({"id":"s","network":"n","run":{"commands":["echo ${{secrets.t}}"]}})",
      {{"t", tricky}});
  ASSERT_TRUE(data.ok());
  absl::StatusOr<ExecutePayload> payload = ParseExecutePayload(*data);
  ASSERT_TRUE(payload.ok()) << payload.status();
  EXPECT_THAT(payload->step.commands, ElementsAre("echo " + tricky));
}

TEST(PayloadsSubstituteTest, UnknownIdNamesThePathAndTheIdOnly) {
  absl::StatusOr<std::string> out = SubstituteSecrets(
      R"({"environment":{"A":"${{secrets.known}}"},)"
      R"("run":{"commands":["ok","${{secrets.known}} ${{secrets.nope}}"]}})",
      {{"known", "topsecretvalue"}});
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Msg(out),
            "task.data.run.commands[1]: ${{secrets.nope}} is not among the "
            "task's secrets");
  EXPECT_THAT(Msg(out), Not(HasSubstr("topsecretvalue")));
  EXPECT_THAT(Msg(SubstituteSecrets("[1]", {})),
              StartsWith("task.data: expected an object"));
}

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

// ------------------------------------------------------------ responses

rapidjson::Document DecodedData(const rapidjson::Document& body) {
  EXPECT_TRUE(body["data"].IsString());
  std::optional<std::string> data = Base64Decode(Str(body["data"]));
  EXPECT_TRUE(data.has_value());
  return Json(data.value_or(""));
}

TEST(PayloadsResponseTest, TaskResponseCarriesBase64Data) {
  rapidjson::Document body =
      Json(TaskResponseBody("task-1", "local_execute", true, "",
                            R"({"command_execution_status":"SUCCESS"})"));
  EXPECT_EQ(Str(body["id"]), "task-1");
  EXPECT_EQ(Str(body["type"]), "local_execute");
  EXPECT_EQ(Str(body["code"]), "OK");
  EXPECT_EQ(Str(body["error"]), "");
  EXPECT_EQ(Str(DecodedData(body)["command_execution_status"]), "SUCCESS");

  body = Json(TaskResponseBody("t", "secret/static", true, "", ""));
  EXPECT_TRUE(DecodedData(body).IsObject());
}

TEST(PayloadsResponseTest, FailureDataIsNeverNull) {
  const std::string error = "could not pull \"img\"\nbad credentials";
  rapidjson::Document body =
      Json(TaskResponseBody("task-2", "local_init", false, error, ""));
  EXPECT_EQ(Str(body["code"]), "FAILED");
  EXPECT_EQ(Str(body["error"]), error);
  ASSERT_FALSE(body["data"].IsNull());
  rapidjson::Document data = DecodedData(body);
  ASSERT_TRUE(data.IsObject());
  EXPECT_EQ(Str(data["error_message"]), error);

  // Data given with a failure is sent as it is.
  body = Json(TaskResponseBody("task-2", "x", false, "e", R"({"k":1})"));
  EXPECT_EQ(DecodedData(body)["k"].GetInt(), 1);
}

TEST(PayloadsResponseTest, ExecutionResponseMapsStatusesAndOutputs) {
  StepResult ok;
  ok.status = StepStatus::kSuccess;
  ok.exit_code = 0;
  ok.outputs = {{"VERSION", "1.2.3"}, {"DIGEST", "sha256:ab"}};
  rapidjson::Document d = Json(ExecutionResponseData(ok));
  EXPECT_EQ(Str(d["command_execution_status"]), "SUCCESS");
  EXPECT_EQ(Str(d["error_message"]), "");
  EXPECT_EQ(Str(d["output_vars"]["VERSION"]), "1.2.3");
  ASSERT_EQ(d["outputs"].Size(), 2u);
  EXPECT_EQ(Str(d["outputs"][0]["key"]), "DIGEST");
  EXPECT_EQ(Str(d["outputs"][0]["value"]), "sha256:ab");
  EXPECT_EQ(Str(d["outputs"][0]["type"]), "STRING");

  StepResult failed;
  failed.status = StepStatus::kFailure;
  failed.exit_code = 2;
  d = Json(ExecutionResponseData(failed));
  EXPECT_EQ(Str(d["command_execution_status"]), "FAILURE");
  EXPECT_EQ(Str(d["error_message"]), "exit status 2");
  EXPECT_TRUE(d["output_vars"].IsObject());
  EXPECT_TRUE(d["outputs"].IsArray());

  failed.error = "oom killed";
  d = Json(ExecutionResponseData(failed));
  EXPECT_EQ(Str(d["error_message"]), "oom killed");

  StepResult timeout;
  timeout.status = StepStatus::kTimeout;
  d = Json(ExecutionResponseData(timeout));
  EXPECT_EQ(Str(d["command_execution_status"]), "TIMEOUT");
  EXPECT_THAT(Str(d["error_message"]), Not(::testing::IsEmpty()));

  StepResult cancelled;
  cancelled.status = StepStatus::kCancelled;
  cancelled.error = "stage cancelled by the manager";
  d = Json(ExecutionResponseData(cancelled));
  EXPECT_EQ(Str(d["command_execution_status"]), "FAILURE");
  EXPECT_EQ(Str(d["error_message"]), "stage cancelled by the manager");
  cancelled.error.clear();
  d = Json(ExecutionResponseData(cancelled));
  EXPECT_EQ(Str(d["command_execution_status"]), "FAILURE");
  EXPECT_THAT(Str(d["error_message"]), HasSubstr("cancel"));
}

TEST(PayloadsResponseTest, InitAndCleanupResponses) {
  rapidjson::Document d = Json(InitResponseData(true, "", "dlg-1"));
  EXPECT_EQ(Str(d["ip_address"]), "127.0.0.1");
  EXPECT_EQ(Str(d["delegate_meta_info"]["id"]), "dlg-1");
  EXPECT_EQ(Str(d["infra_type"]), "");
  EXPECT_EQ(Str(d["command_execution_status"]), "SUCCESS");
  EXPECT_EQ(Str(d["error_message"]), "");
  d = Json(InitResponseData(false, "docker: network \"x\" exists", "dlg-1"));
  EXPECT_EQ(Str(d["command_execution_status"]), "FAILURE");
  EXPECT_EQ(Str(d["error_message"]), "docker: network \"x\" exists");

  d = Json(CleanupResponseData(true, ""));
  EXPECT_EQ(Str(d["command_execution_status"]), "SUCCESS");
  d = Json(CleanupResponseData(false, "rm: busy"));
  EXPECT_EQ(Str(d["command_execution_status"]), "FAILURE");
  EXPECT_EQ(Str(d["error_message"]), "rm: busy");
}

// ------------------------------------------------------------ lifecycle

RegisterInfo Info() {
  RegisterInfo info;
  info.account_id = "acct";
  info.delegate_name = "my-delegate";
  info.host_name = "runner-build-01";
  info.ip = "10.1.2.3";
  info.version = "0.1.0";
  info.now = absl::FromUnixMillis(1733000000123);
  return info;
}

TEST(PayloadsRegisterTest, RegisterBodyHasTheRunnerFields) {
  RegisterInfo info = Info();
  info.tags = {"linux", "", "gpu"};
  rapidjson::Document d = Json(RegisterRequestJson(info));
  EXPECT_EQ(Str(d["accountId"]), "acct");
  EXPECT_EQ(Str(d["delegateName"]), "my-delegate");
  EXPECT_EQ(d["lastHeartBeat"].GetInt64(), 1733000000123);
  EXPECT_FALSE(d.HasMember("delegateId"));
  EXPECT_EQ(Str(d["delegateType"]), "DOCKER");
  EXPECT_TRUE(d["ng"].GetBool());
  EXPECT_TRUE(d["pollingModeEnabled"].GetBool());
  EXPECT_EQ(Str(d["hostName"]), "runner-build-01");
  EXPECT_EQ(Str(d["ip"]), "10.1.2.3");
  EXPECT_FALSE(d.HasMember("ipAddress"));
  ASSERT_TRUE(d["tags"].IsArray());
  ASSERT_EQ(d["tags"].Size(), 2u);
  EXPECT_EQ(Str(d["tags"][0]), "linux");
  EXPECT_EQ(Str(d["tags"][1]), "gpu");
  EXPECT_TRUE(d["heartbeatAsObject"].GetBool());
  EXPECT_EQ(Str(d["version"]), "0.1.0");
  ASSERT_TRUE(d["runner"].IsBool());
  EXPECT_TRUE(d["runner"].GetBool());
  ASSERT_TRUE(d["capacityConfig"].IsObject());
  ASSERT_TRUE(d["capacityConfig"].HasMember("maxStages"));
  EXPECT_TRUE(d["capacityConfig"]["maxStages"].IsNull());

  info.max_stages = 3;
  info.delegate_id = "dlg-9";
  info.tags.clear();
  d = Json(RegisterRequestJson(info));
  EXPECT_EQ(d["capacityConfig"]["maxStages"].GetInt(), 3);
  EXPECT_EQ(Str(d["delegateId"]), "dlg-9");
  ASSERT_TRUE(d["tags"].IsArray());
  EXPECT_EQ(d["tags"].Size(), 0u);  // not [""]
}

TEST(PayloadsRegisterTest, UnregisterUsesIpAddress) {
  RegisterInfo info = Info();
  info.delegate_id = "dlg-9";
  rapidjson::Document d = Json(UnregisterRequestJson(info));
  EXPECT_EQ(Str(d["delegateId"]), "dlg-9");
  EXPECT_EQ(Str(d["hostName"]), "runner-build-01");
  EXPECT_TRUE(d["ng"].GetBool());
  EXPECT_EQ(Str(d["delegateType"]), "DOCKER");
  EXPECT_EQ(Str(d["ipAddress"]), "10.1.2.3");
  EXPECT_FALSE(d.HasMember("ip"));
}

TEST(PayloadsRegisterTest, ParsesTheDelegateId) {
  absl::StatusOr<std::string> id = ParseRegisterResponse(
      R"({"metaData":{},"resource":{"delegateId":"dlg-1","action":null,)"
      R"("sequenceNum":"1"},"responseMessages":[]})");
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(*id, "dlg-1");
  for (const char* body :
       {"{}", R"({"resource":{}})", R"({"resource":{"delegateId":""}})",
        R"({"resource":null})"}) {
    absl::StatusOr<std::string> missing = ParseRegisterResponse(body);
    ASSERT_FALSE(missing.ok()) << body;
    EXPECT_THAT(Msg(missing), StartsWith("resource.delegateId: ")) << body;
  }
  EXPECT_THAT(Msg(ParseRegisterResponse(R"({"resource":{"delegateId":5}})")),
              StartsWith("resource.delegateId: expected a string"));
  EXPECT_FALSE(ParseRegisterResponse("").ok());
}

}  // namespace
}  // namespace delegate::harness

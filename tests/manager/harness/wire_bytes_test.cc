// The exact bytes the delegate sends and the exact errors it gives for what
// it cannot accept. The other payload tests compare parsed JSON; these pin
// key order, escaping and message text, so that moving the code that writes
// and reads the wire cannot change it unnoticed.
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "manager/harness/payloads.h"
#include "tests/manager/harness/payload_test_util.h"

namespace delegate::harness {
namespace {

TEST(HarnessWireBytesTest, TaskResponseBodies) {
  EXPECT_EQ(TaskResponseBody("t-1", "local_execute", true, "", R"({"a":1})"),
            R"({"id":"t-1","type":"local_execute","code":"OK","error":"",)"
            R"("data":"eyJhIjoxfQ=="})");
  EXPECT_EQ(TaskResponseBody("t-1", "secret/static", true, "", ""),
            R"({"id":"t-1","type":"secret/static","code":"OK","error":"",)"
            R"("data":"e30="})");
  EXPECT_EQ(TaskResponseBody("t-2", "local_init", false, "bad \"x\"\n", ""),
            R"({"id":"t-2","type":"local_init","code":"FAILED",)"
            R"("error":"bad \"x\"\n",)"
            R"("data":"eyJlcnJvcl9tZXNzYWdlIjoiYmFkIFwieFwiXG4ifQ=="})");
}

TEST(HarnessWireBytesTest, ResponseData) {
  StepResult r;
  r.status = StepStatus::kSuccess;
  r.exit_code = 0;
  r.outputs = {{"B", "2"}, {"A", "quote\"d"}};
  EXPECT_EQ(ExecutionResponseData(r),
            R"({"command_execution_status":"SUCCESS","error_message":"",)"
            R"("output_vars":{"A":"quote\"d","B":"2"},"outputs":[{"key":"A",)"
            R"("value":"quote\"d","type":"STRING"},{"key":"B","value":"2",)"
            R"("type":"STRING"}]})");
  r.status = StepStatus::kFailure;
  r.exit_code = 3;
  r.outputs.clear();
  EXPECT_EQ(
      ExecutionResponseData(r),
      R"({"command_execution_status":"FAILURE",)"
      R"("error_message":"exit status 3","output_vars":{},"outputs":[]})");
  EXPECT_EQ(InitResponseData(true, "ignored", "dlg-1"),
            R"({"ip_address":"127.0.0.1","delegate_meta_info":{"id":"dlg-1"},)"
            R"("infra_type":"","command_execution_status":"SUCCESS",)"
            R"("error_message":""})");
  EXPECT_EQ(InitResponseData(false, "net \"x\"", "dlg-1"),
            R"({"ip_address":"127.0.0.1","delegate_meta_info":{"id":"dlg-1"},)"
            R"("infra_type":"","command_execution_status":"FAILURE",)"
            R"("error_message":"net \"x\""})");
  EXPECT_EQ(CleanupResponseData(true, "ignored"),
            R"({"command_execution_status":"SUCCESS","error_message":""})");
  EXPECT_EQ(CleanupResponseData(false, "rm: busy"),
            R"({"command_execution_status":"FAILURE",)"
            R"("error_message":"rm: busy"})");
}

TEST(HarnessWireBytesTest, RegistrationBodies) {
  RegisterInfo info;
  info.account_id = "acct";
  info.delegate_name = "dlg";
  info.host_name = "host";
  info.ip = "10.0.0.1";
  info.tags = {"a", "", "b"};
  info.version = "1.0";
  info.now = absl::FromUnixMillis(1733000000123);
  EXPECT_EQ(RegisterRequestJson(info),
            R"({"accountId":"acct","delegateName":"dlg",)"
            R"("lastHeartBeat":1733000000123,"delegateType":"DOCKER",)"
            R"("ng":true,"pollingModeEnabled":true,"hostName":"host",)"
            R"("ip":"10.0.0.1","tags":["a","b"],"heartbeatAsObject":true,)"
            R"("version":"1.0","capacityConfig":{"maxStages":null},)"
            R"("runner":true})");
  info.delegate_id = "id-1";
  info.max_stages = 4;
  EXPECT_EQ(RegisterRequestJson(info),
            R"({"accountId":"acct","delegateName":"dlg",)"
            R"("lastHeartBeat":1733000000123,"delegateId":"id-1",)"
            R"("delegateType":"DOCKER","ng":true,"pollingModeEnabled":true,)"
            R"("hostName":"host","ip":"10.0.0.1","tags":["a","b"],)"
            R"("heartbeatAsObject":true,"version":"1.0",)"
            R"("capacityConfig":{"maxStages":4},"runner":true})");
  EXPECT_EQ(UnregisterRequestJson(info),
            R"({"delegateId":"id-1","hostName":"host","ng":true,)"
            R"("delegateType":"DOCKER","ipAddress":"10.0.0.1"})");
}

TEST(HarnessWireBytesTest, SecretTaskData) {
  Task task;
  task.type = "secret/static";
  task.data_json = R"({"secrets":[{"id":"s","value":"v\"1"}]})";
  absl::StatusOr<std::string> data = StaticSecretResponseData(task);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(*data, R"({"value":"v\"1"})");
  absl::StatusOr<std::string> substituted = SubstituteSecrets(
      R"({ "a" : "x ${{ secrets.s }} y", "n": [1, 2.5, null, true] })",
      {{"s", "q\"\n"}});
  ASSERT_TRUE(substituted.ok()) << substituted.status();
  EXPECT_EQ(*substituted, R"({"a":"x q\"\n y","n":[1,2.5,null,true]})");
}

TEST(HarnessWireBytesTest, TaskDataIsNormalisedToCompactJson) {
  absl::StatusOr<std::vector<TaskRequest>> requests = ParseAcquireResponse(
      R"({"requests":[{"task":{"id":"t","data":{ "b" : [ 1 , 2 ] },)"
      R"("config":" { \"c\" : 1.50 } "},)"
      R"("secrets":[{"data":"eyJ4IjogMX0="}]}]})");
  ASSERT_TRUE(requests.ok()) << requests.status();
  ASSERT_EQ(requests->size(), 1u);
  EXPECT_EQ((*requests)[0].task.data_json, R"({"b":[1,2]})");
  EXPECT_EQ((*requests)[0].task.config_json, R"({"c":1.5})");
  ASSERT_EQ((*requests)[0].secrets.size(), 1u);
  EXPECT_EQ((*requests)[0].secrets[0].data_json, R"({"x":1})");
}

TEST(HarnessWireBytesTest, ListAndObjectErrors) {
  EXPECT_EQ(Msg(ParseRunnerEvents("[]")), "runner events: expected an object");
  EXPECT_EQ(Msg(ParseRunnerEvents(R"({"delegateRunnerEvents":{}})")),
            "delegateRunnerEvents: expected an array");
  EXPECT_EQ(Msg(ParseRunnerEvents(R"({"delegateRunnerEvents":[1]})")),
            "delegateRunnerEvents[0]: expected an object");
  EXPECT_EQ(Msg(ParseAcquireResponse("5")),
            "acquire response: expected an object");
  EXPECT_EQ(Msg(ParseAcquireResponse(R"({"requests":5})")),
            "requests: expected an array");
  EXPECT_EQ(Msg(ParseAcquireResponse(R"({"requests":[[]]})")),
            "requests[0]: expected an object");
  EXPECT_EQ(Msg(ParseAcquireResponse(R"({"requests":[{}]})")),
            "requests[0].task: missing");
  EXPECT_EQ(Msg(ParseAcquireResponse(R"({"requests":[{"task":null}]})")),
            "requests[0].task: missing");
  EXPECT_EQ(Msg(ParseAcquireResponse(R"({"requests":[{"task":"x"}]})")),
            "requests[0].task: expected an object");
  EXPECT_EQ(
      Msg(ParseAcquireResponse(R"({"requests":[{"task":{},"secrets":{}}]})")),
      "requests[0].secrets: expected an array");
  EXPECT_EQ(
      Msg(ParseAcquireResponse(R"({"requests":[{"task":{},"secrets":[3]}]})")),
      "requests[0].secrets[0]: expected an object");
  EXPECT_EQ(Msg(ParseRegisterResponse("[]")),
            "register response: expected an object");
  EXPECT_EQ(Msg(ParseRegisterResponse(R"({"resource":[]})")),
            "resource: expected an object");

  Task task;
  task.data_json = R"({"secrets":{}})";
  EXPECT_EQ(Msg(ResolveStaticSecrets(task)),
            "task.data.secrets: expected an array");
  task.data_json = R"({"secrets":["x"]})";
  EXPECT_EQ(Msg(ResolveStaticSecrets(task)),
            "task.data.secrets[0]: expected an object");
  task.data_json = R"({"secrets":[]})";
  EXPECT_EQ(Msg(StaticSecretResponseData(task)),
            "task.data.secrets: empty; a secret/static task needs one");
  TaskRequest request;
  request.secrets.push_back(task);
  request.secrets[0].id = "s";
  request.secrets[0].type = "secret/static";
  EXPECT_EQ(Msg(ResolveRequestSecrets(request)),
            "secrets[0].data.secrets: empty; a secret/static task needs one");
  request.secrets[0].data_json = R"({"secrets":[7]})";
  EXPECT_EQ(Msg(ResolveRequestSecrets(request)),
            "secrets[0].data.secrets[0]: expected an object");

  EXPECT_EQ(Msg(ParseInitPayload(R"({"network":{"id":"n"},"volumes":{}})")),
            "task.data.volumes: expected an array");
  EXPECT_EQ(Msg(ParseInitPayload(R"({"network":{"id":"n"},"volumes":[1]})")),
            "task.data.volumes[0]: expected an object");
  EXPECT_EQ(Msg(ParseInitPayload(R"({"volumes":[]})")),
            "task.data.network.id: empty, and so is "
            "task.data.stage_runtime_id; one of them must name the stage so "
            "that its init, execute and cleanup tasks meet");
  EXPECT_EQ(
      Msg(ParseExecutePayload(R"({"id":"s","network":"n",)"
                              R"("run":{"commands":["x"]},)"
                              R"("volumes":[{"name":"v","path":"/p"},1]})")),
      "task.data.volumes[1]: expected an object");
  EXPECT_EQ(Msg(ParseExecutePayload(R"({"id":"s"})")),
            "task.data.network: empty, and so is task.data.stage_runtime_id; "
            "one of them must name the stage so that its init, execute and "
            "cleanup tasks meet");
  EXPECT_EQ(Msg(ParseCleanupPayload(R"({"network":"n","volumes":[null]})")),
            "task.data.volumes[0]: expected an object");
  EXPECT_EQ(Msg(ParseCleanupPayload(R"({"volumes":[]})")),
            "task.data.network: empty, and so is task.data.stage_runtime_id; "
            "one of them must name the stage so that its init, execute and "
            "cleanup tasks meet");
  EXPECT_EQ(Msg(ParseCleanupPayload("[]")), "task.data: expected an object");
}

}  // namespace
}  // namespace delegate::harness

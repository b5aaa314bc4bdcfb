#include "manager/harness/task_request.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "manager/harness/base64.h"
#include "manager/harness/local_payloads.h"
#include "tests/manager/harness/payload_test_util.h"

namespace delegate::harness {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Pair;
using ::testing::StartsWith;

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

// An acquire body holding one request whose primary task has `task_fields`
// (JSON members, without braces) and whose secrets are `secrets_json`.
std::string AcquireBody(const std::string& task_fields,
                        const std::string& secrets_json = "[]") {
  return R"({"requests":[{"id":"req-1","account":"acct","task":{)" +
         task_fields + R"(},"secrets":)" + secrets_json + "}]}";
}

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

}  // namespace
}  // namespace delegate::harness

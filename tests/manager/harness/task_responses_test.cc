#include "manager/harness/task_responses.h"

#include <optional>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "manager/harness/base64.h"
#include "tests/manager/harness/payload_test_util.h"

namespace delegate::harness {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

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

}  // namespace
}  // namespace delegate::harness

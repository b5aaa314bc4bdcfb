#include "manager/harness/registration.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/manager/harness/payload_test_util.h"

namespace delegate::harness {
namespace {

using ::testing::StartsWith;

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

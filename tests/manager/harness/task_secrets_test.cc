#include "manager/harness/task_secrets.h"

#include <map>
#include <string>

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

}  // namespace
}  // namespace delegate::harness

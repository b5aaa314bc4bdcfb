// The botocore-model validator: a small model written here for each rule,
// and the real ECS and Logs models for what the AWS fake relies on.
#include "tests/fakes/aws_model.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/aws_fake.h"

namespace delegate::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;
using ::testing::StartsWith;

AwsModel LoadOrDie(const std::string& path) {
  absl::StatusOr<AwsModel> model = AwsModel::Load(path);
  EXPECT_TRUE(model.ok()) << model.status();
  return *std::move(model);
}

AwsModel Ecs() {
  return LoadOrDie(
      (fs::path(AwsTestdataDir()) / "ecs-model" / "service-2.json").string());
}

AwsModel Logs() {
  return LoadOrDie(
      (fs::path(AwsTestdataDir()) / "logs-model" / "service-2.json").string());
}

// One operation, Op, whose input has a member of each kind.
constexpr char kTinyModel[] = R"({
  "metadata": {"endpointPrefix": "tiny", "targetPrefix": "Tiny_1",
               "protocol": "json", "jsonVersion": "1.1"},
  "operations": {
    "Op": {"name": "Op", "input": {"shape": "OpRequest"}},
    "NoInput": {"name": "NoInput"}
  },
  "shapes": {
    "OpRequest": {"type": "structure", "required": ["name"], "members": {
      "name": {"shape": "Name"}, "count": {"shape": "Count"},
      "big": {"shape": "Big"}, "ratio": {"shape": "Ratio"},
      "when": {"shape": "When"}, "data": {"shape": "Data"},
      "flag": {"shape": "Flag"}, "items": {"shape": "Items"},
      "labels": {"shape": "Labels"}, "choice": {"shape": "Choice"},
      "secret": {"shape": "Secret"}, "mode": {"shape": "Mode"},
      "any": {"shape": "Any"}, "tag": {"shape": "JavaTag"},
      "short": {"shape": "Short"}}},
    "Name": {"type": "string", "min": 2, "max": 5, "pattern": "[a-z]+"},
    "Count": {"type": "integer", "min": 1, "max": 10},
    "Big": {"type": "long"},
    "Ratio": {"type": "float", "max": 1.5},
    "When": {"type": "timestamp"},
    "Data": {"type": "blob", "max": 3},
    "Flag": {"type": "boolean"},
    "Items": {"type": "list", "member": {"shape": "Name"}, "max": 2},
    "Labels": {"type": "map", "key": {"shape": "Name"},
               "value": {"shape": "Count"}, "min": 1},
    "Choice": {"type": "structure", "union": true, "members": {
      "a": {"shape": "Flag"}, "b": {"shape": "Flag"}}},
    "Secret": {"type": "string", "sensitive": true, "enum": ["x", "y"]},
    "Mode": {"type": "string", "enum": ["ON", "OFF"]},
    "Any": {"type": "structure", "document": true},
    "JavaTag": {"type": "string", "pattern": "[\\p{L}]+"},
    "Short": {"type": "string", "max": 3}
  }
})";

class TinyModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = fs::temp_directory_path() /
            ("aws-model-test-" + std::to_string(getpid()) + ".json");
    std::ofstream(path_) << kTinyModel;
    model_ = LoadOrDie(path_.string());
  }
  void TearDown() override { fs::remove(path_); }

  std::vector<std::string> Problems(const std::string& json) {
    return model_->ValidateInput("Op", json);
  }

  fs::path path_;
  std::optional<AwsModel> model_;
};

TEST_F(TinyModelTest, ValidBodyHasNoProblems) {
  EXPECT_THAT(Problems(R"({"name":"abc","count":3,"big":9000000000,
      "ratio":1.25,"when":1700000000.5,"data":"AAE=","flag":true,
      "items":["ab"],"labels":{"ab":1},"choice":{"a":true},"secret":"x",
      "mode":"ON","any":{"whatever":[1,{"x":null}]},"tag":"Zürich"})"),
              IsEmpty());
}

TEST_F(TinyModelTest, MissingRequiredMemberAndNullAsAbsent) {
  EXPECT_THAT(Problems("{}"), ElementsAre("name: missing required member"));
  EXPECT_THAT(Problems(R"({"name":null})"),
              ElementsAre("name: missing required member"));
}

TEST_F(TinyModelTest, UnknownMemberIsASerializationProblem) {
  std::vector<ModelProblem> problems =
      model_->Check("Op", R"({"name":"ab","nmae":"ab"})");
  ASSERT_THAT(problems, SizeIs(1));
  EXPECT_EQ(problems[0].text, "nmae: unknown member");
  EXPECT_EQ(problems[0].kind, ModelProblem::Kind::kSerialization);
}

TEST_F(TinyModelTest, JsonTypes) {
  EXPECT_THAT(
      Problems(R"({"name":5,"count":"3","big":1.5,"ratio":"x","when":"2024",
                   "data":7,"flag":"true","items":{},"labels":[],
                   "choice":true})"),
      ElementsAre("name: expected a string, got a number",
                  "count: expected an integer, got a string",
                  "big: expected an integer, got a number",
                  "ratio: expected a number, got a string",
                  "when: expected a number, got a string",
                  "data: expected a base64 string, got a number",
                  "flag: expected a boolean, got a string",
                  "items: expected an array, got an object",
                  "labels: expected an object, got an array",
                  "choice: expected an object, got a boolean"));
  for (const ModelProblem& p :
       model_->Check("Op", R"({"name":"ab","count":"3"})")) {
    EXPECT_EQ(p.kind, ModelProblem::Kind::kSerialization) << p.text;
  }
}

TEST_F(TinyModelTest, IntegerWidths) {
  EXPECT_THAT(Problems(R"({"name":"ab","count":3000000000})"),
              ElementsAre("count: 3000000000 does not fit a 32-bit integer"));
  EXPECT_THAT(Problems(R"({"name":"ab","big":18446744073709551615})"),
              ElementsAre(HasSubstr("does not fit a 64-bit integer")));
}

TEST_F(TinyModelTest, Bounds) {
  EXPECT_THAT(
      Problems(R"({"name":"a","count":0,"ratio":2,"items":["ab","ab","ab"],
                   "labels":{},"data":"AAECAw=="})"),
      ElementsAre("name: length 1 is less than the minimum 2",
                  "count: 0 is less than the minimum 1",
                  "ratio: 2 is more than the maximum 1.5",
                  "items: 3 items are more than the maximum 2",
                  "labels: 0 entries are fewer than the minimum 1",
                  "data: 4 bytes are more than the maximum 3"));
  EXPECT_THAT(Problems(R"({"name":"abcdef","count":11})"),
              ElementsAre("name: length 6 is more than the maximum 5",
                          "count: 11 is more than the maximum 10"));
  // Characters, not bytes.
  EXPECT_THAT(Problems(R"({"name":"ab","short":"ééé"})"), IsEmpty());
  EXPECT_THAT(Problems(R"({"name":"ab","short":"éééé"})"),
              ElementsAre("short: length 4 is more than the maximum 3"));
}

TEST_F(TinyModelTest, PatternsMatchTheWholeValue) {
  EXPECT_THAT(
      Problems(R"({"name":"aB"})"),
      ElementsAre("name: value 'aB' does not match the pattern [a-z]+"));
  EXPECT_THAT(Problems(R"({"name":"ab","items":["ab","a1"]})"),
              ElementsAre("items[1]: value 'a1' does not match the pattern "
                          "[a-z]+"));
}

TEST_F(TinyModelTest, JavaOnlyPatternsAreSkippedAndReported) {
  EXPECT_THAT(model_->skipped_patterns(),
              ElementsAre(AllOf(StartsWith("JavaTag: [\\p{L}]+"),
                                HasSubstr("Java-only"))));
  EXPECT_THAT(Problems(R"({"name":"ab","tag":"1+1"})"), IsEmpty());
}

TEST_F(TinyModelTest, EnumsAndSensitiveValues) {
  EXPECT_THAT(Problems(R"({"name":"ab","mode":"MAYBE","secret":"hunter2"})"),
              ElementsAre("mode: value 'MAYBE' is not one of ON, OFF",
                          "secret: value (sensitive) is not one of x, y"));
}

TEST_F(TinyModelTest, MapKeysAndValues) {
  EXPECT_THAT(Problems(R"({"name":"ab","labels":{"Ab":1,"ab":0,"x y":2}})"),
              ElementsAre("labels.Ab: key value 'Ab' does not match the "
                          "pattern [a-z]+",
                          "labels.ab: 0 is less than the minimum 1",
                          "labels[\"x y\"]: key value 'x y' does not match "
                          "the pattern [a-z]+"));
}

TEST_F(TinyModelTest, UnionsSetExactlyOneMember) {
  EXPECT_THAT(Problems(R"({"name":"ab","choice":{}})"),
              ElementsAre("choice: a union: exactly one member must be set, "
                          "not 0"));
  EXPECT_THAT(Problems(R"({"name":"ab","choice":{"a":true,"b":false}})"),
              ElementsAre("choice: a union: exactly one member must be set, "
                          "not 2 (a, b)"));
}

TEST_F(TinyModelTest, BlobsAreBase64) {
  EXPECT_THAT(Problems(R"({"name":"ab","data":"not base64!"})"),
              ElementsAre("data: not valid base64"));
}

TEST_F(TinyModelTest, BodyAndOperationProblems) {
  EXPECT_THAT(Problems("{\"name\":"),
              ElementsAre(StartsWith("(body): not valid JSON: ")));
  EXPECT_THAT(Problems("[]"),
              ElementsAre("(body): expected an object, got an array"));
  EXPECT_THAT(model_->ValidateInput("Nope", "{}"),
              ElementsAre("(operation): Nope is not an operation of tiny"));
  EXPECT_THAT(model_->ValidateInput("NoInput", "{}"), IsEmpty());
  EXPECT_THAT(model_->ValidateInput("NoInput", R"({"x":1})"),
              ElementsAre("x: unknown member"));
  EXPECT_EQ(model_->signing_name(), "tiny");  // endpointPrefix
  EXPECT_EQ(model_->target_prefix(), "Tiny_1");
  EXPECT_THAT(model_->operations(), ElementsAre("NoInput", "Op"));
}

TEST(AwsModelTest, LoadFailsWithThePath) {
  absl::StatusOr<AwsModel> model =
      AwsModel::Load("/nonexistent/service-2.json");
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(model.status().message(),
              HasSubstr("/nonexistent/service-2.json"));
}

TEST(AwsModelTest, EcsAndLogsMetadata) {
  const AwsModel ecs = Ecs();
  EXPECT_EQ(ecs.target_prefix(), "AmazonEC2ContainerServiceV20141113");
  EXPECT_EQ(ecs.signing_name(), "ecs");
  EXPECT_TRUE(ecs.HasOperation("RunTask"));
  EXPECT_FALSE(ecs.HasOperation("PutLogEvents"));
  const AwsModel logs = Logs();
  EXPECT_EQ(logs.target_prefix(), "Logs_20140328");
  EXPECT_EQ(logs.signing_name(), "logs");  // no signingName: endpointPrefix
  EXPECT_TRUE(logs.HasOperation("PutLogEvents"));
  // Tag patterns use Java's \p{L}: skipped, and said so.
  EXPECT_THAT(ecs.skipped_patterns(),
              ::testing::Contains(StartsWith("TagKey: ")));
}

constexpr char kFargateDefinition[] = R"({
  "family": "ci-step", "requiresCompatibilities": ["FARGATE"],
  "networkMode": "awsvpc", "cpu": "256", "memory": "512",
  "executionRoleArn": "arn:aws:iam::123456789012:role/ci-exec",
  "containerDefinitions": [{
    "name": "step", "image": "busybox", "essential": true,
    "entryPoint": ["/bin/sh", "-c"], "command": ["echo hi"],
    "linuxParameters": {"capabilities": {"drop": ["ALL"],
                                         "add": ["SYS_PTRACE"]}},
    "logConfiguration": {"logDriver": "awslogs", "options": {
      "awslogs-group": "/ci", "awslogs-region": "us-east-1",
      "awslogs-stream-prefix": "step"}}}]})";

TEST(AwsModelTest, EcsRegisterTaskDefinition) {
  const AwsModel ecs = Ecs();
  EXPECT_THAT(ecs.ValidateInput("RegisterTaskDefinition", kFargateDefinition),
              IsEmpty());
  EXPECT_THAT(ecs.ValidateInput("RegisterTaskDefinition", R"({"family":"x"})"),
              ElementsAre("containerDefinitions: missing required member"));
  EXPECT_THAT(
      ecs.ValidateInput("RegisterTaskDefinition",
                        R"({"family":"x","containerDefinitions":[{"name":"a",
          "logConfiguration":{"logDriver":"awslogs"}},
          {"name":"b","logConfiguration":{"logDriver":"syslogs"}}]})"),
      ElementsAre("containerDefinitions[1].logConfiguration.logDriver: value "
                  "'syslogs' is not one of json-file, syslog, journald, gelf, "
                  "fluentd, awslogs, splunk, awsfirelens"));
  EXPECT_THAT(
      ecs.ValidateInput("RegisterTaskDefinition",
                        R"({"family":"x","containerDefinitions":[],
                            "cpu":256,"networkMode":"awsvpc2","bogus":1})"),
      ElementsAre("cpu: expected a string, got a number",
                  StartsWith("networkMode: value 'awsvpc2' is not one of "),
                  "bogus: unknown member"));
}

TEST(AwsModelTest, LogsLimits) {
  const AwsModel logs = Logs();
  EXPECT_THAT(
      logs.ValidateInput(
          "CreateLogGroup",
          absl::StrCat(R"({"logGroupName":")", std::string(513, 'a'), R"("})")),
      ElementsAre("logGroupName: length 513 is more than the maximum 512"));
  EXPECT_THAT(
      logs.ValidateInput("CreateLogStream",
                         R"({"logGroupName":"/ci","logStreamName":"a:b"})"),
      ElementsAre("logStreamName: value 'a:b' does not match the "
                  "pattern [^:*]*"));
  EXPECT_THAT(logs.ValidateInput("PutLogEvents",
                                 R"({"logGroupName":"/ci","logStreamName":"s",
                                     "logEvents":[]})"),
              ElementsAre("logEvents: 0 items are fewer than the minimum 1"));
  EXPECT_THAT(logs.ValidateInput("GetLogEvents",
                                 R"({"logStreamName":"s","limit":10001})"),
              ElementsAre("limit: 10001 is more than the maximum 10000"));
}

}  // namespace
}  // namespace delegate::testing

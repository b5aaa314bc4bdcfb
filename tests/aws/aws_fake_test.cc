// The loopback AWS fake as a client sees it: signed JSON calls over HTTP,
// the answers and errors AWS would give, and the task lifecycle (containers
// "run" per ContainerBehaviour; the Docker mode is in
// tests/integration/aws_fake_docker_test.cc).
#include "tests/fakes/aws_fake.h"

#include <atomic>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "aws/sigv4.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "http/http_client.h"
#include "rapidjson/document.h"
#include "tests/fakes/fake_clock.h"

namespace delegate::testing {
namespace {

using ::testing::AllOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;
using ::testing::StartsWith;

constexpr char kEcsPrefix[] = "AmazonEC2ContainerServiceV20141113.";
constexpr char kRegion[] = "us-east-1";

const FakeAwsCredential& Key() {
  static const FakeAwsCredential* key = new FakeAwsCredential{
      "AKIDFAKE", "fake-secret-key", "", absl::InfiniteFuture()};
  return *key;
}

// A Fargate task definition whose one container logs to /ci/steps.
std::string FargateDefinition(const std::string& family,
                              const std::string& extra = "",
                              const std::string& container_extra = "") {
  return absl::StrCat(R"({"family":")", family, R"(",
    "requiresCompatibilities":["FARGATE"],"networkMode":"awsvpc",
    "cpu":"256","memory":"512",
    "executionRoleArn":"arn:aws:iam::123456789012:role/ci-exec")",
                      extra, R"(,
    "containerDefinitions":[{"name":"step","image":"busybox",
      "entryPoint":["/bin/sh","-c"],"command":["echo hi"],
      "logConfiguration":{"logDriver":"awslogs","options":{
        "awslogs-group":"/ci/steps","awslogs-region":"us-east-1",
        "awslogs-stream-prefix":"ci","awslogs-create-group":"true"}})",
                      container_extra, "}]}");
}

constexpr char kNetwork[] =
    R"("networkConfiguration":{"awsvpcConfiguration":{
        "subnets":["subnet-0abc"],"securityGroups":["sg-0abc"],
        "assignPublicIp":"DISABLED"}})";

std::string RunTaskBody(const std::string& definition,
                        const std::string& extra = "") {
  return absl::StrCat(R"({"cluster":"ci","taskDefinition":")", definition,
                      R"(","launchType":"FARGATE",)", kNetwork, extra, "}");
}

// A task definition that ECS refuses, and what its message says.
struct Refusal {
  std::string name;
  std::string body;
  std::string message;
};

class AwsFakeTest : public ::testing::Test {
 protected:
  void SetUp() override { Start({}); }

  void Start(FakeAwsOptions options) {
    client_.reset();
    fake_.reset();
    options.credentials.push_back(Key());
    options.testdata_dir = AwsTestdataDir();
    if (options.provisioning_for == absl::Milliseconds(20)) {
      options.provisioning_for = absl::Milliseconds(5);
      options.pending_for = absl::Milliseconds(5);
    }
    clock_ = options.clock;
    absl::StatusOr<std::unique_ptr<FakeAws>> fake = FakeAws::Start(options);
    ASSERT_TRUE(fake.ok()) << fake.status();
    fake_ = *std::move(fake);
    client_ = std::make_unique<FakeAwsClient>(*fake_, Key(), clock_);
  }

  absl::Time Now() { return clock_ ? clock_->Now() : absl::Now(); }

  // Options for a fake on fake_clock_ with these lifecycle steps.
  FakeAwsOptions OnFakeClock(absl::Duration provisioning,
                             absl::Duration pending) {
    FakeAwsOptions options;
    options.clock = &fake_clock_;
    options.provisioning_for = provisioning;
    options.pending_for = pending;
    return options;
  }

  http::Response Call(const std::string& target, const std::string& body,
                      const FakeAwsCredential& key = Key()) {
    absl::StatusOr<http::Response> r =
        SignedAwsCall(http_, fake_->url(), key, kRegion, target, body, Now());
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : http::Response{};
  }
  http::Response Ecs(const std::string& op, const std::string& body) {
    return client_->Ecs(op, body);
  }
  http::Response Logs(const std::string& op, const std::string& body) {
    return client_->Logs(op, body);
  }

  // `object` (a JSON object's text) with "nextToken" set to `token` unless
  // that is empty.
  static std::string WithToken(std::string object, const std::string& token) {
    if (token.empty()) return object;
    object.pop_back();  // '}'
    return absl::StrCat(object, R"(,"nextToken":")", token, "\"}");
  }

  static rapidjson::Document Json(const http::Response& r) {
    rapidjson::Document doc;
    doc.Parse(r.body.data(), r.body.size());
    EXPECT_FALSE(doc.HasParseError()) << r.body;
    return doc;
  }

  // Each is refused by RegisterTaskDefinition with ClientException.
  void ExpectRefused(const std::vector<Refusal>& refusals) {
    for (const Refusal& c : refusals) {
      http::Response r = Ecs("RegisterTaskDefinition", c.body);
      EXPECT_EQ(r.status, 400) << c.name << ": " << r.body;
      EXPECT_EQ(AwsErrorType(r), "ClientException") << c.name << ": " << r.body;
      EXPECT_THAT(r.body, HasSubstr(c.message)) << c.name;
    }
  }

  // Registers and returns the ARN.
  std::string Register(const std::string& body) {
    http::Response r = Ecs("RegisterTaskDefinition", body);
    EXPECT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc = Json(r);
    return doc["taskDefinition"]["taskDefinitionArn"].GetString();
  }

  std::string RunOne(const std::string& body) {
    http::Response r = Ecs("RunTask", body);
    EXPECT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc = Json(r);
    EXPECT_EQ(doc["tasks"].Size(), 1u) << r.body;
    return doc["tasks"][0]["taskArn"].GetString();
  }

  // A ListTasks call signed by hand for `service`, with Content-Type
  // signed or added after signing, and `sent_body` sent for the signed "{}".
  http::Response SignedByHand(const std::string& service, bool sign_type,
                              const std::string& sent_body = "{}") {
    aws::SignableRequest signable;
    signable.headers = {
        {"Host", fake_->url().substr(strlen("http://"))},
        {"X-Amz-Target", std::string(kEcsPrefix) + "ListTasks"}};
    const std::pair<std::string, std::string> type = {
        "Content-Type", "application/x-amz-json-1.1"};
    if (sign_type) signable.headers.push_back(type);
    signable.body = "{}";
    aws::SigningOptions signing;
    signing.region = kRegion;
    signing.service = service;
    signing.time = absl::Now();
    aws::Sign({Key().access_key_id, SecretString(Key().secret_access_key), {}},
              signing, signable);
    if (!sign_type) signable.headers.push_back(type);
    http::Request request;
    request.method = "POST";
    request.url = fake_->url() + "/";
    request.headers = signable.headers;
    request.body = sent_body;
    absl::StatusOr<http::Response> r = http_.Perform(request);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : http::Response{};
  }

  // The lastStatus DescribeTasks shows for the task now.
  std::string LastStatus(const std::string& arn) {
    rapidjson::Document doc =
        Json(Ecs("DescribeTasks",
                 absl::StrCat(R"({"cluster":"ci","tasks":[")", arn, R"("]})")));
    return doc["tasks"][0]["lastStatus"].GetString();
  }

  // DescribeTasks of one task (its JSON text) once lastStatus is `status`.
  std::string WaitFor(const std::string& arn, const std::string& status) {
    std::string body =
        client_->WaitForTask("ci", arn, status, absl::Seconds(10));
    EXPECT_FALSE(body.empty()) << arn << " never reached " << status;
    return body.empty() ? R"({"tasks":[{}]})" : body;
  }

  http::HttpClient http_;
  Clock* clock_ = nullptr;
  // For tests that move time by hand; declared before fake_, whose
  // lifecycle thread reads it until the fake is destroyed.
  FakeClock fake_clock_{absl::Now()};
  std::unique_ptr<FakeAws> fake_;
  std::unique_ptr<FakeAwsClient> client_;
};

// ------------------------------------------------------------------ SigV4

TEST_F(AwsFakeTest, SignedRegisterTaskDefinitionGetsARevision) {
  http::Response r = Ecs("RegisterTaskDefinition", FargateDefinition("step-a"));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("Content-Type"), "application/x-amz-json-1.1");
  EXPECT_FALSE(r.header("x-amzn-RequestId").empty());
  rapidjson::Document doc = Json(r);
  const rapidjson::Value& td = doc["taskDefinition"];
  EXPECT_EQ(td["revision"].GetInt(), 1);
  EXPECT_STREQ(td["status"].GetString(), "ACTIVE");
  EXPECT_STREQ(td["taskDefinitionArn"].GetString(),
               "arn:aws:ecs:us-east-1:123456789012:task-definition/step-a:1");
  EXPECT_TRUE(td["containerDefinitions"][0]["essential"].GetBool());
  EXPECT_EQ(Json(Ecs("RegisterTaskDefinition",
                     FargateDefinition("step-a")))["taskDefinition"]["revision"]
                .GetInt(),
            2);
  EXPECT_THAT(fake_->Rejected(), IsEmpty());
  EXPECT_THAT(fake_->Calls(),
              ElementsAre("RegisterTaskDefinition", "RegisterTaskDefinition"));
  EXPECT_THAT(fake_->TaskDefinitions(), SizeIs(2));
}

TEST_F(AwsFakeTest, UnsignedRequestIsMissingAuthenticationToken) {
  http::Request request;
  request.method = "POST";
  request.url = fake_->url() + "/";
  request.headers = {{"Content-Type", "application/x-amz-json-1.1"},
                     {"X-Amz-Target", std::string(kEcsPrefix) + "ListTasks"}};
  request.body = "{}";
  absl::StatusOr<http::Response> r = http_.Perform(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(AwsErrorType(*r), "MissingAuthenticationTokenException");
  EXPECT_THAT(fake_->Rejected(),
              ElementsAre(AllOf(Field(&FakeRejection::operation, "ListTasks"),
                                Field(&FakeRejection::code,
                                      "MissingAuthenticationTokenException"))));
  EXPECT_THAT(fake_->Calls(), IsEmpty());
}

TEST_F(AwsFakeTest, WrongSecretOrUnknownKeyIsRefused) {
  FakeAwsCredential wrong_secret = Key();
  wrong_secret.secret_access_key = "not-the-secret";
  FakeAwsCredential unknown = Key();
  unknown.access_key_id = "AKIDUNKNOWN";
  for (const auto& [key, code, message] :
       std::vector<std::tuple<FakeAwsCredential, std::string, std::string>>{
           {wrong_secret, "InvalidSignatureException",
            "The request signature we calculated does not match the "
            "signature you provided"},
           {unknown, "UnrecognizedClientException",
            "The security token included in the request is invalid."}}) {
    http::Response r = Call(std::string(kEcsPrefix) + "ListTasks", "{}", key);
    EXPECT_EQ(r.status, 403);
    EXPECT_EQ(AwsErrorType(r), code);
    EXPECT_THAT(r.body, HasSubstr(message));
  }
}

TEST_F(AwsFakeTest, TamperedBodyIsInvalidSignature) {
  EXPECT_EQ(SignedByHand("ecs", true).status, 200);
  http::Response r = SignedByHand("ecs", true, R"({"cluster":"other"})");
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(AwsErrorType(r), "InvalidSignatureException");
}

TEST_F(AwsFakeTest, ScopeMustNameTheRegionAndTheTargetsService) {
  absl::StatusOr<http::Response> r =
      SignedAwsCall(http_, fake_->url(), Key(), "eu-west-1",
                    std::string(kEcsPrefix) + "ListTasks", "{}");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 403);
  EXPECT_EQ(AwsErrorType(*r), "InvalidSignatureException");
  EXPECT_THAT(r->body, HasSubstr("/us-east-1/ecs/aws4_request"));

  // An ECS target signed for logs.
  http::Response logs = SignedByHand("logs", true);
  EXPECT_EQ(logs.status, 403);
  EXPECT_EQ(AwsErrorType(logs), "InvalidSignatureException");
  EXPECT_THAT(logs.body, HasSubstr("correct service: 'ecs'"));
}

TEST_F(AwsFakeTest, SignatureOlderThanFifteenMinutesHasExpired) {
  absl::StatusOr<http::Response> r =
      SignedAwsCall(http_, fake_->url(), Key(), kRegion,
                    std::string(kEcsPrefix) + "ListTasks", "{}",
                    absl::Now() - absl::Minutes(16));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(AwsErrorType(*r), "InvalidSignatureException");
  EXPECT_THAT(r->body, HasSubstr("Signature expired"));
  r = SignedAwsCall(http_, fake_->url(), Key(), kRegion,
                    std::string(kEcsPrefix) + "ListTasks", "{}",
                    absl::Now() - absl::Minutes(14));
  EXPECT_EQ(r->status, 200) << r->body;
}

TEST_F(AwsFakeTest, SessionTokensMustMatchAndExpire) {
  FakeAwsCredential temporary{"ASIATEMP", "temp-secret", "the-token",
                              absl::InfiniteFuture()};
  fake_->AddCredential(temporary);
  EXPECT_EQ(Call(std::string(kEcsPrefix) + "ListTasks", "{}", temporary).status,
            200);
  FakeAwsCredential no_token = temporary;
  no_token.session_token = "";
  http::Response r =
      Call(std::string(kEcsPrefix) + "ListTasks", "{}", no_token);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(AwsErrorType(r), "UnrecognizedClientException");

  fake_->ExpireCredential("ASIATEMP");
  r = Call(std::string(kEcsPrefix) + "ListTasks", "{}", temporary);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(AwsErrorType(r), "ExpiredTokenException");
  EXPECT_THAT(r.body, HasSubstr("The security token included in the request "
                                "is expired"));
}

TEST_F(AwsFakeTest, ContentTypeMustBeSigned) {
  http::Response r = SignedByHand("ecs", false);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(AwsErrorType(r), "InvalidSignatureException");
  EXPECT_THAT(r.body, HasSubstr("'Content-Type' must be a 'SignedHeader'"));
}

TEST_F(AwsFakeTest, UnknownTargetsAndOperations) {
  http::Response r = Call("AmazonEC2ContainerServiceV20141113", "{}");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(AwsErrorType(r), "UnknownOperationException");
  r = Call("DynamoDB_20120810.ListTables", "{}");
  EXPECT_EQ(AwsErrorType(r), "UnknownOperationException");
  r = Ecs("LaunchRocket", "{}");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(AwsErrorType(r), "UnknownOperationException");
  EXPECT_THAT(fake_->Rejected(), SizeIs(3));
}

// ------------------------------------------------------------ validation

TEST_F(AwsFakeTest, ModelViolationsAreRefusedAndRecorded) {
  http::Response r = Ecs("RegisterTaskDefinition",
                         FargateDefinition("step-a", R"(,"bogus":true)"));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(AwsErrorType(r), "SerializationException");
  EXPECT_THAT(r.body, HasSubstr("bogus: unknown member"));

  r = Ecs("RegisterTaskDefinition", "{not json");
  EXPECT_EQ(AwsErrorType(r), "SerializationException");

  r = Ecs("RegisterTaskDefinition",
          FargateDefinition("step-a", "",
                            R"(,"linuxParameters":{"capabilities":{
                                "add":["SYS_PTRACE","FOO"]}})"));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(AwsErrorType(r), "ClientException");
  EXPECT_THAT(r.body,
              HasSubstr("containerDefinitions[0].linuxParameters.capabilities"
                        ".add[1]: value 'FOO' is not one of"));

  r = Logs("CreateLogGroup", absl::StrCat(R"({"logGroupName":")",
                                          std::string(600, 'g'), R"("})"));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(AwsErrorType(r), "InvalidParameterException");
  EXPECT_THAT(r.body, HasSubstr("length 600 is more than the maximum 512"));

  EXPECT_THAT(
      fake_->Rejected(),
      ElementsAre(Field(&FakeRejection::code, "SerializationException"),
                  Field(&FakeRejection::code, "SerializationException"),
                  Field(&FakeRejection::code, "ClientException"),
                  Field(&FakeRejection::code, "InvalidParameterException")));
  EXPECT_THAT(fake_->TaskDefinitions(), IsEmpty());
}

TEST_F(AwsFakeTest, FargateRules) {
  ExpectRefused({
      {"cpu 256 with 4096 MiB",
       absl::StrReplaceAll(FargateDefinition("f"),
                           {{R"("memory":"512")", R"("memory":"4096")"}}),
       "Invalid 'memory' setting for task"},
      {"cpu 300",
       absl::StrReplaceAll(FargateDefinition("f"),
                           {{R"("cpu":"256")", R"("cpu":"300")"}}),
       "Invalid 'cpu' setting for task."},
      {"no cpu",
       absl::StrReplaceAll(FargateDefinition("f"), {{R"("cpu":"256",)", ""}}),
       "Fargate requires that 'cpu' be defined at the task level."},
      {"bridge",
       absl::StrReplaceAll(
           FargateDefinition("f"),
           {{R"("networkMode":"awsvpc")", R"("networkMode":"bridge")"}}),
       "Fargate only supports network mode 'awsvpc'"},
      {"privileged", FargateDefinition("f", "", R"(,"privileged":true)"),
       "privileged mode is not supported on Fargate"},
      {"NET_ADMIN",
       FargateDefinition("f", "",
                         R"(,"linuxParameters":{"capabilities":{
                             "add":["NET_ADMIN"]}})"),
       "only SYS_PTRACE can be added"},
      {"host path", FargateDefinition("f", R"(,"volumes":[{"name":"h",
                                 "host":{"sourcePath":"/tmp"}}])"),
       "host.sourcePath is not supported on Fargate"},
      {"20 GiB",
       FargateDefinition("f", R"(,"ephemeralStorage":{"sizeInGiB":20})"),
       "between 21 and 200"},
      {"unknown volume",
       FargateDefinition("f", "",
                         R"(,"mountPoints":[{"sourceVolume":"nope",
                             "containerPath":"/w"}])"),
       "sourceVolume 'nope' is not a volume"},
      {"duplicate names",
       absl::StrReplaceAll(
           FargateDefinition("f"),
           {{R"("containerDefinitions":[)",
             R"("containerDefinitions":[{"name":"step","image":"x"},)"}}),
       "must be unique"},
      {"no essential", FargateDefinition("f", "", R"(,"essential":false)"),
       "at least one essential container"},
      {"secrets without execution role",
       absl::StrReplaceAll(
           FargateDefinition(
               "f", "", R"(,"secrets":[{"name":"T","valueFrom":"arn:x"}])"),
           {{R"("executionRoleArn":"arn:aws:iam::123456789012:role/ci-exec")",
             R"("taskRoleArn":"arn:aws:iam::123456789012:role/t")"}}),
       "you must also specify a value for 'executionRoleArn'"},
  });
  // What Fargate does accept.
  EXPECT_EQ(Ecs("RegisterTaskDefinition",
                FargateDefinition(
                    "ok",
                    R"(,"ephemeralStorage":{"sizeInGiB":21},
                       "volumes":[{"name":"workspace"}])",
                    R"(,"linuxParameters":{"capabilities":{"drop":["ALL"],
                         "add":["SYS_PTRACE"]}},
                       "mountPoints":[{"sourceVolume":"workspace",
                         "containerPath":"/w"}])"))
                .status,
            200);
  EXPECT_EQ(Ecs("RegisterTaskDefinition",
                absl::StrReplaceAll(FargateDefinition("ok2"),
                                    {{R"("cpu":"256","memory":"512")",
                                      R"("cpu":"1 vCPU","memory":"8GB")"}}))
                .status,
            200);
}

// Container dependencies and health checks: what ECS refuses at
// registration, so that no task waits for a dependency that cannot be met.
TEST_F(AwsFakeTest, DependsOnAndHealthCheckRules) {
  // "step" (essential, from FargateDefinition) and "side" (not essential),
  // each with `step_extra` / `side_extra` added.
  auto def = [](const std::string& step_extra, const std::string& side_extra) {
    return absl::StrReplaceAll(
        FargateDefinition("deps", "", step_extra),
        {{R"("containerDefinitions":[)",
          absl::StrCat(R"("containerDefinitions":[{"name":"side",
              "image":"busybox","essential":false)",
                       side_extra, "},")}});
  };
  // A dependsOn of one dependency.
  auto on = [](const std::string& container, const std::string& condition) {
    return absl::StrCat(R"(,"dependsOn":[{"containerName":")", container,
                        R"(","condition":")", condition, R"("}])");
  };
  const std::string check =
      R"(,"healthCheck":{"command":["CMD-SHELL","true"],"interval":5})";
  ExpectRefused({
      {"unknown container", def(on("nope", "START"), ""),
       "Container 'step' dependsOn container 'nope', which is not a "
       "container of the task definition."},
      {"cycle", def(on("side", "START"), on("step", "START")),
       "form a cycle: side -> step -> side."},
      {"itself", def(on("step", "START"), ""), "form a cycle: step -> step."},
      {"SUCCESS on an essential container", def("", on("step", "SUCCESS")),
       "COMPLETE and SUCCESS cannot be set on an essential container."},
      {"HEALTHY without a healthCheck", def(on("side", "HEALTHY"), ""),
       "with condition HEALTHY, but 'side' has no healthCheck."},
      {"interval 1",
       def("", R"(,"healthCheck":{"command":["CMD","true"],"interval":1})"),
       "Container 'side': healthCheck.interval must be between 5 and 300, "
       "not 1."},
      {"retries 11",
       def("", R"(,"healthCheck":{"command":["CMD","true"],"retries":11})"),
       "healthCheck.retries must be between 1 and 10"},
      {"command without CMD", def("", R"(,"healthCheck":{"command":["true"]})"),
       "healthCheck.command must start with CMD or CMD-SHELL."},
  });
  // Every condition where ECS allows it.
  EXPECT_EQ(
      Ecs("RegisterTaskDefinition",
          def(R"(,"dependsOn":[{"containerName":"side","condition":"START"},
                  {"containerName":"side","condition":"COMPLETE"},
                  {"containerName":"side","condition":"SUCCESS"},
                  {"containerName":"side","condition":"HEALTHY"}])",
              check))
          .status,
      200);
}

// ------------------------------------------------------ task definitions

TEST_F(AwsFakeTest, TaskDefinitionLifecycle) {
  Register(FargateDefinition("gc", R"(,"tags":[{"key":"team","value":"ci"}])"));
  Register(FargateDefinition("gc"));
  http::Response r = Ecs("DescribeTaskDefinition",
                         R"({"taskDefinition":"gc","include":["TAGS"]})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Json(r)["taskDefinition"]["revision"].GetInt(), 2);
  r = Ecs("DescribeTaskDefinition",
          R"({"taskDefinition":"gc:1","include":["TAGS"]})");
  EXPECT_STREQ(Json(r)["tags"][0]["key"].GetString(), "team");

  r = Ecs("DeleteTaskDefinitions", R"({"taskDefinitions":["gc:1"]})");
  ASSERT_EQ(r.status, 200);
  EXPECT_THAT(r.body, HasSubstr("still in ACTIVE status"));
  EXPECT_EQ(Json(r)["taskDefinitions"].Size(), 0u);

  r = Ecs("DeregisterTaskDefinition", R"({"taskDefinition":"gc:1"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_STREQ(Json(r)["taskDefinition"]["status"].GetString(), "INACTIVE");
  EXPECT_EQ(AwsErrorType(Ecs("RunTask", RunTaskBody("gc:1"))),
            "ClientException");
  r = Ecs("DeleteTaskDefinitions", R"({"taskDefinitions":["gc:1"]})");
  EXPECT_STREQ(Json(r)["taskDefinitions"][0]["status"].GetString(),
               "DELETE_IN_PROGRESS");
  EXPECT_EQ(Json(r)["failures"].Size(), 0u);

  // Revisions keep counting.
  EXPECT_EQ(Json(Ecs("RegisterTaskDefinition",
                     FargateDefinition("gc")))["taskDefinition"]["revision"]
                .GetInt(),
            3);
  EXPECT_EQ(AwsErrorType(
                Ecs("DescribeTaskDefinition", R"({"taskDefinition":"nope"})")),
            "ClientException");
}

TEST_F(AwsFakeTest, ListTaskDefinitionsFiltersAndPages) {
  for (int i = 0; i < 5; ++i) Register(FargateDefinition("list-a"));
  Register(FargateDefinition("other"));
  Ecs("DeregisterTaskDefinition", R"({"taskDefinition":"list-a:5"})");
  std::vector<std::string> arns;
  std::string token;
  int pages = 0;
  do {
    // The whole family: ListTaskDefinitions has no prefix match.
    http::Response r =
        Ecs("ListTaskDefinitions",
            WithToken(R"({"familyPrefix":"list-a","maxResults":2})", token));
    ASSERT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc = Json(r);
    for (const auto& a : doc["taskDefinitionArns"].GetArray()) {
      arns.push_back(a.GetString());
    }
    token = doc.HasMember("nextToken") ? doc["nextToken"].GetString() : "";
    ++pages;
  } while (!token.empty());
  EXPECT_EQ(pages, 2);
  EXPECT_THAT(arns, ElementsAre(HasSubstr("list-a:1"), HasSubstr("list-a:2"),
                                HasSubstr("list-a:3"), HasSubstr("list-a:4")));
  http::Response r = Ecs("ListTaskDefinitions", R"({"status":"INACTIVE"})");
  EXPECT_THAT(r.body, HasSubstr("list-a:5"));
  r = Ecs("ListTaskDefinitions", R"({"familyPrefix":"list-"})");
  EXPECT_EQ(Json(r)["taskDefinitionArns"].Size(), 0u);
  r = Ecs("ListTaskDefinitions", R"({"nextToken":"forged"})");
  EXPECT_EQ(AwsErrorType(r), "InvalidParameterException");
}

// ------------------------------------------------------------------ tasks

TEST_F(AwsFakeTest, TaskRunsToStoppedWithItsExitCode) {
  FakeAwsOptions options;
  options.behaviour = [](const FakeContainer& c) {
    ContainerBehaviour b;
    b.exit_code = 3;
    b.output = {"line one", "line two " + c.name};
    b.run_for = absl::Milliseconds(300);
    return b;
  };
  Start(options);
  Register(FargateDefinition("life"));
  http::Response r =
      Ecs("RunTask", RunTaskBody("life", R"(,"startedBy":"run-1/step")"));
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = Json(r);
  EXPECT_EQ(doc["failures"].Size(), 0u);
  const rapidjson::Value& task = doc["tasks"][0];
  EXPECT_STREQ(task["lastStatus"].GetString(), "PROVISIONING");
  EXPECT_STREQ(task["desiredStatus"].GetString(), "RUNNING");
  EXPECT_STREQ(task["launchType"].GetString(), "FARGATE");
  EXPECT_TRUE(task["createdAt"].IsNumber());
  const std::string arn = task["taskArn"].GetString();
  EXPECT_THAT(arn, StartsWith("arn:aws:ecs:us-east-1:123456789012:task/ci/"));

  WaitFor(arn, "RUNNING");
  rapidjson::Document stopped;
  stopped.Parse(WaitFor(arn, "STOPPED").c_str());
  const rapidjson::Value& t = stopped["tasks"][0];
  EXPECT_STREQ(t["stopCode"].GetString(), "EssentialContainerExited");
  EXPECT_STREQ(t["stoppedReason"].GetString(),
               "Essential container in task exited");
  EXPECT_EQ(t["containers"][0]["exitCode"].GetInt(), 3);
  EXPECT_STREQ(t["containers"][0]["lastStatus"].GetString(), "STOPPED");
  EXPECT_STREQ(t["startedBy"].GetString(), "run-1/step");
  EXPECT_LE(t["startedAt"].GetDouble(), t["stoppedAt"].GetDouble());
  const rapidjson::Value& eni = t["attachments"][0];
  EXPECT_STREQ(eni["type"].GetString(), "ElasticNetworkInterface");
  std::map<std::string, std::string> details;
  for (const auto& d : eni["details"].GetArray()) {
    details[d["name"].GetString()] = d["value"].GetString();
  }
  EXPECT_EQ(details["subnetId"], "subnet-0abc");
  EXPECT_THAT(details["networkInterfaceId"], StartsWith("eni-"));
  EXPECT_THAT(details["privateIPv4Address"], StartsWith("10.0."));

  const std::string id = arn.substr(arn.rfind('/') + 1);
  EXPECT_THAT(fake_->LogEvents("/ci/steps", "ci/step/" + id),
              ElementsAre(Field(&FakeLogEvent::message, "line one"),
                          Field(&FakeLogEvent::message, "line two step")));
  std::vector<FakeTask> tasks = fake_->Tasks();
  ASSERT_THAT(tasks, SizeIs(1));
  EXPECT_EQ(tasks[0].exit_codes["step"], 3);
  EXPECT_EQ(tasks[0].last_status, "STOPPED");
  EXPECT_THAT(fake_->Rejected(), IsEmpty());
}

TEST_F(AwsFakeTest, FailedStartHasNoExitCode) {
  FakeAwsOptions options;
  options.behaviour = [](const FakeContainer&) {
    ContainerBehaviour b;
    b.fail_to_start = "CannotPullContainerError: no such image";
    return b;
  };
  Start(options);
  Register(FargateDefinition("fail"));
  rapidjson::Document doc;
  doc.Parse(WaitFor(RunOne(RunTaskBody("fail")), "STOPPED").c_str());
  const rapidjson::Value& t = doc["tasks"][0];
  EXPECT_STREQ(t["stopCode"].GetString(), "TaskFailedToStart");
  EXPECT_FALSE(t["containers"][0].HasMember("exitCode"));
  EXPECT_STREQ(t["containers"][0]["reason"].GetString(),
               "CannotPullContainerError: no such image");
}

TEST_F(AwsFakeTest, MissingLogGroupFailsTheTaskLikeEcs) {
  Register(absl::StrReplaceAll(FargateDefinition("nolog"),
                               {{R"(,"awslogs-create-group":"true")", ""}}));
  rapidjson::Document doc;
  doc.Parse(WaitFor(RunOne(RunTaskBody("nolog")), "STOPPED").c_str());
  EXPECT_STREQ(doc["tasks"][0]["stopCode"].GetString(), "TaskFailedToStart");
  EXPECT_THAT(doc["tasks"][0]["stoppedReason"].GetString(),
              StartsWith("ResourceInitializationError"));
  // With the group made first, it runs.
  ASSERT_EQ(Logs("CreateLogGroup", R"({"logGroupName":"/ci/steps"})").status,
            200);
  doc.Parse(WaitFor(RunOne(RunTaskBody("nolog")), "STOPPED").c_str());
  EXPECT_EQ(doc["tasks"][0]["containers"][0]["exitCode"].GetInt(), 0);
}

TEST_F(AwsFakeTest, StopTask) {
  FakeAwsOptions options;
  options.behaviour = [](const FakeContainer& c) {
    ContainerBehaviour b;
    b.run_for = absl::Hours(1);
    b.stuck_in_pending = c.image == "stuck";
    return b;
  };
  Start(options);
  Register(FargateDefinition("long"));
  const std::string running = RunOne(RunTaskBody("long"));
  WaitFor(running, "RUNNING");
  http::Response r =
      Ecs("StopTask", absl::StrCat(R"({"cluster":"ci","task":")", running,
                                   R"(","reason":"cancelled"})"));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_STREQ(Json(r)["task"]["desiredStatus"].GetString(), "STOPPED");
  rapidjson::Document doc;
  doc.Parse(WaitFor(running, "STOPPED").c_str());
  EXPECT_STREQ(doc["tasks"][0]["stopCode"].GetString(), "UserInitiated");
  EXPECT_STREQ(doc["tasks"][0]["stoppedReason"].GetString(), "cancelled");
  EXPECT_EQ(doc["tasks"][0]["containers"][0]["exitCode"].GetInt(), 137);

  Register(
      absl::StrReplaceAll(FargateDefinition("stuck"),
                          {{R"("image":"busybox")", R"("image":"stuck")"}}));
  const std::string stuck = RunOne(RunTaskBody("stuck"));
  WaitFor(stuck, "PENDING");
  absl::SleepFor(absl::Milliseconds(50));
  WaitFor(stuck, "PENDING");
  Ecs("StopTask", absl::StrCat(R"({"cluster":"ci","task":")", stuck, "\"}"));
  doc.Parse(WaitFor(stuck, "STOPPED").c_str());
  EXPECT_STREQ(doc["tasks"][0]["stopCode"].GetString(), "UserInitiated");
  EXPECT_FALSE(doc["tasks"][0]["containers"][0].HasMember("exitCode"));

  r = Ecs("StopTask", R"({"cluster":"ci","task":"0123"})");
  EXPECT_EQ(AwsErrorType(r), "InvalidParameterException");
}

TEST_F(AwsFakeTest, RunTaskIdempotencyAndConflict) {
  Register(FargateDefinition("idem"));
  const std::string body = RunTaskBody("idem", R"(,"clientToken":"run-1-a")");
  const std::string first = RunOne(body);
  EXPECT_EQ(RunOne(body), first);
  EXPECT_THAT(fake_->Tasks(), SizeIs(1));
  http::Response r =
      Ecs("RunTask", RunTaskBody("idem", R"(,"clientToken":"run-1-a",
                                                        "startedBy":"x")"));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(AwsErrorType(r), "ConflictException");
  EXPECT_STREQ(Json(r)["resourceIds"][0].GetString(), first.c_str());
  // The same token in another cluster is another request.
  const std::string other = RunOne(absl::StrReplaceAll(
      body, {{R"("cluster":"ci")", R"("cluster":"other")"}}));
  EXPECT_NE(other, first);
}

TEST_F(AwsFakeTest, RunTaskRules) {
  Register(FargateDefinition("rules"));
  struct Case {
    std::string name;
    std::string body;
    std::string code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"no network",
       R"({"cluster":"ci","taskDefinition":"rules","launchType":"FARGATE"})",
       "InvalidParameterException", "Network Configuration must be provided"},
      {"count 11", RunTaskBody("rules", R"(,"count":11)"),
       "InvalidParameterException", "count must be between 1 and 10"},
      {"unknown container",
       RunTaskBody("rules", R"(,"overrides":{"containerOverrides":[
           {"name":"nope","command":["x"]}]})"),
       "InvalidParameterException",
       "Override for container named nope is not a container"},
      {"overrides too long",
       RunTaskBody("rules", absl::StrCat(R"(,"overrides":{"containerOverrides":[
           {"name":"step","command":[")",
                                         std::string(9000, 'x'), R"("]}]})")),
       "InvalidParameterException", "at most 8192"},
      {"unknown family", RunTaskBody("nope"), "ClientException",
       "TaskDefinition not found"},
      {"both launch type and strategy",
       RunTaskBody("rules", R"(,"capacityProviderStrategy":[
           {"capacityProvider":"FARGATE_SPOT"}])"),
       "InvalidParameterException", "Remove one and try again"},
  };
  for (const Case& c : cases) {
    http::Response r = Ecs("RunTask", c.body);
    EXPECT_EQ(r.status, 400) << c.name << ": " << r.body;
    EXPECT_EQ(AwsErrorType(r), c.code) << c.name << ": " << r.body;
    EXPECT_THAT(r.body, HasSubstr(c.message)) << c.name;
  }
  EXPECT_THAT(fake_->Rejected(), SizeIs(cases.size()));
  EXPECT_THAT(fake_->Tasks(), IsEmpty());
}

TEST_F(AwsFakeTest, OverridesAndSecretsReachTheContainer) {
  Register(FargateDefinition(
      "env", "",
      R"(,"environment":[{"name":"A","value":"1"},{"name":"B","value":"2"}],
         "secrets":[{"name":"TOKEN","valueFrom":"arn:aws:secretsmanager:us-east-1:123456789012:secret:t"}],
         "user":"1000:1000","workingDirectory":"/w")"));
  RunOne(RunTaskBody("env", R"(,"overrides":{"containerOverrides":[
      {"name":"step","command":["echo over"],
       "environment":[{"name":"B","value":"3"}]}]})"));
  std::vector<FakeTask> tasks = fake_->Tasks();
  ASSERT_THAT(tasks, SizeIs(1));
  const FakeContainer& c = tasks[0].containers[0];
  EXPECT_THAT(c.command, ElementsAre("echo over"));
  EXPECT_THAT(c.entry_point, ElementsAre("/bin/sh", "-c"));
  EXPECT_EQ(c.environment.at("A"), "1");
  EXPECT_EQ(c.environment.at("B"), "3");
  EXPECT_EQ(c.secrets.at("TOKEN"),
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:t");
  EXPECT_FALSE(c.environment.contains("TOKEN"));
  EXPECT_EQ(c.user, "1000:1000");
  EXPECT_EQ(c.working_directory, "/w");
}

TEST_F(AwsFakeTest, DescribeAndListTasks) {
  FakeAwsOptions options;
  options.behaviour = [](const FakeContainer&) {
    ContainerBehaviour b;
    b.run_for = absl::Hours(1);
    return b;
  };
  Start(options);
  Register(FargateDefinition("list"));
  const std::string a = RunOne(RunTaskBody(
      "list", R"(,"startedBy":"run-7","tags":[{"key":"k","value":"v"}])"));
  const std::string b = RunOne(RunTaskBody("list"));
  http::Response r =
      Ecs("DescribeTasks",
          absl::StrCat(R"({"cluster":"ci","include":["TAGS"],"tasks":[")", a,
                       R"(","0000000000000000000000000000dead"]})"));
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = Json(r);
  EXPECT_STREQ(doc["tasks"][0]["tags"][0]["value"].GetString(), "v");
  EXPECT_STREQ(doc["failures"][0]["reason"].GetString(), "MISSING");
  EXPECT_THAT(doc["failures"][0]["arn"].GetString(),
              HasSubstr("task/ci/0000000000000000000000000000dead"));
  // By id, and without TAGS no tags.
  const std::string id = a.substr(a.rfind('/') + 1);
  doc = Json(Ecs("DescribeTasks",
                 absl::StrCat(R"({"cluster":"ci","tasks":[")", id, R"("]})")));
  EXPECT_STREQ(doc["tasks"][0]["taskArn"].GetString(), a.c_str());
  EXPECT_FALSE(doc["tasks"][0].HasMember("tags"));
  // Another cluster does not have it.
  doc = Json(Ecs("DescribeTasks", absl::StrCat(R"({"tasks":[")", a, R"("]})")));
  EXPECT_EQ(doc["tasks"].Size(), 0u);

  doc = Json(Ecs("ListTasks", R"({"cluster":"ci","startedBy":"run-7"})"));
  ASSERT_EQ(doc["taskArns"].Size(), 1u);
  EXPECT_STREQ(doc["taskArns"][0].GetString(), a.c_str());
  doc = Json(Ecs("ListTasks", R"({"cluster":"ci","maxResults":1})"));
  ASSERT_EQ(doc["taskArns"].Size(), 1u);
  ASSERT_TRUE(doc.HasMember("nextToken"));
  doc = Json(Ecs("ListTasks",
                 absl::StrCat(R"({"cluster":"ci","maxResults":1,"nextToken":")",
                              doc["nextToken"].GetString(), "\"}")));
  EXPECT_STREQ(doc["taskArns"][0].GetString(), b.c_str());
  EXPECT_FALSE(doc.HasMember("nextToken"));
  EXPECT_EQ(
      AwsErrorType(
          Ecs("ListTasks", R"({"cluster":"ci","startedBy":"x","family":"y"})")),
      "InvalidParameterException");
  r = Ecs("DescribeTasks", R"({"cluster":"ci","tasks":[]})");
  EXPECT_EQ(AwsErrorType(r), "InvalidParameterException");

  // Stopped tasks are listed only for desiredStatus STOPPED.
  Ecs("StopTask", absl::StrCat(R"({"cluster":"ci","task":")", a, "\"}"));
  WaitFor(a, "STOPPED");
  doc = Json(Ecs("ListTasks", R"({"cluster":"ci","desiredStatus":"STOPPED"})"));
  ASSERT_EQ(doc["taskArns"].Size(), 1u);
  EXPECT_STREQ(doc["taskArns"][0].GetString(), a.c_str());
  doc = Json(Ecs("ListTasks", R"({"cluster":"ci"})"));
  ASSERT_EQ(doc["taskArns"].Size(), 1u);
  EXPECT_STREQ(doc["taskArns"][0].GetString(), b.c_str());
}

TEST_F(AwsFakeTest, TagResource) {
  const std::string arn = Register(FargateDefinition("tags"));
  ASSERT_EQ(
      Ecs("TagResource", absl::StrCat(R"({"resourceArn":")", arn,
                                      R"(","tags":[{"key":"a","value":"1"}]})"))
          .status,
      200);
  rapidjson::Document doc = Json(Ecs(
      "ListTagsForResource", absl::StrCat(R"({"resourceArn":")", arn, "\"}")));
  EXPECT_STREQ(doc["tags"][0]["key"].GetString(), "a");
}

TEST_F(AwsFakeTest, InjectedErrorsAreAnsweredThenCleared) {
  fake_->InjectError("ListTasks", 400, "ThrottlingException", 2);
  http::Response r = Ecs("ListTasks", "{}");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(AwsErrorType(r), "ThrottlingException");
  EXPECT_THAT(r.body, HasSubstr("Rate exceeded"));
  EXPECT_EQ(Ecs("ListTasks", "{}").status, 400);
  EXPECT_EQ(Ecs("ListTasks", "{}").status, 200);
  fake_->InjectError("*", 500, "ServerException");
  EXPECT_EQ(Logs("DescribeLogGroups", "{}").status, 500);
  EXPECT_EQ(fake_->CallCount("ListTasks"), 3);
  EXPECT_THAT(fake_->Rejected(), IsEmpty());
}

TEST_F(AwsFakeTest, LifecycleOnAFakeClock) {
  FakeClock& clock = fake_clock_;
  FakeAwsOptions options = OnFakeClock(absl::Seconds(10), absl::Seconds(20));
  options.behaviour = [](const FakeContainer&) {
    ContainerBehaviour b;
    b.run_for = absl::Minutes(5);
    b.exit_code = 1;
    return b;
  };
  Start(options);
  Register(FargateDefinition("clock"));
  const std::string arn = RunOne(RunTaskBody("clock"));
  auto status = [&] { return LastStatus(arn); };
  EXPECT_EQ(status(), "PROVISIONING");
  clock.Advance(absl::Seconds(10));
  EXPECT_EQ(status(), "PENDING");
  clock.Advance(absl::Seconds(20));
  EXPECT_EQ(status(), "RUNNING");
  clock.Advance(absl::Minutes(5));
  EXPECT_EQ(status(), "DEPROVISIONING");
  EXPECT_EQ(fake_->Tasks()[0].exit_codes["step"], 1);
  clock.Advance(absl::Seconds(10));
  EXPECT_EQ(status(), "STOPPED");
  // Signatures are checked against the fake's clock too.
  absl::StatusOr<http::Response> r =
      SignedAwsCall(http_, fake_->url(), Key(), kRegion,
                    std::string(kEcsPrefix) + "ListTasks", "{}", absl::Now());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200);
  clock.Advance(absl::Hours(1));
  r = SignedAwsCall(http_, fake_->url(), Key(), kRegion,
                    std::string(kEcsPrefix) + "ListTasks", "{}", absl::Now());
  EXPECT_THAT(r->body, HasSubstr("Signature expired"));
}

TEST_F(AwsFakeTest, ProvisioningCanBeSlowedWhileTheFakeRuns) {
  FakeClock& clock = fake_clock_;
  Start(OnFakeClock(absl::Seconds(1), absl::Seconds(1)));
  Register(FargateDefinition("slow"));
  const std::string arn = RunOne(RunTaskBody("slow"));
  auto status = [&] { return LastStatus(arn); };
  // Fargate's slow start: the task already PROVISIONING waits too.
  fake_->SetProvisioningFor(absl::Seconds(45));
  clock.Advance(absl::Seconds(30));
  EXPECT_EQ(status(), "PROVISIONING");
  clock.Advance(absl::Seconds(15));
  EXPECT_EQ(status(), "PENDING");
  fake_->SetProvisioningFor(absl::Seconds(1));
  const std::string fast = RunOne(RunTaskBody("slow"));
  clock.Advance(absl::Seconds(1));
  EXPECT_EQ(LastStatus(fast), "PENDING");
}

TEST_F(AwsFakeTest, ConcurrentRunTasks) {
  Register(FargateDefinition("many"));
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      http::HttpClient http;
      for (int j = 0; j < 5; ++j) {
        absl::StatusOr<http::Response> r = SignedAwsCall(
            http, fake_->url(), Key(), kRegion,
            std::string(kEcsPrefix) + "RunTask",
            RunTaskBody("many", absl::StrCat(R"(,"clientToken":"t-)", i, "-", j,
                                             "\"")));
        if (r.ok() && r->status == 200) ++ok;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(ok.load(), 40);
  EXPECT_THAT(fake_->Tasks(), SizeIs(40));
}

// -------------------------------------------------------- CloudWatch Logs

TEST_F(AwsFakeTest, LogGroupsAndStreams) {
  EXPECT_EQ(Logs("CreateLogGroup", R"({"logGroupName":"/ci"})").status, 200);
  http::Response r = Logs("CreateLogGroup", R"({"logGroupName":"/ci"})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(AwsErrorType(r), "ResourceAlreadyExistsException");
  r = Logs("CreateLogStream",
           R"({"logGroupName":"/nope","logStreamName":"s"})");
  EXPECT_EQ(AwsErrorType(r), "ResourceNotFoundException");
  EXPECT_EQ(Logs("CreateLogStream",
                 R"({"logGroupName":"/ci","logStreamName":"step/a"})")
                .status,
            200);
  Logs("CreateLogStream", R"({"logGroupName":"/ci","logStreamName":"step/b"})");
  Logs("CreateLogStream", R"({"logGroupName":"/ci","logStreamName":"other"})");
  r = Logs("CreateLogStream",
           R"({"logGroupName":"/ci","logStreamName":"step/a"})");
  EXPECT_EQ(AwsErrorType(r), "ResourceAlreadyExistsException");
  rapidjson::Document doc =
      Json(Logs("DescribeLogStreams",
                R"({"logGroupName":"/ci","logStreamNamePrefix":"step/"})"));
  ASSERT_EQ(doc["logStreams"].Size(), 2u);
  EXPECT_STREQ(doc["logStreams"][0]["logStreamName"].GetString(), "step/a");
  doc = Json(Logs(
      "DescribeLogStreams",
      R"({"logGroupIdentifier":"arn:aws:logs:us-east-1:123456789012:log-group:/ci"})"));
  EXPECT_EQ(doc["logStreams"].Size(), 3u);
  EXPECT_EQ(Logs("PutRetentionPolicy",
                 R"({"logGroupName":"/ci","retentionInDays":7})")
                .status,
            200);
  EXPECT_EQ(AwsErrorType(Logs("PutRetentionPolicy",
                              R"({"logGroupName":"/ci","retentionInDays":8})")),
            "InvalidParameterException");
  EXPECT_THAT(fake_->LogStreams("/ci"),
              ElementsAre("other", "step/a", "step/b"));
  // State refusals are not the client's mistakes.
  EXPECT_THAT(
      fake_->Rejected(),
      ElementsAre(Field(&FakeRejection::code, "InvalidParameterException")));
}

class AwsFakeLogsTest : public AwsFakeTest {
 protected:
  void SetUp() override {
    AwsFakeTest::SetUp();
    ASSERT_EQ(Logs("CreateLogGroup", R"({"logGroupName":"/g"})").status, 200);
    ASSERT_EQ(
        Logs("CreateLogStream", R"({"logGroupName":"/g","logStreamName":"s"})")
            .status,
        200);
  }

  static std::string Events(
      const std::vector<std::pair<int64_t, std::string>>& events) {
    std::vector<std::string> out;
    for (const auto& [ts, msg] : events) {
      out.push_back(
          absl::StrCat(R"({"timestamp":)", ts, R"(,"message":")", msg, "\"}"));
    }
    return absl::StrCat(R"({"logGroupName":"/g","logStreamName":"s",
                            "logEvents":[)",
                        absl::StrJoin(out, ","), "]}");
  }

  int64_t NowMs() { return absl::ToUnixMillis(absl::Now()); }
};

TEST_F(AwsFakeLogsTest, PutLogEventsOrderSizeAndSpan) {
  const int64_t now = NowMs();
  http::Response r = Logs("PutLogEvents", Events({{now, "b"}, {now - 1, "a"}}));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(AwsErrorType(r), "InvalidParameterException");
  EXPECT_THAT(r.body, HasSubstr("Log events in a single PutLogEvents request "
                                "must be in chronological order."));

  // 1,048,576 bytes counts each message plus 26.
  const std::string big(1048576 - 26 - 26 - 1, 'x');
  EXPECT_EQ(Logs("PutLogEvents", Events({{now, big}, {now, "y"}})).status, 200);
  r = Logs("PutLogEvents", Events({{now, big}, {now, "yz"}}));
  EXPECT_EQ(AwsErrorType(r), "InvalidParameterException");
  EXPECT_THAT(r.body, HasSubstr("Upload too large"));

  r = Logs("PutLogEvents",
           Events({{now - 25 * 3600 * 1000LL, "old"}, {now, "new"}}));
  EXPECT_EQ(AwsErrorType(r), "InvalidParameterException");
  EXPECT_THAT(r.body, HasSubstr("cannot span more than 24 hours"));

  r = Logs("PutLogEvents", Events({}));
  EXPECT_EQ(AwsErrorType(r), "InvalidParameterException");  // the model's min 1

  r = Logs("PutLogEvents", R"({"logGroupName":"/g","logStreamName":"nope",
                               "logEvents":[{"timestamp":1,"message":"m"}]})");
  EXPECT_EQ(AwsErrorType(r), "ResourceNotFoundException");
}

TEST_F(AwsFakeLogsTest, TooOldAndTooNewEventsAreRejectedOneByOne) {
  const int64_t now = NowMs();
  http::Response r =
      Logs("PutLogEvents", Events({{now - 15 * 24 * 3600 * 1000LL, "old"},
                                   {now, "ok"},
                                   {now + 3 * 3600 * 1000LL, "future"},
                                   {now + 4 * 3600 * 1000LL, "future2"}}));
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = Json(r);
  EXPECT_TRUE(doc["nextSequenceToken"].IsString());
  EXPECT_EQ(doc["rejectedLogEventsInfo"]["tooOldLogEventEndIndex"].GetInt(), 1);
  EXPECT_EQ(doc["rejectedLogEventsInfo"]["tooNewLogEventStartIndex"].GetInt(),
            2);
  EXPECT_THAT(fake_->LogEvents("/g", "s"),
              ElementsAre(Field(&FakeLogEvent::message, "ok")));
  // Any sequence token is accepted.
  EXPECT_EQ(
      Logs("PutLogEvents",
           absl::StrReplaceAll(
               Events({{now, "again"}}),
               {{R"("logEvents")", R"("sequenceToken":"bogus","logEvents")"}}))
          .status,
      200);
}

TEST_F(AwsFakeLogsTest, GetLogEventsPagesForwardAndBackward) {
  const int64_t now = NowMs();
  std::vector<std::pair<int64_t, std::string>> events;
  for (int i = 0; i < 25; ++i)
    events.push_back({now + i, absl::StrCat("e", i)});
  ASSERT_EQ(Logs("PutLogEvents", Events(events)).status, 200);

  std::vector<std::string> seen;
  std::string token;
  std::vector<size_t> sizes;
  for (int call = 0; call < 10; ++call) {
    http::Response r = Logs("GetLogEvents", WithToken(R"({"logGroupName":"/g",
             "logStreamName":"s","startFromHead":true,"limit":10})",
                                                      token));
    ASSERT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc = Json(r);
    sizes.push_back(doc["events"].Size());
    for (const auto& e : doc["events"].GetArray()) {
      seen.push_back(e["message"].GetString());
      EXPECT_TRUE(e["ingestionTime"].IsInt64());
    }
    const std::string next = doc["nextForwardToken"].GetString();
    EXPECT_THAT(next, StartsWith("f/"));
    if (next == token) break;  // the end: the same token back
    token = next;
  }
  EXPECT_THAT(sizes, ElementsAre(10, 10, 5, 0));
  ASSERT_THAT(seen, SizeIs(25));
  EXPECT_EQ(seen.front(), "e0");
  EXPECT_EQ(seen.back(), "e24");

  // Without startFromHead: the newest first page, then backwards.
  rapidjson::Document doc =
      Json(Logs("GetLogEvents",
                R"({"logGroupName":"/g","logStreamName":"s","limit":10})"));
  EXPECT_STREQ(doc["events"][0]["message"].GetString(), "e15");
  const std::string back = doc["nextBackwardToken"].GetString();
  EXPECT_THAT(back, StartsWith("b/"));
  doc = Json(Logs("GetLogEvents",
                  absl::StrCat(R"({"logGroupName":"/g","logStreamName":"s",
                                   "limit":10,"nextToken":")",
                               back, "\"}")));
  EXPECT_STREQ(doc["events"][0]["message"].GetString(), "e5");
  // A reader that follows the forward token sees what comes later.
  const std::string forward = Json(Logs(
      "GetLogEvents",
      R"({"logGroupName":"/g","logStreamName":"s"})"))["nextForwardToken"]
                                  .GetString();
  ASSERT_EQ(Logs("PutLogEvents", Events({{now + 100, "late"}})).status, 200);
  doc = Json(Logs("GetLogEvents",
                  absl::StrCat(R"({"logGroupName":"/g","logStreamName":"s",
                                   "nextToken":")",
                               forward, "\"}")));
  ASSERT_EQ(doc["events"].Size(), 1u);
  EXPECT_STREQ(doc["events"][0]["message"].GetString(), "late");
  EXPECT_EQ(AwsErrorType(Logs("GetLogEvents",
                              R"({"logGroupName":"/g","logStreamName":"s",
                                  "nextToken":"f/zzz"})")),
            "InvalidParameterException");
}

// ------------------------------------------- credentials and task metadata

TEST_F(AwsFakeTest, ContainerCredentialsEndpoint) {
  FakeClock& clock = fake_clock_;
  FakeAwsOptions options;
  options.clock = &clock;
  Start(options);
  const std::string url =
      fake_->ServeContainerCredentials("Bearer s3cr3t", absl::Hours(1));
  EXPECT_THAT(url, StartsWith(fake_->url() + "/v2/credentials/"));
  http::Request get;
  get.url = url;
  absl::StatusOr<http::Response> r = http_.Perform(get);
  EXPECT_EQ(r->status, 401);
  get.headers = {{"Authorization", "Bearer wrong"}};
  EXPECT_EQ(http_.Perform(get)->status, 403);
  get.headers = {{"Authorization", "Bearer s3cr3t"}};
  r = http_.Perform(get);
  ASSERT_EQ(r->status, 200) << r->body;
  rapidjson::Document doc = Json(*r);
  FakeAwsCredential fetched{doc["AccessKeyId"].GetString(),
                            doc["SecretAccessKey"].GetString(),
                            doc["Token"].GetString(), absl::InfiniteFuture()};
  EXPECT_STREQ(
      doc["Expiration"].GetString(),
      absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", clock.Now() + absl::Hours(1),
                       absl::UTCTimeZone())
          .c_str());
  EXPECT_EQ(fake_->container_credential_fetches(), 1);
  EXPECT_EQ(Call(std::string(kEcsPrefix) + "ListTasks", "{}", fetched).status,
            200);
  clock.Advance(absl::Hours(1));
  http::Response expired =
      Call(std::string(kEcsPrefix) + "ListTasks", "{}", fetched);
  EXPECT_EQ(expired.status, 403);
  EXPECT_EQ(AwsErrorType(expired), "ExpiredTokenException");
}

TEST_F(AwsFakeTest, TaskMetadataAndTheOwnTask) {
  const std::string uri =
      fake_->ServeOwnTask("ci", "FARGATE", "subnet-0123", "sg-0123");
  http::Request get;
  get.url = uri + "/task";
  absl::StatusOr<http::Response> r = http_.Perform(get);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->status, 200);
  rapidjson::Document doc = Json(*r);
  EXPECT_STREQ(doc["Cluster"].GetString(),
               "arn:aws:ecs:us-east-1:123456789012:cluster/ci");
  const std::string arn = doc["TaskARN"].GetString();
  EXPECT_THAT(arn, StartsWith("arn:aws:ecs:us-east-1:123456789012:task/ci/"));
  EXPECT_STREQ(doc["LaunchType"].GetString(), "FARGATE");
  EXPECT_STREQ(doc["Revision"].GetString(), "1");
  EXPECT_TRUE(doc["Containers"].IsArray());
  get.url = uri;
  EXPECT_THAT(http_.Perform(get)->body, HasSubstr("\"DockerId\""));

  doc = Json(Ecs("DescribeTasks",
                 absl::StrCat(R"({"cluster":"ci","tasks":[")", arn, R"("]})")));
  ASSERT_EQ(doc["tasks"].Size(), 1u);
  EXPECT_STREQ(doc["tasks"][0]["lastStatus"].GetString(), "RUNNING");
  EXPECT_THAT(Json(Ecs("DescribeTasks",
                       absl::StrCat(R"({"cluster":"ci","tasks":[")", arn,
                                    R"("]})")))["tasks"][0]["attachments"][0]
                                               ["details"][0]["value"]
                                                   .GetString(),
              ::testing::StrEq("subnet-0123"));
  EXPECT_THAT(fake_->Tasks(), IsEmpty());
}

}  // namespace
}  // namespace delegate::testing

// The CPU cost of the AWS clients' own work: SigV4 signing of one request,
// and batching log events for PutLogEvents.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "aws/logs_client.h"
#include "aws/sigv4.h"

namespace delegate::aws {
namespace {

// A RunTask body of the size the ECS executor sends for one step (about
// 1.6 KB): network configuration, a script in the command override, a dozen
// environment variables, tags and a client token.
std::string RunTaskBody() {
  std::string env;
  for (int i = 0; i < 12; ++i) {
    absl::StrAppend(&env, i ? "," : "", R"({"name":"CI_VARIABLE_)", i,
                    R"(","value":"value-of-the-variable-number-)", i, "\"}");
  }
  return absl::StrCat(
      R"({"cluster":"arn:aws:ecs:us-east-1:123456789012:cluster/ci",)"
      R"("taskDefinition":"delegate-step-3f9a1c2b7d4e:3","launchType":"FARGATE",)"
      R"("platformVersion":"1.4.0","count":1,)"
      R"("networkConfiguration":{"awsvpcConfiguration":{"subnets":)"
      R"(["subnet-0a1b2c3d4e5f67890","subnet-0f9e8d7c6b5a43210"],)"
      R"("securityGroups":["sg-0123456789abcdef0"],"assignPublicIp":"DISABLED"}},)"
      R"("overrides":{"containerOverrides":[{"name":"step","command":["sh","-c",)"
      R"("set -e\ncd /harness\n./gradlew --no-daemon build test\n)"
      R"(./scripts/publish.sh --channel nightly --verbose\n"],)"
      R"("environment":[)",
      env,
      R"(],"cpu":1024,"memory":2048}],)"
      R"("cpu":"1024","memory":"2048","taskRoleArn":)"
      R"("arn:aws:iam::123456789012:role/delegate-step"},)"
      R"("startedBy":"harness-delegate","clientToken":)"
      R"("7c9e6679-7425-40de-944b-e07fc1f90ae7-1",)"
      R"("tags":[{"key":"harness.io/stage","value":"build-and-test"},)"
      R"({"key":"harness.io/step","value":"gradle"}],)"
      R"("enableExecuteCommand":false,"propagateTags":"TASK_DEFINITION"})");
}

void BM_SigV4Sign(benchmark::State& state) {
  Credentials credentials;
  credentials.access_key_id = "ASIAIOSFODNN7EXAMPLE";
  credentials.secret_access_key =
      SecretString("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
  credentials.session_token = SecretString(std::string(600, 'T'));
  SigningOptions options;
  options.region = "us-east-1";
  options.service = "ecs";
  options.time = absl::FromUnixSeconds(1'800'000'000);
  SignableRequest request;
  request.headers = {
      {"Content-Type", "application/x-amz-json-1.1"},
      {"Host", "ecs.us-east-1.amazonaws.com"},
      {"X-Amz-Target", "AmazonEC2ContainerServiceV20141113.RunTask"},
  };
  request.body = RunTaskBody();
  for (auto _ : state) {
    SignableRequest signable = request;  // Sign adds its headers
    Sign(credentials, options, signable);
    benchmark::DoNotOptimize(signable.headers.back().second.data());
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["body_bytes"] = static_cast<double>(request.body.size());
}
BENCHMARK(BM_SigV4Sign);

// Step output as the ECS executor forwards it: `count` events of about 80
// bytes (a quarter of them with multibyte characters when `multibyte`), a
// few out of order, over a few minutes; with `long_lines`, one line in
// 10,000 over 256 KiB, which BatchLogEvents splits.
std::vector<LogEvent> StepOutput(int64_t count, bool multibyte,
                                 bool long_lines) {
  std::mt19937 rng(1);
  std::vector<LogEvent> events;
  events.reserve(static_cast<size_t>(count));
  int64_t t = 1'800'000'000'000;
  for (int64_t i = 0; i < count; ++i) {
    t += rng() % 20;
    std::string message = absl::StrCat(
        "[INFO] ", i, " Compiling module ", rng() % 1000,
        " of the project: src/main/java/io/harness/delegate/Task.java");
    if (multibyte && i % 4 == 0) message += " \xE2\x9C\x93 \xC3\xA9t\xC3\xA9";
    if (long_lines && i % 10000 == 9999) {
      message = std::string(300 * 1024, 'x');
    }
    events.push_back({rng() % 50 == 0 ? t - 5000 : t, std::move(message)});
  }
  return events;
}

void BM_BatchLogEvents(benchmark::State& state) {
  const std::vector<LogEvent> events =
      StepOutput(state.range(0), state.range(1) != 0, state.range(2) != 0);
  int64_t batches = 0;
  for (auto _ : state) {
    state.PauseTiming();
    std::vector<LogEvent> copy = events;  // BatchLogEvents takes its input
    state.ResumeTiming();
    batches += static_cast<int64_t>(BatchLogEvents(std::move(copy)).size());
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.counters["batches"] = benchmark::Counter(
      static_cast<double>(batches), benchmark::Counter::kAvgIterations);
}
BENCHMARK(BM_BatchLogEvents)
    ->ArgNames({"events", "multibyte", "long_lines"})
    ->Args({10'000, 0, 0})
    ->Args({10'000, 1, 0})
    ->Args({10'000, 0, 1})
    ->Args({100'000, 0, 0})
    ->Args({100'000, 0, 1})
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace delegate::aws

// The real Docker Engine as the integration tests use it: connect or say
// why not, and what is left on it under a label.
#ifndef DELEGATE_TESTS_FAKES_DOCKER_ENGINE_H_
#define DELEGATE_TESTS_FAKES_DOCKER_ENGINE_H_

#include <cstdlib>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "delegate/builtin_executors.h"
#include "delegate/scheduler.h"
#include "executor/docker/docker_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/recording_log_sink.h"
#include "tests/fakes/stage_run.h"

namespace delegate::testing {

// The image scripts/docker-test-setup.sh builds offline.
inline constexpr const char* kTestImage = "delegate-test/busybox:latest";

// A step `id` running `commands` (by /bin/sh) in the test image.
inline Step ImageStep(std::string id, std::vector<std::string> commands) {
  Step step;
  step.id = std::move(id);
  step.image = kTestImage;
  step.commands = std::move(commands);
  return step;
}

// $DOCKER_HOST or the default socket.
inline absl::StatusOr<std::unique_ptr<docker::DockerClient>>
ConnectTestEngine() {
  const char* host = getenv("DOCKER_HOST");
  absl::StatusOr<docker::Endpoint> endpoint =
      docker::ParseDockerHost(host ? host : "");
  if (!endpoint.ok()) return endpoint.status();
  return docker::DockerClient::Connect(*endpoint, absl::Seconds(5));
}

// CI sets DELEGATE_REQUIRE_DOCKER: a missing engine fails the tests there
// instead of skipping them.
inline bool DockerRequired() { return getenv("DELEGATE_REQUIRE_DOCKER"); }

// Every container, network and volume that carries `label` ("key=value").
inline std::vector<std::string> Labelled(docker::DockerClient& client,
                                         const std::string& label) {
  std::vector<std::string> found;
  auto add = [&](const char* kind,
                 const absl::StatusOr<std::vector<std::string>>& ids) {
    if (!ids.ok()) {
      found.push_back(std::string("cannot list ") + kind + ": " +
                      std::string(ids.status().message()));
      return;
    }
    for (const std::string& id : *ids) found.push_back(kind + (" " + id));
  };
  add("container", client.ListContainers(label));
  add("network", client.ListNetworks(label));
  add("volume", client.ListVolumes(label));
  return found;
}

// In SetUp: connects `client` (a std::unique_ptr<docker::DockerClient>), or
// skips the test (fails it when DockerRequired()).
#define DELEGATE_CONNECT_TEST_ENGINE_OR_SKIP(client)          \
  do {                                                        \
    auto engine = ::delegate::testing::ConnectTestEngine();   \
    if (!engine.ok()) {                                       \
      if (::delegate::testing::DockerRequired()) {            \
        FAIL() << engine.status();                            \
      }                                                       \
      GTEST_SKIP() << "no Docker Engine (" << engine.status() \
                   << "); run scripts/docker-test-setup.sh";  \
    }                                                         \
    client = *std::move(engine);                              \
  } while (0)

// A fixture for stages on the docker executor through the scheduler, under
// a delegate name of its own; TearDown checks that nothing labelled with
// that name outlived the stages.
class DockerStageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DELEGATE_CONNECT_TEST_ENGINE_OR_SKIP(client_);
    delegate_name_ = DelegateNamePrefix() + std::to_string(getpid());
    DockerExecutorOptions options;
    options.grace_period = absl::Seconds(2);
    ASSERT_TRUE(RegisterDockerExecutor(registry_, options).ok());
    SchedulerOptions sched;
    sched.registry = &registry_;
    sched.delegate_name = delegate_name_;
    scheduler_ = std::make_unique<Scheduler>(sched);
  }

  void TearDown() override {
    if (!client_) return;
    scheduler_.reset();
    EXPECT_THAT(Labelled(*client_, "io.libdelegate.delegate=" + delegate_name_),
                ::testing::IsEmpty());
  }

  virtual std::string DelegateNamePrefix() const { return "docker-test-"; }

  StageResult Run(Stage stage) {
    return RunStage(*scheduler_, "task-" + std::to_string(next_++),
                    std::move(stage), &sink_);
  }

  // The lines of one step, each with its newline.
  std::string Text(const std::string& step) {
    std::string out;
    for (const std::string& line : sink_.TextOf(step)) out += line + "\n";
    return out;
  }

  std::unique_ptr<docker::DockerClient> client_;
  std::string delegate_name_;
  ExecutorRegistry registry_;
  RecordingLogSink sink_;
  std::unique_ptr<Scheduler> scheduler_;
  int next_ = 1;
};

}  // namespace delegate::testing

#endif  // DELEGATE_TESTS_FAKES_DOCKER_ENGINE_H_

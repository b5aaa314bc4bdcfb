// Pulling a step's image from a registry that wants a password, through the
// scheduler and the docker executor. The registry is the loopback one that
// scripts/docker-test-setup.sh starts (htpasswd auth on 127.0.0.1:5000, user
// `delegate`, password $DELEGATE_TEST_REGISTRY_PASSWORD or
// correct-horse-battery), holding 127.0.0.1:5000/private/busybox:latest.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <future>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "delegate/builtin_executors.h"
#include "delegate/scheduler.h"
#include "executor/docker/docker_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/docker_engine.h"
#include "tests/fakes/recording_log_sink.h"

namespace delegate {
namespace {

using ::delegate::testing::RecordingLogSink;
using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

constexpr const char* kRegistry = "127.0.0.1:5000";
constexpr const char* kImage = "127.0.0.1:5000/private/busybox:latest";
constexpr const char* kUser = "delegate";
constexpr const char* kWrongPassword = "wrong-horse-staple-8123";

std::string RightPassword() {
  const char* p = getenv("DELEGATE_TEST_REGISTRY_PASSWORD");
  return p != nullptr && *p != '\0' ? p : "correct-horse-battery";
}

// True when something accepts TCP connections on 127.0.0.1:5000.
bool RegistryListens() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(5000);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

// The Engine API has no image removal in our client; the docker CLI does it
// for the test's setup.
void RemoveLocalImage() {
  (void)std::system(
      absl::StrCat("docker rmi -f ", kImage, " >/dev/null 2>&1").c_str());
}

class DockerPullTest : public ::delegate::testing::DockerStageTest {
 protected:
  std::string DelegateNamePrefix() const override {
    return "docker-pull-test-";
  }

  void SetUp() override {
    DockerStageTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    if (!RegistryListens()) {
      if (::delegate::testing::DockerRequired()) {
        FAIL() << "no registry on " << kRegistry;
      }
      GTEST_SKIP() << "no registry on " << kRegistry
                   << "; run scripts/docker-test-setup.sh";
    }
    RemoveLocalImage();
    absl::StatusOr<bool> exists = client_->ImageExists(kImage);
    ASSERT_TRUE(exists.ok()) << exists.status();
    ASSERT_FALSE(*exists) << "could not remove " << kImage
                          << " before the test (docker rmi -f)";
  }

  void TearDown() override {
    DockerStageTest::TearDown();
    // Leave the engine as scripts/docker-test-setup.sh left it.
    if (client_) RemoveLocalImage();
  }

  // One step in the private image, pull: always, with `credentials` when
  // given.
  static Stage PullStage(std::optional<RegistryCredentials> credentials) {
    Stage stage;
    stage.name = "docker-pull";
    stage.platform = "docker";
    Step step;
    step.id = "s0";
    step.image = kImage;
    step.pull = PullPolicy::kAlways;
    step.commands = {"echo pulled-$((40+2))"};
    step.registry = std::move(credentials);
    stage.steps.push_back(std::move(step));
    return stage;
  }

  static RegistryCredentials Credentials(std::string password) {
    RegistryCredentials c;
    c.server = kRegistry;
    c.username = kUser;
    c.password = std::move(password);
    return c;
  }

  // The registry's refusal, in the words people look for.
  static ::testing::Matcher<std::string> SaysRefused() {
    return AnyOf(HasSubstr("unauthorized"), HasSubstr("authentication"),
                 HasSubstr("no basic auth credentials"));
  }

  void ExpectRefusedWithoutLeaking(const StageResult& r,
                                   const std::string& password) {
    EXPECT_EQ(r.status, StepStatus::kFailure) << StageResultToJson(r);
    ASSERT_EQ(r.steps.size(), 1u);
    EXPECT_EQ(r.steps[0].status, StepStatus::kFailure);
    EXPECT_FALSE(r.steps[0].exit_code.has_value());
    const std::string error = absl::AsciiStrToLower(r.steps[0].error);
    EXPECT_THAT(error, SaysRefused()) << r.steps[0].error;
    EXPECT_THAT(r.steps[0].error, HasSubstr(kImage));
    EXPECT_THAT(Text("s0"), Not(HasSubstr("pulled-42")));
    EXPECT_THAT(r.steps[0].error, Not(HasSubstr(password)));
    EXPECT_THAT(r.error, Not(HasSubstr(password)));
    EXPECT_THAT(StageResultToJson(r), Not(HasSubstr(password)));
    EXPECT_THAT(sink_.All(), Not(HasSubstr(password)));
    absl::StatusOr<bool> exists = client_->ImageExists(kImage);
    ASSERT_TRUE(exists.ok());
    EXPECT_FALSE(*exists) << "a refused pull left the image behind";
  }
};

TEST_F(DockerPullTest, RightPasswordFromASecretPullsAndRuns) {
  Stage stage = PullStage(Credentials("${{secrets.REG}}"));
  stage.secrets["REG"] = RightPassword();
  StageResult r = Run(stage);
  ASSERT_EQ(r.status, StepStatus::kSuccess) << StageResultToJson(r);
  EXPECT_EQ(r.steps[0].exit_code, 0);
  const std::string text = Text("s0");
  EXPECT_THAT(text, HasSubstr(absl::StrCat("pulling ", kImage)));
  // The engine's progress events, one line each. The layer itself is not
  // downloaded: it is the one of delegate-test/busybox, already on the
  // engine, so the events are the pull's start, its digest and its end.
  EXPECT_THAT(text, HasSubstr("latest: Pulling from private/busybox\n"));
  EXPECT_THAT(text, HasSubstr("\nDigest: sha256:"));
  EXPECT_THAT(text, HasSubstr(absl::StrCat(
                        "Status: Downloaded newer image for ", kImage, "\n")));
  EXPECT_THAT(text, HasSubstr("pulled-42\n"));
  EXPECT_THAT(sink_.All(), Not(HasSubstr(RightPassword())));
  EXPECT_THAT(StageResultToJson(r), Not(HasSubstr(RightPassword())));
  absl::StatusOr<bool> exists = client_->ImageExists(kImage);
  ASSERT_TRUE(exists.ok());
  EXPECT_TRUE(*exists);
}

TEST_F(DockerPullTest, WrongPasswordFromASecretIsRefusedAndNeverShown) {
  Stage stage = PullStage(Credentials("${{secrets.REG}}"));
  stage.secrets["REG"] = kWrongPassword;
  StageResult r = Run(stage);
  ExpectRefusedWithoutLeaking(r, kWrongPassword);
}

TEST_F(DockerPullTest, WrongPasswordWrittenInTheClearIsNeverShownEither) {
  // Not a ${{secrets}} reference: the scheduler still masks it, and the
  // client never puts it into an error.
  StageResult r = Run(PullStage(Credentials(kWrongPassword)));
  ExpectRefusedWithoutLeaking(r, kWrongPassword);
}

TEST_F(DockerPullTest, WithoutCredentialsThePullFailsClearly) {
  StageResult r = Run(PullStage(std::nullopt));
  EXPECT_EQ(r.status, StepStatus::kFailure) << StageResultToJson(r);
  ASSERT_EQ(r.steps.size(), 1u);
  EXPECT_EQ(r.steps[0].status, StepStatus::kFailure);
  EXPECT_THAT(absl::AsciiStrToLower(r.steps[0].error), SaysRefused())
      << r.steps[0].error;
  EXPECT_THAT(r.steps[0].error, HasSubstr(kImage));
  EXPECT_THAT(Text("s0"), Not(HasSubstr("pulled-42")));
}

TEST_F(DockerPullTest, IfNotPresentAfterARefusedPullStillNeedsThePassword) {
  // pull: if-not-present with no local copy must go to the registry too, and
  // be refused the same way.
  Stage stage = PullStage(Credentials("${{secrets.REG}}"));
  stage.secrets["REG"] = kWrongPassword;
  stage.steps[0].pull = PullPolicy::kIfNotPresent;
  StageResult r = Run(stage);
  ExpectRefusedWithoutLeaking(r, kWrongPassword);
}

}  // namespace
}  // namespace delegate

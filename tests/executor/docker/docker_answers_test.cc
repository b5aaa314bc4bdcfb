// The Engine's answers read without an Engine (docker_answers.h).
#include "executor/docker/docker_answers.h"

#include <map>
#include <string>

#include "gtest/gtest.h"

namespace delegate::docker {
namespace {

TEST(EventsHaveOomTest, FindsAContainerOomEventInTheEventLines) {
  // As GET /events sends them: one object a line, newest Engines with
  // Type/Action, older ones with status too.
  EXPECT_TRUE(EventsHaveOom(
      R"({"status":"start","id":"abc","Type":"container","Action":"start"})"
      "\n"
      R"({"status":"oom","id":"abc","Type":"container","Action":"oom"})"
      "\n"));
  EXPECT_TRUE(EventsHaveOom(R"({"status":"oom","id":"abc"})"));
  EXPECT_TRUE(EventsHaveOom(R"({"Type":"container","Action":"oom"})"));
}

TEST(EventsHaveOomTest, OtherEventsAndJunkAreNotAnOom) {
  EXPECT_FALSE(EventsHaveOom(""));
  EXPECT_FALSE(EventsHaveOom("\n\n"));
  EXPECT_FALSE(EventsHaveOom(
      R"({"status":"die","id":"abc","Type":"container","Action":"die"})"
      "\n"));
  // Not a container's event, or not JSON at all.
  EXPECT_FALSE(EventsHaveOom(R"({"Type":"network","Action":"oom"})"));
  EXPECT_FALSE(EventsHaveOom("oom\n[\"oom\"]\n{\"Action\":\"oo"));
}

TEST(ParseListedAnswerTest, ReadsIdsNamesAndLabelsOfEachKind) {
  absl::StatusOr<std::vector<Listed>> containers = ParseListedAnswer(
      R"([{"Id":"c1","Names":["/delegate-x-s1"],"State":"running",)"
      R"("Labels":{"io.libdelegate.task":"t1","io.libdelegate.step":"s1"}},)"
      R"({"Id":"c2","Names":[],"Labels":null},{"Names":["/no-id"]},7])",
      "list", ObjectKind::kContainer);
  ASSERT_TRUE(containers.ok()) << containers.status();
  ASSERT_EQ(containers->size(), 2u);
  EXPECT_EQ((*containers)[0].id, "c1");
  EXPECT_EQ((*containers)[0].name, "delegate-x-s1");
  EXPECT_EQ((*containers)[0].labels.at("io.libdelegate.task"), "t1");
  EXPECT_EQ((*containers)[0].labels.size(), 2u);
  EXPECT_EQ((*containers)[1].id, "c2");
  EXPECT_TRUE((*containers)[1].name.empty());
  EXPECT_TRUE((*containers)[1].labels.empty());

  absl::StatusOr<std::vector<Listed>> networks = ParseListedAnswer(
      R"([{"Id":"n1","Name":"delegate-x","Labels":{"k":"v"}}])", "list",
      ObjectKind::kNetwork);
  ASSERT_TRUE(networks.ok()) << networks.status();
  ASSERT_EQ(networks->size(), 1u);
  EXPECT_EQ((*networks)[0].id, "n1");
  EXPECT_EQ((*networks)[0].name, "delegate-x");
  EXPECT_EQ((*networks)[0].labels.at("k"), "v");

  // Volumes have no id but their name, under "Volumes" (null when none).
  absl::StatusOr<std::vector<Listed>> volumes = ParseListedAnswer(
      R"({"Volumes":[{"Name":"delegate-x-workspace","Labels":{"k":"v"}}]})",
      "list", ObjectKind::kVolume);
  ASSERT_TRUE(volumes.ok()) << volumes.status();
  ASSERT_EQ(volumes->size(), 1u);
  EXPECT_EQ((*volumes)[0].id, "delegate-x-workspace");
  EXPECT_EQ((*volumes)[0].name, "delegate-x-workspace");
  EXPECT_TRUE(
      ParseListedAnswer(R"({"Volumes":null})", "list", ObjectKind::kVolume)
          ->empty());
  EXPECT_FALSE(ParseListedAnswer("[{", "list", ObjectKind::kNetwork).ok());
}

TEST(ParseInspectAnswerTest, ReadsTheIdAndWhetherTheContainerEverStarted) {
  absl::StatusOr<ContainerState> state = ParseInspectAnswer(
      R"({"Id":"abc","State":{"Status":"created","Running":false,)"
      R"("ExitCode":0}})",
      "inspect");
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->id, "abc");
  EXPECT_EQ(state->status, "created");
  EXPECT_FALSE(state->running);
  EXPECT_EQ(state->health, "");
  EXPECT_TRUE(state->ip_addresses.empty());
}

TEST(ParseInspectAnswerTest, ReadsTheHealthAndTheAddressOnEachNetwork) {
  absl::StatusOr<ContainerState> state = ParseInspectAnswer(
      R"({"Id":"abc","State":{"Status":"running","Running":true,)"
      R"("Health":{"Status":"healthy","FailingStreak":0}},)"
      R"("NetworkSettings":{"Networks":{"tasks":{"IPAddress":"172.18.0.2"},)"
      R"("bridge":{"IPAddress":"172.17.0.3"},"other":{"IPAddress":""}}}})",
      "inspect");
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->health, "healthy");
  EXPECT_EQ(state->ip_addresses,
            (std::map<std::string, std::string>{{"bridge", "172.17.0.3"},
                                                {"tasks", "172.18.0.2"}}));
  // Odd shapes are no health and no address.
  state = ParseInspectAnswer(
      R"({"State":{"Health":"ok"},"NetworkSettings":{"Networks":[1]}})",
      "inspect");
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->health, "");
  EXPECT_TRUE(state->ip_addresses.empty());
}

}  // namespace
}  // namespace delegate::docker

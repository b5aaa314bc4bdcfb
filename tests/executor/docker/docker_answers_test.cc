// The Engine's answers read without an Engine (docker_answers.h).
#include "executor/docker/docker_answers.h"

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

}  // namespace
}  // namespace delegate::docker

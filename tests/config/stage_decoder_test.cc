#include "config/stage_decoder.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "config/stage_document.h"
#include "delegate/stage.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/config/stage_document_testing.h"

namespace delegate::config {
namespace {

using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

// One step with an id and a command, plus `extra` fields.
NodeIndex Step(
    DocumentBuilder& b, absl::string_view id,
    std::vector<std::pair<absl::string_view, NodeIndex>> extra = {}) {
  std::vector<std::pair<absl::string_view, NodeIndex>> fields = {
      {"id", b.Plain(id)}, {"commands", b.List({b.Quoted("true")})}};
  fields.insert(fields.end(), extra.begin(), extra.end());
  return b.Map(fields);
}

TEST(DecodeStageTest, DecodesADocumentBuiltInCode) {
  DocumentBuilder b;
  const NodeIndex root =
      b.Map({{"name", b.Quoted("build")},
             {"timeout", b.Plain("1h30m")},
             {"steps",
              b.List({Step(b, "compile", {{"pull", b.Plain("IfNotPresent")}}),
                      Step(b, "test")})}});
  const DecodedStage decoded = DecodeStage(b.Finish(root));
  EXPECT_THAT(decoded.problems, IsEmpty());
  EXPECT_EQ(decoded.stage.name, "build");
  EXPECT_EQ(decoded.stage.timeout, absl::Hours(1) + absl::Minutes(30));
  ASSERT_EQ(decoded.stage.steps.size(), 2u);
  EXPECT_EQ(decoded.stage.steps[0].id, "compile");
  EXPECT_EQ(decoded.stage.steps[0].name, "compile");  // defaults to the id
  EXPECT_EQ(decoded.stage.steps[0].pull, PullPolicy::kIfNotPresent);
  EXPECT_THAT(decoded.stage.steps[1].commands, ElementsAre("true"));
}

TEST(DecodeStageTest, ProblemsHaveThePathAndPositionOfTheValue) {
  DocumentBuilder b;
  const NodeIndex timeout = b.Plain("ten");
  const NodeIndex pull = b.Plain("sometimes");
  const NodeIndex root =
      b.Map({{"name", b.Quoted("build")},
             {"steps",
              b.List({Step(b, "a"),
                      Step(b, "b", {{"timeout", timeout}, {"pull", pull}})})}});
  const DecodedStage decoded = DecodeStage(b.Finish(root));
  EXPECT_THAT(
      decoded.problems,
      ElementsAre(
          ProblemAt("steps[1].timeout", b.Line(timeout),
                    "expected a duration like 30s, 10m or 1h30m, got 'ten'"),
          ProblemAt("steps[1].pull", b.Line(pull),
                    "expected one of always, if-not-present, never, got "
                    "'sometimes'")));
}

TEST(DecodeStageTest, EveryProblemIsCollectedInTheOrderFound) {
  DocumentBuilder b;
  const NodeIndex steps = b.List({});
  const NodeIndex root = b.Map({{"nme", b.Quoted("build")},
                                {"platform", b.Plain("Host")},
                                {"steps", steps}});
  const DecodedStage decoded = DecodeStage(b.Finish(root));
  // An unknown key is reported at the key, with the path of its mapping.
  EXPECT_THAT(
      decoded.problems,
      ElementsAre(ProblemAt("", b.Line(b.KeyOf(root, 0)),
                            "unknown field 'nme' (did you mean 'name'?)"),
                  ProblemAt("name", b.Line(root), "required field is missing"),
                  Field(&Problem::path, "platform"),
                  ProblemAt("steps", b.Line(steps),
                            "a stage needs at least one step")));
}

TEST(DecodeStageTest, DuplicateStepIdsNameTheFirst) {
  DocumentBuilder b;
  const NodeIndex second_id = b.Plain("build");
  const NodeIndex second =
      b.Map({{"id", second_id}, {"commands", b.List({b.Quoted("make")})}});
  const NodeIndex root = b.Map(
      {{"name", b.Quoted("s")}, {"steps", b.List({Step(b, "build"), second})}});
  const DecodedStage decoded = DecodeStage(b.Finish(root));
  EXPECT_THAT(decoded.problems,
              ElementsAre(ProblemAt("steps[1].id", b.Line(second_id),
                                    "duplicate step id 'build' (first at "
                                    "steps[0])")));
  EXPECT_EQ(decoded.stage.steps.size(), 1u);
}

TEST(DecodeStageTest, MountsNameAVolumeOfTheStage) {
  DocumentBuilder b;
  const NodeIndex mount_name = b.Plain("cahce");
  const NodeIndex root = b.Map(
      {{"name", b.Quoted("s")},
       {"volumes",
        b.List({b.Map({{"name", b.Plain("cache")}, {"empty_dir", b.Null()}})})},
       {"steps",
        b.List({Step(b, "a",
                     {{"volume_mounts",
                       b.List({b.Map({{"name", mount_name},
                                      {"path", b.Plain("/cache")}})})}})})}});
  const DecodedStage decoded = DecodeStage(b.Finish(root));
  EXPECT_THAT(decoded.problems,
              ElementsAre(ProblemAt("steps[0].volume_mounts[0].name",
                                    b.Line(mount_name),
                                    "no volume named 'cahce' in this stage "
                                    "(volumes: cache)")));
  ASSERT_EQ(decoded.stage.volumes.size(), 1u);
}

// The decoder leaves masking to whoever shows its problems, and tells it
// every value to mask, those of invalid secrets too.
TEST(DecodeStageTest, SecretValuesAreReturnedForMasking) {
  DocumentBuilder b;
  const NodeIndex root =
      b.Map({{"name", b.Quoted("s")},
             {"secrets", b.Map({{"TOKEN", b.Quoted("s3cr3t")},
                                {"bad id", b.Quoted("hunter2")}})},
             {"steps", b.List({Step(b, "a",
                                    {{"working_dir", b.List({})},
                                     {"timeout", b.Plain("s3cr3t")}})})}});
  const DecodedStage decoded = DecodeStage(b.Finish(root));
  EXPECT_THAT(decoded.secret_values, UnorderedElementsAre("s3cr3t", "hunter2"));
  EXPECT_THAT(decoded.problems,
              ElementsAre(Field(&Problem::path, "secrets[\"bad id\"]"),
                          Field(&Problem::path, "steps[0].working_dir"),
                          Field(&Problem::message, HasSubstr("'s3cr3t'"))));
  EXPECT_EQ(decoded.stage.secrets.size(), 1u);
}

TEST(DecodeStageTest, UnknownSecretReferencesAreReported) {
  DocumentBuilder b;
  const NodeIndex value = b.Quoted("${{secrets.NOPE}}");
  const NodeIndex root = b.Map({{"name", b.Quoted("s")},
                                {"env", b.Map({{"TOKEN", value}})},
                                {"steps", b.List({Step(b, "a")})}});
  const DecodedStage decoded = DecodeStage(b.Finish(root));
  EXPECT_THAT(decoded.problems,
              ElementsAre(ProblemAt("env.TOKEN", b.Line(value),
                                    "unknown secret 'NOPE'; the stage "
                                    "defines no secrets")));
}

TEST(DecodeStageTest, RootMustBeAMapping) {
  DocumentBuilder b;
  const NodeIndex root = b.List({b.Plain("name")});
  const DecodedStage decoded = DecodeStage(b.Finish(root));
  EXPECT_THAT(decoded.problems,
              ElementsAre(ProblemAt("", b.Line(root),
                                    "expected a mapping with the stage's "
                                    "fields (name, steps, ...) at the top "
                                    "level, got a list")));
}

}  // namespace
}  // namespace delegate::config

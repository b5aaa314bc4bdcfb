#include "config/node_reader.h"

#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "config/stage_document.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/config/stage_document_testing.h"

namespace delegate::config {
namespace {

using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::Optional;

TEST(SuggestTest, SpellingsAndNearMisses) {
  const Keys kKnown = {"working_dir", "timeout", "id"};
  EXPECT_EQ(Suggest("workingDir", kKnown), "working_dir");
  EXPECT_EQ(Suggest("working-dir", kKnown), "working_dir");
  EXPECT_EQ(Suggest("timout", kKnown), "timeout");
  EXPECT_EQ(Suggest("ib", kKnown), "id");
  EXPECT_EQ(Suggest("image", kKnown), "");
  EXPECT_EQ(Suggest(std::string(100, 'x'), kKnown), "");
}

TEST(FieldsTest, UnknownAndRepeatedKeysAreReportedAtTheKey) {
  DocumentBuilder b;
  const NodeIndex first = b.Plain("1");
  const NodeIndex map = b.Map({{"size", first},
                               {"colour", b.Plain("red")},
                               {"size", b.Plain("2")},
                               {"unset", b.Null()}});
  const Document& doc = b.Finish(map);
  std::vector<Problem> problems;
  NodeReader reader(doc, problems);
  const Fields fields(reader, doc.node(map), "box", {"size", "color", "unset"});
  EXPECT_EQ(fields.Get("size"), &doc.node(first));
  EXPECT_EQ(fields.Get("color"), nullptr);
  EXPECT_EQ(fields.Get("unset"), nullptr);
  EXPECT_NE(fields.GetEvenNull("unset"), nullptr);
  EXPECT_EQ(fields.PathOf("size"), "box.size");
  EXPECT_THAT(
      problems,
      ElementsAre(
          ProblemAt("box", b.Line(b.KeyOf(map, 1)),
                    "unknown field 'colour' (did you mean 'color'?)"),
          ProblemAt("box", b.Line(b.KeyOf(map, 2)),
                    "duplicate key 'size' (first at line " +
                        std::to_string(b.Line(b.KeyOf(map, 0))) + ")")));
}

TEST(FieldsTest, UnknownKeyWithNothingCloseListsTheKnownOnes) {
  DocumentBuilder b;
  const NodeIndex map = b.Map({{"zzz", b.Plain("1")}});
  const Document& doc = b.Finish(map);
  std::vector<Problem> problems;
  NodeReader reader(doc, problems);
  EXPECT_TRUE(reader.Mapping(doc.node(map), "", {"a", "b"}).has_value());
  EXPECT_THAT(problems,
              ElementsAre(Field(&Problem::message,
                                "unknown field 'zzz'; expected one of a, b")));
}

TEST(NodeReaderTest, ScalarsGiveTheValueOrAProblemAtTheNode) {
  DocumentBuilder b;
  const NodeIndex quoted_true = b.Quoted("true");
  const NodeIndex plain_true = b.Plain("TRUE");
  const NodeIndex big = b.Plain("99999999999999999999");
  const NodeIndex minus_one = b.Plain("-1");
  const NodeIndex zero_duration = b.Plain("0");
  const NodeIndex duration = b.Plain("1m30s");
  const NodeIndex cpus = b.Plain("+1.5");
  const NodeIndex list = b.List({b.Quoted("a"), b.Null()});
  const Document& doc = b.Finish(list);
  std::vector<Problem> problems;
  NodeReader reader(doc, problems);

  EXPECT_EQ(reader.Bool(doc.node(quoted_true), "b1"), std::nullopt);
  EXPECT_THAT(reader.Bool(doc.node(plain_true), "b2"), Optional(true));
  EXPECT_EQ(reader.Int(doc.node(big), "i1", 0, "an integer >= 0"),
            std::nullopt);
  EXPECT_EQ(reader.Int(doc.node(minus_one), "i2", 0, "an integer >= 0"),
            std::nullopt);
  EXPECT_EQ(reader.Duration(doc.node(zero_duration), "d1"), std::nullopt);
  EXPECT_THAT(reader.Duration(doc.node(duration), "d2"),
              Optional(absl::Seconds(90)));
  EXPECT_THAT(reader.PositiveNumber(doc.node(cpus), "n"), Optional(1.5));
  EXPECT_EQ(reader.StringList(doc.node(list), "l"), std::nullopt);
  EXPECT_THAT(
      problems,
      ElementsAre(
          ProblemAt("b1", b.Line(quoted_true),
                    "expected true or false, got a string 'true'"),
          ProblemAt("i1", b.Line(big),
                    "expected an integer >= 0, got '99999999999999999999' "
                    "(out of range)"),
          ProblemAt("i2", b.Line(minus_one),
                    "expected an integer >= 0, got '-1'"),
          ProblemAt("d1", b.Line(zero_duration),
                    "expected a duration like 30s, 10m or 1h30m, got '0'"),
          ProblemAt("l[1]", b.Line(doc.node(list).items[1]),
                    "expected a string, got null")));
  EXPECT_EQ(reader.problem_count(), problems.size());
}

TEST(NodeReaderTest, StringsRejectCollectionsAndNul) {
  DocumentBuilder b;
  const NodeIndex map = b.Map({});
  const NodeIndex nul = b.Quoted(absl::string_view("a\0b", 3));
  const NodeIndex empty = b.Quoted("");
  const Document& doc = b.Finish(map);
  std::vector<Problem> problems;
  NodeReader reader(doc, problems);
  EXPECT_EQ(reader.String(doc.node(map), "s1"), std::nullopt);
  EXPECT_EQ(reader.String(doc.node(nul), "s2"), std::nullopt);
  EXPECT_THAT(reader.String(doc.node(empty), "s3"), Optional(std::string()));
  EXPECT_EQ(reader.NonEmptyString(doc.node(empty), "s4"), std::nullopt);
  EXPECT_THAT(
      problems,
      ElementsAre(
          Field(&Problem::message, "expected a string, got a mapping"),
          Field(&Problem::message, "the string contains a NUL character"),
          Field(&Problem::message, "expected a non-empty string")));
}

TEST(DescribeTest, SaysWhatANodeIs) {
  DocumentBuilder b;
  const NodeIndex plain = b.Plain("ten");
  const NodeIndex quoted = b.Quoted("ten");
  const NodeIndex null = b.Plain("~");
  const NodeIndex list = b.List({});
  const NodeIndex map = b.Map({});
  const Document& doc = b.Finish(map);
  EXPECT_EQ(Describe(doc.node(plain)), "'ten'");
  EXPECT_EQ(Describe(doc.node(quoted)), "a string 'ten'");
  EXPECT_EQ(Describe(doc.node(null)), "null");
  EXPECT_EQ(Describe(doc.node(list)), "a list");
  EXPECT_EQ(Describe(doc.node(map)), "a mapping");
}

}  // namespace
}  // namespace delegate::config

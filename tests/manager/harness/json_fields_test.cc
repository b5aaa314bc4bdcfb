#include "manager/harness/json_fields.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rapidjson/document.h"
#include "tests/manager/harness/payload_test_util.h"

namespace delegate::harness {
namespace {

using ::testing::ElementsAre;

// The "id" of each element of the array "items" in `json`, or the error.
absl::StatusOr<std::vector<std::string>> Ids(const std::string& json) {
  rapidjson::Document doc;
  absl::StatusOr<Fields> top = ParseObject(json, "task.data", doc);
  if (!top.ok()) return top.status();
  std::vector<std::string> ids;
  absl::Status read = top->ForEachObject("items", [&](const Fields& item) {
    std::string id;
    if (absl::Status s = item.String("id", id); !s.ok()) return s;
    if (id == "stop") return Invalid(item.path(), "told to stop");
    ids.push_back(id);
    return absl::OkStatus();
  });
  if (!read.ok()) return read;
  return ids;
}

TEST(HarnessJsonFieldsTest, ForEachObjectVisitsInOrder) {
  absl::StatusOr<std::vector<std::string>> ids =
      Ids(R"({"items":[{"id":"a"},{"id":"b","x":1},{}]})");
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre("a", "b", ""));
}

TEST(HarnessJsonFieldsTest, ForEachObjectTakesAbsentAndNullAsEmpty) {
  for (const char* json : {"{}", R"({"items":null})", R"({"items":[]})"}) {
    absl::StatusOr<std::vector<std::string>> ids = Ids(json);
    ASSERT_TRUE(ids.ok()) << json << ": " << ids.status();
    EXPECT_TRUE(ids->empty()) << json;
  }
}

TEST(HarnessJsonFieldsTest, ForEachObjectNamesTheFirstBadElement) {
  EXPECT_EQ(Msg(Ids(R"({"items":{}})")), "task.data.items: expected an array");
  EXPECT_EQ(Msg(Ids(R"({"items":[{"id":"a"},null,{"id":5}]})")),
            "task.data.items[1]: expected an object");
  EXPECT_EQ(Msg(Ids(R"({"items":[{"id":"a"},{"id":5},7]})")),
            "task.data.items[1].id: expected a string");
  EXPECT_EQ(Msg(Ids(R"({"items":[{"id":"stop"},{"id":5}]})")),
            "task.data.items[0]: told to stop");
}

// Whole numbers may come as doubles (1e3); others, and doubles outside
// int64's range (undefined to cast, found by
// tests/fuzz/harness_payload_fuzz.cc), are refused naming the field.
TEST(HarnessJsonFieldsTest, Int64TakesWholeDoublesAndRefusesHugeOnes) {
  rapidjson::Document doc;
  absl::StatusOr<Fields> top = ParseObject(
      R"({"a":1e3,"b":2.5,"c":3.9e63,"d":-1e300,"e":-7})", "task.data", doc);
  ASSERT_TRUE(top.ok()) << top.status();
  int64_t v = 0;
  ASSERT_TRUE(top->Int64("a", v).ok());
  EXPECT_EQ(v, 1000);
  ASSERT_TRUE(top->Int64("e", v).ok());
  EXPECT_EQ(v, -7);
  for (const char* name : {"b", "c", "d"}) {
    EXPECT_EQ(top->Int64(name, v).message(),
              absl::StrCat("task.data.", name, ": expected a whole number"));
  }
}

TEST(HarnessJsonFieldsTest, ParseBodyPathsStartAtTheTop) {
  rapidjson::Document doc;
  absl::StatusOr<Fields> body = ParseBody(R"({"a":{"b":1}})", "reply", doc);
  ASSERT_TRUE(body.ok()) << body.status();
  absl::StatusOr<std::optional<Fields>> a = body->Object("a");
  ASSERT_TRUE(a.ok() && a->has_value());
  std::string b;
  EXPECT_EQ((*a)->String("b", b).message(), "a.b: expected a string");
  EXPECT_EQ(Msg(ParseBody("[1]", "reply", doc)), "reply: expected an object");
  EXPECT_EQ(Msg(ParseBody(" ", "reply", doc)), "reply: not valid JSON (empty)");
}

TEST(HarnessJsonFieldsTest, DeepDocumentsAreRefused) {
  std::string deep;
  for (int i = 0; i < 70; ++i) deep += "[";
  for (int i = 0; i < 70; ++i) deep += "]";
  rapidjson::Document doc;
  EXPECT_EQ(ParseJson(deep, "x", doc).message(),
            "x: nested deeper than 64 levels");
}

TEST(HarnessJsonFieldsTest, WriteObjectWritesCompactJson) {
  EXPECT_EQ(WriteObject([](json::Writer&) {}), "{}");
  EXPECT_EQ(WriteObject([](json::Writer& w) {
              json::Key(w, "a");
              json::String(w, "x\"y");
              json::Key(w, "n");
              w.Int(1);
            }),
            R"({"a":"x\"y","n":1})");
}

}  // namespace
}  // namespace delegate::harness

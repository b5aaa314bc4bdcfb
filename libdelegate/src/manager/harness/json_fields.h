// How the Harness payload code reads and writes the manager's JSON: parsing
// with a depth limit, typed reads of an object's members, and the writer of
// the bodies the delegate sends. Private to manager/harness.
//
// The contract every parser built on these keeps: an error is
// InvalidArgument naming the JSON path of the offending field
// ("task.data.run.commands[2]: expected a string") and never holds a value
// read from the input, so no secret (a secret task's data, secrets[],
// auth.password, the logger token) can reach a message. Fields a parser does
// not read are ignored, so a newer manager's additions pass through; a JSON
// null counts as the field being absent.
#ifndef DELEGATE_MANAGER_HARNESS_JSON_FIELDS_H_
#define DELEGATE_MANAGER_HARNESS_JSON_FIELDS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "delegate/config.h"
#include "rapidjson/document.h"
#include "util/json.h"

namespace delegate::harness {

// InvalidArgument "<path>: <what>".
absl::Status Invalid(std::string_view path, std::string_view what);

// `path` and a member: "a.b" for plain keys, a["x y"] for others (map keys
// such as env names); just the key when `path` is empty.
std::string Child(std::string_view path, std::string_view key);

// `path` and an element: "a[2]".
std::string Index(std::string_view path, size_t i);

// The text of a string value. REQUIRES: v.IsString().
std::string Text(const rapidjson::Value& v);

// Parses `text` into `doc`, iteratively, and refuses documents nested deeper
// than 64 levels, so that the recursive walks and writers that follow stay
// off deep stacks. Errors name `what` and say where the JSON breaks ("<what>:
// <not_json> (<reason> at offset N)"), never what it holds.
absl::Status ParseJson(std::string_view text, std::string_view what,
                       rapidjson::Document& doc,
                       std::string_view not_json = "not valid JSON");

// A JSON object and its path, with typed reads of its members. A member that
// is absent or null leaves the output untouched; one of the wrong type is an
// error naming its path. No message holds a value. Refers to the object: the
// document must outlive it.
class Fields {
 public:
  Fields(const rapidjson::Value& object, std::string path);

  // InvalidArgument "<path>: expected an object" when `v` is not one.
  static absl::StatusOr<Fields> Of(const rapidjson::Value& v, std::string path);

  const std::string& path() const { return path_; }
  std::string PathOf(std::string_view name) const { return Child(path_, name); }

  // The member, or nullptr when absent or null.
  const rapidjson::Value* Get(const char* name) const;

  absl::Status String(const char* name, std::string& out) const;
  absl::Status Secret(const char* name, SecretString& out) const;
  absl::Status Bool(const char* name, bool& out) const;
  // Integers, and numbers with no fractional part (1e3).
  absl::Status Int64(const char* name, int64_t& out) const;
  // Int64, and an error when negative.
  absl::Status NonNegative(const char* name, int64_t& out) const;
  // Replaces `out` with the member's strings.
  absl::Status Strings(const char* name, std::vector<std::string>& out) const;
  // Adds the member's string members to `out`.
  absl::Status StringMap(const char* name,
                         std::map<std::string, std::string>& out) const;

  // The member as an object; nullopt when absent or null.
  absl::StatusOr<std::optional<Fields>> Object(const char* name) const;
  // The member as an array; nullptr when absent or null.
  absl::StatusOr<const rapidjson::Value*> Array(const char* name) const;

  // Calls `visit` with each element of the array member `name`, in order, as
  // an object whose path is "<name's path>[i]"; returns the first error,
  // either an element that is not an object or one `visit` returns. An
  // absent or null member has no elements.
  absl::Status ForEachObject(
      const char* name,
      absl::FunctionRef<absl::Status(const Fields&)> visit) const;

 private:
  const rapidjson::Value* object_;
  std::string path_;
};

// `text` parsed into `doc`, as an object whose member paths start at `what`
// (task data: "task.data.run.commands"). Errors name `what`.
absl::StatusOr<Fields> ParseObject(std::string_view text, std::string_view what,
                                   rapidjson::Document& doc);

// A response body parsed into `doc`, as an object whose member paths start
// at the top ("resource.delegateId"). Errors about the body as a whole name
// `what` ("register response: expected an object").
absl::StatusOr<Fields> ParseBody(std::string_view body, std::string_view what,
                                 rapidjson::Document& doc);

// `v` as compact JSON text.
std::string Serialize(const rapidjson::Value& v);

// The compact JSON text of an object whose members `members` writes.
std::string WriteObject(absl::FunctionRef<void(json::Writer&)> members);

}  // namespace delegate::harness

#endif  // DELEGATE_MANAGER_HARNESS_JSON_FIELDS_H_

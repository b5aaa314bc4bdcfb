// Typed reading of the nodes of a stage document (stage_document.h) against a
// schema. Each read gives the value or records a Problem at the node, with the
// value's path, and the caller carries on, so that one pass over a document
// finds every problem in it. Knows nothing of what a stage holds; that is
// stage_decoder.h.
#ifndef DELEGATE_CONFIG_NODE_READER_H_
#define DELEGATE_CONFIG_NODE_READER_H_

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "config/stage_document.h"

namespace delegate::config {

// The keys a schema mapping may hold.
using Keys = std::initializer_list<absl::string_view>;

// What a node is, for "got ..." in messages: "a mapping", "a list", "null",
// "a string 'text'" for a quoted scalar, "'text'" for a plain one (the text
// made safe by QuoteText). It shows the node's text, so it is never used on a
// node that may hold a secret's value.
std::string Describe(const Node& n);

// Lower case without '_' and '-', so that "workingDir" and "working-dir"
// compare equal to "working_dir".
std::string Squash(absl::string_view s);

// The key in `known` that `key` was most likely meant to be: one that is the
// same after Squash, else the nearest by edit distance when that distance is
// at most a quarter of its length (at least 1). Empty when there is none.
absl::string_view Suggest(absl::string_view key, Keys known);

class NodeReader;

// The fields of a schema mapping: the first value of each known key.
// Building one reports each unknown key (with a suggestion, or the list of
// known keys) and each repeated key; neither is among the fields.
class Fields {
 public:
  // `mapping` must be a mapping node of `reader`'s document, and outlive this.
  Fields(NodeReader& reader, const Node& mapping, std::string path, Keys known);

  // The value, or null when the key is absent or its value is null.
  const Node* Get(absl::string_view key) const;
  // The value, or null only when the key is absent.
  const Node* GetEvenNull(absl::string_view key) const;

  // The path of the field `key`, like "steps[2].timeout".
  std::string PathOf(absl::string_view key) const {
    return JoinPath(path_, key);
  }
  // The path of the mapping itself.
  const std::string& path() const { return path_; }
  const Node& node() const { return mapping_; }

 private:
  struct Found {
    const Node* key;
    const Node* value;
  };
  const Node& mapping_;
  std::string path_;
  std::vector<Found> found_;
};

// Reads the nodes of one document. Every method that returns an optional
// returns nullopt after recording why `n` is not what was asked for; `path` is
// the path of `n`, shown with the problem.
class NodeReader {
 public:
  // Problems are appended to `problems`. `doc` and `problems` must outlive
  // the reader.
  NodeReader(const Document& doc, std::vector<Problem>& problems)
      : doc_(doc), problems_(problems) {}

  NodeReader(const NodeReader&) = delete;
  NodeReader& operator=(const NodeReader&) = delete;

  const Document& doc() const { return doc_; }
  // How many problems `problems` holds, those there before the reader
  // included: a caller compares two counts to learn whether a part of the
  // document it read had any.
  size_t problem_count() const { return problems_.size(); }

  // Records a problem at `at`'s position.
  void Error(const Node& at, absl::string_view path, std::string message);
  // Records that the required field `key` is missing from `fields`, at the
  // mapping's position; `why` is appended to the message.
  void Missing(const Fields& fields, absl::string_view key,
               absl::string_view why = {});

  // A schema mapping whose keys may be those in `known`. The message when
  // `n` is not a mapping names the first of them as an example.
  std::optional<Fields> Mapping(const Node& n, const std::string& path,
                                Keys known);

  // The text of any scalar, as written, unless it holds a NUL character.
  std::optional<std::string> String(const Node& n, const std::string& path);
  // The same, but not empty.
  std::optional<std::string> NonEmptyString(const Node& n,
                                            const std::string& path);
  // A plain (unquoted) true or false, also spelt True, TRUE, False, FALSE.
  std::optional<bool> Bool(const Node& n, const std::string& path);
  // A plain integer >= min; `expected` names the accepted range in the
  // message, like "a positive integer".
  std::optional<int64_t> Int(const Node& n, const std::string& path,
                             int64_t min, absl::string_view expected);
  // A plain finite number > 0.
  std::optional<double> PositiveNumber(const Node& n, const std::string& path);
  // A duration like 30s, 10m or 1h30m (absl::ParseDuration), > 0 and finite.
  std::optional<absl::Duration> Duration(const Node& n,
                                         const std::string& path);
  // A list whose items are all strings (null items are not); each item that
  // is not is reported, with its own path, before nullopt is returned.
  std::optional<std::vector<std::string>> StringList(const Node& n,
                                                     const std::string& path);

 private:
  const Document& doc_;
  std::vector<Problem>& problems_;
};

}  // namespace delegate::config

#endif  // DELEGATE_CONFIG_NODE_READER_H_

// A small document tree that both the YAML and the JSON reader of stage files
// build, so that one decoder can turn either into a delegate::Stage.
//
// Every limit that keeps a hostile input from crashing, hanging or exhausting
// memory is enforced here, while the tree is built: the nesting depth, the
// number of nodes (aliases count once per use) and the amount of text.
#ifndef DELEGATE_CONFIG_STAGE_DOCUMENT_H_
#define DELEGATE_CONFIG_STAGE_DOCUMENT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace delegate::config {

// The largest document accepted, in bytes.
inline constexpr size_t kMaxDocumentBytes = size_t{64} << 20;
// Collections nested deeper than this are an error; the reader stops there.
inline constexpr int kMaxDepth = 64;
// Nodes in the document after alias expansion (mapping keys count as nodes).
inline constexpr size_t kMaxNodes = 100000;
// Scalar text (keys included) after alias expansion. Without aliases a
// document stays below kMaxDocumentBytes; this bounds what aliases add.
inline constexpr size_t kMaxExpandedTextBytes = size_t{128} << 20;

// One thing wrong with a document. line and column are 1-based; 0 means
// unknown. path is like "steps[2].timeout", empty for the document itself.
struct Problem {
  int line = 0;
  int column = 0;
  std::string path;
  std::string message;
};

using NodeIndex = uint32_t;

// A key and its value; the key is always a scalar node, whose position is
// the entry's.
struct MapEntry {
  NodeIndex key = 0;
  NodeIndex value = 0;
};

struct Node {
  enum class Kind : uint8_t { kScalar, kSequence, kMapping };

  Kind kind = Kind::kScalar;
  // Scalars: true for quoted YAML scalars (and block scalars, and those tagged
  // !!str) and for JSON strings; false for plain YAML scalars and for JSON
  // numbers, true, false and null, whose text is their spelling.
  bool quoted = false;
  int line = 0;
  int column = 0;
  std::string text;               // kScalar
  std::vector<NodeIndex> items;   // kSequence
  std::vector<MapEntry> entries;  // kMapping, in document order, duplicates
                                  // kept so that the decoder can report them

  // Bookkeeping for alias expansion: the size of this subtree counted the
  // way the limits above count, and its height (a scalar has height 0).
  uint64_t expanded_nodes = 1;
  uint64_t expanded_bytes = 0;
  int height = 0;

  bool is_scalar() const { return kind == Kind::kScalar; }
  bool is_sequence() const { return kind == Kind::kSequence; }
  bool is_mapping() const { return kind == Kind::kMapping; }
  // A YAML null: a plain empty scalar, ~, null, Null or NULL (JSON null has
  // the text "null").
  bool is_null() const;
};

// Nodes live in one array and refer to each other by index. An alias is the
// index of its anchored node, so the tree is really a DAG whose size is
// bounded by the limits above; nothing ever walks it recursively beyond the
// depth of the stage schema.
struct Document {
  std::vector<Node> nodes;
  bool has_root = false;
  NodeIndex root = 0;

  const Node& node(NodeIndex i) const { return nodes[i]; }
};

struct ParsedDocument {
  Document document;
  // Problems found while reading. When `complete` is false the last one is a
  // syntax error or a limit, and the document must not be decoded.
  std::vector<Problem> problems;
  bool complete = false;
};

// Reads exactly one YAML document with libyaml's event API. A stream with no
// document gives a complete result with has_root false. Aliases are
// supported within the limits; tags other than the standard !!str, !!int,
// !!float, !!bool, !!null, !!map and !!seq are reported.
ParsedDocument ReadYaml(absl::string_view content);

// Reads one JSON value with RapidJSON's iterative SAX reader.
ParsedDocument ReadJson(absl::string_view content);

// "path.key", or `path["key"]` when the key is not a plain identifier; the key
// is escaped and shortened as by QuoteText.
std::string JoinPath(absl::string_view path, absl::string_view key);
std::string IndexPath(absl::string_view path, size_t index);

// User text made safe to show in a message: control characters escaped and
// long text cut short. No quotes added.
std::string QuoteText(absl::string_view text);

}  // namespace delegate::config

#endif  // DELEGATE_CONFIG_STAGE_DOCUMENT_H_

// For tests of what reads stage documents (stage_document.h): documents built
// in code, the way ReadYaml and ReadJson build them, so that a test depends on
// neither format, and a matcher for the problems found in them.
#ifndef DELEGATE_TESTS_CONFIG_STAGE_DOCUMENT_TESTING_H_
#define DELEGATE_TESTS_CONFIG_STAGE_DOCUMENT_TESTING_H_

#include <cstddef>
#include <initializer_list>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "config/stage_document.h"
#include "gmock/gmock.h"

namespace delegate::config {

// Prints a Problem in failure messages as "line:column: path: message".
inline void PrintTo(const Problem& p, std::ostream* os) {
  *os << p.line << ":" << p.column << ": " << p.path << ": " << p.message;
}

// A problem at `path`, reported at line `line`, whose message matches
// `message` (a string: equal to it).
inline ::testing::Matcher<const Problem&> ProblemAt(
    const std::string& path, int line,
    ::testing::Matcher<const std::string&> message) {
  return ::testing::AllOf(::testing::Field(&Problem::path, path),
                          ::testing::Field(&Problem::line, line),
                          ::testing::Field(&Problem::message, message));
}

// Every node gets a line of its own (its index + 1, column 1), so that a test
// can tell which node a problem was reported at: compare with Line(node).
class DocumentBuilder {
 public:
  // A plain YAML scalar, or a JSON number, true, false or null.
  NodeIndex Plain(absl::string_view text) { return Scalar(text, false); }
  // A quoted YAML scalar or a JSON string.
  NodeIndex Quoted(absl::string_view text) { return Scalar(text, true); }
  // A plain empty scalar: YAML's null.
  NodeIndex Null() { return Plain(""); }

  NodeIndex List(std::initializer_list<NodeIndex> items) {
    Node n;
    n.kind = Node::Kind::kSequence;
    n.items.assign(items.begin(), items.end());
    return Add(std::move(n));
  }

  // Keys are plain scalars; a key may repeat, as it may in a document.
  NodeIndex Map(
      const std::vector<std::pair<absl::string_view, NodeIndex>>& entries) {
    Node n;
    n.kind = Node::Kind::kMapping;
    for (const auto& [key, value] : entries) {
      n.entries.push_back({Plain(key), value});
    }
    return Add(std::move(n));
  }

  int Line(NodeIndex i) const { return doc_.node(i).line; }
  // The key node of a mapping's entry.
  NodeIndex KeyOf(NodeIndex map, size_t entry) const {
    return doc_.node(map).entries[entry].key;
  }

  // The document, with `root` at its root; valid while the builder is.
  const Document& Finish(NodeIndex root) {
    doc_.has_root = true;
    doc_.root = root;
    return doc_;
  }

 private:
  NodeIndex Scalar(absl::string_view text, bool quoted) {
    Node n;
    n.text = std::string(text);
    n.quoted = quoted;
    return Add(std::move(n));
  }

  NodeIndex Add(Node n) {
    const auto index = static_cast<NodeIndex>(doc_.nodes.size());
    n.line = static_cast<int>(index) + 1;
    n.column = 1;
    doc_.nodes.push_back(std::move(n));
    return index;
  }

  Document doc_;
};

}  // namespace delegate::config

#endif  // DELEGATE_TESTS_CONFIG_STAGE_DOCUMENT_TESTING_H_

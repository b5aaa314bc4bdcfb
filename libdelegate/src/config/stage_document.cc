#include "config/stage_document.h"

#include <yaml.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "rapidjson/error/en.h"
#include "rapidjson/reader.h"
#include "util/strings.h"

namespace delegate::config {
namespace {

// Turns byte offsets into 1-based line and column (columns count UTF-8 code
// points). Offsets asked for usually grow, so it scans forward from the last
// answer and restarts only when asked about an earlier offset.
class LineCounter {
 public:
  explicit LineCounter(absl::string_view text) : text_(text) {}

  std::pair<int, int> Locate(size_t offset) {
    offset = std::min(offset, text_.size());
    if (offset < pos_) {
      pos_ = 0;
      line_ = 1;
      column_ = 1;
    }
    for (; pos_ < offset; ++pos_) {
      const unsigned char c = static_cast<unsigned char>(text_[pos_]);
      if (c == '\n') {
        ++line_;
        column_ = 1;
      } else if ((c & 0xC0) != 0x80) {
        ++column_;
      }
    }
    return {line_, column_};
  }

 private:
  absl::string_view text_;
  size_t pos_ = 0;
  int line_ = 1;
  int column_ = 1;
};

// Length of the valid UTF-8 sequence starting at text[i], or 0.
size_t Utf8SequenceLength(absl::string_view text, size_t i) {
  const unsigned char c = static_cast<unsigned char>(text[i]);
  size_t n = 0;
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0 && c >= 0xC2) {
    n = 2;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3;
  } else if ((c & 0xF8) == 0xF0 && c <= 0xF4) {
    n = 4;
  } else {
    return 0;
  }
  if (i + n > text.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((static_cast<unsigned char>(text[i + k]) & 0xC0) != 0x80) return 0;
  }
  return n;
}

// Builds a Document from a stream of events, enforcing the limits of
// stage_document.h. Every method returns false once a fatal problem has been
// recorded; the caller must then stop feeding events.
class TreeBuilder {
 public:
  explicit TreeBuilder(ParsedDocument* out) : out_(out) {}

  Document& document() { return out_->document; }
  bool failed() const { return failed_; }
  int depth() const { return static_cast<int>(stack_.size()); }

  bool StartCollection(Node::Kind kind, int line, int column,
                       std::string anchor) {
    if (failed_) return false;
    if (depth() >= kMaxDepth) {
      return Fatal(line, column,
                   absl::StrCat("nesting deeper than ", kMaxDepth, " levels"));
    }
    if (!Count(1, 0, line, column)) return false;
    const NodeIndex index = NewNode(kind, line, column);
    stack_.push_back(Frame{index, std::move(anchor)});
    return true;
  }

  // Returns the index of the finished collection through `index`.
  bool EndCollection(std::unordered_map<std::string, NodeIndex>* anchors) {
    if (failed_) return false;
    if (stack_.empty()) return Fatal(0, 0, "unbalanced end of a collection");
    Frame frame = std::move(stack_.back());
    stack_.pop_back();
    if (anchors != nullptr && !frame.anchor.empty()) {
      (*anchors)[frame.anchor] = frame.node;
    }
    return Attach(frame.node);
  }

  bool Scalar(std::string text, bool quoted, int line, int column,
              absl::string_view anchor,
              std::unordered_map<std::string, NodeIndex>* anchors) {
    if (failed_) return false;
    if (!Count(1, text.size(), line, column)) return false;
    const NodeIndex index = NewNode(Node::Kind::kScalar, line, column);
    Node& node = document().nodes[index];
    node.expanded_bytes = text.size();
    node.text = std::move(text);
    node.quoted = quoted;
    if (anchors != nullptr && !anchor.empty()) {
      (*anchors)[std::string(anchor)] = index;
    }
    return Attach(index);
  }

  // A use of an already finished node (a YAML alias).
  bool Reuse(NodeIndex target, int line, int column) {
    if (failed_) return false;
    const Node& node = document().nodes[target];
    if (depth() + node.height > kMaxDepth) {
      return Fatal(line, column,
                   absl::StrCat("nesting deeper than ", kMaxDepth,
                                " levels (through an alias)"));
    }
    if (!Count(node.expanded_nodes, node.expanded_bytes, line, column)) {
      return false;
    }
    return Attach(target);
  }

  void Report(int line, int column, std::string message) {
    out_->problems.push_back({line, column, CurrentPath(), std::move(message)});
  }

  bool Fatal(int line, int column, std::string message) {
    Report(line, column, std::move(message));
    failed_ = true;
    return false;
  }

  // The path of the node that would be added next.
  std::string CurrentPath() const {
    std::string path;
    for (const Frame& frame : stack_) {
      const Node& node = out_->document.nodes[frame.node];
      if (node.is_sequence()) {
        path = IndexPath(path, node.items.size());
      } else if (frame.has_key && frame.key_valid) {
        path = JoinPath(path, out_->document.nodes[frame.key].text);
      } else {
        break;
      }
    }
    return path;
  }

  bool Finish() {
    if (failed_) return false;
    if (!stack_.empty()) return Fatal(0, 0, "unexpected end of the document");
    out_->complete = true;
    return true;
  }

 private:
  struct Frame {
    NodeIndex node;
    std::string anchor;
    // Mappings: whether the key of the next entry has been read.
    bool has_key = false;
    bool key_valid = false;
    NodeIndex key = 0;
  };

  NodeIndex NewNode(Node::Kind kind, int line, int column) {
    Node node;
    node.kind = kind;
    node.line = line;
    node.column = column;
    document().nodes.push_back(std::move(node));
    return static_cast<NodeIndex>(document().nodes.size() - 1);
  }

  bool Count(uint64_t nodes, uint64_t bytes, int line, int column) {
    total_nodes_ += nodes;
    total_bytes_ += bytes;
    if (total_nodes_ > kMaxNodes) {
      return Fatal(line, column,
                   absl::StrCat("the document has more than ", kMaxNodes,
                                " nodes (each use of an alias counts)"));
    }
    if (total_bytes_ > kMaxExpandedTextBytes) {
      return Fatal(line, column,
                   absl::StrCat("aliases expand to more than ",
                                kMaxExpandedTextBytes >> 20, " MiB of text"));
    }
    return true;
  }

  bool Attach(NodeIndex index) {
    Document& doc = document();
    if (stack_.empty()) {
      if (doc.has_root) return Fatal(0, 0, "more than one top-level value");
      doc.has_root = true;
      doc.root = index;
      return true;
    }
    Frame& frame = stack_.back();
    // Copies: push_back below may move the nodes.
    const uint64_t child_nodes = doc.nodes[index].expanded_nodes;
    const uint64_t child_bytes = doc.nodes[index].expanded_bytes;
    const int child_height = doc.nodes[index].height;
    const bool child_is_scalar = doc.nodes[index].is_scalar();
    const int child_line = doc.nodes[index].line;
    const int child_column = doc.nodes[index].column;
    Node& parent = doc.nodes[frame.node];
    parent.expanded_nodes += child_nodes;
    parent.expanded_bytes += child_bytes;
    parent.height = std::max(parent.height, child_height + 1);
    if (parent.is_sequence()) {
      parent.items.push_back(index);
    } else if (!frame.has_key) {
      frame.has_key = true;
      frame.key = index;
      frame.key_valid = child_is_scalar;
      if (!child_is_scalar) {
        Report(child_line, child_column,
               "mapping keys must be strings, not lists or mappings");
      }
    } else {
      if (frame.key_valid) parent.entries.push_back({frame.key, index});
      frame.has_key = false;
    }
    return true;
  }

  ParsedDocument* out_;
  std::vector<Frame> stack_;
  uint64_t total_nodes_ = 0;
  uint64_t total_bytes_ = 0;
  bool failed_ = false;
};

// ---------------------------------------------------------------- YAML

constexpr absl::string_view kYamlTagPrefix = "tag:yaml.org,2002:";

absl::string_view AsView(const yaml_char_t* s) {
  return s == nullptr ? absl::string_view()
                      : absl::string_view(reinterpret_cast<const char*>(s));
}

std::string UnsupportedTag(absl::string_view tag) {
  return absl::StrCat("unsupported YAML tag '", QuoteText(tag),
                      "'; stage files need no tags");
}

class YamlEvent {
 public:
  YamlEvent() = default;
  YamlEvent(const YamlEvent&) = delete;
  YamlEvent& operator=(const YamlEvent&) = delete;
  ~YamlEvent() {
    if (filled_) yaml_event_delete(&event_);
  }
  yaml_event_t* get() { return &event_; }
  void set_filled() { filled_ = true; }

 private:
  yaml_event_t event_{};
  bool filled_ = false;
};

void ReportYamlError(const yaml_parser_t& parser, absl::string_view content,
                     TreeBuilder& builder) {
  std::string problem =
      parser.problem != nullptr ? parser.problem : "unknown problem";
  if (parser.error == YAML_MEMORY_ERROR) {
    builder.Fatal(0, 0, "out of memory while reading YAML");
    return;
  }
  if (parser.error == YAML_READER_ERROR) {
    if (parser.problem_value != -1) {
      absl::StrAppendFormat(&problem, " (byte 0x%02X)",
                            parser.problem_value & 0xFF);
    }
    auto [line, column] = LineCounter(content).Locate(parser.problem_offset);
    builder.Fatal(line, column, absl::StrCat("syntax error: ", problem));
    return;
  }
  std::string message = absl::StrCat("syntax error: ", problem);
  if (parser.context != nullptr) {
    absl::StrAppend(&message, " (", parser.context, " that starts at line ",
                    parser.context_mark.line + 1, ", column ",
                    parser.context_mark.column + 1, ")");
  }
  builder.Fatal(static_cast<int>(parser.problem_mark.line) + 1,
                static_cast<int>(parser.problem_mark.column) + 1, message);
}

// Feeds one event to the builder. Returns false to stop reading.
bool HandleYamlEvent(const yaml_event_t& event, TreeBuilder& builder,
                     std::unordered_map<std::string, NodeIndex>& anchors,
                     int& documents, bool& done) {
  const int line = static_cast<int>(event.start_mark.line) + 1;
  const int column = static_cast<int>(event.start_mark.column) + 1;
  switch (event.type) {
    case YAML_STREAM_END_EVENT:
      done = true;
      return builder.Finish();
    case YAML_DOCUMENT_START_EVENT:
      if (++documents > 1) {
        return builder.Fatal(
            line, column,
            "expected one document, found a second one (a stage file holds "
            "exactly one stage)");
      }
      return true;
    case YAML_SCALAR_EVENT: {
      const auto& s = event.data.scalar;
      bool quoted = s.style != YAML_PLAIN_SCALAR_STYLE;
      const absl::string_view tag = AsView(s.tag);
      if (!tag.empty()) {
        if (tag == "!" || tag == absl::StrCat(kYamlTagPrefix, "str")) {
          quoted = true;
        } else if (tag == absl::StrCat(kYamlTagPrefix, "int") ||
                   tag == absl::StrCat(kYamlTagPrefix, "float") ||
                   tag == absl::StrCat(kYamlTagPrefix, "bool") ||
                   tag == absl::StrCat(kYamlTagPrefix, "null")) {
          quoted = false;
        } else {
          builder.Report(line, column, UnsupportedTag(tag));
        }
      }
      return builder.Scalar(
          std::string(reinterpret_cast<const char*>(s.value), s.length), quoted,
          line, column, AsView(s.anchor), &anchors);
    }
    case YAML_ALIAS_EVENT: {
      const absl::string_view name = AsView(event.data.alias.anchor);
      auto it = anchors.find(std::string(name));
      if (it == anchors.end()) {
        return builder.Fatal(
            line, column,
            absl::StrCat("unknown alias '*", QuoteText(name),
                         "' (an alias must follow its anchor's value)"));
      }
      return builder.Reuse(it->second, line, column);
    }
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
      const bool mapping = event.type == YAML_MAPPING_START_EVENT;
      const yaml_char_t* tag_chars = mapping ? event.data.mapping_start.tag
                                             : event.data.sequence_start.tag;
      const yaml_char_t* anchor = mapping ? event.data.mapping_start.anchor
                                          : event.data.sequence_start.anchor;
      const absl::string_view tag = AsView(tag_chars);
      if (!tag.empty() && tag != "!" &&
          tag != absl::StrCat(kYamlTagPrefix, mapping ? "map" : "seq")) {
        builder.Report(line, column, UnsupportedTag(tag));
      }
      return builder.StartCollection(
          mapping ? Node::Kind::kMapping : Node::Kind::kSequence, line, column,
          std::string(AsView(anchor)));
    }
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
      return builder.EndCollection(&anchors);
    case YAML_NO_EVENT:
    case YAML_STREAM_START_EVENT:
    case YAML_DOCUMENT_END_EVENT:
      return true;
  }
  return true;
}

// ---------------------------------------------------------------- JSON

// A RapidJSON input stream over a bounded buffer. Peek() and Take() give '\0'
// at the end; ReadJson rejects NUL bytes up front so that an embedded NUL is
// never mistaken for the end.
class JsonStream {
 public:
  using Ch = char;
  JsonStream(absl::string_view text, size_t start)
      : begin_(text.data()),
        cur_(text.data() + start),
        end_(text.data() + text.size()) {}
  Ch Peek() const { return cur_ < end_ ? *cur_ : '\0'; }
  Ch Take() { return cur_ < end_ ? *cur_++ : '\0'; }
  size_t Tell() const { return static_cast<size_t>(cur_ - begin_); }
  // Write side of the stream concept; unused without kParseInsituFlag.
  Ch* PutBegin() { return nullptr; }
  void Put(Ch) {}
  void Flush() {}
  size_t PutEnd(Ch*) { return 0; }

 private:
  const char* begin_;
  const char* cur_;
  const char* end_;
};

class JsonHandler
    : public rapidjson::BaseReaderHandler<rapidjson::UTF8<>, JsonHandler> {
 public:
  JsonHandler(absl::string_view text, const JsonStream& stream,
              TreeBuilder& builder)
      : text_(text), stream_(stream), builder_(builder), lines_(text) {}

  bool Null() { return Literal("null"); }
  bool Bool(bool b) { return Literal(b ? "true" : "false"); }
  bool RawNumber(const char* str, rapidjson::SizeType length, bool) {
    const size_t end = stream_.Tell();
    return Add(std::string(str, length), false,
               end >= length ? end - length : 0);
  }
  bool String(const char* str, rapidjson::SizeType length, bool) {
    return Add(std::string(str, length), true, StringStart());
  }
  bool Key(const char* str, rapidjson::SizeType length, bool copy) {
    return String(str, length, copy);
  }
  bool StartObject() { return Start(Node::Kind::kMapping); }
  bool EndObject(rapidjson::SizeType) {
    return builder_.EndCollection(nullptr);
  }
  bool StartArray() { return Start(Node::Kind::kSequence); }
  bool EndArray(rapidjson::SizeType) { return builder_.EndCollection(nullptr); }

  std::pair<int, int> Locate(size_t offset) { return lines_.Locate(offset); }

 private:
  bool Literal(absl::string_view spelling) {
    const size_t end = stream_.Tell();
    return Add(std::string(spelling), false,
               end >= spelling.size() ? end - spelling.size() : 0);
  }

  bool Add(std::string text, bool quoted, size_t start) {
    auto [line, column] = lines_.Locate(start);
    return builder_.Scalar(std::move(text), quoted, line, column, {}, nullptr);
  }

  bool Start(Node::Kind kind) {
    // RapidJSON's iterative reader calls StartObject/StartArray before it
    // takes the bracket; the recursive one after.
    size_t at = stream_.Tell();
    if (at >= text_.size() || (text_[at] != '{' && text_[at] != '[')) {
      at = at > 0 ? at - 1 : 0;
    }
    auto [line, column] = lines_.Locate(at);
    return builder_.StartCollection(kind, line, column, {});
  }

  // The stream is just past the closing quote: walk back to the opening one,
  // the first quote not escaped by an odd number of backslashes.
  size_t StringStart() const {
    const size_t end = stream_.Tell();
    if (end < 2) return 0;
    for (size_t i = end - 1; i-- > 0;) {
      if (text_[i] != '"') continue;
      size_t backslashes = 0;
      for (size_t j = i; j > 0 && text_[j - 1] == '\\'; --j) ++backslashes;
      if (backslashes % 2 == 0) return i;
    }
    return 0;
  }

  absl::string_view text_;
  const JsonStream& stream_;
  TreeBuilder& builder_;
  LineCounter lines_;
};

}  // namespace

bool Node::is_null() const {
  if (kind != Kind::kScalar || quoted) return false;
  return text.empty() || text == "~" || text == "null" || text == "Null" ||
         text == "NULL";
}

ParsedDocument ReadYaml(absl::string_view content) {
  ParsedDocument out;
  TreeBuilder builder(&out);
  yaml_parser_t parser;
  if (!yaml_parser_initialize(&parser)) {
    builder.Fatal(0, 0, "out of memory while reading YAML");
    return out;
  }
  // libyaml wants a non-null pointer even for empty input.
  static const unsigned char kEmpty[1] = {0};
  yaml_parser_set_input_string(
      &parser,
      content.empty() ? kEmpty
                      : reinterpret_cast<const unsigned char*>(content.data()),
      content.size());
  std::unordered_map<std::string, NodeIndex> anchors;
  int documents = 0;
  bool done = false;
  while (!done) {
    YamlEvent event;
    if (!yaml_parser_parse(&parser, event.get())) {
      ReportYamlError(parser, content, builder);
      break;
    }
    event.set_filled();
    if (!HandleYamlEvent(*event.get(), builder, anchors, documents, done)) {
      break;
    }
  }
  yaml_parser_delete(&parser);
  return out;
}

ParsedDocument ReadJson(absl::string_view content) {
  ParsedDocument out;
  TreeBuilder builder(&out);
  if (const size_t nul = content.find('\0'); nul != absl::string_view::npos) {
    auto [line, column] = LineCounter(content).Locate(nul);
    builder.Fatal(line, column,
                  "the file contains a NUL byte; a stage file must be text");
    return out;
  }
  size_t start = 0;
  if (content.substr(0, 3) == "\xEF\xBB\xBF") start = 3;  // a UTF-8 BOM
  JsonStream stream(content, start);
  JsonHandler handler(content, stream, builder);
  rapidjson::Reader reader;
  constexpr unsigned kFlags = rapidjson::kParseIterativeFlag |
                              rapidjson::kParseValidateEncodingFlag |
                              rapidjson::kParseNumbersAsStringsFlag;
  const rapidjson::ParseResult result = reader.Parse<kFlags>(stream, handler);
  if (result.IsError()) {
    // Termination means the handler stopped the reader and has already said
    // why.
    if (result.Code() != rapidjson::kParseErrorTermination ||
        !builder.failed()) {
      auto [line, column] = handler.Locate(result.Offset());
      builder.Fatal(line, column,
                    absl::StrCat("syntax error: ",
                                 rapidjson::GetParseError_En(result.Code())));
    }
    return out;
  }
  builder.Finish();
  return out;
}

std::string QuoteText(absl::string_view text) {
  constexpr size_t kMaxShown = 60;
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    if (out.size() >= kMaxShown) {
      out += "...";
      break;
    }
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7F) {
      absl::StrAppendFormat(&out, "\\x%02X", c);
    } else if (c >= 0x80) {
      const size_t n = Utf8SequenceLength(text, i);
      if (n == 0) {
        absl::StrAppendFormat(&out, "\\x%02X", c);
      } else {
        out.append(text.data() + i, n);
        i += n;
        continue;
      }
    } else {
      out += static_cast<char>(c);
    }
    ++i;
  }
  return out;
}

std::string JoinPath(absl::string_view path, absl::string_view key) {
  if (IsPlainKey(StdView(key))) {
    return path.empty() ? std::string(key) : absl::StrCat(path, ".", key);
  }
  return absl::StrCat(path, "[\"", QuoteText(key), "\"]");
}

std::string IndexPath(absl::string_view path, size_t index) {
  return absl::StrCat(path, "[", index, "]");
}

}  // namespace delegate::config

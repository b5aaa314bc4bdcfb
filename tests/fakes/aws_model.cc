#include "tests/fakes/aws_model.h"

#include <cstdint>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "rapidjson/document.h"
#include "rapidjson/error/en.h"
#include "util/strings.h"

namespace delegate::testing {
namespace {

enum class Type {
  kStructure,
  kList,
  kMap,
  kString,
  kInteger,
  kLong,
  kBoolean,
  kDouble,
  kFloat,
  kTimestamp,
  kBlob,
  kDocument,
  kUnchecked,  // event streams and types this validator does not know
};

struct Shape {
  Type type = Type::kUnchecked;
  // Structure: member name -> shape name.
  std::map<std::string, std::string, std::less<>> members;
  std::vector<std::string> required;
  bool is_union = false;
  std::string member;  // list
  std::string key;     // map
  std::string value;   // map
  std::optional<double> min;
  std::optional<double> max;
  std::vector<std::string> enums;  // model order, for messages
  std::set<std::string, std::less<>> enum_set;
  std::string pattern_text;
  std::shared_ptr<const std::regex> pattern;  // null: none or skipped
  bool sensitive = false;
};

std::optional<Type> TypeNamed(std::string_view name) {
  static const auto* kTypes = new std::map<std::string_view, Type>{
      {"structure", Type::kStructure},
      {"list", Type::kList},
      {"map", Type::kMap},
      {"string", Type::kString},
      {"integer", Type::kInteger},
      {"long", Type::kLong},
      {"boolean", Type::kBoolean},
      {"double", Type::kDouble},
      {"float", Type::kFloat},
      {"timestamp", Type::kTimestamp},
      {"blob", Type::kBlob},
  };
  auto it = kTypes->find(name);
  if (it == kTypes->end()) return std::nullopt;
  return it->second;
}

// Java regex syntax that ECMAScript reads differently without an error
// (std::regex takes "\p{L}" as the letters p, {, L, }): such a pattern
// would be checked wrongly, so it is not checked at all.
std::optional<std::string> JavaOnlySyntax(std::string_view p) {
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[++i];
      if (std::string_view("pPAZzhHQEGRX").find(e) != std::string_view::npos) {
        return absl::StrCat("Java-only escape \\", std::string(1, e));
      }
      continue;
    }
    if (in_class) {
      if (c == ']') in_class = false;
      continue;
    }
    if (c == '[') in_class = true;
    if (c == '(' && i + 1 < p.size() && p[i + 1] == '?' && i + 2 < p.size() &&
        std::string_view(":=!").find(p[i + 2]) == std::string_view::npos) {
      return std::string("Java-only group or inline flag (?");
    }
    if ((c == '*' || c == '+' || c == '?' || c == '}') && i + 1 < p.size() &&
        p[i + 1] == '+') {
      return std::string("Java-only possessive quantifier");
    }
  }
  return std::nullopt;
}

const char* JsonTypeName(const rapidjson::Value& v) {
  switch (v.GetType()) {
    case rapidjson::kNullType:
      return "null";
    case rapidjson::kFalseType:
    case rapidjson::kTrueType:
      return "a boolean";
    case rapidjson::kObjectType:
      return "an object";
    case rapidjson::kArrayType:
      return "an array";
    case rapidjson::kStringType:
      return "a string";
    case rapidjson::kNumberType:
      return "a number";
  }
  return "a value";
}

// Unicode code points of UTF-8 text.
size_t CodePoints(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// The decoded size of standard base64 text, or nullopt when it is not.
std::optional<size_t> Base64Size(std::string_view s) {
  if (s.size() % 4 != 0) return std::nullopt;
  size_t pad = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                       (c >= '0' && c <= '9') || c == '+' || c == '/';
    if (c == '=' && i + 2 >= s.size()) {
      ++pad;
      continue;
    }
    if (!alpha || pad > 0) return std::nullopt;
  }
  return s.size() / 4 * 3 - pad;
}

std::string Bound(double d) {
  if (d == static_cast<double>(static_cast<int64_t>(d))) {
    return absl::StrCat(static_cast<int64_t>(d));
  }
  return absl::StrCat(d);
}

std::string Quoted(std::string_view s) {
  constexpr size_t kMax = 80;
  if (s.size() <= kMax) return absl::StrCat("'", AbslView(s), "'");
  return absl::StrCat("'", AbslView(s.substr(0, kMax)), "...' (", s.size(),
                      " bytes)");
}

}  // namespace

struct AwsModelData {
  std::string target_prefix;
  std::string signing_name;
  std::string service;  // for messages: "ecs"
  std::map<std::string, Shape, std::less<>> shapes;
  // Operation -> its input shape ("" when it has none).
  std::map<std::string, std::string, std::less<>> operations;
  std::vector<std::string> skipped_patterns;
};

namespace {

using Kind = ModelProblem::Kind;

class Validator {
 public:
  Validator(const AwsModelData& data, std::vector<ModelProblem>& out)
      : data_(data), out_(out) {}

  // `sensitive`: inside a shape marked sensitive (values not echoed).
  void Check(const std::string& shape_name, const rapidjson::Value& v,
             const std::string& path, bool sensitive = false) {
    auto it = data_.shapes.find(shape_name);
    if (it == data_.shapes.end()) {
      Add(Kind::kConstraint, path,
          absl::StrCat("the model has no shape ", shape_name));
      return;
    }
    const Shape& s = it->second;
    const bool was_sensitive = sensitive_;
    sensitive_ = sensitive || s.sensitive;
    Dispatch(s, v, path);
    sensitive_ = was_sensitive;
  }

 private:
  void Dispatch(const Shape& s, const rapidjson::Value& v,
                const std::string& path) {
    switch (s.type) {
      case Type::kStructure:
        return Structure(s, v, path);
      case Type::kList:
        return List(s, v, path);
      case Type::kMap:
        return Map(s, v, path);
      case Type::kString:
        return String(s, v, path);
      case Type::kInteger:
      case Type::kLong:
        return Integer(s, v, path);
      case Type::kDouble:
      case Type::kFloat:
      case Type::kTimestamp:
        if (!v.IsNumber()) return Expected(path, "a number", v);
        return Range(s, v.GetDouble(), Bound(v.GetDouble()), path);
      case Type::kBoolean:
        if (!v.IsBool()) return Expected(path, "a boolean", v);
        return;
      case Type::kBlob:
        return Blob(s, v, path);
      case Type::kDocument:
      case Type::kUnchecked:
        return;
    }
  }

  void Add(Kind kind, const std::string& path, const std::string& what) {
    out_.push_back(
        {kind, absl::StrCat(path.empty() ? "(body)" : path, ": ", what)});
  }

  void Expected(const std::string& path, const char* want,
                const rapidjson::Value& got) {
    Add(Kind::kSerialization, path,
        absl::StrCat("expected ", want, ", got ", JsonTypeName(got)));
  }

  static std::string Member(const std::string& path, std::string_view name) {
    return path.empty() ? std::string(name)
                        : absl::StrCat(path, ".", AbslView(name));
  }

  void Structure(const Shape& s, const rapidjson::Value& v,
                 const std::string& path) {
    if (!v.IsObject()) return Expected(path, "an object", v);
    std::vector<std::string> set;
    for (const auto& m : v.GetObject()) {
      const std::string_view name(m.name.GetString(), m.name.GetStringLength());
      auto member = s.members.find(name);
      if (member == s.members.end()) {
        Add(Kind::kSerialization, Member(path, name), "unknown member");
        continue;
      }
      if (m.value.IsNull()) continue;
      set.emplace_back(name);
      Check(member->second, m.value, Member(path, name), sensitive_);
    }
    for (const std::string& r : s.required) {
      auto m = v.FindMember(r.c_str());
      if (m == v.MemberEnd() || m->value.IsNull()) {
        Add(Kind::kConstraint, Member(path, r), "missing required member");
      }
    }
    if (s.is_union && set.size() != 1) {
      Add(Kind::kConstraint, path,
          absl::StrCat(
              "a union: exactly one member must be set, not ", set.size(),
              set.empty() ? "" : " (" + absl::StrJoin(set, ", ") + ")"));
    }
  }

  void Count(const Shape& s, size_t n, const char* unit,
             const std::string& path) {
    if (s.min && static_cast<double>(n) < *s.min) {
      Add(Kind::kConstraint, path,
          absl::StrCat(n, " ", unit, " are fewer than the minimum ",
                       Bound(*s.min)));
    }
    if (s.max && static_cast<double>(n) > *s.max) {
      Add(Kind::kConstraint, path,
          absl::StrCat(n, " ", unit, " are more than the maximum ",
                       Bound(*s.max)));
    }
  }

  void List(const Shape& s, const rapidjson::Value& v,
            const std::string& path) {
    if (!v.IsArray()) return Expected(path, "an array", v);
    Count(s, v.Size(), "items", path);
    for (rapidjson::SizeType i = 0; i < v.Size(); ++i) {
      const std::string item = absl::StrCat(path, "[", i, "]");
      if (v[i].IsNull()) {
        Add(Kind::kSerialization, item, "null is not a list item");
        continue;
      }
      Check(s.member, v[i], item, sensitive_);
    }
  }

  void Map(const Shape& s, const rapidjson::Value& v, const std::string& path) {
    if (!v.IsObject()) return Expected(path, "an object", v);
    Count(s, v.MemberCount(), "entries", path);
    for (const auto& m : v.GetObject()) {
      const std::string_view key(m.name.GetString(), m.name.GetStringLength());
      const std::string entry =
          IsPlainKey(key) ? Member(path, key)
                          : absl::StrCat(path, "[\"", AbslView(key), "\"]");
      // The key's own constraints, reported at the entry.
      std::vector<ModelProblem> key_problems;
      Validator(data_, key_problems).Check(s.key, m.name, "");
      for (ModelProblem& p : key_problems) {
        // "(body): ..." -> "ENTRY: key ..."
        out_.push_back(
            {p.kind, absl::StrCat(entry, ": key",
                                  p.text.substr(p.text.find(':') + 1))});
      }
      if (m.value.IsNull()) {
        Add(Kind::kSerialization, entry, "null is not a map value");
        continue;
      }
      Check(s.value, m.value, entry, sensitive_);
    }
  }

  void String(const Shape& s, const rapidjson::Value& v,
              const std::string& path) {
    if (!v.IsString()) return Expected(path, "a string", v);
    const std::string_view text(v.GetString(), v.GetStringLength());
    const std::string shown = sensitive_ ? "(sensitive)" : Quoted(text);
    if (!s.enum_set.empty() && !s.enum_set.contains(text)) {
      Add(Kind::kConstraint, path,
          absl::StrCat("value ", shown, " is not one of ",
                       absl::StrJoin(s.enums, ", ")));
      return;
    }
    const size_t length = CodePoints(text);
    if (s.min && static_cast<double>(length) < *s.min) {
      Add(Kind::kConstraint, path,
          absl::StrCat("length ", length, " is less than the minimum ",
                       Bound(*s.min)));
    }
    if (s.max && static_cast<double>(length) > *s.max) {
      Add(Kind::kConstraint, path,
          absl::StrCat("length ", length, " is more than the maximum ",
                       Bound(*s.max)));
    }
    if (s.pattern && !std::regex_match(text.begin(), text.end(), *s.pattern)) {
      Add(Kind::kConstraint, path,
          absl::StrCat("value ", shown, " does not match the pattern ",
                       s.pattern_text));
    }
  }

  void Integer(const Shape& s, const rapidjson::Value& v,
               const std::string& path) {
    const bool is_long = s.type == Type::kLong;
    if (!v.IsNumber() || !(v.IsInt64() || v.IsUint64())) {
      return Expected(path, "an integer", v);
    }
    if (is_long ? !v.IsInt64() : !v.IsInt()) {
      Add(Kind::kSerialization, path,
          absl::StrCat(v.IsInt64() ? absl::StrCat(v.GetInt64())
                                   : absl::StrCat(v.GetUint64()),
                       " does not fit a ", is_long ? "64" : "32",
                       "-bit integer"));
      return;
    }
    Range(s, static_cast<double>(v.GetInt64()), absl::StrCat(v.GetInt64()),
          path);
  }

  void Range(const Shape& s, double d, const std::string& shown,
             const std::string& path) {
    if (s.min && d < *s.min) {
      Add(Kind::kConstraint, path,
          absl::StrCat(shown, " is less than the minimum ", Bound(*s.min)));
    }
    if (s.max && d > *s.max) {
      Add(Kind::kConstraint, path,
          absl::StrCat(shown, " is more than the maximum ", Bound(*s.max)));
    }
  }

  void Blob(const Shape& s, const rapidjson::Value& v,
            const std::string& path) {
    if (!v.IsString()) return Expected(path, "a base64 string", v);
    std::optional<size_t> size =
        Base64Size(std::string_view(v.GetString(), v.GetStringLength()));
    if (!size) {
      Add(Kind::kSerialization, path, "not valid base64");
      return;
    }
    Count(s, *size, "bytes", path);
  }

  const AwsModelData& data_;
  std::vector<ModelProblem>& out_;
  bool sensitive_ = false;
};

std::optional<double> NumberAt(const rapidjson::Value& v, const char* name) {
  auto it = v.FindMember(name);
  if (it == v.MemberEnd() || !it->value.IsNumber()) return std::nullopt;
  return it->value.GetDouble();
}

std::string StringAt(const rapidjson::Value& v, const char* name) {
  auto it = v.FindMember(name);
  if (it == v.MemberEnd() || !it->value.IsString()) return "";
  return it->value.GetString();
}

}  // namespace

AwsModel::AwsModel(std::shared_ptr<const AwsModelData> data)
    : data_(std::move(data)) {}

absl::StatusOr<AwsModel> AwsModel::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(
        "cannot read the AWS model ", path,
        "; set DELEGATE_AWS_TESTDATA to the folder with ecs-model/ and "
        "logs-model/"));
  }
  std::stringstream text;
  text << in.rdbuf();
  rapidjson::Document doc;
  doc.Parse(text.str().c_str(), text.str().size());
  if (doc.HasParseError()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": not JSON: ", rapidjson::GetParseError_En(doc.GetParseError()),
        " at offset ", doc.GetErrorOffset()));
  }
  if (!doc.IsObject() || !doc.HasMember("metadata") ||
      !doc["metadata"].IsObject() || !doc.HasMember("shapes") ||
      !doc["shapes"].IsObject() || !doc.HasMember("operations") ||
      !doc["operations"].IsObject()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path,
        ": not a botocore service-2.json (metadata, operations and "
        "shapes objects expected)"));
  }
  auto data = std::make_shared<AwsModelData>();
  const rapidjson::Value& meta = doc["metadata"];
  data->target_prefix = StringAt(meta, "targetPrefix");
  data->service = StringAt(meta, "endpointPrefix");
  data->signing_name = StringAt(meta, "signingName");
  if (data->signing_name.empty()) data->signing_name = data->service;

  for (const auto& op : doc["operations"].GetObject()) {
    std::string input;
    if (op.value.IsObject() && op.value.HasMember("input") &&
        op.value["input"].IsObject()) {
      input = StringAt(op.value["input"], "shape");
    }
    data->operations[op.name.GetString()] = input;
  }

  for (const auto& entry : doc["shapes"].GetObject()) {
    const std::string name = entry.name.GetString();
    const rapidjson::Value& v = entry.value;
    if (!v.IsObject()) continue;
    Shape s;
    std::optional<Type> type = TypeNamed(StringAt(v, "type"));
    s.type = type.value_or(Type::kUnchecked);
    if (s.type == Type::kStructure &&
        (v.HasMember("document") || v.HasMember("eventstream"))) {
      s.type = v.HasMember("document") ? Type::kDocument : Type::kUnchecked;
    }
    if (auto m = v.FindMember("members");
        m != v.MemberEnd() && m->value.IsObject()) {
      for (const auto& member : m->value.GetObject()) {
        s.members[member.name.GetString()] = StringAt(member.value, "shape");
      }
    }
    if (auto r = v.FindMember("required");
        r != v.MemberEnd() && r->value.IsArray()) {
      for (const auto& req : r->value.GetArray()) {
        if (req.IsString()) s.required.push_back(req.GetString());
      }
    }
    if (auto e = v.FindMember("enum");
        e != v.MemberEnd() && e->value.IsArray()) {
      for (const auto& value : e->value.GetArray()) {
        if (!value.IsString()) continue;
        s.enums.push_back(value.GetString());
        s.enum_set.insert(value.GetString());
      }
    }
    s.is_union = v.HasMember("union") && v["union"].IsTrue();
    s.sensitive = v.HasMember("sensitive") && v["sensitive"].IsTrue();
    if (v.HasMember("member")) s.member = StringAt(v["member"], "shape");
    if (v.HasMember("key")) s.key = StringAt(v["key"], "shape");
    if (v.HasMember("value")) s.value = StringAt(v["value"], "shape");
    s.min = NumberAt(v, "min");
    s.max = NumberAt(v, "max");
    s.pattern_text = StringAt(v, "pattern");
    if (!s.pattern_text.empty()) {
      if (std::optional<std::string> why = JavaOnlySyntax(s.pattern_text)) {
        data->skipped_patterns.push_back(
            absl::StrCat(name, ": ", s.pattern_text, " (", *why, ")"));
      } else {
        try {
          s.pattern = std::make_shared<const std::regex>(
              s.pattern_text, std::regex::ECMAScript);
        } catch (const std::regex_error& e) {
          data->skipped_patterns.push_back(
              absl::StrCat(name, ": ", s.pattern_text, " (", e.what(), ")"));
        }
      }
    }
    data->shapes.emplace(name, std::move(s));
  }
  return AwsModel(std::move(data));
}

std::vector<ModelProblem> AwsModel::Check(std::string_view operation,
                                          std::string_view json) const {
  std::vector<ModelProblem> out;
  auto op = data_->operations.find(operation);
  if (op == data_->operations.end()) {
    out.push_back({Kind::kSerialization,
                   absl::StrCat("(operation): ", AbslView(operation),
                                " is not an operation of ", data_->service)});
    return out;
  }
  rapidjson::Document doc;
  doc.Parse<rapidjson::kParseValidateEncodingFlag>(json.data(), json.size());
  if (doc.HasParseError()) {
    out.push_back(
        {Kind::kSerialization,
         absl::StrCat("(body): not valid JSON: ",
                      rapidjson::GetParseError_En(doc.GetParseError()),
                      " at offset ", doc.GetErrorOffset())});
    return out;
  }
  if (!doc.IsObject()) {
    out.push_back(
        {Kind::kSerialization,
         absl::StrCat("(body): expected an object, got ", JsonTypeName(doc))});
    return out;
  }
  if (op->second.empty()) {
    for (const auto& m : doc.GetObject()) {
      out.push_back({Kind::kSerialization,
                     absl::StrCat(m.name.GetString(), ": unknown member")});
    }
    return out;
  }
  Validator(*data_, out).Check(op->second, doc, "");
  return out;
}

std::vector<std::string> AwsModel::ValidateInput(std::string_view operation,
                                                 std::string_view json) const {
  std::vector<std::string> out;
  for (ModelProblem& p : Check(operation, json))
    out.push_back(std::move(p.text));
  return out;
}

bool AwsModel::HasOperation(std::string_view operation) const {
  return data_->operations.contains(operation);
}

std::vector<std::string> AwsModel::operations() const {
  std::vector<std::string> out;
  for (const auto& [name, input] : data_->operations) out.push_back(name);
  return out;
}

std::string AwsModel::target_prefix() const { return data_->target_prefix; }
std::string AwsModel::signing_name() const { return data_->signing_name; }
std::vector<std::string> AwsModel::skipped_patterns() const {
  return data_->skipped_patterns;
}

}  // namespace delegate::testing

#include "manager/harness/json_fields.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "rapidjson/error/en.h"
#include "rapidjson/stringbuffer.h"
#include "util/strings.h"

namespace delegate::harness {
namespace {

using Value = rapidjson::Value;

// Not kParseFullPrecisionFlag: the manager's numbers are whole (Int64 takes
// a double only when it is exactly whole), and RapidJSON 1.1.0's
// full-precision path passes 0 to __builtin_clzll, undefined, for a
// mantissa of zeros such as 0.000...0 (found by
// tests/fuzz/runner_events_fuzz.cc).
constexpr unsigned kParseFlags = rapidjson::kParseIterativeFlag;
constexpr int kMaxDepth = 64;

bool DepthWithin(const Value& v, int budget) {
  if (budget < 0) return false;
  if (v.IsObject()) {
    for (const auto& m : v.GetObject()) {
      if (!DepthWithin(m.value, budget - 1)) return false;
    }
  } else if (v.IsArray()) {
    for (const Value& item : v.GetArray()) {
      if (!DepthWithin(item, budget - 1)) return false;
    }
  }
  return true;
}

std::string Finish(const rapidjson::StringBuffer& buffer) {
  return std::string(buffer.GetString(), buffer.GetSize());
}

}  // namespace

// ------------------------------------------------------------ errors, paths

absl::Status Invalid(std::string_view path, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(AbslView(path), ": ", AbslView(what)));
}

std::string Child(std::string_view path, std::string_view key) {
  if (!IsPlainKey(key)) {
    return absl::StrCat(AbslView(path), "[\"", AbslView(key), "\"]");
  }
  if (path.empty()) return std::string(key);
  return absl::StrCat(AbslView(path), ".", AbslView(key));
}

std::string Index(std::string_view path, size_t i) {
  return absl::StrCat(AbslView(path), "[", i, "]");
}

std::string Text(const Value& v) {
  return std::string(v.GetString(), v.GetStringLength());
}

// ------------------------------------------------------------ JSON in

absl::Status ParseJson(std::string_view text, std::string_view what,
                       rapidjson::Document& doc, std::string_view not_json) {
  if (absl::StripAsciiWhitespace(AbslView(text)).empty()) {
    return Invalid(what, absl::StrCat(AbslView(not_json), " (empty)"));
  }
  doc.Parse<kParseFlags>(text.data(), text.size());
  if (doc.HasParseError()) {
    return Invalid(
        what, absl::StrCat(AbslView(not_json), " (",
                           rapidjson::GetParseError_En(doc.GetParseError()),
                           " at offset ", doc.GetErrorOffset(), ")"));
  }
  if (!DepthWithin(doc, kMaxDepth)) {
    return Invalid(what,
                   absl::StrCat("nested deeper than ", kMaxDepth, " levels"));
  }
  return absl::OkStatus();
}

Fields::Fields(const Value& object, std::string path)
    : object_(&object), path_(std::move(path)) {}

absl::StatusOr<Fields> Fields::Of(const Value& v, std::string path) {
  if (!v.IsObject()) return Invalid(path, "expected an object");
  return Fields(v, std::move(path));
}

const Value* Fields::Get(const char* name) const {
  auto it = object_->FindMember(name);
  if (it == object_->MemberEnd() || it->value.IsNull()) return nullptr;
  return &it->value;
}

absl::Status Fields::String(const char* name, std::string& out) const {
  const Value* v = Get(name);
  if (v == nullptr) return absl::OkStatus();
  if (!v->IsString()) return Invalid(PathOf(name), "expected a string");
  out = Text(*v);
  return absl::OkStatus();
}

absl::Status Fields::Secret(const char* name, SecretString& out) const {
  std::string value;
  if (absl::Status s = String(name, value); !s.ok()) return s;
  if (Get(name) != nullptr) out = SecretString(std::move(value));
  return absl::OkStatus();
}

absl::Status Fields::Bool(const char* name, bool& out) const {
  const Value* v = Get(name);
  if (v == nullptr) return absl::OkStatus();
  if (!v->IsBool()) return Invalid(PathOf(name), "expected true or false");
  out = v->GetBool();
  return absl::OkStatus();
}

absl::Status Fields::Int64(const char* name, int64_t& out) const {
  const Value* v = Get(name);
  if (v == nullptr) return absl::OkStatus();
  if (v->IsInt64()) {
    out = v->GetInt64();
    return absl::OkStatus();
  }
  if (v->IsDouble()) {
    const double d = v->GetDouble();
    // The range first: casting a double outside int64's range is undefined
    // (found by tests/fuzz/harness_payload_fuzz.cc).
    if (d > -9.2e18 && d < 9.2e18 &&
        d == static_cast<double>(static_cast<int64_t>(d))) {
      out = static_cast<int64_t>(d);
      return absl::OkStatus();
    }
  }
  return Invalid(PathOf(name), "expected a whole number");
}

absl::Status Fields::NonNegative(const char* name, int64_t& out) const {
  if (absl::Status s = Int64(name, out); !s.ok()) return s;
  if (out < 0) return Invalid(PathOf(name), "must not be negative");
  return absl::OkStatus();
}

absl::Status Fields::Strings(const char* name,
                             std::vector<std::string>& out) const {
  const Value* v = Get(name);
  if (v == nullptr) return absl::OkStatus();
  const std::string path = PathOf(name);
  if (!v->IsArray()) return Invalid(path, "expected an array of strings");
  out.clear();
  for (size_t i = 0; i < v->Size(); ++i) {
    const Value& item = (*v)[static_cast<rapidjson::SizeType>(i)];
    if (!item.IsString()) return Invalid(Index(path, i), "expected a string");
    out.push_back(Text(item));
  }
  return absl::OkStatus();
}

absl::Status Fields::StringMap(const char* name,
                               std::map<std::string, std::string>& out) const {
  const Value* v = Get(name);
  if (v == nullptr) return absl::OkStatus();
  const std::string path = PathOf(name);
  if (!v->IsObject()) {
    return Invalid(path, "expected an object of string values");
  }
  for (const auto& m : v->GetObject()) {
    const std::string key = Text(m.name);
    if (!m.value.IsString()) {
      return Invalid(Child(path, key), "expected a string");
    }
    out[key] = Text(m.value);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<Fields>> Fields::Object(const char* name) const {
  const Value* v = Get(name);
  if (v == nullptr) return std::optional<Fields>();
  absl::StatusOr<Fields> f = Of(*v, PathOf(name));
  if (!f.ok()) return f.status();
  return std::optional<Fields>(*std::move(f));
}

absl::StatusOr<const Value*> Fields::Array(const char* name) const {
  const Value* v = Get(name);
  if (v != nullptr && !v->IsArray()) {
    return Invalid(PathOf(name), "expected an array");
  }
  return v;
}

absl::Status Fields::ForEachObject(
    const char* name,
    absl::FunctionRef<absl::Status(const Fields&)> visit) const {
  absl::StatusOr<const Value*> list = Array(name);
  if (!list.ok()) return list.status();
  if (*list == nullptr) return absl::OkStatus();
  const std::string path = PathOf(name);
  for (size_t i = 0; i < (*list)->Size(); ++i) {
    absl::StatusOr<Fields> item =
        Of((**list)[static_cast<rapidjson::SizeType>(i)], Index(path, i));
    if (!item.ok()) return item.status();
    if (absl::Status s = visit(*item); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<Fields> ParseObject(std::string_view text, std::string_view what,
                                   rapidjson::Document& doc) {
  if (absl::Status s = ParseJson(text, what, doc); !s.ok()) return s;
  return Fields::Of(doc, std::string(what));
}

absl::StatusOr<Fields> ParseBody(std::string_view body, std::string_view what,
                                 rapidjson::Document& doc) {
  if (absl::Status s = ParseJson(body, what, doc); !s.ok()) return s;
  if (!doc.IsObject()) return Invalid(what, "expected an object");
  return Fields(doc, "");
}

// ------------------------------------------------------------ JSON out

std::string Serialize(const Value& v) {
  rapidjson::StringBuffer buffer;
  json::Writer w(buffer);
  v.Accept(w);
  return Finish(buffer);
}

std::string WriteObject(absl::FunctionRef<void(json::Writer&)> members) {
  rapidjson::StringBuffer buffer;
  json::Writer w(buffer);
  w.StartObject();
  members(w);
  w.EndObject();
  return Finish(buffer);
}

}  // namespace delegate::harness

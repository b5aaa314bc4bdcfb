#include "config/node_reader.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "config/stage_document.h"

namespace delegate::config {
namespace {

size_t EditDistance(absl::string_view a, absl::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1,
                         diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::optional<int64_t> ParseInt64(absl::string_view text) {
  // from_chars takes no '+'; take one, but not "+-1".
  if (!text.empty() && text[0] == '+') {
    text.remove_prefix(1);
    if (!text.empty() && text[0] == '-') return std::nullopt;
  }
  if (text.empty()) return std::nullopt;
  int64_t value = 0;
  const auto [end, ec] =
      std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) {
    return std::nullopt;
  }
  return value;
}

bool LooksLikeInteger(absl::string_view text) {
  if (!text.empty() && (text[0] == '+' || text[0] == '-')) {
    text.remove_prefix(1);
  }
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
    return c >= '0' && c <= '9';
  });
}

std::optional<double> ParseDouble(absl::string_view text) {
  if (!text.empty() && text[0] == '+') {
    text.remove_prefix(1);
    if (!text.empty() && text[0] == '-') return std::nullopt;
  }
  if (text.empty()) return std::nullopt;
  double value = 0;
  const auto [end, ec] =
      std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() ||
      !std::isfinite(value)) {
    return std::nullopt;
  }
  return value;
}

}  // namespace

std::string Describe(const Node& n) {
  if (n.is_mapping()) return "a mapping";
  if (n.is_sequence()) return "a list";
  if (n.is_null()) return "null";
  if (n.quoted) return absl::StrCat("a string '", QuoteText(n.text), "'");
  return absl::StrCat("'", QuoteText(n.text), "'");
}

std::string Squash(absl::string_view s) {
  std::string out;
  for (char c : s) {
    if (c != '_' && c != '-') {
      out += absl::ascii_tolower(static_cast<unsigned char>(c));
    }
  }
  return out;
}

absl::string_view Suggest(absl::string_view key, Keys known) {
  constexpr size_t kMaxComparedLength = 64;
  if (key.size() > kMaxComparedLength) return {};
  const std::string squashed = Squash(key);
  for (absl::string_view k : known) {
    if (Squash(k) == squashed) return k;
  }
  absl::string_view best;
  size_t best_distance = SIZE_MAX;
  for (absl::string_view k : known) {
    const size_t d = EditDistance(key, k);
    if (d < best_distance) {
      best_distance = d;
      best = k;
    }
  }
  if (best_distance <= std::max<size_t>(1, best.size() / 4)) return best;
  return {};
}

Fields::Fields(NodeReader& reader, const Node& mapping, std::string path,
               Keys known)
    : mapping_(mapping), path_(std::move(path)) {
  for (const MapEntry& entry : mapping.entries) {
    const Node& key = reader.doc().node(entry.key);
    const Node& value = reader.doc().node(entry.value);
    if (std::find(known.begin(), known.end(), key.text) == known.end()) {
      std::string message =
          absl::StrCat("unknown field '", QuoteText(key.text), "'");
      if (absl::string_view s = Suggest(key.text, known); !s.empty()) {
        absl::StrAppend(&message, " (did you mean '", s, "'?)");
      } else {
        absl::StrAppend(&message, "; expected one of ",
                        absl::StrJoin(known, ", "));
      }
      reader.Error(key, path_, std::move(message));
      continue;
    }
    auto it = std::find_if(found_.begin(), found_.end(), [&](const Found& f) {
      return f.key->text == key.text;
    });
    if (it != found_.end()) {
      reader.Error(key, path_,
                   absl::StrCat("duplicate key '", QuoteText(key.text),
                                "' (first at line ", it->key->line, ")"));
      continue;
    }
    found_.push_back({&key, &value});
  }
}

const Node* Fields::Get(absl::string_view key) const {
  const Node* n = GetEvenNull(key);
  return n == nullptr || n->is_null() ? nullptr : n;
}

const Node* Fields::GetEvenNull(absl::string_view key) const {
  for (const Found& f : found_) {
    if (f.key->text == key) return f.value;
  }
  return nullptr;
}

void NodeReader::Error(const Node& at, absl::string_view path,
                       std::string message) {
  problems_.push_back(
      {at.line, at.column, std::string(path), std::move(message)});
}

void NodeReader::Missing(const Fields& fields, absl::string_view key,
                         absl::string_view why) {
  Error(fields.node(), fields.PathOf(key),
        absl::StrCat("required field is missing", why));
}

std::optional<Fields> NodeReader::Mapping(const Node& n,
                                          const std::string& path, Keys known) {
  if (!n.is_mapping()) {
    Error(n, path,
          absl::StrCat("expected a mapping with fields like ", *known.begin(),
                       ", got ", Describe(n)));
    return std::nullopt;
  }
  return Fields(*this, n, path, known);
}

std::optional<std::string> NodeReader::String(const Node& n,
                                              const std::string& path) {
  if (!n.is_scalar()) {
    Error(n, path, absl::StrCat("expected a string, got ", Describe(n)));
    return std::nullopt;
  }
  if (absl::StrContains(n.text, absl::string_view("\0", 1))) {
    Error(n, path, "the string contains a NUL character");
    return std::nullopt;
  }
  return n.text;
}

std::optional<std::string> NodeReader::NonEmptyString(const Node& n,
                                                      const std::string& path) {
  std::optional<std::string> s = String(n, path);
  if (s && s->empty()) {
    Error(n, path, "expected a non-empty string");
    return std::nullopt;
  }
  return s;
}

std::optional<bool> NodeReader::Bool(const Node& n, const std::string& path) {
  if (n.is_scalar() && !n.quoted) {
    if (n.text == "true" || n.text == "True" || n.text == "TRUE") {
      return true;
    }
    if (n.text == "false" || n.text == "False" || n.text == "FALSE") {
      return false;
    }
  }
  Error(n, path, absl::StrCat("expected true or false, got ", Describe(n)));
  return std::nullopt;
}

std::optional<int64_t> NodeReader::Int(const Node& n, const std::string& path,
                                       int64_t min,
                                       absl::string_view expected) {
  if (n.is_scalar() && !n.quoted) {
    if (std::optional<int64_t> v = ParseInt64(n.text)) {
      if (*v >= min) return v;
    } else if (LooksLikeInteger(n.text)) {
      Error(n, path,
            absl::StrCat("expected ", expected, ", got ", Describe(n),
                         " (out of range)"));
      return std::nullopt;
    }
  }
  Error(n, path, absl::StrCat("expected ", expected, ", got ", Describe(n)));
  return std::nullopt;
}

std::optional<double> NodeReader::PositiveNumber(const Node& n,
                                                 const std::string& path) {
  if (n.is_scalar() && !n.quoted) {
    if (std::optional<double> v = ParseDouble(n.text); v && *v > 0) {
      return v;
    }
  }
  Error(n, path,
        absl::StrCat("expected a positive number like 1.5, got ", Describe(n)));
  return std::nullopt;
}

std::optional<absl::Duration> NodeReader::Duration(const Node& n,
                                                   const std::string& path) {
  absl::Duration d;
  // ParseDuration takes "0" and "inf" without a unit; neither is a timeout.
  if (n.is_scalar() && absl::ParseDuration(n.text, &d) &&
      d > absl::ZeroDuration() && d != absl::InfiniteDuration()) {
    return d;
  }
  Error(n, path,
        absl::StrCat("expected a duration like 30s, 10m or 1h30m, got ",
                     Describe(n)));
  return std::nullopt;
}

std::optional<std::vector<std::string>> NodeReader::StringList(
    const Node& n, const std::string& path) {
  if (!n.is_sequence()) {
    Error(n, path,
          absl::StrCat("expected a list of strings, got ", Describe(n)));
    return std::nullopt;
  }
  std::vector<std::string> out;
  bool ok = true;
  for (size_t i = 0; i < n.items.size(); ++i) {
    const Node& item = doc_.node(n.items[i]);
    const std::string item_path = IndexPath(path, i);
    if (item.is_null()) {
      Error(item, item_path, "expected a string, got null");
      ok = false;
      continue;
    }
    std::optional<std::string> s = String(item, item_path);
    if (!s) {
      ok = false;
      continue;
    }
    out.push_back(*std::move(s));
  }
  if (!ok) return std::nullopt;
  return out;
}

}  // namespace delegate::config

// The small RapidJSON pieces every JSON speaker of the library needs: write a
// string or key from a string_view, read a member that may be absent or of
// another type.
#ifndef DELEGATE_UTIL_JSON_H_
#define DELEGATE_UTIL_JSON_H_

#include <string>
#include <string_view>
#include <vector>

#include "rapidjson/document.h"
#include "rapidjson/stringbuffer.h"
#include "rapidjson/writer.h"

namespace delegate::json {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

inline void String(Writer& w, std::string_view s) {
  w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
}
inline void Key(Writer& w, std::string_view s) {
  w.Key(s.data(), static_cast<rapidjson::SizeType>(s.size()));
}
// "key": "value".
inline void StringField(Writer& w, std::string_view key,
                        std::string_view value) {
  Key(w, key);
  String(w, value);
}
inline void StringList(Writer& w, const std::vector<std::string>& list) {
  w.StartArray();
  for (const std::string& s : list) String(w, s);
  w.EndArray();
}

// Member `name` of `v` when `v` is an object that has it; nullptr otherwise.
inline const rapidjson::Value* Member(const rapidjson::Value& v,
                                      const char* name) {
  if (!v.IsObject()) return nullptr;
  auto it = v.FindMember(name);
  return it == v.MemberEnd() ? nullptr : &it->value;
}
// The string member `name`, or "" when absent or not a string.
inline std::string StringMember(const rapidjson::Value& v, const char* name) {
  const rapidjson::Value* m = Member(v, name);
  return m && m->IsString() ? std::string(m->GetString(), m->GetStringLength())
                            : std::string();
}
// The array member `name`, or nullptr when absent or not an array.
inline const rapidjson::Value* ArrayMember(const rapidjson::Value& v,
                                           const char* name) {
  const rapidjson::Value* m = Member(v, name);
  return m && m->IsArray() ? m : nullptr;
}

}  // namespace delegate::json

#endif  // DELEGATE_UTIL_JSON_H_

// What the Harness payload tests share: expected JSON parsed for comparison,
// a string value's text, and the message of a failed call.
#ifndef DELEGATE_TESTS_MANAGER_HARNESS_PAYLOAD_TEST_UTIL_H_
#define DELEGATE_TESTS_MANAGER_HARNESS_PAYLOAD_TEST_UTIL_H_

#include <string>

#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "rapidjson/document.h"

namespace delegate::harness {

// `text` parsed; a parse error fails the test.
inline rapidjson::Document Json(const std::string& text) {
  rapidjson::Document d;
  d.Parse(text.c_str(), text.size());
  EXPECT_FALSE(d.HasParseError()) << text;
  return d;
}

template <typename T>
std::string Msg(const absl::StatusOr<T>& s) {
  return std::string(s.status().message());
}

inline std::string Str(const rapidjson::Value& v) {
  return std::string(v.GetString(), v.GetStringLength());
}

}  // namespace delegate::harness

#endif  // DELEGATE_TESTS_MANAGER_HARNESS_PAYLOAD_TEST_UTIL_H_

// What CloudWatch Logs' PutLogEvents accepts, checked independently of the
// batcher: the logs client tests and the batcher's fuzz target
// (tests/fuzz/cloudwatch_batch_fuzz.cc) both hold BatchLogEvents to it.
// Header-only, without GoogleTest, so that a fuzz target can include it.
#ifndef DELEGATE_TESTS_FAKES_LOG_BATCH_CHECK_H_
#define DELEGATE_TESTS_FAKES_LOG_BATCH_CHECK_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "aws/logs_client.h"

namespace delegate::testing {

// Decodes code points one by one: no overlong forms, surrogates or values
// above U+10FFFF.
inline bool ValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const int n = c < 0x80         ? 1
                  : (c >> 5) == 6  ? 2
                  : (c >> 4) == 14 ? 3
                  : (c >> 3) == 30 ? 4
                                   : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : c & (0x7F >> n);
    for (int k = 1; k < n; ++k) {
      const unsigned char d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += n;
  }
  return true;
}

// PutLogEvents' size of a batch: message bytes plus 26 per event.
inline size_t BatchBytes(const std::vector<aws::LogEvent>& batch) {
  size_t bytes = 0;
  for (const aws::LogEvent& e : batch) bytes += e.message.size() + 26;
  return bytes;
}

// What is wrong with a PutLogEvents batch, or "": empty or over 10,000
// events, over 1,048,576 bytes, spanning 24 h or more, out of order, or an
// event that is empty, negative in time, over `max_event_bytes` or not
// UTF-8.
inline std::string BatchProblem(
    const std::vector<aws::LogEvent>& batch,
    size_t max_event_bytes = aws::kMaxLogEventBytes) {
  if (batch.empty() || batch.size() > 10000) {
    return std::to_string(batch.size()) + " events";
  }
  if (BatchBytes(batch) > 1048576) {
    return std::to_string(BatchBytes(batch)) + " bytes";
  }
  if (batch.back().timestamp_ms - batch.front().timestamp_ms >=
      24 * 3600 * 1000) {
    return "spans 24 h or more";
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    const aws::LogEvent& e = batch[i];
    if (i > 0 && e.timestamp_ms < batch[i - 1].timestamp_ms) {
      return "not in chronological order";
    }
    if (e.timestamp_ms < 0) return "a negative time";
    if (e.message.empty()) return "an empty message";
    if (e.message.size() > max_event_bytes) return "an event too large";
    if (!ValidUtf8(e.message)) return "a message that is not UTF-8";
  }
  return "";
}

}  // namespace delegate::testing

#endif  // DELEGATE_TESTS_FAKES_LOG_BATCH_CHECK_H_

// The CloudWatch Logs batcher, checked, not just run: every batch it makes
// is one PutLogEvents accepts (at most 10,000 events and 1,048,576 bytes
// counting 26 per event, sorted by time, less than 24 h from first to last,
// every message non-empty valid UTF-8 within the event limit, no negative
// time), and no event is lost: at least as many events come out as went
// in, and every input timestamp (a negative one as 0) is still there.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "aws/logs_client.h"
#include "fuzz_input.h"
#include "tests/fakes/log_batch_check.h"

namespace aws = delegate::aws;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  delegate::fuzz::FuzzInput in(data, size);
  const size_t max_event_bytes = in.Range(0, 300);
  // Repeats make the big batches (10,000 events, 1 MiB) cheap to reach.
  const size_t repeat = in.Range(1, 32) == 32 ? in.Range(1, 12000) : 1;
  std::vector<aws::LogEvent> events;
  while (!in.empty() && events.size() < 64) {
    aws::LogEvent e;
    e.timestamp_ms =
        static_cast<int64_t>(in.Range(0, 1 << 24)) * (in.Bool() ? 1 : 10'000) -
        (in.Bool() ? 0 : 1000);
    e.message = in.String(in.Bool() ? 256 : 48);
    events.push_back(std::move(e));
  }
  if (repeat > 1 && !events.empty()) {
    // 96 bytes a message reach both the 10,000-event and the 1 MiB limit
    // without making every such input cost megabytes; and no more than
    // 12,000 events once the batcher has cut them to the event limit (a
    // 4-byte limit makes 24 of each), or the target runs at 140 inputs/s.
    const size_t piece = std::max<size_t>(max_event_bytes, 4);
    std::vector<aws::LogEvent> many;
    many.reserve(std::min<size_t>(repeat, 12'000));
    for (size_t i = 0, made = 0; i < repeat && made < 12'000; ++i) {
      const aws::LogEvent& e = events[i % events.size()];
      many.push_back({e.timestamp_ms, e.message.substr(0, 96)});
      made +=
          std::max<size_t>(1, (many.back().message.size() + piece - 1) / piece);
    }
    events = std::move(many);
  }
  const size_t input_events = events.size();
  const size_t limit = std::clamp<size_t>(max_event_bytes, 4, 1'048'550);

  std::vector<std::vector<aws::LogEvent>> batches =
      aws::BatchLogEvents(events, max_event_bytes);
  size_t out_events = 0;
  std::vector<int64_t> times;
  int64_t previous_batch_end = INT64_MIN;
  for (const std::vector<aws::LogEvent>& batch : batches) {
    const std::string problem = delegate::testing::BatchProblem(batch, limit);
    FUZZ_CHECK(problem.empty(), problem);
    for (const aws::LogEvent& e : batch) times.push_back(e.timestamp_ms);
    FUZZ_CHECK(previous_batch_end <= batch.front().timestamp_ms,
               "batches out of order");
    previous_batch_end = batch.back().timestamp_ms;
    out_events += batch.size();
  }
  FUZZ_CHECK(out_events >= input_events, "events lost");
  // Every input timestamp (clamped at 0) is still there (the batches are
  // in order, so `times` is sorted).
  for (const aws::LogEvent& e : events) {
    FUZZ_CHECK(std::binary_search(times.begin(), times.end(),
                                  std::max<int64_t>(e.timestamp_ms, 0)),
               "a timestamp lost");
  }
  return 0;
}

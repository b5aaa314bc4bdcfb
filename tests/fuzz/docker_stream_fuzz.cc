// The Docker Engine's multiplexed attach/logs stream, cut into network
// chunks anywhere. Every payload byte comes out exactly once, in order, and
// never as an empty piece.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "executor/docker/docker_stream.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  delegate::fuzz::FuzzInput in(data, size);
  const size_t seed = in.Range(1, 64);
  std::string_view stream = in.Rest();

  // What the frames carry, computed independently of the demuxer.
  std::string expected;
  bool well_formed = true;
  for (size_t pos = 0; pos < stream.size();) {
    if (stream.size() - pos < 8) {
      well_formed = false;
      break;
    }
    const auto* h = reinterpret_cast<const unsigned char*>(stream.data() + pos);
    if (h[0] > 2) {
      well_formed = false;
      break;
    }
    const size_t n = (size_t{h[4]} << 24) | (size_t{h[5]} << 16) |
                     (size_t{h[6]} << 8) | size_t{h[7]};
    pos += 8;
    if (stream.size() - pos < n) {
      well_formed = false;
      break;
    }
    expected.append(stream.substr(pos, n));
    pos += n;
  }

  std::string got;
  delegate::OutputCallback output = [&](delegate::LogStream,
                                        std::string_view bytes) {
    FUZZ_CHECK(!bytes.empty(), "an empty piece");
    got.append(bytes);
  };
  delegate::docker::StreamDemuxer demuxer(output);
  absl::Status status;
  for (size_t pos = 0, chunk = seed; pos < stream.size() && status.ok();
       pos += chunk, chunk = chunk * 7 % 61 + 1) {
    status = demuxer.Feed(stream.substr(pos, chunk));
  }
  if (status.ok()) status = demuxer.Finish();
  FUZZ_CHECK(status.ok() == well_formed, status.ToString());
  if (well_formed) FUZZ_CHECK(got == expected, "payload bytes changed");
  return 0;
}

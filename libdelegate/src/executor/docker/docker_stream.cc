#include "executor/docker/docker_stream.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace delegate::docker {

absl::Status StreamDemuxer::Feed(std::string_view chunk) {
  if (broken_) return absl::DataLossError("Docker stream already corrupt");
  while (!chunk.empty()) {
    if (payload_left_ > 0) {
      size_t n = std::min<size_t>(payload_left_, chunk.size());
      if (output_) output_(stream_, chunk.substr(0, n));
      payload_left_ -= static_cast<uint32_t>(n);
      chunk.remove_prefix(n);
      continue;
    }
    size_t n = std::min(sizeof(header_) - header_size_, chunk.size());
    std::copy_n(chunk.data(), n, header_ + header_size_);
    header_size_ += n;
    chunk.remove_prefix(n);
    if (header_size_ < sizeof(header_)) break;
    header_size_ = 0;
    switch (header_[0]) {
      case 0:  // stdin echoed back; not attached by us, but harmless
      case 1:
        stream_ = LogStream::kStdout;
        break;
      case 2:
        stream_ = LogStream::kStderr;
        break;
      default:
        broken_ = true;
        return absl::DataLossError(absl::StrCat(
            "Docker stream: unknown stream type ", static_cast<int>(header_[0]),
            " (is the container running with a TTY?)"));
    }
    payload_left_ = (uint32_t{header_[4]} << 24) |
                    (uint32_t{header_[5]} << 16) | (uint32_t{header_[6]} << 8) |
                    uint32_t{header_[7]};
  }
  return absl::OkStatus();
}

absl::Status StreamDemuxer::Finish() const {
  if (broken_) return absl::DataLossError("Docker stream corrupt");
  if (header_size_ > 0 || payload_left_ > 0) {
    return absl::DataLossError(
        absl::StrCat("Docker stream ended inside a frame (",
                     header_size_ > 0 ? "header" : "payload", ")"));
  }
  return absl::OkStatus();
}

}  // namespace delegate::docker

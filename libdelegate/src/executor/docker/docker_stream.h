// Demultiplexes the Docker Engine's attach/logs stream (containers without a
// TTY): frames of an 8-byte header [stream type (0 stdin, 1 stdout,
// 2 stderr), 0, 0, 0, payload size as uint32 big-endian] and the payload.
// Network chunks split headers and payloads anywhere.
#ifndef DELEGATE_EXECUTOR_DOCKER_DOCKER_STREAM_H_
#define DELEGATE_EXECUTOR_DOCKER_DOCKER_STREAM_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "delegate/process.h"

namespace delegate::docker {

class StreamDemuxer {
 public:
  // `output` must outlive the demuxer. Payload bytes are forwarded as they
  // arrive (a large frame is not buffered), never with an empty view.
  explicit StreamDemuxer(const OutputCallback& output) : output_(output) {}

  // DataLoss on an unknown stream type; the demuxer is then unusable.
  absl::Status Feed(std::string_view chunk);
  // At the end of the stream: DataLoss when it stopped inside a frame.
  absl::Status Finish() const;

 private:
  const OutputCallback& output_;
  unsigned char header_[8] = {};
  size_t header_size_ = 0;     // bytes of header_ filled
  uint32_t payload_left_ = 0;  // of the current frame
  LogStream stream_ = LogStream::kStdout;
  bool broken_ = false;
};

}  // namespace delegate::docker

#endif  // DELEGATE_EXECUTOR_DOCKER_DOCKER_STREAM_H_

// The log spool: step output kept on disk, addressed by line offset, until
// the manager has confirmed the whole log, so that a log can be sent again
// from any offset (after an outage, or when the manager finds it damaged)
// without holding it in memory. One file per step log, under a directory of
// the spool's own; every file together is bounded by `max_bytes`
// (DELEGATE_LOG_SPOOL_MIB). A line that does not fit is not written: the
// file counts it, and its owner says so in the log.
//
// A file is written through a buffer (one write(2) per 64 KiB) and read
// back with pread, finding a line through an index of every 64th line's
// position: memory per file is about 2 bytes per line.
#ifndef DELEGATE_LOGS_LOG_SPOOL_H_
#define DELEGATE_LOGS_LOG_SPOOL_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "delegate/log_sink.h"

namespace delegate {

class LogSpool {
 public:
  struct Line {
    absl::Time time;
    std::string text;
    LogStream stream = LogStream::kStdout;
    bool partial = false;
  };

  // One step's log: lines numbered from 0. Not thread-safe; files of one
  // spool may be used from different threads.
  class File {
   public:
    ~File();  // removes the file and gives its bytes back to the spool
    File(const File&) = delete;
    File& operator=(const File&) = delete;

    // Appends `line`, or counts it dropped when the spool is full (false).
    // With `force`, writes it even then (a notice about dropped lines). A
    // file that could not be written (broken()) takes nothing more.
    bool Append(absl::Time time, std::string_view text, LogStream stream,
                bool partial, bool force = false);
    // Lines from offset `from` (< lines()) into `out` (cleared first): up to
    // `max_lines`, and no more once their text reaches `max_bytes` (at least
    // one line).
    absl::Status Read(uint64_t from, size_t max_lines, size_t max_bytes,
                      std::vector<Line>& out);

    uint64_t lines() const { return lines_; }
    uint64_t dropped_lines() const { return dropped_lines_; }
    uint64_t dropped_bytes() const { return dropped_bytes_; }
    // A write failed (the disk is full, say): its lines cannot be read back.
    bool broken() const { return !error_.ok(); }

   private:
    friend class LogSpool;
    File(LogSpool& spool, int fd, std::string path);
    absl::Status Flush();

    LogSpool& spool_;
    int fd_;
    std::string path_;
    std::string pending_;   // appended, not yet written
    uint64_t written_ = 0;  // bytes in the file
    uint64_t lines_ = 0;
    std::vector<uint64_t> index_;  // position of lines 0, 64, 128, ...
    uint64_t bytes_ = 0;           // charged to the spool
    uint64_t dropped_lines_ = 0;
    uint64_t dropped_bytes_ = 0;
    absl::Status error_;  // the first write that failed
  };

  // Makes a directory of its own under `dir` (spool-XXXXXX, 0700, locked
  // while the spool lives); removes what spools that are gone (crashed
  // processes) left there.
  static absl::StatusOr<std::unique_ptr<LogSpool>> Open(const std::string& dir,
                                                        uint64_t max_bytes);
  ~LogSpool();  // removes its directory; its files must be gone
  LogSpool(const LogSpool&) = delete;
  LogSpool& operator=(const LogSpool&) = delete;

  absl::StatusOr<std::unique_ptr<File>> NewFile();

  uint64_t max_bytes() const { return max_bytes_; }
  uint64_t used_bytes() const { return used_.load(); }
  const std::string& dir() const { return dir_; }

 private:
  LogSpool(std::string dir, uint64_t max_bytes, int lock_fd)
      : dir_(std::move(dir)), max_bytes_(max_bytes), lock_fd_(lock_fd) {}
  bool Charge(uint64_t bytes, bool force);
  void Refund(uint64_t bytes) { used_.fetch_sub(bytes); }

  std::string dir_;  // its own
  uint64_t max_bytes_;
  int lock_fd_;
  std::atomic<uint64_t> used_{0};
  std::atomic<uint64_t> next_{0};
};

}  // namespace delegate

#endif  // DELEGATE_LOGS_LOG_SPOOL_H_

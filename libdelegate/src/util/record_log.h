// An append-only file of checked records: a header (a magic string and a
// format version), then records of [length u32][CRC-32 u32][bytes], little
// endian. Each Append is one write(2): once it returns, the record survives
// the process being killed (SIGKILL, an OOM kill); Sync makes what is
// written survive the machine too. Opening tells a good file from a damaged
// one, and from one a newer version wrote.
#ifndef DELEGATE_UTIL_RECORD_LOG_H_
#define DELEGATE_UTIL_RECORD_LOG_H_

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace delegate {

// CRC-32 (IEEE 802.3, as zlib's crc32), continuing from `crc`.
uint32_t Crc32(std::string_view data, uint32_t crc = 0);

// A record of the journals: a kind letter, then fields as LENGTH ':' BYTES.
std::string EncodeFields(char kind,
                         std::initializer_list<std::string_view> fields);
// False when `record` is not one; `fields` view into it.
bool DecodeFields(std::string_view record, char& kind,
                  std::vector<std::string_view>& fields);
// A journal at `path` holds a record its reader does not know: what to say.
absl::Status UnreadableRecord(const std::string& path);

// Thread-safe.
class RecordLog {
 public:
  struct Opened {
    std::unique_ptr<RecordLog> log;
    std::vector<std::string> records;
    // Bytes of a last record cut short (the process died while writing
    // it): dropped, the file cut back to the record before.
    size_t torn_bytes = 0;
  };
  // Opens `path`, creating it when missing, and reads every record.
  // FailedPrecondition when it is not such a file (another magic) or a newer
  // `version` wrote it; DataLoss when a record before the last is damaged.
  // Either way the file is left as it is, and the message names it.
  static absl::StatusOr<Opened> Open(const std::string& path,
                                     std::string_view magic, uint32_t version);
  ~RecordLog();
  RecordLog(const RecordLog&) = delete;
  RecordLog& operator=(const RecordLog&) = delete;

  // Empty records are refused (InvalidArgument).
  absl::Status Append(std::string_view record);
  // Several records with one write(2) (group commit).
  absl::Status Append(const std::vector<std::string>& records);
  // fdatasync.
  absl::Status Sync();
  // Replaces the whole file by the header and `records` (a new file synced,
  // then renamed over it): compaction.
  absl::Status Rewrite(const std::vector<std::string>& records);
  size_t bytes() const;

 private:
  RecordLog(std::string path, std::string header, int fd, size_t bytes);
  // Writes framed records; on a failed write, cuts the file back to the
  // last whole record.
  absl::Status AppendLocked(std::string_view framed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  const std::string path_;
  const std::string header_;
  mutable absl::Mutex mu_;
  int fd_ ABSL_GUARDED_BY(mu_);
  size_t bytes_ ABSL_GUARDED_BY(mu_);
};

}  // namespace delegate

#endif  // DELEGATE_UTIL_RECORD_LOG_H_

#include "util/record_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "util/strings.h"

namespace delegate {
namespace {

constexpr size_t kFrame = 8;  // length and CRC
// A record longer than this is damage, not data.
constexpr uint32_t kMaxRecord = 64 * 1024 * 1024;

// Slicing-by-8 tables of the reflected CRC-32 (0xEDB88320): table[0] is
// the classic byte table, table[k][b] the CRC of b followed by k zero
// bytes, so that eight bytes are folded per step.
using CrcTables = std::array<std::array<uint32_t, 256>, 8>;
const CrcTables& CrcTable() {
  static const CrcTables tables = [] {
    CrcTables t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i) {
      for (int k = 1; k < 8; ++k) {
        t[k][i] = t[0][t[k - 1][i] & 0xff] ^ (t[k - 1][i] >> 8);
      }
    }
    return t;
  }();
  return tables;
}

void PutU32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i)
    out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint32_t GetU32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

std::string Frame(std::string_view record) {
  std::string out;
  out.reserve(kFrame + record.size());
  PutU32(out, static_cast<uint32_t>(record.size()));
  PutU32(out, Crc32(record));
  out.append(record);
  return out;
}

absl::Status WriteAll(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(
          absl::StrCat("cannot write ", path, ": ", strerror(errno)));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

std::string Header(std::string_view magic, uint32_t version) {
  std::string h(magic);
  PutU32(h, version);
  return h;
}

}  // namespace

std::string EncodeFields(char kind,
                         std::initializer_list<std::string_view> fields) {
  std::string out(1, kind);
  for (std::string_view f : fields) {
    absl::StrAppend(&out, f.size(), ":", AbslView(f));
  }
  return out;
}

bool DecodeFields(std::string_view record, char& kind,
                  std::vector<std::string_view>& fields) {
  if (record.empty()) return false;
  kind = record[0];
  record.remove_prefix(1);
  fields.clear();
  while (!record.empty()) {
    const size_t colon = record.find(':');
    size_t length = 0;
    if (colon == std::string_view::npos ||
        !absl::SimpleAtoi(AbslView(record.substr(0, colon)), &length) ||
        record.size() - colon - 1 < length) {
      return false;
    }
    fields.push_back(record.substr(colon + 1, length));
    record.remove_prefix(colon + 1 + length);
  }
  return true;
}

absl::Status UnreadableRecord(const std::string& path) {
  return absl::DataLossError(
      absl::StrCat(path,
                   " holds a record this delegate cannot read; move it away "
                   "to start afresh"));
}

uint32_t Crc32(std::string_view data, uint32_t crc) {
  const CrcTables& t = CrcTable();
  crc = ~crc;
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  size_t n = data.size();
  for (; n >= 8; p += 8, n -= 8) {
    const uint32_t lo = crc ^ (uint32_t{p[0]} | uint32_t{p[1]} << 8 |
                               uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24);
    crc = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^
          t[4][lo >> 24] ^ t[3][p[4]] ^ t[2][p[5]] ^ t[1][p[6]] ^ t[0][p[7]];
  }
  for (; n > 0; ++p, --n) crc = t[0][(crc ^ *p) & 0xff] ^ (crc >> 8);
  return ~crc;
}

RecordLog::RecordLog(std::string path, std::string header, int fd, size_t bytes)
    : path_(std::move(path)),
      header_(std::move(header)),
      fd_(fd),
      bytes_(bytes) {}

RecordLog::~RecordLog() {
  absl::MutexLock lock(&mu_);
  if (fd_ >= 0) close(fd_);
}

absl::StatusOr<RecordLog::Opened> RecordLog::Open(const std::string& path,
                                                  std::string_view magic,
                                                  uint32_t version) {
  const std::string header = Header(magic, version);
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_APPEND, 0600);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open ", path, ": ", strerror(errno)));
  }
  std::string content;
  {
    char buf[64 * 1024];
    ssize_t n;
    while ((n = pread(fd, buf, sizeof(buf), content.size())) > 0) {
      content.append(buf, static_cast<size_t>(n));
    }
    if (n < 0) {
      const int saved = errno;
      close(fd);
      return absl::FailedPreconditionError(
          absl::StrCat("cannot read ", path, ": ", strerror(saved)));
    }
  }
  Opened opened;
  if (content.empty()) {
    if (absl::Status s = WriteAll(fd, header, path); !s.ok()) {
      close(fd);
      return s;
    }
    opened.log.reset(new RecordLog(path, header, fd, header.size()));
    return opened;
  }
  auto refuse = [&](absl::Status status) {
    close(fd);
    return status;
  };
  if (content.size() < header.size() ||
      content.compare(0, magic.size(), magic) != 0) {
    // A header cut short by a crash at creation holds no record.
    if (content.size() < header.size() &&
        header.compare(0, content.size(), content) == 0) {
      if (ftruncate(fd, 0) != 0 || !WriteAll(fd, header, path).ok()) {
        return refuse(absl::FailedPreconditionError(
            absl::StrCat("cannot repair ", path, ": ", strerror(errno))));
      }
      opened.torn_bytes = content.size();
      opened.log.reset(new RecordLog(path, header, fd, header.size()));
      return opened;
    }
    return refuse(absl::FailedPreconditionError(absl::StrCat(
        path, " is not a delegate journal (it does not start with '",
        std::string(magic),
        "'); move it away or point DELEGATE_STATE_DIR elsewhere")));
  }
  const uint32_t found = GetU32(content.data() + magic.size());
  if (found > version) {
    return refuse(absl::FailedPreconditionError(absl::StrCat(
        path, " was written by a newer delegate (journal version ", found,
        "; this one reads up to ", version,
        "); run that version, or move the file away to start afresh")));
  }
  size_t at = header.size();
  while (at < content.size()) {
    const size_t left = content.size() - at;
    bool whole = left >= kFrame;
    uint32_t length = 0;
    if (whole) {
      length = GetU32(content.data() + at);
      // No record is empty: zeros (a tail the file system left after a
      // power loss) are damage, not records.
      whole = length > 0 && length <= kMaxRecord && left - kFrame >= length;
    }
    if (whole) {
      std::string_view record(content.data() + at + kFrame, length);
      if (Crc32(record) == GetU32(content.data() + at + 4)) {
        opened.records.emplace_back(record);
        at += kFrame + length;
        continue;
      }
    }
    // Damage. At the end of the file it is the record being written when
    // the process died: cut it off. Before a good record, it is not.
    const bool at_end = !whole || at + kFrame + length == content.size();
    if (!at_end) {
      return refuse(absl::DataLossError(absl::StrCat(
          path, " is damaged at byte ", at,
          " (a record's checksum does not match, and records follow it); "
          "move it away to start afresh: what it recorded is then found "
          "only by `delegate cleanup`")));
    }
    opened.torn_bytes = content.size() - at;
    if (ftruncate(fd, static_cast<off_t>(at)) != 0) {
      return refuse(absl::FailedPreconditionError(
          absl::StrCat("cannot cut ", path, ": ", strerror(errno))));
    }
    break;
  }
  const size_t bytes = content.size() - opened.torn_bytes;
  opened.log.reset(new RecordLog(path, header, fd, bytes));
  return opened;
}

absl::Status RecordLog::Append(std::string_view record) {
  if (record.empty()) {
    return absl::InvalidArgumentError("a journal record cannot be empty");
  }
  const std::string framed = Frame(record);
  absl::MutexLock lock(&mu_);
  return AppendLocked(framed);
}

absl::Status RecordLog::AppendLocked(std::string_view framed) {
  if (fd_ < 0) {
    return absl::UnavailableError(
        absl::StrCat(path_, " could not be reopened after compaction"));
  }
  absl::Status s = WriteAll(fd_, framed, path_);
  if (s.ok()) {
    bytes_ += framed.size();
  } else if (ftruncate(fd_, static_cast<off_t>(bytes_)) != 0) {
    // Half a record stays at the end; the next Open cuts it as torn, but
    // records appended after it would look like damage: stop appending.
    close(fd_);
    fd_ = -1;
  }
  return s;
}

absl::Status RecordLog::Append(const std::vector<std::string>& records) {
  std::string framed;
  for (const std::string& r : records) {
    if (r.empty()) {
      return absl::InvalidArgumentError("a journal record cannot be empty");
    }
    framed += Frame(r);
  }
  absl::MutexLock lock(&mu_);
  return AppendLocked(framed);
}

absl::Status RecordLog::Sync() {
  absl::MutexLock lock(&mu_);
  if (fd_ < 0 || fdatasync(fd_) != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot sync ", path_, ": ", strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status RecordLog::Rewrite(const std::vector<std::string>& records) {
  std::string content = header_;
  for (const std::string& r : records) content += Frame(r);
  const std::string tmp = path_ + ".new";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot write ", tmp, ": ", strerror(errno)));
  }
  absl::Status s = WriteAll(fd, content, tmp);
  if (s.ok() && fdatasync(fd) != 0) {
    s = absl::UnavailableError(
        absl::StrCat("cannot sync ", tmp, ": ", strerror(errno)));
  }
  close(fd);
  if (!s.ok()) {
    unlink(tmp.c_str());
    return s;
  }
  absl::MutexLock lock(&mu_);
  if (rename(tmp.c_str(), path_.c_str()) != 0) {
    const int saved = errno;
    unlink(tmp.c_str());
    return absl::UnavailableError(
        absl::StrCat("cannot replace ", path_, ": ", strerror(saved)));
  }
  int appended = open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (appended < 0) {
    const int saved = errno;
    // The old descriptor names the replaced file: appending to it would
    // lose every record. Appends fail from now on.
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    return absl::UnavailableError(
        absl::StrCat("cannot reopen ", path_, ": ", strerror(saved)));
  }
  if (fd_ >= 0) close(fd_);
  fd_ = appended;
  bytes_ = content.size();
  return absl::OkStatus();
}

size_t RecordLog::bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

}  // namespace delegate

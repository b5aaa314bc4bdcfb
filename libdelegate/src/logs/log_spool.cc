#include "logs/log_spool.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace delegate {
namespace {

// A record: [text length u32][stream u8][partial u8][time, Unix µs, i64]
// [text], little endian as the machine is (the file never leaves it).
constexpr size_t kHeader = 4 + 1 + 1 + 8;
constexpr uint64_t kIndexEvery = 64;
constexpr size_t kFlushAt = 64 * 1024;
constexpr size_t kReadBlock = 64 * 1024;

std::string Errno(const char* what, const std::string& path) {
  return absl::StrCat(what, " ", path, ": ", strerror(errno));
}

}  // namespace

absl::StatusOr<std::unique_ptr<LogSpool>> LogSpool::Open(const std::string& dir,
                                                         uint64_t max_bytes) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot make the log spool directory ", dir, ": ", ec.message()));
  }
  // What spools that are gone left (their lock is free; a directory without
  // one is a spool being made, or one that died making it): their stages
  // cannot be resumed.
  const auto now = std::filesystem::file_time_type::clock::now();
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("spool-", 0) != 0 || !entry.is_directory()) continue;
    const std::string lock = entry.path().string() + "/.lock";
    int fd = open(lock.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    bool gone;
    if (fd >= 0) {
      gone = flock(fd, LOCK_EX | LOCK_NB) == 0;
      close(fd);
    } else {
      std::error_code ignored;
      gone = now - std::filesystem::last_write_time(entry.path(), ignored) >
             std::chrono::minutes(1);
    }
    if (gone) {
      std::error_code ignored;
      std::filesystem::remove_all(entry.path(), ignored);
    }
  }
  std::string own = dir + "/spool-XXXXXX";
  if (mkdtemp(own.data()) == nullptr) {  // 0700
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot make the log spool directory: ", Errno("mkdtemp", own),
        "; check DELEGATE_STATE_DIR"));
  }
  // Held while the spool lives: another process's Open leaves it alone.
  const std::string lock = own + "/.lock";
  int lock_fd = open(lock.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    const std::string error = Errno("lock", lock);
    if (lock_fd >= 0) close(lock_fd);
    std::filesystem::remove_all(own, ec);
    return absl::FailedPreconditionError(
        absl::StrCat("cannot make the log spool: ", error));
  }
  return std::unique_ptr<LogSpool>(new LogSpool(own, max_bytes, lock_fd));
}

LogSpool::~LogSpool() {
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
  close(lock_fd_);
}

absl::StatusOr<std::unique_ptr<LogSpool::File>> LogSpool::NewFile() {
  const std::string path = absl::StrCat(dir_, "/", next_.fetch_add(1), ".log");
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot make a log spool file: ", Errno("open", path)));
  }
  return std::unique_ptr<File>(new File(*this, fd, path));
}

bool LogSpool::Charge(uint64_t bytes, bool force) {
  uint64_t used = used_.load();
  do {
    if (!force && used + bytes > max_bytes_) return false;
  } while (!used_.compare_exchange_weak(used, used + bytes));
  return true;
}

LogSpool::File::File(LogSpool& spool, int fd, std::string path)
    : spool_(spool), fd_(fd), path_(std::move(path)) {}

LogSpool::File::~File() {
  close(fd_);
  unlink(path_.c_str());
  spool_.Refund(bytes_);
}

bool LogSpool::File::Append(absl::Time time, std::string_view text,
                            LogStream stream, bool partial, bool force) {
  const uint64_t size = kHeader + text.size();
  if (!error_.ok() || !spool_.Charge(size, force)) {
    ++dropped_lines_;
    dropped_bytes_ += text.size() + (partial ? 0 : 1);
    return false;
  }
  bytes_ += size;
  if (lines_ % kIndexEvery == 0) index_.push_back(written_ + pending_.size());
  const uint32_t length = static_cast<uint32_t>(text.size());
  const uint8_t flags[2] = {static_cast<uint8_t>(stream),
                            static_cast<uint8_t>(partial ? 1 : 0)};
  const int64_t us = absl::ToUnixMicros(time);
  pending_.append(reinterpret_cast<const char*>(&length), 4);
  pending_.append(reinterpret_cast<const char*>(flags), 2);
  pending_.append(reinterpret_cast<const char*>(&us), 8);
  pending_.append(text);
  ++lines_;
  if (pending_.size() >= kFlushAt) (void)Flush();
  return true;
}

absl::Status LogSpool::File::Flush() {
  if (!error_.ok()) return error_;
  size_t done = 0;
  while (done < pending_.size()) {
    ssize_t n = write(fd_, pending_.data() + done, pending_.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      error_ = absl::DataLossError(absl::StrCat(
          "the log spool cannot keep a line: ", Errno("write", path_)));
      pending_.clear();
      return error_;
    }
    done += static_cast<size_t>(n);
  }
  written_ += pending_.size();
  pending_.clear();
  return absl::OkStatus();
}

absl::Status LogSpool::File::Read(uint64_t from, size_t max_lines,
                                  size_t max_bytes, std::vector<Line>& out) {
  out.clear();
  if (from >= lines_ || max_lines == 0) return absl::OkStatus();
  if (absl::Status s = Flush(); !s.ok()) return s;
  uint64_t pos = index_[from / kIndexEvery];
  uint64_t skip = from % kIndexEvery;
  std::string block;
  size_t at = 0;  // parsed up to here in `block`
  // Makes `need` bytes available at block[at...], reading on from the file.
  auto have = [&](size_t need) -> absl::Status {
    if (block.size() - at >= need) return absl::OkStatus();
    block.erase(0, at);
    at = 0;
    while (block.size() < need) {
      const size_t want = std::max(kReadBlock, need - block.size());
      const size_t old = block.size();
      block.resize(old + want);
      ssize_t n = pread(fd_, block.data() + old, want, static_cast<off_t>(pos));
      if (n < 0 && errno == EINTR) {
        block.resize(old);
        continue;
      }
      if (n <= 0) {
        block.resize(old);
        return absl::DataLossError(
            n == 0 ? absl::StrCat("the log spool file ", path_, " ends early")
                   : Errno("read", path_));
      }
      block.resize(old + static_cast<size_t>(n));
      pos += static_cast<uint64_t>(n);
    }
    return absl::OkStatus();
  };
  size_t bytes = 0;
  for (uint64_t line = from - skip;
       line < lines_ && out.size() < max_lines && bytes < max_bytes; ++line) {
    if (absl::Status s = have(kHeader); !s.ok()) return s;
    uint32_t length;
    int64_t us;
    std::memcpy(&length, block.data() + at, 4);
    const uint8_t stream = static_cast<uint8_t>(block[at + 4]);
    const bool partial = block[at + 5] != 0;
    std::memcpy(&us, block.data() + at + 6, 8);
    if (absl::Status s = have(kHeader + length); !s.ok()) return s;
    if (skip > 0) {
      --skip;
    } else {
      out.push_back(Line{absl::FromUnixMicros(us),
                         block.substr(at + kHeader, length),
                         static_cast<LogStream>(stream), partial});
      bytes += length;
    }
    at += kHeader + length;
  }
  return absl::OkStatus();
}

}  // namespace delegate

#include "delegate/instance.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace delegate {
namespace {

namespace fs = std::filesystem;

constexpr char kStateVar[] = "DELEGATE_STATE_DIR";
constexpr size_t kIdLength = 32;

std::string NewId() {
  std::random_device random;
  std::string id;
  static constexpr char kHex[] = "0123456789abcdef";
  for (size_t i = 0; i < kIdLength; ++i) id += kHex[random() % 16];
  return id;
}

bool IsId(const std::string& s) {
  if (s.size() != kIdLength) return false;
  for (char c : s) {
    if (!absl::ascii_isdigit(c) && (c < 'a' || c > 'f')) return false;
  }
  return true;
}

std::string LockPath(const std::string& state_dir, const std::string& id) {
  return absl::StrCat(state_dir, "/instances/", id, ".lock");
}

// Opens (creating) and locks `path` without waiting: the fd, -1 when
// another process holds it (errno EWOULDBLOCK), or -1 on another error.
int OpenLocked(const std::string& path, bool create) {
  int fd =
      open(path.c_str(), O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
  if (fd < 0) return -1;
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int saved = errno;
    close(fd);
    errno = saved;
    return -1;
  }
  return fd;
}

}  // namespace

InstanceLease::InstanceLease(std::string state_dir, std::string id, int lock_fd,
                             bool persistent)
    : state_dir_(std::move(state_dir)),
      id_(std::move(id)),
      lock_fd_(lock_fd),
      persistent_(persistent) {}

InstanceLease::~InstanceLease() {
  // An ephemeral instance that ends normally has cleaned up after itself:
  // nothing is left to look for.
  if (!persistent_) unlink(LockPath(state_dir_, id_).c_str());
  close(lock_fd_);
}

absl::StatusOr<std::unique_ptr<InstanceLease>> InstanceLease::Acquire(
    const std::string& state_dir, bool persistent) {
  // Its journal and locks are this user's alone: never a link, nor a
  // directory another user made (in a shared /tmp, say). Checked before
  // anything is made in it.
  struct stat st {};
  const bool existed = lstat(state_dir.c_str(), &st) == 0;
  if (existed && !S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        kStateVar, ": ", state_dir, " is not a directory (a symbolic link?)"));
  }
  if (existed && st.st_uid != geteuid()) {
    return absl::FailedPreconditionError(absl::StrCat(
        kStateVar, ": ", state_dir, " belongs to uid ", st.st_uid,
        ", not to this user (", geteuid(), "); use a directory of your own"));
  }
  std::error_code ec;
  fs::create_directories(state_dir + "/instances", ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat(
        kStateVar, ": cannot create ", state_dir, "/instances: ", ec.message(),
        "; point it at a writable directory"));
  }
  if (!existed) chmod(state_dir.c_str(), 0700);
  std::string id;
  if (persistent) {
    const std::string path = state_dir + "/instance";
    for (int attempt = 0; attempt < 2 && id.empty(); ++attempt) {
      std::ifstream in(path);
      if (in) {
        std::stringstream text;
        text << in.rdbuf();
        id = std::string(absl::StripAsciiWhitespace(text.str()));
        if (!IsId(id)) {
          return absl::DataLossError(absl::StrCat(
              kStateVar, ": ", path, " does not hold an instance id (",
              kIdLength,
              " hex digits); it is not this delegate's, or it was damaged. "
              "Move it away to start as a new instance (what the old one "
              "left is then removed only by `delegate cleanup "
              "--all-instances`)"));
        }
        break;
      }
      // First start: a file of this process's, then linked into place, so
      // that of two servers starting at once only one id wins.
      const std::string mine = absl::StrCat(path, ".", getpid());
      {
        std::ofstream out(mine, std::ios::trunc);
        out << NewId() << "\n";
        out.flush();
        if (!out) {
          return absl::FailedPreconditionError(absl::StrCat(
              kStateVar, ": cannot write ", mine, ": ", strerror(errno)));
        }
      }
      const int linked = link(mine.c_str(), path.c_str());
      const int saved = errno;
      unlink(mine.c_str());
      if (linked != 0 && saved != EEXIST) {
        return absl::FailedPreconditionError(absl::StrCat(
            kStateVar, ": cannot write ", path, ": ", strerror(saved)));
      }
      // Read back whichever id won.
    }
  } else {
    id = NewId();
  }
  const std::string lock = LockPath(state_dir, id);
  for (int attempt = 0;; ++attempt) {
    const int fd = OpenLocked(lock, true);
    if (fd < 0) {
      if (errno == EWOULDBLOCK) {
        return absl::FailedPreconditionError(absl::StrCat(
            kStateVar, ": ", state_dir,
            " is in use by another running delegate server (instance ", id,
            "); give each delegate its own ", kStateVar));
      }
      return absl::FailedPreconditionError(absl::StrCat(
          kStateVar, ": cannot lock ", lock, ": ", strerror(errno)));
    }
    // `delegate cleanup` may have unlinked the file just before the lock
    // was taken (ForgetInstance): a lock on a file no longer at the path
    // protects nothing. Take it again.
    struct stat held {
    }, now{};
    if (fstat(fd, &held) == 0 && stat(lock.c_str(), &now) == 0 &&
        held.st_dev == now.st_dev && held.st_ino == now.st_ino) {
      return std::unique_ptr<InstanceLease>(
          new InstanceLease(state_dir, std::move(id), fd, persistent));
    }
    close(fd);
    if (attempt >= 5) {
      return absl::FailedPreconditionError(
          absl::StrCat(kStateVar, ": cannot keep a lock on ", lock));
    }
  }
}

std::vector<std::string> FindGoneInstances(const std::string& state_dir) {
  std::vector<std::string> gone;
  std::error_code ec;
  fs::directory_iterator it(state_dir + "/instances", ec);
  if (ec) return gone;
  for (const fs::directory_entry& entry : it) {
    const std::string name = entry.path().filename().string();
    if (!absl::EndsWith(name, ".lock")) continue;
    const std::string id = name.substr(0, name.size() - 5);
    if (!IsId(id)) continue;
    // Free: its process is gone. (flock is per open file, so this process's
    // own lease shows as held too.)
    const int fd = OpenLocked(entry.path().string(), false);
    if (fd < 0) continue;
    close(fd);
    gone.push_back(id);
  }
  return gone;
}

void ForgetInstance(const std::string& state_dir, const std::string& id) {
  if (!IsId(id)) return;
  const std::string path = LockPath(state_dir, id);
  const int fd = OpenLocked(path, false);
  if (fd < 0) return;
  unlink(path.c_str());
  close(fd);
}

}  // namespace delegate

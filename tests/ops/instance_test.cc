#include "delegate/instance.h"

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace delegate {
namespace {

namespace fs = std::filesystem;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

class InstanceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/instance-test-" + std::to_string(getpid());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // The id of an instance taken by a child process that then exits without
  // ending its lease, as a SIGKILL would.
  std::string KilledInstance(bool persistent) {
    int fds[2];
    EXPECT_EQ(pipe(fds), 0);
    pid_t pid = fork();
    if (pid == 0) {
      auto lease = InstanceLease::Acquire(dir_, persistent);
      std::string id = lease.ok() ? (*lease)->id() : "";
      (void)!write(fds[1], id.data(), id.size());
      _exit(0);  // no destructor runs
    }
    close(fds[1]);
    char buf[64];
    ssize_t n = read(fds[0], buf, sizeof(buf));
    close(fds[0]);
    waitpid(pid, nullptr, 0);
    return std::string(buf, n > 0 ? n : 0);
  }

  std::string dir_;
};

TEST_F(InstanceTest, AServerIsTheSameInstanceAfterARestart) {
  std::string first = KilledInstance(true);
  ASSERT_EQ(first.size(), 32u);
  auto again = InstanceLease::Acquire(dir_, true);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->id(), first);
}

TEST_F(InstanceTest, TwoServersCannotShareAStateDirectory) {
  auto first = InstanceLease::Acquire(dir_, true);
  ASSERT_TRUE(first.ok()) << first.status();
  // flock is per open file: a second lease in this process is refused as
  // another process's would be.
  auto second = InstanceLease::Acquire(dir_, true);
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(second.status().message(), HasSubstr("DELEGATE_STATE_DIR"));
  EXPECT_THAT(second.status().message(), HasSubstr("in use by another"));
}

TEST_F(InstanceTest, OnlyInstancesWhoseProcessIsGoneAreFound) {
  auto live = InstanceLease::Acquire(dir_, false);
  ASSERT_TRUE(live.ok()) << live.status();
  const std::string killed = KilledInstance(false);
  ASSERT_EQ(killed.size(), 32u);
  std::vector<std::string> gone = FindGoneInstances(dir_);
  EXPECT_THAT(gone, Contains(killed));
  EXPECT_THAT(gone, Not(Contains((*live)->id())));
  ForgetInstance(dir_, killed);
  EXPECT_THAT(FindGoneInstances(dir_), IsEmpty());
}

TEST_F(InstanceTest, ARunThatEndsNormallyLeavesNothingToFind) {
  {
    auto run = InstanceLease::Acquire(dir_, false);
    ASSERT_TRUE(run.ok()) << run.status();
  }
  EXPECT_THAT(FindGoneInstances(dir_), IsEmpty());
}

TEST_F(InstanceTest, AForeignInstanceFileIsAClearErrorAndKept) {
  fs::create_directories(dir_);
  std::ofstream(dir_ + "/instance") << "not an id\n";
  auto lease = InstanceLease::Acquire(dir_, true);
  ASSERT_FALSE(lease.ok());
  EXPECT_THAT(lease.status().message(), HasSubstr(dir_ + "/instance"));
  EXPECT_THAT(lease.status().message(), HasSubstr("Move it away"));
  std::ifstream in(dir_ + "/instance");
  std::string kept;
  std::getline(in, kept);
  EXPECT_EQ(kept, "not an id");
}

TEST_F(InstanceTest, AStateDirectoryThatIsALinkOrAnotherUsersIsRefused) {
  fs::create_directories(dir_ + "/real");
  fs::create_symlink(dir_ + "/real", dir_ + "/link");
  auto linked = InstanceLease::Acquire(dir_ + "/link", false);
  ASSERT_FALSE(linked.ok());
  EXPECT_THAT(linked.status().message(), HasSubstr("DELEGATE_STATE_DIR"));
  EXPECT_THAT(linked.status().message(), HasSubstr("not a directory"));
  if (geteuid() != 0) return;  // only root can give a directory away
  fs::create_directories(dir_ + "/theirs");
  ASSERT_EQ(chown((dir_ + "/theirs").c_str(), 65534, 65534), 0);
  auto theirs = InstanceLease::Acquire(dir_ + "/theirs", false);
  ASSERT_FALSE(theirs.ok());
  EXPECT_THAT(theirs.status().message(), HasSubstr("belongs to uid 65534"));
}

TEST_F(InstanceTest, AnUnwritableStateDirectoryNamesTheVariable) {
  // Nobody, root included, makes directories in /proc.
  auto lease = InstanceLease::Acquire("/proc/no-such-state", false);
  ASSERT_FALSE(lease.ok());
  EXPECT_THAT(lease.status().message(), HasSubstr("DELEGATE_STATE_DIR"));
}

}  // namespace
}  // namespace delegate

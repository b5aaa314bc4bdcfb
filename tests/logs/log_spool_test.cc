#include "logs/log_spool.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace delegate {
namespace {

using ::testing::ElementsAre;

const absl::Time kT0 = absl::FromUnixMicros(1'765'000'000'123'456);

class LogSpoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/log-spool-" + std::to_string(getpid());
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<LogSpool> Open(uint64_t max_bytes = uint64_t{1} << 20) {
    auto spool = LogSpool::Open(dir_, max_bytes);
    EXPECT_TRUE(spool.ok()) << spool.status();
    return spool.ok() ? *std::move(spool) : nullptr;
  }

  std::string dir_;
};

std::vector<std::string> Texts(const std::vector<LogSpool::Line>& lines) {
  std::vector<std::string> out;
  for (const LogSpool::Line& l : lines) out.push_back(l.text);
  return out;
}

TEST_F(LogSpoolTest, LinesComeBackFromAnyOffsetAsTheyWent) {
  std::unique_ptr<LogSpool> spool = Open();
  ASSERT_NE(spool, nullptr);
  auto file = spool->NewFile();
  ASSERT_TRUE(file.ok()) << file.status();
  // Across several index entries (one per 64 lines) and the write buffer
  // (64 KiB): 3,000 lines of up to 99 bytes.
  for (int i = 0; i < 3000; ++i) {
    ASSERT_TRUE((*file)->Append(
        kT0 + absl::Seconds(i),
        absl::StrCat("line ", i, std::string(i % 90, 'x')),
        i % 3 == 0 ? LogStream::kStderr : LogStream::kStdout, i % 5 == 0));
  }
  EXPECT_EQ((*file)->lines(), 3000u);
  std::vector<LogSpool::Line> out;
  for (uint64_t from : {0u, 63u, 64u, 65u, 1000u, 2999u}) {
    ASSERT_TRUE((*file)->Read(from, 3, 1 << 20, out).ok());
    ASSERT_FALSE(out.empty()) << from;
    for (size_t k = 0; k < out.size(); ++k) {
      const int i = static_cast<int>(from + k);
      EXPECT_EQ(out[k].text,
                absl::StrCat("line ", i, std::string(i % 90, 'x')));
      EXPECT_EQ(out[k].time, kT0 + absl::Seconds(i));
      EXPECT_EQ(out[k].stream,
                i % 3 == 0 ? LogStream::kStderr : LogStream::kStdout);
      EXPECT_EQ(out[k].partial, i % 5 == 0);
    }
  }
  // A byte budget stops a read early, after at least one line.
  ASSERT_TRUE((*file)->Read(100, 1000, 1, out).ok());
  EXPECT_THAT(Texts(out), ElementsAre("line 100" + std::string(10, 'x')));
  ASSERT_TRUE((*file)->Read(100, 1000, 40, out).ok());
  EXPECT_EQ(out.size(), 3u);  // 18, 19, 20 bytes: past 40 after the third
  ASSERT_TRUE((*file)->Read(2998, 10, 1 << 20, out).ok());
  EXPECT_EQ(out.size(), 2u);  // to the end, no further
  ASSERT_TRUE((*file)->Read(3000, 10, 1 << 20, out).ok());
  EXPECT_TRUE(out.empty());
  // More after a read: appended behind what was flushed for it.
  ASSERT_TRUE((*file)->Append(kT0, "late", LogStream::kStdout, false));
  ASSERT_TRUE((*file)->Read(2999, 10, 1 << 20, out).ok());
  EXPECT_THAT(Texts(out),
              ElementsAre("line 2999" + std::string(2999 % 90, 'x'), "late"));
}

TEST_F(LogSpoolTest, AFullSpoolDropsAndCountsAndAClosedFileGivesItsRoomBack) {
  // Room for two 14-byte headers and 20 bytes of text each.
  std::unique_ptr<LogSpool> spool = Open(2 * (14 + 20));
  ASSERT_NE(spool, nullptr);
  auto a = spool->NewFile();
  auto b = spool->NewFile();
  ASSERT_TRUE(a.ok() && b.ok());
  const std::string twenty(20, 'a');
  EXPECT_TRUE((*a)->Append(kT0, twenty, LogStream::kStdout, false));
  EXPECT_TRUE((*b)->Append(kT0, twenty, LogStream::kStdout, false));
  EXPECT_EQ(spool->used_bytes(), spool->max_bytes());
  EXPECT_FALSE((*b)->Append(kT0, "more", LogStream::kStdout, false));
  EXPECT_FALSE((*b)->Append(kT0, "partial", LogStream::kStdout, true));
  EXPECT_EQ((*b)->lines(), 1u);
  EXPECT_EQ((*b)->dropped_lines(), 2u);
  EXPECT_EQ((*b)->dropped_bytes(), 5u + 7u);  // with the one newline
  // A notice goes in all the same.
  EXPECT_TRUE((*b)->Append(kT0, "notice", LogStream::kSystem, false, true));
  EXPECT_EQ((*b)->lines(), 2u);
  // Closing `a` gives its room back: `b` can write again (the notice went
  // over the limit by 20 bytes: an empty line fits).
  EXPECT_FALSE((*b)->Append(kT0, "", LogStream::kStdout, false));
  a->reset();
  EXPECT_TRUE((*b)->Append(kT0, "", LogStream::kStdout, false));
  b->reset();
  EXPECT_EQ(spool->used_bytes(), 0u);
}

TEST_F(LogSpoolTest, FilesLiveInADirectoryOfTheSpoolsOwnThatGoesWithIt) {
  // What a spool that is gone left (its lock free): removed at Open.
  const std::string gone = dir_ + "/spool-gone01";
  std::filesystem::create_directories(gone);
  std::ofstream(gone + "/.lock") << "";
  std::ofstream(gone + "/0.log") << "old";
  std::unique_ptr<LogSpool> spool = Open();
  ASSERT_NE(spool, nullptr);
  EXPECT_FALSE(std::filesystem::exists(gone));
  EXPECT_EQ(std::filesystem::path(spool->dir()).parent_path(), dir_);
  EXPECT_EQ(std::filesystem::status(spool->dir()).permissions() &
                std::filesystem::perms::all,
            std::filesystem::perms::owner_all);
  // A second spool on the same directory (another connection, another
  // process) leaves the first's alone.
  std::unique_ptr<LogSpool> second = Open();
  ASSERT_NE(second, nullptr);
  EXPECT_NE(second->dir(), spool->dir());
  EXPECT_TRUE(std::filesystem::exists(spool->dir()));
  auto file = spool->NewFile();
  ASSERT_TRUE(file.ok());
  ASSERT_TRUE((*file)->Append(kT0, "x", LogStream::kStdout, false));
  std::vector<LogSpool::Line> out;
  ASSERT_TRUE((*file)->Read(0, 1, 1 << 20, out).ok());  // flushed to the file
  auto logs = [&] {
    int n = 0;
    for (const auto& e : std::filesystem::directory_iterator(spool->dir())) {
      n += e.path().extension() == ".log";
    }
    return n;
  };
  EXPECT_EQ(logs(), 1);
  file->reset();
  EXPECT_EQ(logs(), 0);
  const std::string own = spool->dir();
  spool.reset();
  EXPECT_FALSE(std::filesystem::exists(own));
}

TEST_F(LogSpoolTest, AnUnusableDirectoryIsAnErrorNamingIt) {
  std::filesystem::create_directories(dir_);
  std::ofstream(dir_ + "/file") << "not a directory";
  auto spool = LogSpool::Open(dir_ + "/file/spool", 1 << 20);
  ASSERT_FALSE(spool.ok());
  EXPECT_THAT(std::string(spool.status().message()),
              ::testing::HasSubstr(dir_ + "/file/spool"));
}

}  // namespace
}  // namespace delegate

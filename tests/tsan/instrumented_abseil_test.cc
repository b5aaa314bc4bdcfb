// In the DELEGATE_TSAN build only: the tests run with the instrumented
// abseil (scripts/tsan-abseil.sh), not Debian's. With Debian's, TSan would
// not see absl::Mutex and would report every access it guards.
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace {

TEST(TsanSetupTest, TheInstrumentedAbseilIsLoaded) {
  absl::Mutex mu;
  absl::MutexLock lock(&mu);  // libabsl_synchronization is in use
  const std::filesystem::path want =
      std::filesystem::canonical(DELEGATE_TSAN_ABSEIL_LIBDIR);
  std::ifstream maps("/proc/self/maps");
  std::string line;
  std::string loaded;
  while (std::getline(maps, line)) {
    const size_t at = line.find('/');
    if (at != std::string::npos &&
        line.find("/libabsl_synchronization.so") != std::string::npos) {
      loaded = line.substr(at);
      break;
    }
  }
  ASSERT_FALSE(loaded.empty()) << "libabsl_synchronization is not mapped";
  EXPECT_EQ(std::filesystem::canonical(loaded).parent_path(), want)
      << "LD_LIBRARY_PATH does not reach this test: " << loaded;
}

}  // namespace

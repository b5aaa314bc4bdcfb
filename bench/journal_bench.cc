// BM_TaskJournalStage: what the Harness task journal adds to a no-op stage:
// its three tasks (local_init, one local_execute, local_cleanup) each
// recorded started, answered and delivered, nine records appended with one
// write(2) each to a file in $TMPDIR, compaction included (it runs every
// 8,064 records with the default 2,000 answers kept).
#include <unistd.h>

#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "manager/harness/task_journal.h"

namespace delegate {
namespace {

void BM_TaskJournalStage(benchmark::State& state) {
  const std::string path =
      (std::filesystem::temp_directory_path() /
       absl::StrCat("delegate-bench-journal-", getpid()))
          .string();
  std::filesystem::remove(path);
  auto journal = harness::TaskJournal::Open(path);
  if (!journal.ok()) {
    state.SkipWithError(std::string(journal.status().message()).c_str());
    return;
  }
  // A step's answer as the delegate sends it: a few hundred bytes.
  const std::string answer(300, 'a');
  uint64_t n = 0;
  for (auto _ : state) {
    const std::string stage = absl::StrCat("stage-", n++);
    for (const char* type : {"local_init", "local_execute", "local_cleanup"}) {
      const std::string task = absl::StrCat(stage, "-", type);
      (void)(*journal)->Started(task, type, "step");
      (void)(*journal)->Answered(task, answer);
      (void)(*journal)->Delivered(task);
    }
  }
  state.SetItemsProcessed(state.iterations());
  journal->reset();
  std::filesystem::remove(path);
}
BENCHMARK(BM_TaskJournalStage);

}  // namespace
}  // namespace delegate

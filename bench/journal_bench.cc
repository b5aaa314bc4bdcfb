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

// A new journal in $TMPDIR named after `what`, or nullptr after telling
// `state` why not.
std::unique_ptr<harness::TaskJournal> NewJournal(benchmark::State& state,
                                                 const char* what,
                                                 std::string& path) {
  path = (std::filesystem::temp_directory_path() /
          absl::StrCat("delegate-bench-", what, "-", getpid()))
             .string();
  std::filesystem::remove(path);
  auto journal = harness::TaskJournal::Open(path);
  if (!journal.ok()) {
    state.SkipWithError(std::string(journal.status().message()).c_str());
    return nullptr;
  }
  return *std::move(journal);
}

// A step's answer as the delegate sends it: a few hundred bytes.
const std::string kAnswer(300, 'a');

void BM_TaskJournalStage(benchmark::State& state) {
  std::string path;
  auto journal = NewJournal(state, "journal", path);
  if (journal == nullptr) return;
  const std::string& answer = kAnswer;
  uint64_t n = 0;
  for (auto _ : state) {
    const std::string stage = absl::StrCat("stage-", n++);
    for (const char* type : {"local_init", "local_execute", "local_cleanup"}) {
      const std::string task = absl::StrCat(stage, "-", type);
      (void)journal->Started(task, type, "step");
      (void)journal->Answered(task, answer);
      (void)journal->Delivered(task);
    }
  }
  state.SetItemsProcessed(state.iterations());
  journal.reset();
  std::filesystem::remove(path);
}
BENCHMARK(BM_TaskJournalStage);

// BM_TaskJournalRecover: opening the journal after a crash with 100 tasks
// in flight and 2,000 answers kept (what a restarted delegate reads before
// it answers them): replay, the in-flight list, compaction.
void BM_TaskJournalRecover(benchmark::State& state) {
  std::string path;
  {
    auto journal = NewJournal(state, "recover", path);
    if (journal == nullptr) return;
    for (int i = 0; i < 2000; ++i) {
      const std::string task = absl::StrCat("done-", i);
      (void)journal->Started(task, "local_execute", "step");
      (void)journal->Answered(task, kAnswer);
      (void)journal->Delivered(task);
    }
    for (int i = 0; i < 100; ++i) {
      (void)journal->Started(absl::StrCat("running-", i), "local_execute",
                             "step");
    }
  }
  const std::string saved = path + ".saved";
  std::filesystem::copy_file(path, saved,
                             std::filesystem::copy_options::overwrite_existing);
  for (auto _ : state) {
    state.PauseTiming();
    std::filesystem::copy_file(
        saved, path, std::filesystem::copy_options::overwrite_existing);
    state.ResumeTiming();
    auto journal = harness::TaskJournal::Open(path);
    if (!journal.ok() || (*journal)->interrupted().size() != 100) {
      state.SkipWithError("the journal did not recover 100 tasks");
      break;
    }
  }
  std::filesystem::remove(path);
  std::filesystem::remove(saved);
}
BENCHMARK(BM_TaskJournalRecover)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace delegate

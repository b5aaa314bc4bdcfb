// BM_TaskJournalStage: what the Harness task journal adds to a no-op stage:
// its three tasks (local_init, one local_execute, local_cleanup) each
// recorded started (the init's and the step's with their payloads, sealed
// as the connection seals them), answered and delivered, the stage opened,
// ten records appended with one write(2) each to a file in $TMPDIR,
// compaction included.
#include <unistd.h>

#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "delegate/host_executor.h"
#include "delegate/scheduler.h"
#include "manager/harness/sealed.h"
#include "manager/harness/stage_transactions.h"
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
// A task's acquire response as the manager sends it: about 1.5 KB.
const std::string kPayload(1500, 'p');
const harness::SealKey kKey =
    harness::SealKey::Derive("0123456789abcdef0123456789abcdef", "bench");

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
      const bool kept = type[6] != 'c';  // not the cleanup
      (void)journal->Started(task, type, "step", stage,
                             kept ? kKey.Seal(kPayload) : "");
      if (type[6] == 'i') (void)journal->StageOpened(stage, task);
      (void)journal->Answered(task, answer);
      (void)journal->Delivered(task);
    }
  }
  state.SetItemsProcessed(state.iterations());
  journal.reset();
  std::filesystem::remove(path);
}
BENCHMARK(BM_TaskJournalStage);

// BM_TaskJournalRecover: opening the journal after a crash with 100 stages
// open, each with its step in flight, and 2,000 answers kept (what a
// restarted delegate reads before it resumes them): replay, the lists,
// compaction, and opening the 200 sealed payloads.
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
      const std::string stage = absl::StrCat("stage-", i);
      const std::string init = absl::StrCat("init-", i);
      (void)journal->Started(init, "local_init", "", stage,
                             kKey.Seal(kPayload));
      (void)journal->StageOpened(stage, init);
      (void)journal->Answered(init, kAnswer);
      (void)journal->Delivered(init);
      (void)journal->Started(absl::StrCat("running-", i), "local_execute",
                             "step", stage, kKey.Seal(kPayload));
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
    if (!journal.ok() || (*journal)->interrupted().size() != 100 ||
        (*journal)->open_stages().size() != 100) {
      state.SkipWithError("the journal did not recover 100 stages");
      break;
    }
    size_t opened = 0;
    for (const auto& stage : (*journal)->open_stages()) {
      opened += kKey.Open(stage.init_payload).ok();
    }
    for (const auto& task : (*journal)->interrupted()) {
      opened += kKey.Open(task.payload).ok();
    }
    if (opened != 200) {
      state.SkipWithError("a payload did not open");
      break;
    }
  }
  std::filesystem::remove(path);
  std::filesystem::remove(saved);
}
BENCHMARK(BM_TaskJournalRecover)->Unit(benchmark::kMillisecond);

class DiscardSink final : public LogSink {
 public:
  void Append(const LogLine&) override {}
};
class DiscardOutput final : public OutputWriter {
 public:
  void Write(LogStream, std::string_view) override {}
  void Flush() override {}
};

// BM_HarnessResumeStages: the rest of recovering 100 open stages of host
// steps: each resumed by a new process's StageTransactions on the real
// "local" and "host" executors (the stage checked and submitted to the
// scheduler, its stage directory found among the 100 and adopted), until
// all 100 are ready for their next step. Their directories are made by
// the executors before the timing, as the killed process left them.
void BM_HarnessResumeStages(benchmark::State& state) {
  const std::string work = (std::filesystem::temp_directory_path() /
                            absl::StrCat("delegate-bench-resume-", getpid()))
                               .string();
  ExecutorRegistry registry;
  HostExecutorOptions host;
  host.workdir = work;
  host.instance = "bench";
  if (!RegisterHostExecutor(registry, host).ok() ||
      !RegisterLocalExecutor(registry).ok()) {
    state.SkipWithError("cannot register the executors");
    return;
  }
  EventLog log([](std::string_view) {});
  DiscardSink console;
  auto init_data = [](int i) {
    return absl::StrCat(R"({"network":{"id":"net"},"stage_runtime_id":"st-)", i,
                        R"(","volumes":[]})");
  };
  const int kStages = 100;
  for (auto _ : state) {
    state.PauseTiming();
    std::filesystem::remove_all(work);
    for (int i = 0; i < kStages; ++i) {
      // What the killed process made: the stage directory of each stage.
      Stage stage;
      stage.name = "bench";
      const std::string id = absl::StrCat("st-", i, "#init-", i);
      std::string name = "bench";
      DiscardOutput output;
      const StageContext ctx{
          stage, id, name, output, Clock::Real(), {}, absl::InfiniteFuture()};
      std::unique_ptr<Executor> e = registry.Create("host");
      if (!e->Initialize(ctx).ok()) {
        state.SkipWithError("cannot make a stage directory");
        return;
      }
    }
    Scheduler scheduler({.registry = &registry});
    {
      harness::StageTransactions stages(scheduler, log, console, nullptr);
      state.ResumeTiming();
      for (int i = 0; i < kStages; ++i) {
        if (!stages.Resume(init_data(i), {}, absl::StrCat("init-", i)).ok()) {
          state.SkipWithError("a stage did not resume");
          return;
        }
      }
      state.PauseTiming();
    }  // cleans them up
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * kStages);
  std::filesystem::remove_all(work);
}
BENCHMARK(BM_HarnessResumeStages)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace delegate

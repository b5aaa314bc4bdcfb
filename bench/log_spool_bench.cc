// The log spool's cost per line (logs/log_spool.h): what DelegateSession
// pays to keep every line of a step on disk until the manager confirms the
// log, against holding it in memory as before.
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "benchmark/benchmark.h"
#include "logs/log_spool.h"

namespace delegate {
namespace {

std::unique_ptr<LogSpool> BenchSpool() {
  const char* tmp = getenv("TMPDIR");
  auto spool = LogSpool::Open(
      absl::StrCat(tmp && *tmp ? tmp : "/tmp", "/delegate-bench-spool"),
      uint64_t{4} << 30);
  if (!spool.ok()) abort();
  return *std::move(spool);
}

// Appends 100-byte lines, then reads them all back in chunks of 1,000, as a
// log sent once goes: items are lines.
void BM_LogSpoolAppendAndRead(benchmark::State& state) {
  std::unique_ptr<LogSpool> spool = BenchSpool();
  const std::string text(100, 'x');
  const int64_t lines = 100'000;
  std::vector<LogSpool::Line> batch;
  const absl::Time now = absl::Now();
  for (auto _ : state) {
    auto file = spool->NewFile();
    if (!file.ok()) abort();
    for (int64_t i = 0; i < lines; ++i) {
      (*file)->Append(now, text, LogStream::kStdout, false);
    }
    for (uint64_t at = 0; at < static_cast<uint64_t>(lines);
         at += batch.size()) {
      if (!(*file)->Read(at, 1000, 1 << 20, batch).ok() || batch.empty()) {
        abort();
      }
      benchmark::DoNotOptimize(batch.data());
    }
  }
  state.SetItemsProcessed(state.iterations() * lines);
  state.SetBytesProcessed(state.iterations() * lines * 100);
}
BENCHMARK(BM_LogSpoolAppendAndRead)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace delegate

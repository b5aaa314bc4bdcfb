#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "logs/masker.h"

namespace delegate::logs {
namespace {

constexpr size_t kChunkBytes = 64 * 1024;

std::vector<std::string> Secrets() {
  return {"ghp_16C7e42F292c6912E7710c838347Ae178B4a",
          "hunter2-Passw0rd!",
          "AKIAIOSFODNN7EXAMPLE",
          "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
          "xoxb-123456789012-abcdefghijklmnop",
          "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
          "p@ss w0rd&more",
          "dckr_pat_2b3e36beeb386dfdaacb9b46004ccb31",
          "npm_abcdefghijklmnopqrstuvwxyz0123456789",
          "glpat-xxxxxxxxxxxxxxxxxxxx"};
}

// Build-tool style output: timestamps, paths, hashes, progress, with a
// secret in about one line of 200.
std::string LogText(size_t bytes) {
  const std::vector<std::string> secrets = Secrets();
  const char* templates[] = {
      "[INFO] Downloading https://repo.maven.apache.org/maven2/org/apache/"
      "commons/commons-lang3/3.12.0/commons-lang3-3.12.0.jar",
      "Step 4/12 : RUN go build -o /out/app ./cmd/app",
      " ---> Running in 3f2a9c1d7b8e",
      "npm WARN deprecated request@2.88.2: request has been deprecated",
      "ok  \tgithub.com/example/project/pkg/server\t0.412s\tcoverage: 81.3%",
      "sha256:9b2f5e7c1a3d4e6f8a0b2c4d6e8f0a1b3c5d7e9f1a2b4c6d8e0f2a4b6c8d0e",
      "+ curl -fsSL -H 'Authorization: Bearer $TOKEN' https://api.example.com",
      "Compiling serde v1.0.188",
  };
  std::mt19937 rng(1);
  std::string text;
  int n = 0;
  while (text.size() < bytes) {
    text += "2024-05-01T12:34:56.";
    text += std::to_string(100000 + rng() % 900000);
    text += "Z ";
    if (++n % 200 == 0) {
      text += "export TOKEN=" + secrets[rng() % secrets.size()];
    } else {
      text += templates[rng() % (sizeof(templates) / sizeof(templates[0]))];
    }
    text += '\n';
  }
  text.resize(bytes);
  return text;
}

void BM_MaskingStream(benchmark::State& state) {
  auto masker = std::make_shared<const SecretMasker>(Secrets());
  const std::string text = LogText(16 * kChunkBytes);
  int64_t lines = 0;
  LineSplitter splitter(64 * 1024,
                        [&lines](std::string_view, bool) { ++lines; });
  MaskingStream stream(masker,
                       [&splitter](std::string_view b) { splitter.Write(b); });
  int64_t bytes = 0;
  for (auto _ : state) {
    for (size_t at = 0; at < text.size(); at += kChunkBytes) {
      stream.Write(std::string_view(text).substr(at, kChunkBytes));
    }
    bytes += static_cast<int64_t>(text.size());
  }
  stream.Flush();
  splitter.Flush();
  state.SetBytesProcessed(bytes);
  state.SetItemsProcessed(lines);
}
BENCHMARK(BM_MaskingStream);

// The same pipeline without secrets: the cost of line splitting alone.
void BM_LineSplitterOnly(benchmark::State& state) {
  const std::string text = LogText(16 * kChunkBytes);
  int64_t lines = 0;
  LineSplitter splitter(64 * 1024,
                        [&lines](std::string_view, bool) { ++lines; });
  MaskingStream stream(nullptr,
                       [&splitter](std::string_view b) { splitter.Write(b); });
  int64_t bytes = 0;
  for (auto _ : state) {
    for (size_t at = 0; at < text.size(); at += kChunkBytes) {
      stream.Write(std::string_view(text).substr(at, kChunkBytes));
    }
    bytes += static_cast<int64_t>(text.size());
  }
  splitter.Flush();
  state.SetBytesProcessed(bytes);
  state.SetItemsProcessed(lines);
}
BENCHMARK(BM_LineSplitterOnly);

void BM_Mask(benchmark::State& state) {
  const SecretMasker masker(Secrets());
  const std::string text = LogText(kChunkBytes);
  for (auto _ : state) {
    benchmark::DoNotOptimize(masker.Mask(text));
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(text.size()));
}
BENCHMARK(BM_Mask);

void BM_BuildMasker(benchmark::State& state) {
  const std::vector<std::string> secrets = Secrets();
  for (auto _ : state) {
    SecretMasker masker(secrets);
    benchmark::DoNotOptimize(masker.max_pattern_bytes());
  }
}
BENCHMARK(BM_BuildMasker);

}  // namespace
}  // namespace delegate::logs

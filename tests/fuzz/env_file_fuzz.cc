// The env file (--env-file, HARNESS_ENV_FILE), and the step output file
// ($HARNESS_OUTPUT_FILE), which a step writes and the delegate reads. An env
// file error names the line, never its value (it may hold the token).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "executor/outputs.h"
#include "fuzz_input.h"
#include "util/env.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<delegate::EnvMap> env = delegate::ParseEnvText(text, "f");
  if (env.ok()) {
    for (const auto& [key, value] : *env) {
      FUZZ_CHECK(!key.empty(), "an empty key");
    }
  } else {
    const std::string message(env.status().message());
    FUZZ_CHECK(message.rfind("f:", 0) == 0, message);
    // "f:<line>: expected KEY=VALUE", whatever the line held.
    FUZZ_CHECK(message.find(": expected KEY=VALUE") != std::string::npos,
               message);
  }
  std::map<std::string, std::string> outputs = delegate::ParseOutputs(text);
  for (const auto& [key, value] : outputs) {
    FUZZ_CHECK(!key.empty(), "an empty output name");
  }
  return 0;
}

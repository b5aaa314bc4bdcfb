// The stage file, YAML or JSON (ParseStage picks by the first non-blank
// byte). A stage that parses must also pass through the task contract's
// conversion and back (what `delegate submit` sends over gRPC), and its
// errors must name a position or a field, never be empty.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "delegate/stage_file.h"
#include "fuzz_input.h"
#include "manager/grpc/convert.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<delegate::Stage> stage = delegate::ParseStage(text, "fuzz");
  if (!stage.ok()) {
    FUZZ_CHECK(!stage.status().message().empty(), "an error without words");
    return 0;
  }
  absl::StatusOr<delegate::Stage> back =
      delegate::grpcv1::FromProto(delegate::grpcv1::ToProto(*stage));
  FUZZ_CHECK(back.ok(), back.status().ToString());
  FUZZ_CHECK(back->steps.size() == stage->steps.size(), "steps lost");
  return 0;
}

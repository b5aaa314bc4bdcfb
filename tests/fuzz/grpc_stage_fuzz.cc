// The task contract's messages as bytes off the wire: a Stage, a
// RuntimeService SubmitStageRequest, and what a delegate sends a manager
// (DelegateMessage: results and log chunks), each parsed and then
// converted as the runtime and the reference manager convert them. A stage
// that converts converts the same way again after a round trip.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "delegate/v1/runtime.pb.h"
#include "delegate/v1/session.pb.h"
#include "delegate/v1/task.pb.h"
#include "fuzz_input.h"
#include "google/protobuf/util/message_differencer.h"
#include "manager/grpc/convert.h"

namespace g = delegate::grpcv1;
namespace v1 = delegate::v1;

namespace {

void CheckStage(const v1::Stage& message) {
  absl::StatusOr<delegate::Stage> stage = g::FromProto(message);
  if (!stage.ok()) return;
  absl::StatusOr<delegate::Stage> again = g::FromProto(g::ToProto(*stage));
  FUZZ_CHECK(again.ok(), again.status().ToString());
  FUZZ_CHECK(again->steps.size() == stage->steps.size(), "steps changed");
  FUZZ_CHECK(again->volumes.size() == stage->volumes.size(), "volumes changed");
  // Compared as messages: maps serialise in no fixed order.
  std::string diff;
  google::protobuf::util::MessageDifferencer differ;
  differ.ReportDifferencesToString(&diff);
  FUZZ_CHECK(differ.Compare(g::ToProto(*stage), g::ToProto(*again)), diff);
}

void CheckDelegateMessage(const v1::DelegateMessage& m) {
  if (m.has_step_result()) (void)g::FromProto(m.step_result().result());
  if (m.has_stage_result()) (void)g::FromProto(m.stage_result().result());
  if (m.has_log()) {
    absl::StatusOr<std::vector<delegate::LogLine>> lines =
        g::LogLinesFromProto(m.log().chunk());
    if (lines.ok()) {
      for (size_t i = 1; i < lines->size(); ++i) {
        FUZZ_CHECK((*lines)[i].number == (*lines)[i - 1].number + 1,
                   "lines out of order");
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  delegate::fuzz::FuzzInput in(data, size);
  const uint8_t mode = in.Byte() % 3;
  std::string_view bytes = in.Rest();
  const int n = static_cast<int>(bytes.size());
  switch (mode) {
    case 0: {
      v1::Stage stage;
      if (stage.ParseFromArray(bytes.data(), n)) CheckStage(stage);
      break;
    }
    case 1: {
      v1::SubmitStageRequest request;
      if (!request.ParseFromArray(bytes.data(), n)) break;
      CheckStage(request.stage());
      (void)g::FromProto(request.priority(), "priority");
      break;
    }
    default: {
      v1::DelegateBatch batch;
      if (!batch.ParseFromArray(bytes.data(), n)) break;
      for (const v1::DelegateMessage& m : batch.messages()) {
        CheckDelegateMessage(m);
      }
      break;
    }
  }
  return 0;
}

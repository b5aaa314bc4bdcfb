// GET /api/executions/{delegateId}/runner-events: the list of tasks the
// manager announces. Every event that parses names a task.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz_input.h"
#include "manager/harness/registration.h"
#include "manager/harness/task_request.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  auto events = delegate::harness::ParseRunnerEvents(body);
  if (events.ok()) {
    for (const auto& e : *events) FUZZ_CHECK(!e.task_id.empty(), "no taskId");
  }
  // The registration answer comes from the same manager, on the same path.
  (void)delegate::harness::ParseRegisterResponse(body);
  return 0;
}

// Every Harness task payload the delegate reads (harness-protocol.md §5, §6):
// the acquired task request (GET /api/executions/{taskId}/request), routed as
// the connection routes it (secret sub-tasks resolved, ${{secrets.ID}}
// substituted, then local_init / local_execute / local_cleanup /
// secret/static data parsed), and each payload type on its own. An
// execute payload that parses gives a step the scheduler could run: an id,
// and commands or an image.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "fuzz_input.h"
#include "manager/harness/local_payloads.h"
#include "manager/harness/task_request.h"
#include "manager/harness/task_secrets.h"

namespace h = delegate::harness;

namespace {

void CheckExecute(const absl::StatusOr<h::ExecutePayload>& execute) {
  if (!execute.ok()) return;
  FUZZ_CHECK(!execute->step.id.empty(), "a step without an id");
  FUZZ_CHECK(execute->step.id.size() <= 128, execute->step.id);
  for (const std::string& mask : execute->masks) {
    FUZZ_CHECK(!mask.empty(), "an empty mask");
  }
}

void Route(const std::string& type, std::string_view data) {
  if (type == "local_init") {
    (void)h::ParseInitPayload(data);
  } else if (type == "local_execute") {
    CheckExecute(h::ParseExecutePayload(data));
  } else if (type == "local_cleanup") {
    (void)h::ParseCleanupPayload(data);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  delegate::fuzz::FuzzInput in(data, size);
  const uint8_t mode = in.Byte() % 6;
  if (mode == 5) {
    std::map<std::string, std::string> secrets;
    for (int i = in.Byte() % 4; i > 0; --i) {
      std::string id = in.String(32);
      secrets[id] = in.String(64);
    }
    absl::StatusOr<std::string> out = h::SubstituteSecrets(in.Rest(), secrets);
    (void)out;
    return 0;
  }
  std::string_view body = in.Rest();
  switch (mode) {
    case 1:
      (void)h::ParseInitPayload(body);
      return 0;
    case 2:
      CheckExecute(h::ParseExecutePayload(body));
      return 0;
    case 3:
      (void)h::ParseCleanupPayload(body);
      return 0;
    default:
      break;
  }
  absl::StatusOr<std::vector<h::TaskRequest>> requests =
      h::ParseAcquireResponse(body);
  if (!requests.ok()) return 0;
  for (h::TaskRequest& request : *requests) {
    if (request.task.type == "secret/static") {
      (void)h::StaticSecretResponseData(request.task);
      continue;
    }
    absl::StatusOr<std::map<std::string, std::string>> secrets =
        h::ResolveRequestSecrets(request);
    if (!secrets.ok()) continue;
    absl::StatusOr<std::string> substituted =
        h::SubstituteSecrets(request.task.data_json, *secrets);
    if (!substituted.ok()) continue;
    Route(mode == 4 ? "local_execute" : request.task.type, *substituted);
  }
  return 0;
}

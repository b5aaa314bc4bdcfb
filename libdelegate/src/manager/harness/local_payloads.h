// The data of the local driver's tasks (harness-protocol.md §6.2 to §6.4):
// local_init, local_execute and local_cleanup, mapped to the library's stage
// and step types. Pure functions, no I/O; errors keep the contract in
// json_fields.h (a JSON path, never a value). Paths start at "task.data".
#ifndef DELEGATE_MANAGER_HARNESS_LOCAL_PAYLOADS_H_
#define DELEGATE_MANAGER_HARNESS_LOCAL_PAYLOADS_H_

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "delegate/stage.h"

namespace delegate::harness {

// A host directory of the stage, as local_init lists it.
struct HostDir {
  std::string path;
  bool create = false;  // make it before the first step
  bool remove = false;  // delete it at cleanup
};

// local_init (§6.2): {"network":{"id","labels","options"}, "volumes":[...],
// "envs":{...}}, plus the extensions "stage_runtime_id" and "log_key".
struct InitPayload {
  // Ties the stage's init, execute and cleanup tasks together:
  // stage_runtime_id when set, else network.id.
  std::string transaction_key;
  std::string network_id;  // as sent; Docker names sanitise it
  std::string log_key;
  // platform "local", name = transaction_key, env = envs; a temp volume is an
  // EmptyDirVolume (size_limit bytes rounded up to MiB), a host volume a
  // HostPathVolume; each named by its "name", else its "id".
  Stage stage;
  std::vector<HostDir> host_dirs;  // the host volumes, in order
};
absl::StatusOr<InitPayload> ParseInitPayload(std::string_view data_json);

// local_execute (§6.3): a lite-engine StartStepRequest plus volumes_actual and
// group_id.
struct ExecutePayload {
  // stage_runtime_id when set, else network.
  std::string transaction_key;
  std::string step_id;  // "id" as sent; step.id is it sanitised
  // step.id: the id with characters outside [A-Za-z0-9_.-] made '_', cut to
  // 128. commands without entrypoint are step.commands; with an entrypoint
  // they are step.args. A step without an image needs commands.
  Step step;
  // The values to mask in the step's output: "secrets" and auth.password,
  // each once, empty ones dropped.
  std::vector<std::string> masks;
  std::string log_key;
};
absl::StatusOr<ExecutePayload> ParseExecutePayload(std::string_view data_json);

// local_cleanup (§6.4): {"network","volumes":[{"host":{...}}],"group_id",
// "containers":{"labels":{...}}}, plus "stage_runtime_id".
struct CleanupPayload {
  // stage_runtime_id when set, else network.
  std::string transaction_key;
  // The host volumes with "remove": true (lite-engine deletes no others).
  std::vector<std::string> host_paths;
  // Containers carrying all of these labels are removed; empty: none.
  std::map<std::string, std::string> labels;
};
absl::StatusOr<CleanupPayload> ParseCleanupPayload(std::string_view data_json);

}  // namespace delegate::harness

#endif  // DELEGATE_MANAGER_HARNESS_LOCAL_PAYLOADS_H_

// The Harness manager's JSON on the wire (harness-protocol.md §4 to §6) and
// the library's value types: runner events, acquired task requests, the
// secret/static and local_init/local_execute/local_cleanup task data, the
// task responses, and the register/unregister bodies. Pure functions, no I/O.
//
// Every parse error is InvalidArgument naming the JSON path of the offending
// field ("task.data.run.commands[2]: expected a string") and never holds a
// value read from the input, so no secret (a secret task's data, secrets[],
// auth.password, the logger token) can reach a message. Fields these
// functions do not know are ignored, so a newer manager's additions pass
// through; a JSON null counts as the field being absent.
#ifndef DELEGATE_MANAGER_HARNESS_PAYLOADS_H_
#define DELEGATE_MANAGER_HARNESS_PAYLOADS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "delegate/config.h"
#include "delegate/result.h"
#include "delegate/stage.h"

namespace delegate::harness {

// Standard alphabet with padding.
std::string Base64Encode(std::string_view bytes);
// Standard alphabet, padded or not, whitespace ignored; nullopt when `text`
// is not base64.
std::optional<std::string> Base64Decode(std::string_view text);

// ------------------------------------------------------------ task flow

// GET /api/executions/{delegateId}/runner-events (§5.1).
struct RunnerEvent {
  std::string account_id;
  std::string task_id;
  std::string runner_type;
  std::string task_type;
};

// {"delegateRunnerEvents":[{"accountId","taskId","runnerType","taskType"}]}.
// A missing or null list, or an empty body (HTTP 204), is no events; an event
// without a taskId is an error.
absl::StatusOr<std::vector<RunnerEvent>> ParseRunnerEvents(
    std::string_view body);

// go-task Task.forward: where vm_* tasks reach the VM's lite-engine.
struct TaskForward {
  std::string address;  // JSON key "string" (sic), or "address"
  bool insecure = false;
  std::string cert_public;
  SecretString cert_private;
  std::string cert_ca;
};

// go-task Task.logger: the log-service stream for the task's output (§8).
struct TaskLogger {
  std::string address;  // empty: no log service, log locally
  bool insecure = false;
  SecretString token;  // X-Harness-Token
  std::string key;
  std::string account;
  bool indirect_upload = false;
  bool skip_opening_stream = false;
  bool skip_closing_stream = false;
  bool trim_new_line_suffix = false;
  bool increase_log_limit = false;
  std::vector<std::string> masks;  // values to mask: treat as secrets
};

// One go-task Task. `data` and `config` arrive as base64 of JSON (Go []byte)
// or as an inline JSON object; both are normalised to compact JSON text of an
// object, "{}" when absent. The data of a secret task holds secret values.
struct Task {
  std::string id;
  std::string type;
  std::string driver;
  std::string data_json = "{}";
  std::string config_json = "{}";
  TaskForward forward;
  TaskLogger logger;
};

// go-task Request: the primary task and the secret sub-tasks to resolve
// before it (JSON key "secrets").
struct TaskRequest {
  std::string id;
  std::string account;
  Task task;
  std::vector<Task> secrets;
};

// GET /api/executions/{taskId}/request (§5.2): {"requests":[Request]}.
// Paths in errors start at the body: "requests[0].task.data: ...". Does not
// replace task.id with the event's taskId; the caller does (§5.2).
absl::StatusOr<std::vector<TaskRequest>> ParseAcquireResponse(
    std::string_view body);

// ------------------------------------------------------------ secrets

// The (id, value) pairs of a secret/static task's data
// {"secrets":[{"id","value","base64":bool}]}, in order; values with base64
// true are decoded. Errors name "task.data.secrets[N]...".
absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
ResolveStaticSecrets(const Task& task);

// The response data of a secret/static task run as the primary task:
// {"value": <the first secret's value>}. An empty list is an error.
absl::StatusOr<std::string> StaticSecretResponseData(const Task& task);

// The values of a request's secret sub-tasks by sub-task id, as go-task's
// router resolves them (§5.3): a secret/static sub-task gives its first
// value. Other secret types (Vault, CGI) are Unimplemented naming
// "secrets[N].type". Errors name "secrets[N]...".
absl::StatusOr<std::map<std::string, std::string>> ResolveRequestSecrets(
    const TaskRequest& request);

// `data_json` (an object) with every ${{secrets.ID}} in its string values
// (not keys) replaced by secrets[ID]; spaces inside the braces are allowed,
// and other ${{...}} expressions are left alone. The result is valid JSON:
// values are escaped as they are written. An unknown ID is InvalidArgument
// "<path of the string>: ${{secrets.ID}} is not among the task's secrets".
// The caller masks the substituted values in everything the task logs.
absl::StatusOr<std::string> SubstituteSecrets(
    std::string_view data_json,
    const std::map<std::string, std::string>& secrets);

// ------------------------------------------------------------ local_* data

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

// ------------------------------------------------------------ responses

// POST /api/executions/{taskId}/task-response (§5.4):
// {"id","type","code":"OK"|"FAILED","error","data": base64(data_json)}.
// data is never null: a failure with empty data_json sends
// {"error_message": error}, a success with empty data_json sends {}.
// REQUIRES: `error` and `data_json` are already masked.
std::string TaskResponseBody(std::string_view task_id, std::string_view type,
                             bool ok, std::string_view error,
                             std::string_view data_json);

// lite-engine VMTaskExecutionResponse for a local_execute step:
// {"command_execution_status": "SUCCESS"|"FAILURE"|"TIMEOUT",
//  "error_message", "output_vars":{...},
//  "outputs":[{"key","value","type":"STRING"}]}.
// Skipped and cancelled steps are FAILURE. error_message is r.error when set,
// else "exit status N" for a non-zero exit, else a word for the status.
std::string ExecutionResponseData(const StepResult& r);

// The local_init response (§6.2), sent with code OK even when `ok` is false:
// {"ip_address":"127.0.0.1","delegate_meta_info":{"id"},"infra_type":"",
//  "command_execution_status","error_message"}.
std::string InitResponseData(bool ok, std::string_view error,
                             std::string_view delegate_id);

// {"command_execution_status","error_message"}.
std::string CleanupResponseData(bool ok, std::string_view error);

// ------------------------------------------------------------ lifecycle

// What register, heartbeat and unregister say about this delegate (§4).
struct RegisterInfo {
  std::string account_id;
  std::string delegate_name;
  std::string delegate_id;  // empty at register; set for heartbeats
  std::string host_name;
  std::string ip;
  std::vector<std::string> tags;  // empty strings are dropped
  std::string version;
  std::optional<int> max_stages;  // unset: null (heartbeats always send null)
  absl::Time now;                 // lastHeartBeat
};

// The register and heartbeat body: accountId, delegateName, lastHeartBeat
// (Unix ms), delegateId (omitted when empty), delegateType "DOCKER", ng,
// pollingModeEnabled, hostName, ip, tags ([] when none, not the runner's
// [""]), heartbeatAsObject, version, capacityConfig {"maxStages": N|null},
// runner true.
std::string RegisterRequestJson(const RegisterInfo& info);

// {"delegateId","hostName","ng":true,"delegateType":"DOCKER","ipAddress"}:
// the key is ipAddress here, not ip (§16 quirk 4).
std::string UnregisterRequestJson(const RegisterInfo& info);

// {"resource":{"delegateId":...}} → the delegate id; InvalidArgument naming
// "resource.delegateId" when it is missing or empty.
absl::StatusOr<std::string> ParseRegisterResponse(std::string_view body);

}  // namespace delegate::harness

#endif  // DELEGATE_MANAGER_HARNESS_PAYLOADS_H_

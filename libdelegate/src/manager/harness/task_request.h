// What the manager hands the delegate to run (harness-protocol.md §5.1,
// §5.2): the runner events that announce tasks, and the acquired go-task
// Request of each, with its primary task and its secret sub-tasks. Pure
// functions, no I/O; errors keep the contract in json_fields.h (a JSON path,
// never a value).
#ifndef DELEGATE_MANAGER_HARNESS_TASK_REQUEST_H_
#define DELEGATE_MANAGER_HARNESS_TASK_REQUEST_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "delegate/config.h"

namespace delegate::harness {

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

}  // namespace delegate::harness

#endif  // DELEGATE_MANAGER_HARNESS_TASK_REQUEST_H_

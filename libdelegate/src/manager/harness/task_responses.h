// What the delegate sends back for a task (harness-protocol.md §5.4, §6): the
// task-response body, and the response data of local_init, local_execute and
// local_cleanup inside it. Pure functions, no I/O.
#ifndef DELEGATE_MANAGER_HARNESS_TASK_RESPONSES_H_
#define DELEGATE_MANAGER_HARNESS_TASK_RESPONSES_H_

#include <string>
#include <string_view>

#include "delegate/result.h"

namespace delegate::harness {

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

}  // namespace delegate::harness

#endif  // DELEGATE_MANAGER_HARNESS_TASK_RESPONSES_H_

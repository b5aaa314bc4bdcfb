// The secrets of a task request (harness-protocol.md §5.3): the values of
// secret/static tasks, resolved as go-task's router resolves them, and their
// substitution into the primary task's data. Pure functions, no I/O; errors
// keep the contract in json_fields.h (a JSON path, never a value).
#ifndef DELEGATE_MANAGER_HARNESS_TASK_SECRETS_H_
#define DELEGATE_MANAGER_HARNESS_TASK_SECRETS_H_

#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "manager/harness/task_request.h"

namespace delegate::harness {

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

}  // namespace delegate::harness

#endif  // DELEGATE_MANAGER_HARNESS_TASK_SECRETS_H_

// The Docker Engine's answers read into values: error bodies, the pull
// stream's lines, /wait, /json (inspect), /exec/{id}/json, {"Id"} answers,
// lists and the one-member tar archive of GET /archive. Pure functions, no
// I/O, so that every answer the daemon (or something posing as it on
// DOCKER_HOST) can send is tested and fuzzed on bytes alone
// (tests/fuzz/docker_answers_fuzz.cc). `what` names the call in errors.
#ifndef DELEGATE_EXECUTOR_DOCKER_DOCKER_ANSWERS_H_
#define DELEGATE_EXECUTOR_DOCKER_DOCKER_ANSWERS_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "executor/docker/docker_client.h"

namespace delegate::docker {

// The daemon's words for a failed call: its JSON "message", else the body
// (cut to 512 bytes), else "HTTP <status>".
std::string DaemonMessage(int http_status, std::string_view body);

// A failed call as a status whose code follows the HTTP status (400
// InvalidArgument, 401/403 PermissionDenied, 404 NotFound, 409 AlreadyExists
// or FailedPrecondition by the message, 502-504 Unavailable, else Internal),
// with the message "<what>: <DaemonMessage>".
absl::Status DaemonError(int http_status, std::string_view body,
                         std::string_view what);

// A registry's failure reported in a pull, classified by its words.
absl::StatusCode PullErrorCode(std::string_view message);

// "1.41" -> {1, 41}; nullopt when malformed.
std::optional<std::pair<int, int>> ParseApiVersion(std::string_view v);

// GET /version: its "ApiVersion", empty when there is none.
std::string VersionAnswerApiVersion(std::string_view body);

// One line of POST /images/create's stream of JSON objects. nullopt for a
// blank line or one that is not a JSON object (skipped).
struct PullLine {
  bool error = false;  // an {"error"} object: a failure despite the 200
  // The error's message (errorDetail.message, else error), or the progress
  // as a readable line: "<id>: <status> <progress>".
  std::string text;
};
std::optional<PullLine> ParsePullLine(std::string_view line);

// POST /containers/{id}/wait: the exit code.
absl::StatusOr<int> ParseWaitAnswer(std::string_view body,
                                    std::string_view what);

// GET /containers/{id}/json: the State, its health and the container's
// addresses.
absl::StatusOr<ContainerState> ParseInspectAnswer(std::string_view body,
                                                  std::string_view what);

// GET /exec/{id}/json.
struct ExecState {
  bool running = false;
  std::optional<int64_t> exit_code;
};
absl::StatusOr<ExecState> ParseExecInspectAnswer(std::string_view body,
                                                 std::string_view what);

// GET /events: one JSON object a line. Whether one of them is a container
// "oom" (the event's Action, or status in older Engines). Lines that are
// not JSON objects are skipped.
bool EventsHaveOom(std::string_view body);

// {"Id": ...} (container and exec create).
absl::StatusOr<std::string> ParseIdAnswer(std::string_view body,
                                          std::string_view what);

// A JSON array of objects (or one under `array_key`, where null means
// none), each contributing its string `field`.
absl::StatusOr<std::vector<std::string>> ParseListAnswer(std::string_view body,
                                                         std::string_view what,
                                                         const char* array_key,
                                                         const char* field);

// GET /containers/json, /networks or /volumes: each object's id (a volume's
// name), name and labels. Objects without an id are left out.
absl::StatusOr<std::vector<Listed>> ParseListedAnswer(std::string_view body,
                                                      std::string_view what,
                                                      ObjectKind kind);

// GET /containers/{id}/archive of one regular file: a 512-byte ustar header
// (size in octal at offset 124, type at 156), then the data, of which at
// most `max_bytes` are returned.
absl::StatusOr<std::string> ParseArchiveMember(std::string_view tar,
                                               std::string_view what,
                                               size_t max_bytes);

}  // namespace delegate::docker

#endif  // DELEGATE_EXECUTOR_DOCKER_DOCKER_ANSWERS_H_

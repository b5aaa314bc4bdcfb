// What register, heartbeat and unregister send about this delegate, and what
// register answers (harness-protocol.md §4). Pure functions, no I/O.
#ifndef DELEGATE_MANAGER_HARNESS_REGISTRATION_H_
#define DELEGATE_MANAGER_HARNESS_REGISTRATION_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace delegate::harness {

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
// "resource.delegateId" when it is missing or empty. Errors never hold a
// value from the body.
absl::StatusOr<std::string> ParseRegisterResponse(std::string_view body);

}  // namespace delegate::harness

#endif  // DELEGATE_MANAGER_HARNESS_REGISTRATION_H_

// The Harness manager connection (target delegate::harness).
#ifndef DELEGATE_HARNESS_H_
#define DELEGATE_HARNESS_H_

#include "absl/status/status.h"
#include "delegate/export.h"
#include "delegate/manager.h"

namespace delegate {

// Registers "harness": the Harness Delegate 3.x REST protocol (register,
// heartbeat, runner-events, task payloads, task-response, the log service).
DELEGATE_EXPORT absl::Status RegisterHarnessManager(ManagerRegistry& registry);

}  // namespace delegate

#endif  // DELEGATE_HARNESS_H_

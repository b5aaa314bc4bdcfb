// The Harness manager's JSON on the wire (harness-protocol.md §4 to §6), for
// code that speaks all of it: one include for the headers below. Each holds
// one part; include it alone where that part is all a file needs.
//
//   base64.h          Go []byte as the manager writes it
//   task_request.h    runner events and acquired task requests (in)
//   task_secrets.h    secret/static tasks and ${{secrets.ID}} substitution
//   local_payloads.h  local_init, local_execute, local_cleanup data (in)
//   task_responses.h  task-response bodies and their data (out)
//   registration.h    register, heartbeat and unregister bodies
#ifndef DELEGATE_MANAGER_HARNESS_PAYLOADS_H_
#define DELEGATE_MANAGER_HARNESS_PAYLOADS_H_

#include "manager/harness/base64.h"
#include "manager/harness/local_payloads.h"
#include "manager/harness/registration.h"
#include "manager/harness/task_request.h"
#include "manager/harness/task_responses.h"
#include "manager/harness/task_secrets.h"

#endif  // DELEGATE_MANAGER_HARNESS_PAYLOADS_H_

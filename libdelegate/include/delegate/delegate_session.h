// The DelegateSession manager connection (target delegate::grpc).
#ifndef DELEGATE_DELEGATE_SESSION_H_
#define DELEGATE_DELEGATE_SESSION_H_

#include "absl/status/status.h"
#include "delegate/export.h"
#include "delegate/manager.h"

namespace delegate {

// Registers "grpc" (plaintext: loopback or a private network only) and
// "grpcs" (TLS, trusting the system store plus HARNESS_CERTS_DIR, with
// HARNESS_CLIENT_CERT_FILE/KEY for mutual TLS): the DelegateSession push
// protocol of proto/delegate/v1/session.proto, for --manager
// grpc://HOST:PORT. Pushed stages, credit flow control (MAX_STAGES slots, or
// PARALLEL_WORKERS when unset), leases renewed on the stream with fencing,
// reports resent until acknowledged, logs resent from the acknowledged
// offsets after a reconnect.
DELEGATE_EXPORT absl::Status RegisterGrpcManager(ManagerRegistry& registry);

}  // namespace delegate

#endif  // DELEGATE_DELEGATE_SESSION_H_

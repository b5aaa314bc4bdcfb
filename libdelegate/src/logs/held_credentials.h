// Credentials the process fetched while it runs, for the masker: the AWS
// role credentials the ECS executor and the CloudWatch Logs client get from
// the ECS container credentials endpoint or EC2 instance metadata. A step
// that runs beside the delegate can fetch the same ones and print them, and
// they are not among the values the configuration names
// (DelegateConfig::MaskedValues), so each fetch adds them here and every
// stage prepared afterwards masks them (MaskerFor). Process-wide, because
// the process holds them whichever executor asked.
#ifndef DELEGATE_LOGS_HELD_CREDENTIALS_H_
#define DELEGATE_LOGS_HELD_CREDENTIALS_H_

#include <cstddef>
#include <string>
#include <vector>

namespace delegate::logs {

// The most recent values kept; older ones have expired long before (role
// credentials last hours, and a fetch adds two values).
inline constexpr size_t kMaxHeldCredentials = 32;

// Adds `value` (a secret access key, a session token). Empty values and
// values already held are ignored. Thread-safe.
void AddHeldCredential(const std::string& value);

// The values held now, oldest first. Thread-safe.
std::vector<std::string> HeldCredentials();

}  // namespace delegate::logs

#endif  // DELEGATE_LOGS_HELD_CREDENTIALS_H_

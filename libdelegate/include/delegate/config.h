// The delegate's own configuration, from the environment names Harness
// documents (and their older aliases) and an optional env file.
#ifndef DELEGATE_CONFIG_H_
#define DELEGATE_CONFIG_H_

#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "delegate/env.h"
#include "delegate/export.h"

namespace delegate {

// A string that never prints: no operator<< and no conversion, so passing it
// to a formatter does not compile (or, with an Abseil new enough to honour
// AbslStringify, writes "<redacted>"). reveal() is the only way to the value.
class DELEGATE_EXPORT SecretString {
 public:
  SecretString() = default;
  explicit SecretString(std::string value) : value_(std::move(value)) {}
  const std::string& reveal() const { return value_; }
  bool empty() const { return value_.empty(); }
  template <typename Sink>
  friend void AbslStringify(Sink& sink, const SecretString&) {
    sink.Append("<redacted>");
  }

 private:
  std::string value_;
};

struct DELEGATE_EXPORT DelegateConfig {
  // state_dir, or its default when it is empty.
  std::string StateDir() const;

  std::string account_id;
  SecretString token;
  std::string manager_url;
  std::string name = "harness-delegate";
  std::vector<std::string> tags;  // trimmed, empties dropped, order kept
  std::optional<int> max_stages;  // unset: unbounded
  int parallel_workers = 100;
  absl::Duration poll_interval = absl::Milliseconds(3000);
  // SIGTERM to SIGKILL on a timed out or cancelled host step.
  absl::Duration cleanup_grace_period = absl::Seconds(10);
  // Root under which stage workspaces are made; empty: $TMPDIR or /tmp.
  // LoadConfig makes this and every other path setting (certs_dir,
  // client_cert_file, client_key_file) absolute against the current
  // directory, as steps run in their own workspace.
  std::string workdir;
  // DELEGATE_STATE_DIR: where the delegate keeps what must outlive its
  // process (delegate/instance.h); made absolute like workdir. Empty: the
  // directory .delegate-state under workdir (or under $TMPDIR or /tmp).
  std::string state_dir;
  // DELEGATE_LOG_SPOOL_MIB: how much step output the delegate keeps on
  // disk (under state_dir) until the manager confirms it, over every stage.
  // Lines beyond it are dropped and counted in the log.
  int log_spool_mib = 1024;
  // This process's instance (InstanceLease::id), set by the program that
  // took the lease, not read from the environment. Labelled on what the
  // executors make; empty: nothing is labelled with an instance.
  std::string instance;
  // After SIGTERM, once the running stages are done: how long to stay
  // registered with nothing to do before unregistering and exiting.
  absl::Duration idle_wait_before_stop = absl::ZeroDuration();
  // The longest any one call to the manager may take (the Harness runner's
  // are 15 to 30 s; shorter values cap them).
  absl::Duration manager_timeout = absl::Seconds(30);
  // Where /health, /ready and /metrics are served: "[HOST]:PORT" (":3000"
  // listens on every address).
  std::string ops_bind = ":3000";
  // Manager TLS: extra CA certificates (every file in the directory), and a
  // client certificate and key for mutual TLS.
  std::string certs_dir;
  std::string client_cert_file;
  std::string client_key_file;
  // The proxy for manager and log service calls, "scheme://[user:pw@]host:port"
  // from PROXY_* or HTTPS_PROXY/HTTP_PROXY; empty: none. Secret, as it may
  // hold a password.
  SecretString proxy;
  std::string no_proxy;
  // The largest Harness task payload the delegate fetches
  // (DELEGATE_MAX_TASK_PAYLOAD_BYTES); a larger one is answered FAILED
  // without being read whole.
  size_t max_task_payload_bytes = size_t{16} << 20;
  // Which variable each setting came from, for the dump ("HARNESS_NAME",
  // "default").
  std::map<std::string, std::string> sources;
  // One line each, for the log: two aliases set to different values, and the
  // like. Never holds a value of the token.
  std::vector<std::string> warnings;
  // The other credentials the delegate holds, from the variables it was
  // loaded from: a password in the manager URL, the proxy password
  // (PROXY_PASSWORD, or the one in HTTPS_PROXY/HTTP_PROXY),
  // AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN.
  std::vector<SecretString> credentials;

  // Every value a stage's output must never show (SchedulerOptions::
  // masked_values): the token as given and, when it is given base64-encoded,
  // as decoded, then `credentials`.
  std::vector<std::string> MaskedValues() const;

  // name = value lines for people; the token shows as "<set>" or "<unset>".
  std::string Dump() const;
};

enum class ConfigNeed {
  kLocal,   // `delegate exec`: nothing is required
  kServer,  // `delegate server`: account id, token and URL are required
};

// Builds the configuration (see docs in README "Configuration"). Where several
// names mean the same setting, the first that is set wins, in this order:
//   account id  HARNESS_ACCOUNT_ID, ACCOUNT_ID
//   token       HARNESS_TOKEN, TOKEN, DELEGATE_TOKEN, HARNESS_DELEGATE_TOKEN,
//               then the contents of the file HARNESS_TOKEN_FILE names
//               (trailing whitespace trimmed)
//   URL         HARNESS_URL, URL, MANAGER_HOST_AND_PORT
//   name        HARNESS_NAME, NAME, DELEGATE_NAME
//   tags        HARNESS_TAGS, TAGS, DELEGATE_TAGS
// `process` wins over `file` for the same name (a deployment overrides the
// file it ships). Errors are one line naming the variable and what to set it
// to, for example "MAX_STAGES: expected a positive integer, got 'ten'"; the
// token's value never appears in them.
DELEGATE_EXPORT absl::StatusOr<DelegateConfig> LoadConfig(const EnvMap& process,
                                                          const EnvMap& file,
                                                          ConfigNeed need);

// The variables that may carry the delegate token, for ScrubEnvironment
// (env.h): HARNESS_TOKEN, TOKEN, DELEGATE_TOKEN, HARNESS_DELEGATE_TOKEN.
DELEGATE_EXPORT std::vector<std::string> TokenVariables();

}  // namespace delegate

#endif  // DELEGATE_CONFIG_H_

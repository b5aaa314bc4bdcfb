// A client for the Docker Engine API, spoken directly over the daemon's
// socket with libcurl (no docker CLI). Thread-safe: every call may run on any
// thread, concurrently with others (each uses its own connection from a
// pool, so a log stream on one thread does not block a wait on another).
#ifndef DELEGATE_EXECUTOR_DOCKER_DOCKER_CLIENT_H_
#define DELEGATE_EXECUTOR_DOCKER_DOCKER_CLIENT_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "delegate/log_sink.h"
#include "delegate/process.h"  // OutputCallback

namespace delegate::docker {

// Where the daemon listens, from DOCKER_HOST: unset or empty means
// unix:///var/run/docker.sock; "unix:///path" and "tcp://host:port" are
// accepted; anything else is InvalidArgument naming DOCKER_HOST.
struct Endpoint {
  std::string unix_socket;  // set for unix://
  std::string
      base_url;  // "http://host:port" for tcp://; "http://localhost" for unix
  std::string display;  // as the user wrote it, for messages
};
absl::StatusOr<Endpoint> ParseDockerHost(std::string_view docker_host);

// The oldest Engine API version the executor uses.
inline constexpr std::string_view kMinApiVersion = "1.41";

struct RegistryAuth {
  std::string server;  // e.g. "127.0.0.1:5000"; empty: from the image name
  std::string username;
  std::string password;
};

struct Mount {
  enum class Type { kVolume, kBind };
  Type type = Type::kVolume;
  std::string source;  // volume name or host path
  std::string target;  // path in the container
  bool read_only = false;
};

// A container's health check, as the Engine runs it (Config.Healthcheck):
// `test` is {"CMD", program, args...} or {"CMD-SHELL", command}; a zero
// duration or count takes the Engine's default.
struct HealthCheck {
  std::vector<std::string> test;
  absl::Duration interval = absl::ZeroDuration();
  absl::Duration timeout = absl::ZeroDuration();
  int retries = 0;
  absl::Duration start_period = absl::ZeroDuration();
};

struct ContainerSpec {
  std::string name;
  std::string image;
  std::vector<std::string> entrypoint;  // empty: the image's
  std::vector<std::string> cmd;         // empty: the image's
  std::vector<std::string> env;         // "KEY=VALUE"
  std::string working_dir;
  std::string user;  // "uid", "uid:gid" or empty
  std::map<std::string, std::string> labels;
  std::vector<Mount> mounts;
  // A network name, or "container:<name or id>" to share that container's
  // network namespace (then `aliases` do not apply); empty: default bridge.
  std::string network;
  std::vector<std::string> aliases;  // DNS names on `network`
  std::optional<HealthCheck> health_check;
  bool privileged = false;
  bool read_only_rootfs = false;
  std::vector<std::string> cap_add;  // without the CAP_ prefix
  std::vector<std::string> cap_drop;
  std::optional<int64_t> nano_cpus;
  std::optional<int64_t> memory_bytes;
};

struct ContainerState {
  std::string id;
  // State.Status: "created" (never started), "running", "exited", ...
  std::string status;
  bool running = false;
  int exit_code = 0;
  bool oom_killed = false;
  std::string error;  // the daemon's State.Error
  // State.Health.Status: "starting", "healthy" or "unhealthy"; empty for a
  // container without a health check.
  std::string health;
  // NetworkSettings.Networks: the container's IPv4 address on each network
  // it is attached to, by network name (none for "container:" or "none").
  std::map<std::string, std::string> ip_addresses;
};

// What a list call found of one container, network or volume.
struct Listed {
  std::string id;    // a volume's name: volumes have no id
  std::string name;  // a container's without the leading '/'
  std::map<std::string, std::string> labels;
};
enum class ObjectKind { kContainer, kNetwork, kVolume };

// Returns true to abandon a blocking call (a log stream, a wait). Polled at
// least every 100 ms while the call blocks.
using StopPredicate = std::function<bool()>;

class DockerClient {
 public:
  virtual ~DockerClient() = default;

  // Connects and negotiates: GET /version, then every call uses
  // /v<version>/ with version = min(daemon's ApiVersion, the newest this
  // client knows). Unavailable "cannot reach the Docker Engine at <display>:
  // <reason>; start dockerd or set DOCKER_HOST" when it does not answer
  // within `timeout`; FailedPrecondition naming both versions when the
  // daemon's API is older than kMinApiVersion.
  static absl::StatusOr<std::unique_ptr<DockerClient>> Connect(
      const Endpoint& endpoint, absl::Duration timeout = absl::Seconds(10));

  virtual std::string api_version() const = 0;

  // Whether the Engine accepts a new connection and answers GET /_ping
  // within `timeout`: an Engine shutting down still answers on connections
  // it already has. Unavailable with the reason when not.
  virtual absl::Status Ping(absl::Duration timeout) = 0;

  // Each returns the daemon's message on failure (its JSON "message"), with
  // the HTTP status mapped to a canonical code: 404 NotFound, 409
  // AlreadyExists / FailedPrecondition, 401/403 PermissionDenied, others
  // Unavailable or Internal.
  virtual absl::Status CreateNetwork(
      const std::string& name,
      const std::map<std::string, std::string>& labels) = 0;
  virtual absl::Status RemoveNetwork(const std::string& name_or_id) = 0;
  virtual absl::Status CreateVolume(
      const std::string& name,
      const std::map<std::string, std::string>& labels) = 0;
  virtual absl::Status RemoveVolume(const std::string& name) = 0;

  virtual absl::StatusOr<bool> ImageExists(const std::string& image) = 0;
  // POST /images/create with X-Registry-Auth when `auth` is given. Calls
  // `progress` with one readable line per progress event ("Pulling fs layer",
  // "Download complete", ...). A pull that the registry refuses (wrong
  // password, no such image) is an error with the registry's words; the
  // password never appears in it.
  virtual absl::Status PullImage(
      const std::string& image, const RegistryAuth* auth,
      const std::function<void(std::string_view)>& progress) = 0;

  // Returns the container id.
  virtual absl::StatusOr<std::string> CreateContainer(
      const ContainerSpec& spec) = 0;
  virtual absl::Status StartContainer(const std::string& id) = 0;
  // Follows stdout and stderr (the multiplexed stream) from the start until
  // the container exits, or until `stop` returns true (then Cancelled).
  // Bytes go to `output`, on the calling thread.
  virtual absl::Status FollowLogs(const std::string& id,
                                  const OutputCallback& output,
                                  const StopPredicate& stop) = 0;
  // Blocks until the container is not running (POST /wait) and returns its
  // exit code; Cancelled when `stop` returned true first. Call it after
  // StartContainer: a created, never started container is already "not
  // running".
  virtual absl::StatusOr<int> WaitContainer(const std::string& id,
                                            const StopPredicate& stop) = 0;
  virtual absl::StatusOr<ContainerState> InspectContainer(
      const std::string& id) = 0;
  // Whether the Engine logged an "oom" event for the container between
  // `since` and now (GET /events with until, so it answers at once). On
  // cgroup v2, Docker 20.10 can leave State.OOMKilled false when the
  // kernel's OOM notice reaches it after the exit; the event still comes.
  virtual absl::StatusOr<bool> HadOomEvent(const std::string& id,
                                           absl::Time since) = 0;
  // POST /stop?t=grace: SIGTERM (or the image's stop signal), SIGKILL after.
  virtual absl::Status StopContainer(const std::string& id,
                                     absl::Duration grace) = 0;
  virtual absl::Status KillContainer(const std::string& id) = 0;
  virtual absl::Status RemoveContainer(const std::string& id, bool force) = 0;

  // Runs `cmd` in a running container (POST /exec, then start attached) and
  // streams its output until it ends or `stop` returns true; then returns the
  // exit code (Cancelled when stopped; the command then goes on running in
  // the container until the container stops).
  struct ExecSpec {
    std::vector<std::string> cmd;
    std::vector<std::string> env;
    std::string working_dir;
    std::string user;
  };
  virtual absl::StatusOr<int> Exec(const std::string& container_id,
                                   const ExecSpec& spec,
                                   const OutputCallback& output,
                                   const StopPredicate& stop) = 0;

  // The contents of one regular file in a container, running or stopped
  // (GET /archive, a tar stream). NotFound when the path does not exist;
  // at most `max_bytes` of it.
  virtual absl::StatusOr<std::string> ReadFile(const std::string& id,
                                               const std::string& path,
                                               size_t max_bytes) = 0;

  // Ids (containers: all states) carrying the label "key=value".
  virtual absl::StatusOr<std::vector<std::string>> ListContainers(
      const std::string& label) = 0;
  virtual absl::StatusOr<std::vector<std::string>> ListNetworks(
      const std::string& label) = 0;
  virtual absl::StatusOr<std::vector<std::string>> ListVolumes(
      const std::string& label) = 0;
  // The objects of `kind` (containers: all states) carrying the label
  // "key=value", with their names and labels, in one call.
  virtual absl::StatusOr<std::vector<Listed>> ListLabelled(
      ObjectKind kind, const std::string& label) = 0;
};

}  // namespace delegate::docker

#endif  // DELEGATE_EXECUTOR_DOCKER_DOCKER_CLIENT_H_

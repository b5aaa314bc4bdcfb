// Value types for a stage transaction: what a stage file, a Harness task or a
// gRPC request describes before anything runs. Plain data, copyable, with no
// behaviour beyond small helpers; executors read them, the scheduler owns them.
#ifndef DELEGATE_STAGE_H_
#define DELEGATE_STAGE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/time/time.h"

namespace delegate {

// A scratch volume that lives as long as the stage. On Docker it becomes a
// named volume, on ECS a task volume (and ephemeral storage on Fargate).
struct EmptyDirVolume {
  std::optional<int64_t> size_mib;
};

// A path on the machine that runs the step.
struct HostPathVolume {
  std::string path;
  bool read_only = false;
};

// An Amazon EFS file system (ECS efsVolumeConfiguration).
struct EfsVolume {
  std::string filesystem_id;
  std::string root_directory;
  bool transit_encryption = false;
  std::string access_point_id;
  bool iam = false;
};

struct Volume {
  std::string name;
  std::variant<EmptyDirVolume, HostPathVolume, EfsVolume> source;
};

struct VolumeMount {
  std::string name;  // a Volume::name of the same stage
  std::string path;  // where the step sees it
};

// Every field is optional: unset means "the platform default".
struct SecurityContext {
  std::optional<bool> privileged;
  std::optional<bool> read_only_root_filesystem;
  std::optional<int64_t> run_as_user;
  std::optional<int64_t> run_as_group;
  std::vector<std::string> add_capability;   // e.g. "NET_ADMIN"
  std::vector<std::string> drop_capability;  // e.g. "ALL"

  bool empty() const {
    return !privileged && !read_only_root_filesystem && !run_as_user &&
           !run_as_group && add_capability.empty() && drop_capability.empty();
  }
};

struct Resources {
  std::optional<double> cpus;
  std::optional<int64_t> memory_mib;
};

// kDefault is kIfNotPresent: a delegate without a registry still runs the
// images it has.
enum class PullPolicy { kDefault, kAlways, kIfNotPresent, kNever };

// Credentials for pulling a step's image. The password is usually
// ${{secrets.ID}}, substituted and masked like any secret.
struct RegistryCredentials {
  std::string server;  // "registry.example.com:5000"; empty: the image's
  std::string username;
  std::string password;
};

struct Step {
  std::string id;     // unique within the stage: [A-Za-z0-9_.-]{1,128}
  std::string name;   // for people; defaults to id
  std::string image;  // empty: the step runs on the host
  // Either commands (run by /bin/sh, stopping at the first failure) or
  // entrypoint + args (run as given, no shell).
  std::vector<std::string> commands;
  std::vector<std::string> entrypoint;
  std::vector<std::string> args;
  std::map<std::string, std::string> envs;
  std::string working_dir;  // relative: inside the stage workspace
  std::optional<absl::Duration> timeout;
  std::vector<std::string> outputs;  // names read back from HARNESS_OUTPUT_FILE
  SecurityContext security_context;
  std::vector<VolumeMount> volume_mounts;
  Resources resources;
  PullPolicy pull = PullPolicy::kDefault;
  std::optional<RegistryCredentials> registry;
  bool continue_on_error = false;
};

struct Stage {
  std::string name;
  // Names an executor in the ExecutorRegistry: "host", "docker", "ecs-ec2",
  // "ecs-fargate", or one a host program registered itself.
  std::string platform = "host";
  std::map<std::string, std::string> env;
  // Secret values by id; steps refer to them as ${{secrets.ID}}. They are
  // masked in every log line, error and result.
  std::map<std::string, std::string> secrets;
  std::vector<Volume> volumes;
  std::vector<Step> steps;
  std::optional<absl::Duration> timeout;  // the whole stage, init to cleanup
  // Container platforms: steps with the same image run in one container per
  // stage, each through exec, instead of a container each. Each step keeps its
  // own env, working dir, exit code and timeout.
  bool reuse_containers = false;
  // Delegate tags (Harness's delegate selectors): a manager hands the stage
  // only to a delegate that has every one of them. A delegate that runs the
  // stage does not look at them.
  std::vector<std::string> tags;

  const Volume* FindVolume(const std::string& volume_name) const {
    for (const Volume& v : volumes) {
      if (v.name == volume_name) return &v;
    }
    return nullptr;
  }
};

// Order in the scheduler's waiting queue: all high before any normal, all
// normal before any low; first in, first out within one priority.
enum class Priority { kHigh = 0, kNormal = 1, kLow = 2 };

}  // namespace delegate

#endif  // DELEGATE_STAGE_H_

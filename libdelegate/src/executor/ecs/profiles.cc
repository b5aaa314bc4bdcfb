// What ECS can run, on EC2 and on Fargate.
#include <array>
#include <string_view>

#include "delegate/ecs_executor.h"

namespace delegate {

const PlatformProfile& EcsEc2PlatformProfile() {
  static constexpr PlatformProfile kProfile = {
      .name = "ecs-ec2",
      .title = "ECS on EC2",
      .instead = "",
      .empty_dir_size_unenforced =
          "ECS task volumes on EC2 instances have no size limit",
  };
  return kProfile;
}

// Fargate runs tasks on hosts nobody can reach, so nothing may reach the
// host: no privilege, no host paths, and of the capabilities only SYS_PTRACE
// (AWS allows it for debuggers and APM agents). Ephemeral storage is
// 21 GiB to 200 GiB.
const PlatformProfile& FargatePlatformProfile() {
  static constexpr std::array<std::string_view, 1> kCapabilityAdd = {
      "SYS_PTRACE"};
  static constexpr PlatformProfile kProfile = {
      .name = "ecs-fargate",
      .title = "Fargate",
      .instead = "ecs-ec2",
      .containers = true,
      .privileged = false,
      .read_only_root_filesystem = true,
      .host_path = false,
      .efs = true,
      .capability_drop = true,
      .any_capability_add = false,
      .capability_add = kCapabilityAdd,
      .min_empty_dir_mib = 21504,
      .max_empty_dir_mib = 204800,
  };
  return kProfile;
}

}  // namespace delegate

// The task lifecycle of the AWS fake (PROVISIONING to STOPPED on its
// clock), the Task JSON DescribeTasks answers, and the task that stands for
// the delegate itself (DescribeTasks and task metadata v4).
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "tests/fakes/aws_fake_internal.h"

namespace delegate::testing::aws_fake {
namespace {

void Enter(TaskState& t, const std::string& status, absl::Time at) {
  t.pub.last_status = status;
  t.phase_since = at;
  ++t.version;
}

// The task's healthStatus from its essential containers', by ECS's
// precedence: UNHEALTHY, then UNKNOWN, then HEALTHY.
std::string TaskHealth(const TaskState& t) {
  bool unknown = false;
  for (const TaskContainer& c : t.containers) {
    if (!c.essential) continue;
    if (c.health_status == "UNHEALTHY") return "UNHEALTHY";
    unknown = unknown || c.health_status != "HEALTHY";
  }
  return unknown ? "UNKNOWN" : "HEALTHY";
}

}  // namespace

std::string Fake::PrepareLogs(TaskState& task, absl::Time at) {
  const int64_t ms = absl::ToUnixMillis(at);
  for (TaskContainer& c : task.containers) {
    if (c.log_driver != "awslogs" || !c.log_stream.empty()) continue;
    const std::string group = c.log_options["awslogs-group"];
    const std::string prefix = c.log_options["awslogs-stream-prefix"];
    auto it = log_groups.find(group);
    if (it == log_groups.end()) {
      if (c.log_options["awslogs-create-group"] != "true") {
        return "ResourceInitializationError: failed to validate logger args: "
               "create stream has been retried 1 times: failed to create "
               "Cloudwatch log stream: ResourceNotFoundException: The "
               "specified log group does not exist. : exit status 1";
      }
      it = log_groups.emplace(group, LogGroupState{}).first;
      it->second.created_ms = ms;
    }
    const std::string stream =
        prefix.empty() ? c.runtime_id
                       : absl::StrCat(prefix, "/", c.spec.name, "/", task.id);
    LogStreamState& s = it->second.streams[stream];
    if (s.created_ms == 0) s.created_ms = ms;
    c.log_group = group;
    c.log_stream = stream;
  }
  return "";
}

void Fake::FailToStart(TaskState& task, absl::Time at,
                       const std::string& reason) {
  task.pub.stop_code = "TaskFailedToStart";
  task.pub.stopped_reason = reason;
  for (TaskContainer& c : task.containers) {
    c.last_status = "STOPPED";
    c.reason = reason;
  }
  Finish(task, at);
}

void Fake::EnterPending(TaskState& task, absl::Time at) {
  task.pull_started_at = at;
  Enter(task, "PENDING", at);
}

void Fake::EnterRunning(TaskState& task, absl::Time at) {
  task.pull_stopped_at = at;
  task.started_at = at;
  Enter(task, "RUNNING", at);
}

void Fake::Finish(TaskState& task, absl::Time at) {
  task.pub.desired_status = "STOPPED";
  if (task.stopping_at == kUnset) task.stopping_at = at;
  task.execution_stopped_at = at;
  for (TaskContainer& c : task.containers) c.last_status = "STOPPED";
  if (task.awsvpc) {
    Enter(task, "DEPROVISIONING", at);
  } else {
    task.stopped_at = at;
    Enter(task, "STOPPED", at);
  }
}

void Fake::EssentialExited(TaskState& task, absl::Time at) {
  StopFor(task, at, "EssentialContainerExited",
          "Essential container in task exited");
}

void Fake::StopFor(TaskState& task, absl::Time at, const std::string& stop_code,
                   const std::string& reason) {
  task.pub.desired_status = "STOPPED";
  if (task.pub.stop_code.empty()) {
    task.pub.stop_code = stop_code;
    task.pub.stopped_reason = reason;
  }
  if (task.stopping_at == kUnset) task.stopping_at = at;
  ++task.version;
}

std::vector<std::string> Fake::Advance(absl::Time now) {
  std::vector<std::string> launches;
  const absl::Duration provisioning = options.provisioning_for;
  const absl::Duration pending = options.pending_for;
  for (auto& [arn, t] : tasks) {
    if (t.own) continue;
    for (bool moved = true; moved;) {
      moved = false;
      const std::string status = t.pub.last_status;
      if (status == "PROVISIONING") {
        if (t.launching) break;  // the Docker runner attaches it
        if (t.stop_requested) {
          t.stopped_at = t.stop_requested_at;
          for (TaskContainer& c : t.containers) c.last_status = "STOPPED";
          t.pub.desired_status = "STOPPED";
          Enter(t, "STOPPED", t.stop_requested_at);
          moved = true;
        } else if (now >= t.phase_since + provisioning) {
          if (docker && t.awsvpc) {
            t.launching = true;
            launches.push_back(arn);
            break;
          }
          EnterPending(t, t.phase_since + provisioning);
          moved = true;
        }
      } else if (status == "PENDING") {
        if (t.launching) break;  // the Docker runner moves it on
        const bool stuck = std::any_of(t.containers.begin(), t.containers.end(),
                                       [](const TaskContainer& c) {
                                         return c.behaviour.stuck_in_pending;
                                       });
        const absl::Time at = t.phase_since + pending;
        if (t.stop_requested && (stuck || t.stop_requested_at < at)) {
          if (!t.pause_id.empty()) {  // the runner removes it
            t.launching = true;
            launches.push_back(arn);
            break;
          }
          Finish(t, t.stop_requested_at);
          moved = true;
        } else if (!stuck && now >= at) {
          if (docker) {
            t.launching = true;
            launches.push_back(arn);
            break;
          }
          std::string failure = PrepareLogs(t, at);
          for (const TaskContainer& c : t.containers) {
            if (failure.empty()) failure = c.behaviour.fail_to_start;
          }
          if (!failure.empty()) {
            FailToStart(t, at, failure);
          } else {
            for (TaskContainer& c : t.containers) c.last_status = "RUNNING";
            EnterRunning(t, at);
            const int64_t ms = absl::ToUnixMillis(at);
            for (const TaskContainer& c : t.containers) {
              if (c.log_stream.empty()) continue;
              for (const std::string& line : c.behaviour.output) {
                AppendLogEvent(c.log_group, c.log_stream, ms, line);
              }
            }
          }
          moved = true;
        }
      } else if (status == "RUNNING") {
        if (docker) break;
        // The task ends when its first essential container exits, or when
        // the user stopped it before that.
        absl::Time end = absl::InfiniteFuture();
        for (const TaskContainer& c : t.containers) {
          if (c.essential) {
            end = std::min(end, t.started_at + c.behaviour.run_for);
          }
        }
        const bool by_user = t.stop_requested && t.stop_requested_at < end;
        if (by_user) end = t.stop_requested_at;
        for (TaskContainer& c : t.containers) {
          const absl::Time exit_at = t.started_at + c.behaviour.run_for;
          if (!c.exit_code && exit_at <= now &&
              (by_user ? exit_at < end : exit_at <= end)) {
            c.exit_code = c.behaviour.exit_code;
            c.last_status = "STOPPED";
            ++t.version;
          }
        }
        if (now >= end) {
          for (TaskContainer& c : t.containers) {
            if (!c.exit_code) c.exit_code = 137;  // killed with the task
          }
          if (!by_user) EssentialExited(t, end);
          Finish(t, end);
          moved = true;
        }
      } else if (status == "DEPROVISIONING") {
        if (t.launching) break;  // the Docker runner removes its containers
        const absl::Time at = t.phase_since + provisioning;
        if (now >= at) {
          t.stopped_at = at;
          Enter(t, "STOPPED", at);
          moved = true;
        }
      }
    }
  }
  return launches;
}

// ------------------------------------------------------------- task JSON

void Fake::WriteTask(JsonWriter& w, const TaskState& t, bool with_tags) const {
  const std::string& status = t.pub.last_status;
  const bool attached = status != "PROVISIONING";
  w.StartObject();
  if (t.awsvpc) {
    w.Key("attachments");
    w.StartArray();
    w.StartObject();
    Put(w, "id", t.attachment_id);
    Put(w, "type", "ElasticNetworkInterface");
    Put(w, "status",
        status == "PROVISIONING"     ? "PRECREATED"
        : status == "DEPROVISIONING" ? "DETACHING"
        : status == "STOPPED"        ? "DELETED"
                                     : "ATTACHED");
    std::vector<std::pair<std::string, std::string>> details = {
        {"subnetId", t.subnet}};
    if (attached && !t.private_ip.empty()) {
      details.push_back({"networkInterfaceId", t.eni});
      details.push_back({"macAddress", t.mac});
      details.push_back(
          {"privateDnsName",
           absl::StrCat("ip-", absl::StrReplaceAll(t.private_ip, {{".", "-"}}),
                        ".ec2.internal")});
      details.push_back({"privateIPv4Address", t.private_ip});
    }
    PutPairs(w, "details", details, "name", "value");
    w.EndObject();
    w.EndArray();
  }
  Put(w, "availabilityZone", options.region + "a");
  Put(w, "clusterArn", RegionalArn("ecs", "cluster/" + t.pub.cluster));
  Put(w, "connectivity", attached ? "CONNECTED" : "DISCONNECTED");
  w.Key("containers");
  w.StartArray();
  for (const TaskContainer& c : t.containers) {
    w.StartObject();
    Put(w, "containerArn", c.arn);
    Put(w, "taskArn", t.pub.arn);
    Put(w, "name", c.spec.name);
    Put(w, "image", c.spec.image);
    if (t.started_at != kUnset || c.exit_code) {
      Put(w, "runtimeId", c.runtime_id);
    }
    Put(w, "lastStatus", c.last_status);
    if (c.exit_code) PutInt(w, "exitCode", *c.exit_code);
    if (!c.reason.empty()) Put(w, "reason", c.reason.substr(0, 1024));
    if (t.awsvpc && attached && !t.private_ip.empty()) {
      w.Key("networkInterfaces");
      w.StartArray();
      w.StartObject();
      Put(w, "attachmentId", t.attachment_id);
      Put(w, "privateIpv4Address", t.private_ip);
      w.EndObject();
      w.EndArray();
    }
    Put(w, "healthStatus", c.health_status);
    Put(w, "cpu", "0");
    w.EndObject();
  }
  w.EndArray();
  if (!t.cpu.empty()) Put(w, "cpu", t.cpu);
  if (!t.memory.empty()) Put(w, "memory", t.memory);
  PutTime(w, "createdAt", t.created_at);
  Put(w, "desiredStatus", t.pub.desired_status);
  PutBool(w, "enableExecuteCommand", false);
  if (t.fargate) {
    w.Key("ephemeralStorage");
    w.StartObject();
    PutInt(w, "sizeInGiB", t.ephemeral_gib);
    w.EndObject();
  }
  PutTime(w, "executionStoppedAt", t.execution_stopped_at);
  Put(w, "group", "family:" + t.family);
  Put(w, "healthStatus", TaskHealth(t));
  Put(w, "lastStatus", status);
  Put(w, "launchType", t.pub.launch_type);
  w.Key("overrides");
  if (t.overrides_json.empty()) {
    w.StartObject();
    w.Key("containerOverrides");
    w.StartArray();
    w.EndArray();
    w.Key("inferenceAcceleratorOverrides");
    w.StartArray();
    w.EndArray();
    w.EndObject();
  } else {
    w.RawValue(t.overrides_json.data(), t.overrides_json.size(),
               rapidjson::kObjectType);
  }
  if (t.fargate) {
    Put(w, "platformVersion", "1.4.0");
    Put(w, "platformFamily", "Linux");
  }
  PutTime(w, "pullStartedAt", t.pull_started_at);
  PutTime(w, "pullStoppedAt", t.pull_stopped_at);
  PutTime(w, "startedAt", t.started_at);
  if (!t.pub.started_by.empty()) Put(w, "startedBy", t.pub.started_by);
  if (status == "STOPPED" || status == "DEPROVISIONING" ||
      t.pub.desired_status == "STOPPED") {
    if (!t.pub.stop_code.empty()) Put(w, "stopCode", t.pub.stop_code);
    if (!t.pub.stopped_reason.empty()) {
      Put(w, "stoppedReason", t.pub.stopped_reason);
    }
  }
  PutTime(w, "stoppedAt", t.stopped_at);
  PutTime(w, "stoppingAt", t.stopping_at);
  if (with_tags) PutTags(w, t.pub.tags);
  Put(w, "taskArn", t.pub.arn);
  Put(w, "taskDefinitionArn", t.pub.task_definition_arn);
  PutInt(w, "version", t.version);
  w.EndObject();
}

// ----------------------------------------------------------------- own task

std::string Fake::OwnTask(const std::string& cluster,
                          const std::string& launch_type,
                          const std::string& subnet_id,
                          const std::string& security_group_id) {
  const absl::Time now = clock->Now();
  TaskState t;
  t.own = true;
  t.id = RandomHex(32);
  t.pub.arn = RegionalArn("ecs", absl::StrCat("task/", cluster, "/", t.id));
  t.pub.cluster = cluster;
  t.family = "delegate";
  t.revision = 1;
  t.pub.task_definition_arn = RegionalArn("ecs", "task-definition/delegate:1");
  t.pub.launch_type = launch_type;
  t.pub.last_status = "RUNNING";
  t.pub.desired_status = "RUNNING";
  t.network_mode = "awsvpc";
  t.fargate = launch_type == "FARGATE";
  t.cpu = "512";
  t.memory = "1024";
  t.awsvpc = true;
  t.subnet = subnet_id;
  t.security_group = security_group_id;
  t.attachment_id =
      absl::StrCat(RandomHex(8), "-", RandomHex(4), "-", RandomHex(4), "-",
                   RandomHex(4), "-", RandomHex(12));
  t.eni = "eni-" + RandomHex(17);
  t.private_ip = absl::StrCat("10.0.", rng() % 250 + 1, ".", rng() % 250 + 2);
  t.mac = absl::StrCat("0e:", RandomHex(2), ":", RandomHex(2), ":",
                       RandomHex(2), ":", RandomHex(2), ":", RandomHex(2));
  t.created_at = t.pull_started_at = t.pull_stopped_at = t.started_at = now;
  t.phase_since = now;
  TaskContainer c;
  c.spec.name = "delegate";
  c.spec.image = "harness/delegate:latest";
  c.arn = RegionalArn(
      "ecs", absl::StrCat("container/", cluster, "/", t.id, "/", RandomHex(8)));
  c.last_status = "RUNNING";
  c.runtime_id = t.id + "-" + RandomHex(10);
  t.containers.push_back(std::move(c));
  const std::string arn = t.pub.arn;
  tasks.emplace(arn, std::move(t));
  return arn;
}

std::string Fake::OwnTaskMetadata(const TaskState& t, bool with_tags,
                                  bool container_only) const {
  auto time = [](absl::Time at) {
    return absl::FormatTime("%Y-%m-%dT%H:%M:%E9SZ", at, absl::UTCTimeZone());
  };
  const bool fargate = t.pub.launch_type == "FARGATE";
  const std::string cluster_arn =
      RegionalArn("ecs", "cluster/" + t.pub.cluster);
  auto container = [&](JsonWriter& w, const TaskContainer& c) {
    w.StartObject();
    Put(w, "DockerId", c.runtime_id);
    Put(w, "Name", c.spec.name);
    Put(w, "DockerName", "ecs-" + t.family + "-1-" + c.spec.name);
    Put(w, "Image", c.spec.image);
    Put(w, "ImageID", "sha256:" + std::string(64, '0'));
    w.Key("Labels");
    w.StartObject();
    Put(w, "com.amazonaws.ecs.cluster", cluster_arn);
    Put(w, "com.amazonaws.ecs.container-name", c.spec.name);
    Put(w, "com.amazonaws.ecs.task-arn", t.pub.arn);
    Put(w, "com.amazonaws.ecs.task-definition-family", t.family);
    Put(w, "com.amazonaws.ecs.task-definition-version",
        absl::StrCat(t.revision));
    w.EndObject();
    Put(w, "DesiredStatus", "RUNNING");
    Put(w, "KnownStatus", c.last_status);
    w.Key("Limits");
    w.StartObject();
    PutInt(w, "CPU", 0);
    PutInt(w, "Memory", 0);
    w.EndObject();
    Put(w, "CreatedAt", time(t.created_at));
    Put(w, "StartedAt", time(t.started_at));
    Put(w, "Type", "NORMAL");
    Put(w, "ContainerARN", c.arn);
    w.Key("Networks");
    w.StartArray();
    w.StartObject();
    Put(w, "NetworkMode", "awsvpc");
    PutStrings(w, "IPv4Addresses", {t.private_ip});
    PutInt(w, "AttachmentIndex", 0);
    Put(w, "MACAddress", t.mac);
    const std::string net = t.private_ip.substr(0, t.private_ip.rfind('.'));
    Put(w, "IPv4SubnetCIDRBlock", net + ".0/24");
    Put(w, "PrivateDNSName",
        absl::StrCat("ip-", absl::StrReplaceAll(t.private_ip, {{".", "-"}}),
                     ".ec2.internal"));
    Put(w, "SubnetGatewayIpv4Address", net + ".1/24");
    w.EndObject();
    w.EndArray();
    w.EndObject();
  };
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  if (container_only) {
    container(w, t.containers[0]);
    return buffer.GetString();
  }
  w.StartObject();
  Put(w, "Cluster", fargate ? cluster_arn : t.pub.cluster);
  Put(w, "TaskARN", t.pub.arn);
  Put(w, "Family", t.family);
  Put(w, "Revision", absl::StrCat(t.revision));
  Put(w, "DesiredStatus", "RUNNING");
  Put(w, "KnownStatus", "RUNNING");
  w.Key("Limits");
  w.StartObject();
  w.Key("CPU");
  w.Double(0.5);
  PutInt(w, "Memory", 1024);
  w.EndObject();
  Put(w, "PullStartedAt", time(t.pull_started_at));
  Put(w, "PullStoppedAt", time(t.pull_stopped_at));
  Put(w, "AvailabilityZone", options.region + "a");
  Put(w, "LaunchType", t.pub.launch_type);
  w.Key("Containers");
  w.StartArray();
  for (const TaskContainer& c : t.containers) container(w, c);
  w.EndArray();
  if (with_tags) {
    w.Key("TaskTags");
    w.StartObject();
    for (const auto& [k, v] : t.pub.tags) Put(w, k, v);
    w.EndObject();
  }
  w.EndObject();
  return buffer.GetString();
}

}  // namespace delegate::testing::aws_fake

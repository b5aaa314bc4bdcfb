// Docker mode of the AWS fake: a task's containers really run on a Docker
// Engine the way the ECS agent runs them (an awsvpc task's network namespace
// held by a pause container, dependsOn, essential containers, task volumes,
// health checks), their output goes to CloudWatch Logs line by line as the
// awslogs driver would send it, and their exit codes end the task.
#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "tests/fakes/aws_fake_internal.h"

namespace delegate::testing::aws_fake {
namespace {

constexpr char kLabel[] = "delegate.test.aws-fake";
// StopTask's SIGTERM to SIGKILL, capped so that tests do not wait 30 s.
constexpr absl::Duration kMaxStopGrace = absl::Seconds(2);
// How often a task's runner reads its containers' health from the Engine.
constexpr absl::Duration kPollEvery = absl::Milliseconds(100);

// A Docker object name from free text: [a-zA-Z0-9][a-zA-Z0-9_.-]*.
std::string DockerName(std::string_view s) {
  std::string out;
  for (char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
    out.push_back(ok ? c : '-');
  }
  return out;
}

// Splits output into lines; each complete, non-empty one goes to `emit`
// (CloudWatch refuses empty messages, and the awslogs driver skips them).
class LineSplitter {
 public:
  explicit LineSplitter(std::function<void(std::string)> emit)
      : emit_(std::move(emit)) {}
  void Add(std::string_view bytes) {
    partial_.append(bytes);
    size_t start = 0;
    for (size_t nl; (nl = partial_.find('\n', start)) != std::string::npos;
         start = nl + 1) {
      Emit(partial_.substr(start, nl - start));
    }
    partial_.erase(0, start);
  }
  void Flush() {
    Emit(std::move(partial_));
    partial_.clear();
  }

 private:
  void Emit(std::string line) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) emit_(std::move(line));
  }
  std::function<void(std::string)> emit_;
  std::string partial_;
};

// ECS's healthStatus for Docker's State.Health.Status.
std::string HealthStatus(const std::string& docker_health) {
  if (docker_health == "healthy") return "HEALTHY";
  if (docker_health == "unhealthy") return "UNHEALTHY";
  return "UNKNOWN";
}

// A container as the ECS agent names it in its messages:
// "name(image) (KNOWN->RUNNING)", and " - Exit: N" once it exited.
std::string AgentName(const TaskContainer& c, const std::string& known) {
  std::string out =
      absl::StrCat(c.spec.name, "(", c.spec.image, ") (", known, "->RUNNING)");
  if (c.exit_code) absl::StrAppend(&out, " - Exit: ", *c.exit_code);
  return out;
}

enum class Met { kYes, kNotYet, kNever };

// Whether a dependency on `target` with `condition` is met for a container
// waiting to start, as the ECS agent decides it: START once the target ran
// (or stopped), HEALTHY only while the task starts.
Met DependencyMet(const TaskContainer& target, const std::string& condition) {
  const bool stopped = target.last_status == "STOPPED";
  if (condition == "START") {
    return target.last_status != "PENDING" ? Met::kYes : Met::kNotYet;
  }
  if (condition == "COMPLETE") return stopped ? Met::kYes : Met::kNotYet;
  if (condition == "SUCCESS") {
    if (!stopped) return Met::kNotYet;
    return target.exit_code == 0 ? Met::kYes : Met::kNever;
  }
  if (stopped || target.health_status == "UNHEALTHY") return Met::kNever;
  return target.health_status == "HEALTHY" ? Met::kYes : Met::kNotYet;
}

// Stops the waiting containers of `t` whose dependencies can no longer be
// met, without starting them (exit code 143 and the agent's reason, as ECS
// shows them), and returns the indexes of those whose dependencies are all
// met. Sets `essential_stopped` when it stopped an essential one.
std::vector<size_t> Startable(TaskState& t, bool* essential_stopped) {
  std::map<std::string, const TaskContainer*> by_name;
  for (const TaskContainer& c : t.containers) by_name[c.spec.name] = &c;
  for (bool changed = true; changed;) {
    changed = false;
    for (TaskContainer& c : t.containers) {
      if (c.last_status != "PENDING") continue;
      for (const Dependency& d : c.depends_on) {
        const TaskContainer& target = *by_name.at(d.container);
        if (DependencyMet(target, d.condition) != Met::kNever) continue;
        c.reason = absl::StrCat(
            "CannotStartContainerError: dependency graph: failed to resolve "
            "container ordering dependency [",
            AgentName(target, target.last_status), "] for target [",
            AgentName(c, "NONE"), "] as dependency did not ",
            d.condition == "HEALTHY" ? "become healthy."
                                     : "exit successfully.");
        c.last_status = "STOPPED";
        c.exit_code = 143;
        ++t.version;
        *essential_stopped = *essential_stopped || c.essential;
        changed = true;
        break;
      }
    }
  }
  std::vector<size_t> out;
  for (size_t i = 0; i < t.containers.size(); ++i) {
    const TaskContainer& c = t.containers[i];
    if (c.last_status != "PENDING") continue;
    if (std::all_of(
            c.depends_on.begin(), c.depends_on.end(), [&](const Dependency& d) {
              return DependencyMet(*by_name.at(d.container), d.condition) ==
                     Met::kYes;
            })) {
      out.push_back(i);
    }
  }
  return out;
}

}  // namespace

absl::Status Fake::CreateDockerNetwork() {
  network = DockerName(id + "-tasks");
  if (absl::Status s = docker->CreateNetwork(network, {{kLabel, id}});
      !s.ok()) {
    return absl::Status(
        s.code(), absl::StrCat("the AWS fake cannot make its Docker network "
                               "for awsvpc tasks: ",
                               s.message()));
  }
  return absl::OkStatus();
}

void Fake::StartRunner(const std::string& task_arn) {
  absl::MutexLock lock(&threads_mu);
  runners.emplace_back([this, task_arn] { RunOnDocker(task_arn); });
}

void Fake::RunOnDocker(const std::string& arn) {
  bool provisioning = false;
  {
    absl::MutexLock lock(&mu);
    provisioning = tasks.at(arn).pub.last_status == "PROVISIONING";
  }
  if (provisioning) {
    AttachToNetwork(arn);
  } else {
    RunContainers(arn);
  }
}

void Fake::AttachToNetwork(const std::string& arn) {
  std::string task_id;
  {
    absl::MutexLock lock(&mu);
    if (shutting_down) return;
    task_id = tasks.at(arn).id;
  }
  // The agent's pause container: it holds the namespace the task's
  // containers join, and its address is the task's.
  docker::ContainerSpec spec;
  spec.name =
      DockerName(absl::StrCat(id, "-", task_id.substr(0, 12), "-pause"));
  spec.image = options.pause_image;
  spec.cmd = {"sleep", "2147483647"};
  spec.network = network;
  spec.labels = {{kLabel, id}, {std::string(kLabel) + ".task", arn}};
  std::string pause_id;
  std::string ip;
  absl::Status status = absl::OkStatus();
  if (absl::StatusOr<std::string> cid = docker->CreateContainer(spec);
      !cid.ok()) {
    status = cid.status();
  } else {
    pause_id = *cid;
    status = docker->StartContainer(pause_id);
  }
  if (status.ok()) {
    absl::StatusOr<docker::ContainerState> state =
        docker->InspectContainer(pause_id);
    if (!state.ok()) {
      status = state.status();
    } else if (auto it = state->ip_addresses.find(network);
               it != state->ip_addresses.end()) {
      ip = it->second;
    } else {
      status = absl::InternalError(
          absl::StrCat("the pause container has no address on ", network));
    }
  }
  {
    absl::MutexLock lock(&mu);
    TaskState& t = tasks.at(arn);
    if (status.ok() && !shutting_down && !t.stop_requested) {
      t.pause_id = pause_id;
      t.private_ip = ip;
      t.launching = false;
      EnterPending(t, clock->Now());
      return;
    }
  }
  // The pause container goes before the task can leave PROVISIONING.
  if (!pause_id.empty()) (void)docker->RemoveContainer(pause_id, true);
  absl::MutexLock lock(&mu);
  TaskState& t = tasks.at(arn);
  t.launching = false;
  // Stopped meanwhile: Advance stops it, as any PROVISIONING task.
  if (!status.ok() && !shutting_down && !t.stop_requested) {
    FailToStart(t, clock->Now(),
                absl::StrCat("ResourceInitializationError: failed to attach "
                             "the task's network interface: the AWS fake's "
                             "pause container (image ",
                             options.pause_image, "): ", status.message()));
  }
}

void Fake::RunContainers(const std::string& arn) {
  std::vector<TaskContainer> containers;
  std::vector<TaskVolume> volumes;
  std::string task_id;
  std::string pause_id;
  bool fargate = false;
  bool go = false;
  {
    absl::MutexLock lock(&mu);
    TaskState& t = tasks.at(arn);
    const absl::Time now = clock->Now();
    if (shutting_down) return;  // RemoveDockerLeftovers takes the rest
    pause_id = t.pause_id;
    if (t.stop_requested) {
      Finish(t, t.stop_requested_at);
    } else if (std::string failure = PrepareLogs(t, now); !failure.empty()) {
      FailToStart(t, now, failure);
    } else {
      go = true;
      containers = t.containers;
      volumes = t.volumes;
      task_id = t.id;
      fargate = t.fargate;
    }
  }
  std::vector<std::string> ids;
  std::vector<std::string> task_volumes;
  // What the task had on Docker; then Advance may move it on from
  // DEPROVISIONING (ECS deletes the ENI before STOPPED).
  auto remove_all = [&] {
    for (const std::string& cid : ids) (void)docker->RemoveContainer(cid, true);
    if (!pause_id.empty()) (void)docker->RemoveContainer(pause_id, true);
    for (const std::string& v : task_volumes) (void)docker->RemoveVolume(v);
    absl::MutexLock lock(&mu);
    tasks.at(arn).launching = false;
  };
  if (!go) return remove_all();
  auto fail = [&](const std::string& reason) {
    {
      absl::MutexLock lock(&mu);
      FailToStart(tasks.at(arn), clock->Now(), reason);
    }
    remove_all();
  };
  const std::map<std::string, std::string> labels = {
      {kLabel, id}, {std::string(kLabel) + ".task", arn}};

  for (const TaskContainer& c : containers) {
    absl::StatusOr<bool> exists = docker->ImageExists(c.spec.image);
    if (!exists.ok() || !*exists) {
      return fail(absl::StrCat(
          "CannotPullContainerError: pull image manifest has been retried 5 "
          "time(s): failed to resolve ref ",
          c.spec.image,
          ": not found (the AWS fake runs only images the Docker Engine "
          "already has)"));
    }
  }

  // Volumes: host paths are bind mounts, EFS one volume per file system,
  // anything else a volume of the task's own.
  std::map<std::string, docker::Mount> sources;
  for (const TaskVolume& v : volumes) {
    docker::Mount m;
    if (!v.host_path.empty()) {
      m.type = docker::Mount::Type::kBind;
      m.source = v.host_path;
    } else {
      m.type = docker::Mount::Type::kVolume;
      m.source = v.efs_key.empty()
                     ? DockerName(absl::StrCat(id, "-", task_id.substr(0, 12),
                                               "-", v.name))
                     : DockerName(absl::StrCat(id, "-efs-", v.efs_key));
      absl::Status s = docker->CreateVolume(m.source, labels);
      if (!s.ok() && !absl::IsAlreadyExists(s)) {
        return fail(absl::StrCat("ResourceInitializationError: volume '",
                                 v.name, "': ", s.message()));
      }
      if (v.efs_key.empty()) task_volumes.push_back(m.source);
    }
    sources[v.name] = m;
  }

  // Every container is created up front; each starts once its dependencies
  // are met.
  for (const TaskContainer& c : containers) {
    docker::ContainerSpec spec;
    spec.name = DockerName(
        absl::StrCat(id, "-", task_id.substr(0, 12), "-", c.spec.name));
    spec.image = c.spec.image;
    spec.entrypoint = c.spec.entry_point;
    spec.cmd = c.spec.command;
    for (const auto& [k, v] : c.spec.environment) {
      spec.env.push_back(absl::StrCat(k, "=", v));
    }
    // The fake has no Secrets Manager: a placeholder that names the source.
    for (const auto& [k, from] : c.spec.secrets) {
      spec.env.push_back(absl::StrCat(k, "=fake-secret-from:", from));
    }
    spec.env.push_back("AWS_REGION=" + options.region);
    spec.env.push_back("AWS_DEFAULT_REGION=" + options.region);
    spec.env.push_back(absl::StrCat("AWS_EXECUTION_ENV=AWS_ECS_",
                                    fargate ? "FARGATE" : "EC2"));
    spec.working_dir = c.spec.working_directory;
    spec.user = c.spec.user;
    spec.labels = labels;
    spec.labels[std::string(kLabel) + ".container"] = c.spec.name;
    for (const MountSpec& m : c.mounts) {
      docker::Mount mount = sources.at(m.volume);
      mount.target = m.container_path;
      mount.read_only = m.read_only;
      spec.mounts.push_back(mount);
    }
    if (!pause_id.empty()) spec.network = "container:" + pause_id;
    spec.health_check = c.health_check;
    spec.privileged = c.privileged;
    spec.read_only_rootfs = c.read_only_root;
    spec.cap_add = c.cap_add;
    spec.cap_drop = c.cap_drop;
    absl::StatusOr<std::string> cid = docker->CreateContainer(spec);
    if (!cid.ok()) {
      return fail(
          absl::StrCat("CannotCreateContainerError: ", cid.status().message()));
    }
    ids.push_back(*cid);
  }
  const size_t n = containers.size();
  {
    absl::MutexLock lock(&mu);
    TaskState& t = tasks.at(arn);
    for (size_t i = 0; i < n; ++i) t.containers[i].runtime_id = ids[i];
  }

  const docker::StopPredicate closing_now = [this] { return closing.load(); };
  // Follows container i from its start: its output to its log stream, then
  // its exit code.
  auto follow = [&](size_t i) {
    const std::string group = containers[i].log_group;
    const std::string stream = containers[i].log_stream;
    auto emit = [&](std::string line) {
      if (stream.empty()) return;
      absl::MutexLock lock(&mu);
      AppendLogEvent(group, stream, NowMs(), std::move(line));
    };
    // One splitter a stream: stdout and stderr interleave by chunks.
    LineSplitter out(emit);
    LineSplitter err(emit);
    (void)docker->FollowLogs(
        ids[i],
        [&](LogStream which, std::string_view bytes) {
          (which == LogStream::kStderr ? err : out).Add(bytes);
        },
        closing_now);
    out.Flush();
    err.Flush();
    absl::StatusOr<int> code = docker->WaitContainer(ids[i], closing_now);
    absl::MutexLock lock(&mu);
    TaskState& t = tasks.at(arn);
    TaskContainer& c = t.containers[i];
    c.last_status = "STOPPED";
    if (code.ok()) {
      c.exit_code = *code;
    } else if (!closing.load()) {
      c.reason = absl::StrCat("the AWS fake lost the container: ",
                              code.status().message());
    }
    ++t.version;
    if (c.essential) EssentialExited(t, clock->Now());
  };
  std::vector<std::thread> followers;
  std::vector<size_t> start_order;
  bool stop_sent = false;
  while (true) {
    std::vector<size_t> to_start;
    std::vector<size_t> to_stop;  // in the reverse of the start order
    std::vector<size_t> to_probe;
    absl::Duration grace = kMaxStopGrace;
    int64_t seen_version = 0;
    {
      absl::MutexLock lock(&mu);
      TaskState& t = tasks.at(arn);
      if (shutting_down) break;
      if (t.pub.desired_status != "STOPPED") {
        bool essential_stopped = false;
        to_start = Startable(t, &essential_stopped);
        if (essential_stopped) EssentialExited(t, clock->Now());
      }
      size_t running = 0;
      for (size_t i : start_order) {
        const TaskContainer& c = t.containers[i];
        if (c.last_status != "RUNNING") continue;
        ++running;
        if (c.health_check) to_probe.push_back(i);
      }
      if (t.pub.desired_status == "STOPPED") {
        to_start.clear();
        if (running == 0) break;
        if (!stop_sent) {
          stop_sent = true;
          for (auto i = start_order.rbegin(); i != start_order.rend(); ++i) {
            const TaskContainer& c = t.containers[*i];
            if (c.last_status != "RUNNING") continue;
            to_stop.push_back(*i);
            grace = std::min(grace, absl::Seconds(c.stop_timeout_seconds));
          }
        }
      }
      seen_version = t.version;
    }
    bool started_any = false;
    for (size_t i : to_start) {
      absl::Status s = docker->StartContainer(ids[i]);
      absl::MutexLock lock(&mu);
      TaskState& t = tasks.at(arn);
      TaskContainer& c = t.containers[i];
      ++t.version;
      if (!s.ok()) {
        c.last_status = "STOPPED";
        c.reason = absl::StrCat("CannotStartContainerError: ", s.message());
        if (c.essential) {
          StopFor(t, clock->Now(), "TaskFailedToStart", c.reason);
        }
        continue;
      }
      c.last_status = "RUNNING";
      started_any = true;
      start_order.push_back(i);
      followers.emplace_back(follow, i);
    }
    {
      // RUNNING once no container waits, unless the task stopped before
      // starting another.
      absl::MutexLock lock(&mu);
      TaskState& t = tasks.at(arn);
      if (t.pub.last_status == "PENDING" &&
          (started_any || t.pub.desired_status != "STOPPED") &&
          std::none_of(t.containers.begin(), t.containers.end(),
                       [](const TaskContainer& c) {
                         return c.last_status == "PENDING";
                       })) {
        EnterRunning(t, clock->Now());
      }
    }
    for (size_t i : to_probe) {
      absl::StatusOr<docker::ContainerState> state =
          docker->InspectContainer(ids[i]);
      // The Engine marks a container that exits unhealthy: only a running
      // one's health is its checks'.
      if (!state.ok() || !state->running) continue;
      const std::string health = HealthStatus(state->health);
      absl::MutexLock lock(&mu);
      TaskState& t = tasks.at(arn);
      TaskContainer& c = t.containers[i];
      if (c.last_status == "RUNNING" && c.health_status != health) {
        c.health_status = health;
        ++t.version;
      }
    }
    for (size_t i : to_stop) (void)docker->StopContainer(ids[i], grace);
    absl::MutexLock lock(&mu);
    const TaskState& t = tasks.at(arn);
    auto changed = [&] { return shutting_down || t.version != seen_version; };
    mu.AwaitWithTimeout(absl::Condition(&changed), kPollEvery);
  }
  for (std::thread& f : followers) f.join();
  {
    absl::MutexLock lock(&mu);
    if (!shutting_down) Finish(tasks.at(arn), clock->Now());
  }
  remove_all();
}

void Fake::RemoveDockerLeftovers() {
  if (!docker) return;
  const std::string label = absl::StrCat(kLabel, "=", id);
  if (absl::StatusOr<std::vector<std::string>> ids =
          docker->ListContainers(label);
      ids.ok()) {
    for (const std::string& cid : *ids)
      (void)docker->RemoveContainer(cid, true);
  }
  if (absl::StatusOr<std::vector<std::string>> volumes =
          docker->ListVolumes(label);
      volumes.ok()) {
    for (const std::string& v : *volumes) (void)docker->RemoveVolume(v);
  }
  if (absl::StatusOr<std::vector<std::string>> networks =
          docker->ListNetworks(label);
      networks.ok()) {
    for (const std::string& n : *networks) (void)docker->RemoveNetwork(n);
  }
}

}  // namespace delegate::testing::aws_fake

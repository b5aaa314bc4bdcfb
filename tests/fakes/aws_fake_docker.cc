// Docker mode of the AWS fake: a task's containers really run on a Docker
// Engine once the task is past PENDING, their output goes to CloudWatch Logs
// line by line as the awslogs driver would send it, and their exit codes
// end the task.
#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "tests/fakes/aws_fake_internal.h"

namespace delegate::testing::aws_fake {
namespace {

constexpr char kLabel[] = "delegate.test.aws-fake";
// StopTask's SIGTERM to SIGKILL, capped so that tests do not wait 30 s.
constexpr absl::Duration kMaxStopGrace = absl::Seconds(2);

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

}  // namespace

void Fake::StartRunner(const std::string& task_arn) {
  absl::MutexLock lock(&threads_mu);
  runners.emplace_back([this, task_arn] { RunOnDocker(task_arn); });
}

void Fake::RunOnDocker(const std::string& arn) {
  std::vector<TaskContainer> containers;
  std::vector<TaskVolume> volumes;
  std::string task_id;
  bool fargate = false;
  {
    absl::MutexLock lock(&mu);
    TaskState& t = tasks.at(arn);
    const absl::Time now = clock->Now();
    if (shutting_down) return;
    if (t.stop_requested) {
      Finish(t, t.stop_requested_at);
      return;
    }
    if (std::string failure = PrepareLogs(t, now); !failure.empty()) {
      FailToStart(t, now, failure);
      return;
    }
    containers = t.containers;
    volumes = t.volumes;
    task_id = t.id;
    fargate = t.fargate;
  }
  auto fail = [&](const std::string& reason) {
    absl::MutexLock lock(&mu);
    FailToStart(tasks.at(arn), clock->Now(), reason);
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
  std::vector<std::string> task_volumes;
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

  std::vector<std::string> ids;
  auto remove_all = [&] {
    for (const std::string& cid : ids) (void)docker->RemoveContainer(cid, true);
    for (const std::string& v : task_volumes) (void)docker->RemoveVolume(v);
  };
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
    spec.privileged = c.privileged;
    spec.read_only_rootfs = c.read_only_root;
    spec.cap_add = c.cap_add;
    spec.cap_drop = c.cap_drop;
    absl::StatusOr<std::string> cid = docker->CreateContainer(spec);
    if (!cid.ok()) {
      remove_all();
      return fail(
          absl::StrCat("CannotCreateContainerError: ", cid.status().message()));
    }
    ids.push_back(*cid);
  }
  for (const std::string& cid : ids) {
    if (absl::Status s = docker->StartContainer(cid); !s.ok()) {
      remove_all();
      return fail(absl::StrCat("CannotStartContainerError: ", s.message()));
    }
  }

  const size_t n = containers.size();
  size_t exited = 0;  // guarded by mu
  {
    absl::MutexLock lock(&mu);
    TaskState& t = tasks.at(arn);
    for (size_t i = 0; i < n; ++i) t.containers[i].runtime_id = ids[i];
    EnterRunning(t, clock->Now());
  }
  const docker::StopPredicate closing_now = [this] { return closing.load(); };
  std::vector<std::thread> followers;
  for (size_t i = 0; i < n; ++i) {
    followers.emplace_back([&, i] {
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
      ++exited;
    });
  }

  // Stop what still runs once the task is to stop (an essential container
  // exited, or StopTask).
  bool stop_sent = false;
  while (true) {
    absl::Duration grace = kMaxStopGrace;
    {
      absl::MutexLock lock(&mu);
      const TaskState& t = tasks.at(arn);
      auto ready = [&] {
        return shutting_down || exited == n ||
               (!stop_sent && t.pub.desired_status == "STOPPED");
      };
      mu.Await(absl::Condition(&ready));
      if (shutting_down || exited == n) break;
      stop_sent = true;
      for (const TaskContainer& c : t.containers) {
        grace = std::min(grace, absl::Seconds(c.stop_timeout_seconds));
      }
    }
    for (const std::string& cid : ids) (void)docker->StopContainer(cid, grace);
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
}

}  // namespace delegate::testing::aws_fake

#include "manager/harness/registrar.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/time/clock.h"
#include "delegate/version.h"
#include "util/env.h"
#include "util/url.h"

namespace delegate::harness {
namespace {

// The host name as the manager shows it: no spaces.
std::string RunnerHostName() {
  std::string name = HostName();
  for (char& c : name) {
    if (c == ' ') c = '-';
  }
  return name;
}

// The address outbound traffic leaves from, found as the runner does (a UDP
// "connect" sends nothing); loopback when there is no route.
std::string OutboundIp() {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) return "127.0.0.1";
  sockaddr_in dst{};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(80);
  inet_pton(AF_INET, "8.8.8.8", &dst.sin_addr);
  std::string ip = "127.0.0.1";
  if (connect(fd, reinterpret_cast<sockaddr*>(&dst), sizeof(dst)) == 0) {
    sockaddr_in self{};
    socklen_t len = sizeof(self);
    char text[INET_ADDRSTRLEN];
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&self), &len) == 0 &&
        inet_ntop(AF_INET, &self.sin_addr, text, sizeof(text))) {
      ip = text;
    }
  }
  close(fd);
  return ip;
}

}  // namespace

LabelValues RunnerLabels(const DelegateConfig& config) {
  return {config.account_id, config.name};
}

Registrar::Registrar(const DelegateConfig& config, EventLog& log,
                     Metrics& metrics, absl::Duration heartbeat_interval)
    : config_(config),
      log_(log),
      metrics_(metrics),
      heartbeat_interval_(heartbeat_interval),
      host_name_("runner-" + RunnerHostName()),
      ip_(OutboundIp()) {}

RegisterInfo Registrar::Info() const {
  RegisterInfo info;
  info.account_id = config_.account_id;
  info.delegate_name = config_.name;
  info.host_name = host_name_;
  info.ip = ip_;
  info.tags = config_.tags;
  info.version = std::string(Version());
  info.now = absl::Now();
  absl::MutexLock lock(&mu_);
  info.delegate_id = delegate_id_;
  return info;
}

std::string Registrar::delegate_id() const {
  absl::MutexLock lock(&mu_);
  return delegate_id_;
}

void Registrar::RememberId(std::string delegate_id) {
  absl::MutexLock lock(&mu_);
  delegate_id_ = std::move(delegate_id);
}

bool Registrar::InGoodStanding() const {
  absl::MutexLock lock(&mu_);
  return registered_ && heartbeat_failures_ < 3;
}

absl::Status Registrar::Register(HarnessClient& client,
                                 const std::function<bool()>& stopped) {
  RetryPolicy policy;
  policy.max_elapsed = absl::InfiniteDuration();
  std::string id;
  absl::Status s = Retry(
      policy,
      [&] {
        RegisterInfo info = Info();
        info.max_stages = config_.max_stages;  // heartbeats send null
        absl::StatusOr<std::string> got = client.Register(info);
        if (!got.ok()) return got.status();
        id = *got;
        return absl::OkStatus();
      },
      stopped,
      [this](const absl::Status& error, absl::Duration wait) {
        metrics_.Add("io_harness_runner_error_count", RunnerLabels(config_));
        log_.Warn("register failed; retrying",
                  {{"error", error.message()},
                   {"retry_in", absl::FormatDuration(absl::Trunc(
                                    wait, absl::Milliseconds(1)))}});
      });
  // Retry hands back the last failure when it is stopped: a drain that came
  // before the delegate could register is no failure to report.
  if (!s.ok() && IsRetryable(s) && stopped && stopped()) {
    return absl::CancelledError("drained before registering");
  }
  if (!s.ok()) return s;
  if (id.empty()) return absl::CancelledError("drained before registering");
  absl::MutexLock lock(&mu_);
  delegate_id_ = id;
  registered_ = true;
  heartbeat_failures_ = 0;
  return absl::OkStatus();
}

void Registrar::HeartbeatLoop(HarnessClient& client,
                              const std::function<bool()>& draining,
                              const std::function<void()>& forgotten) {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopped_) return;
    }
    absl::Status s = client.Heartbeat(Info());
    if (absl::IsNotFound(s) && !draining()) {
      // The manager no longer knows this delegate (restarted, or it expired
      // the registration): register again; the id may change.
      log_.Warn("the manager does not know this delegate; registering again",
                {{"error", s.message()}});
      const std::string old_id = delegate_id();
      s = Register(client, draining);
      if (s.ok()) {
        log_.Info("connected", {{"delegate_id", delegate_id()},
                                {"manager", RedactUrl(client.manager_url())}});
        // A manager that forgot this delegate forgot its stages too: no step
        // or cleanup of theirs will come.
        if (delegate_id() != old_id) forgotten();
      }
    }
    {
      absl::MutexLock lock(&mu_);
      heartbeat_failures_ = s.ok() ? 0 : heartbeat_failures_ + 1;
    }
    if (!s.ok()) {
      metrics_.Add("io_harness_runner_heartbeat_failure_count",
                   RunnerLabels(config_));
      log_.Warn("heartbeat failed", {{"error", s.message()}});
    }
    absl::MutexLock lock(&mu_);
    auto stopped = [this]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopped_; };
    mu_.AwaitWithTimeout(absl::Condition(&stopped), heartbeat_interval_);
  }
}

void Registrar::Stop() {
  absl::MutexLock lock(&mu_);
  stopped_ = true;
  registered_ = false;
}

}  // namespace delegate::harness

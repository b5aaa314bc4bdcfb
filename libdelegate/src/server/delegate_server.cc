#include <chrono>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "delegate/event_log.h"
#include "delegate/server.h"
#include "delegate/version.h"
#include "http/http_server.h"
#include "util/strings.h"

namespace delegate {

DelegateServer::DelegateServer(DelegateServerOptions options,
                               ExecutorRegistry& executors,
                               ManagerRegistry& managers)
    : options_(std::move(options)),
      executors_(executors),
      managers_(managers),
      log_(options_.log ? *options_.log : EventLog::Stdout()) {}

DelegateServer::~DelegateServer() = default;

void DelegateServer::Drain() {
  absl::MutexLock lock(&mu_);
  if (drain_requested_) drain_forced_ = true;
  drain_requested_ = true;
  if (connection_) connection_->Drain();
}

absl::Status DelegateServer::StartRuntime() {
  SchedulerStageRunnerOptions runner;
  runner.also_log_to = &log_sink_;
  runtime_runner_ =
      std::make_unique<SchedulerStageRunner>(*scheduler_, std::move(runner));
  RuntimeServerOptions server;
  server.listen = options_.runtime_listen;
  server.tls_cert_file = options_.runtime_tls_cert_file;
  server.tls_key_file = options_.runtime_tls_key_file;
  server.client_ca_file = options_.runtime_client_ca_file;
  absl::StatusOr<std::unique_ptr<RuntimeServer>> started =
      RuntimeServer::Start(std::move(server), *runtime_runner_);
  if (!started.ok()) {
    runtime_runner_.reset();
    // Start's messages begin with the option; here it is a flag.
    absl::string_view message = started.status().message();
    std::string_view flag = "--runtime-listen";
    for (const auto& [option, name] :
         {std::pair{"listen: ", "--runtime-listen"},
          {"tls_cert_file: ", "--runtime-tls-cert"},
          {"tls_key_file: ", "--runtime-tls-key"},
          {"client_ca_file: ", "--runtime-client-ca"}}) {
      if (absl::ConsumePrefix(&message, option)) {
        flag = name;
        break;
      }
    }
    return absl::Status(started.status().code(),
                        absl::StrCat(AbslView(flag), ": ", message));
  }
  runtime_server_ = *std::move(started);
  log_.Info("serving RuntimeService",
            {{"address", runtime_server_->address()}});
  return absl::OkStatus();
}

void DelegateServer::DrainRuntime() {
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&drain_requested_));
  }
  // The graceful drain waits for the running stages; a second Drain cuts it
  // short from this thread.
  std::thread graceful([this] {
    runtime_runner_->Drain(absl::InfiniteDuration());
    absl::MutexLock lock(&mu_);
    runtime_drained_ = true;
  });
  // Refusing new stages is the drain's first act: say so once it is done.
  while (runtime_runner_->Health().state == RuntimeHealth::State::kServing) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  log_.Info("RuntimeService draining: no new stages",
            {{"address", runtime_server_->address()}});
  bool forced = false;
  {
    absl::MutexLock lock(&mu_);
    auto drained_or_forced = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return runtime_drained_ || drain_forced_;
    };
    mu_.Await(absl::Condition(&drained_or_forced));
    forced = !runtime_drained_;
  }
  if (forced) runtime_runner_->Drain(absl::ZeroDuration());
  graceful.join();
  // Watchers have seen their stages end by now.
  runtime_server_->Shutdown();
  log_.Info("RuntimeService stopped");
}

absl::Status DelegateServer::Run() {
  const DelegateConfig& config = options_.config;
  const bool no_manager = options_.manager == "none";
  if (no_manager && options_.runtime_listen.empty()) {
    return absl::InvalidArgumentError(
        "--manager none: nothing to serve without a manager; give "
        "--runtime-listen ADDR too (RuntimeService), or a manager URL");
  }
  for (const std::string& w : config.warnings) log_.Warn(w);

  // The ops endpoints first, so that a liveness probe passes while the
  // delegate is still connecting.
  http::ServerOptions ops;
  const std::string& bind = config.ops_bind;
  const size_t colon = bind.rfind(':');
  ops.address = colon == 0 || colon == std::string::npos
                    ? "0.0.0.0"
                    : bind.substr(0, colon);
  if (!absl::SimpleAtoi(bind.substr(colon + 1), &ops.port)) {
    return absl::InvalidArgumentError(
        absl::StrCat("HTTPS_BIND: expected [HOST]:PORT, got '", bind, "'"));
  }
  // Anything in the task's network reaches this port: it takes GETs only,
  // so no request body at all, small heads, and few connections (idle
  // ones give way to a probe; see ServerOptions).
  ops.max_connections = 128;
  ops.max_connections_per_client = 32;
  ops.max_header_bytes = size_t{16} << 10;
  ops.max_body_bytes = 0;
  ops.idle_timeout = absl::Seconds(30);
  ops.on_error = [this](std::string_view m) {
    log_.Warn("ops endpoint", {{"error", m}});
  };
  std::atomic<ManagerConnection*> current{nullptr};
  std::atomic<SchedulerStageRunner*> runtime{nullptr};
  absl::StatusOr<std::unique_ptr<http::HttpServer>> server =
      http::HttpServer::Start(ops, [&](const http::ServerRequest& req) {
        http::ServerResponse resp;
        resp.content_type = "text/plain; charset=utf-8";
        if (req.method != "GET") {
          resp.status = 405;
          resp.body = "only GET\n";
        } else if (req.path == "/health") {
          resp.body = "ok\n";
        } else if (req.path == "/ready") {
          ManagerConnection* c = current.load();
          SchedulerStageRunner* r = runtime.load();
          const bool manager_ready = no_manager || (c && c->Ready());
          const bool runtime_ready =
              options_.runtime_listen.empty() ||
              (r && r->Health().state == RuntimeHealth::State::kServing);
          resp.status = manager_ready && runtime_ready ? 200 : 503;
          resp.body = !manager_ready   ? "not connected to the manager\n"
                      : !runtime_ready ? "RuntimeService takes no stages\n"
                                       : "ready\n";
        } else if (req.path == "/metrics") {
          resp.content_type = "text/plain; version=0.0.4; charset=utf-8";
          resp.body = metrics_.RenderPrometheus();
        } else {
          resp.status = 404;
          resp.body = "not found: try /health, /ready or /metrics\n";
        }
        return resp;
      });
  if (!server.ok()) {
    return absl::Status(
        server.status().code(),
        absl::StrCat("HTTPS_BIND ", bind, ": ", server.status().message()));
  }
  ops_port_ = (*server)->port();
  log_.Info("serving", {{"health", absl::StrCat("http://", ops.address, ":",
                                                (*server)->port(), "/health")},
                        {"version", Version()},
                        {"commit", GitCommit()}});

  SchedulerOptions scheduling;
  scheduling.registry = &executors_;
  scheduling.delegate_name = config.name;
  scheduling.max_stages = config.max_stages;
  scheduling.policy = options_.policy;
  // A step may come by the delegate's own credentials (a value pasted into
  // a stage, a file it can read): they never reach a log.
  scheduling.masked_values = config.MaskedValues();
  // Stages come from the network: its reader threads need the CPU more than
  // an idle worker needs to spin for the next stage.
  scheduling.spin_when_idle = false;
  scheduler_ = std::make_unique<Scheduler>(scheduling);

  // The --manager URL's scheme names the connection ("grpc://..."); an
  // http(s) URL, or an empty one (HARNESS_URL), is a Harness manager.
  std::unique_ptr<ManagerConnection> connection;
  if (!no_manager) {
    std::string scheme = "harness";
    if (const size_t colon = options_.manager.find("://");
        colon != std::string::npos) {
      std::string given = options_.manager.substr(0, colon);
      if (given != "http" && given != "https") scheme = std::move(given);
    }
    ManagerEnvironment env{config,        executors_,      *scheduler_,
                           log_,          metrics_,        log_sink_,
                           Clock::Real(), options_.manager};
    absl::StatusOr<std::unique_ptr<ManagerConnection>> created =
        managers_.Create(scheme, env);
    if (!created.ok()) {
      (*server)->Stop();
      return created.status();
    }
    connection = *std::move(created);
  }
  // After the connection is made: the stages it will resume keep what an
  // earlier process made for them when the executors remove the rest.
  if (options_.start_executors) {
    executors_.Start({.delegate_name = config.name,
                      .log = &log_,
                      .resuming = connection ? connection->StagesToResume()
                                             : std::vector<std::string>{}});
  }
  std::thread runtime_drainer;
  if (!options_.runtime_listen.empty()) {
    if (absl::Status s = StartRuntime(); !s.ok()) {
      (*server)->Stop();
      return s;
    }
    runtime = runtime_runner_.get();
    runtime_drainer = std::thread([this] { DrainRuntime(); });
  }

  absl::Status s;
  if (connection) {
    {
      absl::MutexLock lock(&mu_);
      connection_ = connection.get();
      if (drain_requested_) connection_->Drain();
    }
    current = connection.get();
    s = connection->Run();
    // RuntimeService drains with the connection, also when it gave up.
    {
      absl::MutexLock lock(&mu_);
      drain_requested_ = true;
    }
  }
  if (runtime_drainer.joinable()) runtime_drainer.join();
  // The ops endpoints stop before the connection and the runtime go: a
  // /ready in flight may still be asking them.
  (*server)->Stop();
  current = nullptr;
  runtime = nullptr;
  {
    absl::MutexLock lock(&mu_);
    connection_ = nullptr;
  }
  connection.reset();
  runtime_server_.reset();
  runtime_runner_.reset();
  scheduler_->Shutdown(absl::ZeroDuration());
  scheduler_.reset();
  return s;
}

}  // namespace delegate

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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
  std::lock_guard lock(mu_);
  drain_requested_ = true;
  if (connection_) connection_->Drain();
}

absl::Status DelegateServer::Run() {
  const DelegateConfig& config = options_.config;
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
  ops.on_error = [this](std::string_view m) {
    log_.Warn("ops endpoint", {{"error", m}});
  };
  std::atomic<ManagerConnection*> current{nullptr};
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
          const bool ready = c && c->Ready();
          resp.status = ready ? 200 : 503;
          resp.body = ready ? "ready\n" : "not connected to the manager\n";
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

  if (options_.reap_docker_leftovers && executors_.Contains("docker")) {
    absl::StatusOr<std::vector<std::string>> reaped =
        ReapDockerLeftovers(options_.docker, config.name);
    if (reaped.ok()) {
      for (const std::string& what : *reaped) {
        log_.Info("removed a leftover of an earlier run", {{"what", what}});
      }
    } else if (!absl::IsUnavailable(reaped.status())) {
      log_.Warn("could not look for leftovers on Docker",
                {{"error", reaped.status().message()}});
    }
  }

  // The --manager URL's scheme names the connection ("grpc://..."); an
  // http(s) URL, or none, is a Harness manager.
  std::string scheme = "harness";
  if (const size_t colon = options_.manager.find("://");
      colon != std::string::npos) {
    std::string given = options_.manager.substr(0, colon);
    if (given != "http" && given != "https") scheme = std::move(given);
  }
  ManagerEnvironment env{config,        executors_,      options_.policy,
                         log_,          metrics_,        log_sink_,
                         Clock::Real(), options_.manager};
  absl::StatusOr<std::unique_ptr<ManagerConnection>> connection =
      managers_.Create(scheme, env);
  if (!connection.ok()) {
    (*server)->Stop();
    return connection.status();
  }
  {
    std::lock_guard lock(mu_);
    connection_ = connection->get();
    if (drain_requested_) connection_->Drain();
  }
  current = connection->get();
  absl::Status s = (*connection)->Run();
  // The ops endpoints stop before the connection goes: a /ready in flight
  // may still be asking it.
  (*server)->Stop();
  current = nullptr;
  {
    std::lock_guard lock(mu_);
    connection_ = nullptr;
  }
  connection->reset();
  return s;
}

}  // namespace delegate

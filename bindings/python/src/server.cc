#include "server.h"

#include <cstdio>
#include <system_error>
#include <thread>
#include <utility>

#include "delegate/builtins.h"
#include "py_executor.h"
#include "rapidjson/document.h"

namespace delegate::python {
namespace {

constexpr size_t kMaxEvents = 10000;

}  // namespace

Server::Server(ServerOptions options)
    : options_(std::move(options)),
      log_([this](std::string_view line) { Event(line); }) {}

absl::StatusOr<std::shared_ptr<Server>> Server::Create(ServerOptions options) {
  if (PythonClosing()) {
    return absl::UnavailableError("the interpreter is exiting");
  }
  const EnvMap env =
      options.runtime.env ? *options.runtime.env : ProcessEnvironment();
  // As `delegate server`: Harness credentials are needed only for the
  // default manager, the Harness one.
  absl::StatusOr<DelegateConfig> config =
      MakeConfig(env, options.runtime,
                 options.server.manager.empty() ? ConfigNeed::kServer
                                                : ConfigNeed::kLocal);
  if (!config.ok()) return config.status();
  if (options.ops_bind) config->ops_bind = *options.ops_bind;
  absl::StatusOr<OperatorPolicy> policy = LoadOperatorPolicy(env);
  if (!policy.ok()) return policy.status();

  // Deleted on a thread of its own when the last reference goes on a
  // scheduler worker running a Python executor (the cyclic GC may free it
  // there): Close joins the server's thread, which waits for that worker.
  std::shared_ptr<Server> server(new Server(options), [](Server* s) {
    if (OnExecutorThread()) {
      try {
        std::thread([s] { delete s; }).detach();
        return;
      } catch (const std::system_error&) {
        // No thread to be had: left running (the process is in trouble).
        return;
      }
    }
    delete s;
  });
  if (absl::Status s = RegisterBuiltins(*config, env, server->executors_,
                                        &server->managers_);
      !s.ok()) {
    return s;
  }
  DelegateServerOptions run = options.server;
  run.config = *std::move(config);
  run.policy = *std::move(policy);
  run.log = &server->log_;
  server->server_ = std::make_unique<DelegateServer>(
      std::move(run), server->executors_, server->managers_);
  Track(server);
  return server;
}

Server::~Server() {
  if (PyGILState_Check()) {
    // Python executors of stages still running need the GIL to finish.
    WithoutGil([&] { Close(); });
  } else {
    Close();
  }
  // Before the members its event log writes to.
  server_.reset();
}

absl::Status Server::RegisterExecutor(std::string name,
                                      pybind11::object factory) {
  {
    absl::MutexLock lock(&mu_);
    if (started_) {
      return absl::FailedPreconditionError(
          "register_executor: the server has started; register executors "
          "before start()");
    }
  }
  return RegisterPythonExecutor(executors_, std::move(name),
                                std::move(factory));
}

void Server::Event(std::string_view line) {
  if (options_.echo_events) {
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fputc('\n', stderr);
  }
  std::string address;
  rapidjson::Document doc;
  doc.Parse(line.data(), line.size());
  if (!doc.HasParseError() && doc.IsObject() && doc.HasMember("msg") &&
      doc["msg"].IsString() &&
      std::string_view(doc["msg"].GetString()) == "serving RuntimeService" &&
      doc.HasMember("address") && doc["address"].IsString()) {
    address = doc["address"].GetString();
  }
  absl::MutexLock lock(&mu_);
  if (!address.empty()) runtime_address_ = address;
  events_.emplace_back(line);
  if (events_.size() > kMaxEvents) events_.pop_front();
}

absl::Status Server::Start() {
  absl::MutexLock lock(&mu_);
  if (started_) {
    return absl::FailedPreconditionError(
        "start: the server was started before");
  }
  started_ = true;
  thread_ = std::thread([this] {
    absl::Status status = server_->Run();
    absl::MutexLock lock(&mu_);
    ended_ = std::move(status);
  });
  return absl::OkStatus();
}

bool Server::WaitStarted(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  const bool wants_runtime = !options_.server.runtime_listen.empty();
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (ended_) return true;
      if (server_->ops_port() > 0 &&
          (!wants_runtime || !runtime_address_.empty())) {
        return true;
      }
    }
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
}

bool Server::WaitEnded(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  if (!started_) return true;  // nothing runs, nor will without start()
  auto has_ended = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return ended_.has_value();
  };
  return mu_.AwaitWithTimeout(absl::Condition(&has_ended), timeout);
}

void Server::Drain() { server_->Drain(); }

std::optional<absl::Status> Server::ended() const {
  absl::MutexLock lock(&mu_);
  return ended_;
}

void Server::Close() {
  absl::MutexLock join_lock(&join_mu_);
  if (!thread_.joinable()) return;
  server_->Drain();
  server_->Drain();
  thread_.join();
}

int Server::ops_port() const { return server_->ops_port(); }

std::string Server::runtime_address() const {
  absl::MutexLock lock(&mu_);
  return runtime_address_;
}

std::vector<std::string> Server::events() const {
  absl::MutexLock lock(&mu_);
  return {events_.begin(), events_.end()};
}

}  // namespace delegate::python

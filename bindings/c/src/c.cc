// The C API (delegate/c.h) over the C++ library. Every entry point runs its
// body through Guard, so that no exception crosses into C: a failure is a
// message in *errptr, or the function's empty value.
#include "delegate/c.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "delegate/builtins.h"
#include "delegate/config.h"
#include "delegate/env.h"
#include "delegate/event_log.h"
#include "delegate/executor.h"
#include "delegate/manager.h"
#include "delegate/policy.h"
#include "delegate/result.h"
#include "delegate/scheduler.h"
#include "delegate/server.h"
#include "delegate/stage.h"
#include "delegate/stage_file.h"
#include "delegate/stage_run.h"
#include "delegate/version.h"

namespace {

using delegate::StepStatus;

// A malloc'd copy, for the caller to delegate_free. NULL when out of memory.
char* CopyString(std::string_view s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out == nullptr) return nullptr;
  std::memcpy(out, s.data(), s.size());
  out[s.size()] = '\0';
  return out;
}

void SetError(char** errptr, std::string_view message) {
  if (errptr == nullptr) return;
  std::free(*errptr);
  *errptr = CopyString(message);
}

// True (and *errptr set) when `status` is an error.
bool SaveError(char** errptr, const absl::Status& status) {
  if (status.ok()) return false;
  SetError(errptr, status.message().empty()
                       ? absl::StatusCodeToString(status.code())
                       : std::string(status.message()));
  return true;
}

// Runs an entry point's body: an exception becomes a message (where the
// function has errptr) and the function's empty value.
template <typename F>
auto Guard(char** errptr, F&& body) noexcept -> decltype(body()) {
  using R = decltype(body());
  try {
    return body();
  } catch (const std::exception& e) {
    SetError(errptr, absl::StrCat("internal error: ", e.what()));
  } catch (...) {
    SetError(errptr, "internal error: unknown exception");
  }
  if constexpr (!std::is_void_v<R>) return R{};
}

// A required argument: false (and *errptr set) when it is NULL.
bool Required(char** errptr, const void* arg, const char* name) {
  if (arg != nullptr) return true;
  SetError(errptr, absl::StrCat(name, ": must not be NULL"));
  return false;
}

int StatusToC(StepStatus status) {
  switch (status) {
    case StepStatus::kSuccess:
      return DELEGATE_STATUS_SUCCESS;
    case StepStatus::kFailure:
      return DELEGATE_STATUS_FAILURE;
    case StepStatus::kTimeout:
      return DELEGATE_STATUS_TIMEOUT;
    case StepStatus::kSkipped:
      return DELEGATE_STATUS_SKIPPED;
    case StepStatus::kCancelled:
      return DELEGATE_STATUS_CANCELLED;
  }
  return DELEGATE_STATUS_FAILURE;
}

int StreamToC(delegate::LogStream stream) {
  switch (stream) {
    case delegate::LogStream::kStdout:
      return DELEGATE_STREAM_STDOUT;
    case delegate::LogStream::kStderr:
      return DELEGATE_STREAM_STDERR;
    case delegate::LogStream::kSystem:
      return DELEGATE_STREAM_SYSTEM;
  }
  return DELEGATE_STREAM_SYSTEM;
}

absl::Duration Millis(int64_t ms) {
  return ms <= 0 ? absl::ZeroDuration() : absl::Milliseconds(ms);
}

// A C callback's state and destructor: the destructor runs once, when the
// last owner lets go (or at Release).
class CState {
 public:
  CState(void* state, void (*destructor)(void*))
      : state_(state), destructor_(destructor) {}
  CState(const CState&) = delete;
  CState& operator=(const CState&) = delete;
  ~CState() { Release(); }
  void* get() const { return state_; }
  void Release() {
    if (destructor_ != nullptr) std::exchange(destructor_, nullptr)(state_);
  }

 private:
  void* const state_;
  void (*destructor_)(void*);
};

// What the version string says, read once.
struct VersionParts {
  std::string text;
  int major = 0;
  int minor = 0;
  int patch = 0;
};

const VersionParts& Version() {
  static const VersionParts* const parts = [] {
    auto* v = new VersionParts;
    v->text = std::string(delegate::Version());
    std::vector<std::string> numbers = absl::StrSplit(v->text, '.');
    int* fields[] = {&v->major, &v->minor, &v->patch};
    for (size_t i = 0; i < 3 && i < numbers.size(); ++i) {
      (void)absl::SimpleAtoi(numbers[i], fields[i]);
    }
    return v;
  }();
  return *parts;
}

struct Registries {
  delegate::ExecutorRegistry executors;
  delegate::ManagerRegistry managers;
};

// The scheduler and the registry it runs on, which it keeps alive.
struct SchedulerHolder {
  SchedulerHolder(std::shared_ptr<Registries> r,
                  delegate::SchedulerOptions options)
      : registries(std::move(r)), scheduler(std::move(options)) {}
  const std::shared_ptr<Registries> registries;
  delegate::Scheduler scheduler;
};

}  // namespace

// ------------------------------------------------------------- the handles

struct delegate_env_t {
  delegate::EnvMap map;
};

struct delegate_config_t {
  delegate::DelegateConfig config;
};

struct delegate_policy_t {
  delegate::OperatorPolicy policy;
};

struct delegate_registry_t {
  std::shared_ptr<Registries> rep;
};

struct delegate_stage_t {
  delegate::Stage stage;
};

struct delegate_scheduler_t {
  std::shared_ptr<SchedulerHolder> rep;
};

struct delegate_result_t {
  delegate::StageResult result;
};

// One line, copied so that its strings end in NUL.
struct delegate_log_line_t {
  std::string task_id;
  std::string step_id;
  std::string text;
  int stream = DELEGATE_STREAM_STDOUT;
  uint64_t number = 0;
  bool partial = false;
  int64_t time_us = 0;
};

namespace {

// Hands a run's log lines to C, one call at a time, and lets go of the
// callback's state once the stage is done (Done comes after every line).
class LineObserver final : public delegate::StageObserver {
 public:
  LineObserver(void* state, void (*destructor)(void*),
               void (*on_line)(void*, const delegate_log_line_t*))
      : state_(state, destructor), on_line_(on_line) {}

  void Append(const delegate::LogLine& line) override {
    if (on_line_ == nullptr) return;
    delegate_log_line_t copy;
    copy.task_id = std::string(line.task_id);
    copy.step_id = std::string(line.step_id);
    copy.text = std::string(line.text);
    copy.stream = StreamToC(line.stream);
    copy.number = line.number;
    copy.partial = line.partial;
    copy.time_us = absl::ToUnixMicros(line.time);
    absl::MutexLock lock(&mu_);
    if (released_) return;
    on_line_(state_.get(), &copy);
  }
  void Done(const delegate::StageResult&) override { Release(); }
  void Release() {
    absl::MutexLock lock(&mu_);
    released_ = true;
    state_.Release();
  }

 private:
  absl::Mutex mu_;
  CState state_ ABSL_GUARDED_BY(mu_);
  void (*const on_line_)(void*, const delegate_log_line_t*);
  bool released_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

// Member order matters: the run goes first (it cancels and waits for the
// stage), then the observer, then the scheduler it may have kept alive.
struct delegate_run_t {
  std::shared_ptr<SchedulerHolder> scheduler;
  std::shared_ptr<LineObserver> observer;
  std::string task_id;
  std::unique_ptr<delegate::StageRun> run;
};

// ------------------------------------------------------------- C executors

namespace {

struct CExecutorDef {
  CExecutorDef(void* s, void (*d)(void*)) : state(s, d) {}
  CState state;
  void (*initialize)(void*, delegate_stage_context_t*) = nullptr;
  void (*execute)(void*, delegate_step_context_t*) = nullptr;
  void (*cleanup)(void*, delegate_stage_context_t*) = nullptr;
};

class CExecutor;

}  // namespace

struct delegate_stage_context_t {
  delegate_stage_context_t(CExecutor* e, const delegate::StageContext* c)
      : executor(e), ctx(c) {}
  CExecutor* const executor;
  const delegate::StageContext* const ctx;
  bool failed = false;
  std::string failure;
};

struct delegate_step_context_t {
  delegate_step_context_t(CExecutor* e, const delegate::StepContext* c)
      : stage(e, &c->stage), ctx(c) {}
  delegate_stage_context_t stage;
  const delegate::StepContext* const ctx;
  std::optional<int> exit_code;
  std::map<std::string, std::string> outputs;
  bool failed = false;
  std::string failure;
};

namespace {

// One instance per stage (the registry's factory makes one each time), so
// the stage's data pointer lives here.
class CExecutor final : public delegate::Executor {
 public:
  explicit CExecutor(std::shared_ptr<CExecutorDef> def)
      : def_(std::move(def)) {}

  absl::Status Initialize(const delegate::StageContext& ctx) override {
    return StageCall(def_->initialize, ctx, "initialize");
  }

  delegate::StepResult Execute(const delegate::StepContext& ctx) override {
    delegate_step_context_t step(this, &ctx);
    delegate::StepResult result;
    try {
      def_->execute(def_->state.get(), &step);
    } catch (...) {
      step.failed = true;
      step.failure = "the executor's execute callback threw an exception";
    }
    ctx.output.Flush();
    result.exit_code = step.exit_code;
    result.outputs = std::move(step.outputs);
    if (step.failed) {
      result.status = StepStatus::kFailure;
      result.error = step.failure.empty() ? "failed" : step.failure;
    } else if (std::optional<StepStatus> stop = delegate::StopReason(ctx)) {
      result.status = *stop;
      result.error = *stop == StepStatus::kTimeout ? "timed out" : "cancelled";
    } else if (step.exit_code && *step.exit_code != 0) {
      result.status = StepStatus::kFailure;
      result.error = absl::StrCat("exit status ", *step.exit_code);
    }
    return result;
  }

  absl::Status Cleanup(const delegate::StageContext& ctx) override {
    return StageCall(def_->cleanup, ctx, "cleanup");
  }

  void set_data(void* data) { data_ = data; }
  void* data() const { return data_; }

 private:
  absl::Status StageCall(void (*call)(void*, delegate_stage_context_t*),
                         const delegate::StageContext& ctx, const char* what) {
    if (call == nullptr) return absl::OkStatus();
    delegate_stage_context_t stage(this, &ctx);
    try {
      call(def_->state.get(), &stage);
    } catch (...) {
      return absl::InternalError(absl::StrCat("the executor's ", what,
                                              " callback threw an exception"));
    }
    if (!stage.failed) return absl::OkStatus();
    return absl::UnknownError(stage.failure.empty() ? "failed" : stage.failure);
  }

  const std::shared_ptr<CExecutorDef> def_;
  void* data_ = nullptr;
};

std::string NextTaskId(const delegate::Stage& stage) {
  static std::atomic<uint64_t> counter{0};
  return absl::StrCat(stage.name.empty() ? "stage" : stage.name, "-", getpid(),
                      "-", ++counter);
}

}  // namespace

// ------------------------------------------------------------------ server

namespace {

struct ServerOptions {
  // manager, runtime_*, start_executors; config, policy and log are filled
  // in by delegate_server_create.
  delegate::DelegateServerOptions server;
  // Shared by the options and every server made from them, as is the lock
  // that makes their calls one at a time.
  std::shared_ptr<CState> events_state;
  std::shared_ptr<std::mutex> events_mu;
  void (*on_event)(void*, const char*, size_t) = nullptr;
};

}  // namespace

struct delegate_server_options_t {
  ServerOptions rep;
};

struct delegate_server_t {
  std::shared_ptr<Registries> registries;
  std::shared_ptr<CState> events_state;
  std::unique_ptr<delegate::EventLog> log;
  std::unique_ptr<delegate::DelegateServer> server;
  std::thread thread;
  bool started = false;
  absl::Status status;  // Run's, written by `thread` before it ends
};

// ============================================================== entry points

extern "C" {

void delegate_free(void* ptr) { std::free(ptr); }

const char* delegate_version(void) {
  return Guard(nullptr, [] { return Version().text.c_str(); });
}
int delegate_version_major(void) {
  return Guard(nullptr, [] { return Version().major; });
}
int delegate_version_minor(void) {
  return Guard(nullptr, [] { return Version().minor; });
}
int delegate_version_patch(void) {
  return Guard(nullptr, [] { return Version().patch; });
}

const char* delegate_status_name(int status) {
  return Guard(nullptr, [&]() -> const char* {
    switch (status) {
      case DELEGATE_STATUS_SUCCESS:
        return delegate::StepStatusName(StepStatus::kSuccess);
      case DELEGATE_STATUS_FAILURE:
        return delegate::StepStatusName(StepStatus::kFailure);
      case DELEGATE_STATUS_TIMEOUT:
        return delegate::StepStatusName(StepStatus::kTimeout);
      case DELEGATE_STATUS_SKIPPED:
        return delegate::StepStatusName(StepStatus::kSkipped);
      case DELEGATE_STATUS_CANCELLED:
        return delegate::StepStatusName(StepStatus::kCancelled);
    }
    return nullptr;
  });
}

// ------------------------------------------------------------- environment

delegate_env_t* delegate_env_create(void) {
  return Guard(nullptr, [] { return new delegate_env_t; });
}

delegate_env_t* delegate_env_from_process(void) {
  return Guard(nullptr, [] {
    return new delegate_env_t{delegate::ProcessEnvironment()};
  });
}

delegate_env_t* delegate_env_read_file(const char* path, char** errptr) {
  return Guard(errptr, [&]() -> delegate_env_t* {
    if (!Required(errptr, path, "path")) return nullptr;
    absl::StatusOr<delegate::EnvMap> read = delegate::ReadEnvFile(path);
    if (SaveError(errptr, read.status())) return nullptr;
    return new delegate_env_t{*std::move(read)};
  });
}

void delegate_env_set(delegate_env_t* env, const char* name, const char* value,
                      char** errptr) {
  Guard(errptr, [&] {
    if (!Required(errptr, env, "env") || !Required(errptr, name, "name") ||
        !Required(errptr, value, "value")) {
      return;
    }
    if (*name == '\0') {
      SetError(errptr, "name: must not be empty");
      return;
    }
    // What follows '=' may be a value (a token): it is never quoted.
    if (const char* eq = std::strchr(name, '='); eq != nullptr) {
      SetError(errptr,
               absl::StrCat("name: expected a variable name without '=', got "
                            "one with '=' after '",
                            std::string(name, eq - name), "'"));
      return;
    }
    env->map[name] = value;
  });
}

const char* delegate_env_get(const delegate_env_t* env, const char* name) {
  return Guard(nullptr, [&]() -> const char* {
    if (env == nullptr || name == nullptr) return nullptr;
    auto it = env->map.find(std::string_view(name));
    return it == env->map.end() ? nullptr : it->second.c_str();
  });
}

void delegate_env_destroy(delegate_env_t* env) {
  Guard(nullptr, [&] { delete env; });
}

// ----------------------------------------------------------- configuration

delegate_config_t* delegate_config_load(const delegate_env_t* process,
                                        const delegate_env_t* file, int need,
                                        char** errptr) {
  return Guard(errptr, [&]() -> delegate_config_t* {
    if (need != DELEGATE_CONFIG_LOCAL && need != DELEGATE_CONFIG_SERVER) {
      SetError(errptr, absl::StrCat("need: expected DELEGATE_CONFIG_LOCAL or "
                                    "DELEGATE_CONFIG_SERVER, got ",
                                    need));
      return nullptr;
    }
    const delegate::EnvMap from_process =
        process ? process->map : delegate::ProcessEnvironment();
    absl::StatusOr<delegate::DelegateConfig> config = delegate::LoadConfig(
        from_process, file ? file->map : delegate::EnvMap{},
        need == DELEGATE_CONFIG_SERVER ? delegate::ConfigNeed::kServer
                                       : delegate::ConfigNeed::kLocal);
    if (SaveError(errptr, config.status())) return nullptr;
    return new delegate_config_t{*std::move(config)};
  });
}

char* delegate_config_dump(const delegate_config_t* config) {
  return Guard(nullptr, [&]() -> char* {
    if (config == nullptr) return nullptr;
    return CopyString(config->config.Dump());
  });
}

const char* delegate_config_name(const delegate_config_t* config) {
  return Guard(nullptr, [&]() -> const char* {
    return config ? config->config.name.c_str() : nullptr;
  });
}

size_t delegate_config_warning_count(const delegate_config_t* config) {
  return Guard(nullptr, [&]() -> size_t {
    return config ? config->config.warnings.size() : 0;
  });
}

const char* delegate_config_warning(const delegate_config_t* config, size_t i) {
  return Guard(nullptr, [&]() -> const char* {
    if (config == nullptr || i >= config->config.warnings.size()) {
      return nullptr;
    }
    return config->config.warnings[i].c_str();
  });
}

void delegate_config_destroy(delegate_config_t* config) {
  Guard(nullptr, [&] { delete config; });
}

delegate_policy_t* delegate_policy_load(const delegate_env_t* env,
                                        char** errptr) {
  return Guard(errptr, [&]() -> delegate_policy_t* {
    absl::StatusOr<delegate::OperatorPolicy> policy =
        delegate::LoadOperatorPolicy(env ? env->map
                                         : delegate::ProcessEnvironment());
    if (SaveError(errptr, policy.status())) return nullptr;
    return new delegate_policy_t{*std::move(policy)};
  });
}

void delegate_policy_destroy(delegate_policy_t* policy) {
  Guard(nullptr, [&] { delete policy; });
}

// ---------------------------------------------------------------- registry

delegate_registry_t* delegate_registry_create(void) {
  return Guard(nullptr, [] {
    return new delegate_registry_t{std::make_shared<Registries>()};
  });
}

void delegate_registry_destroy(delegate_registry_t* registry) {
  Guard(nullptr, [&] { delete registry; });
}

void delegate_registry_register_builtins(delegate_registry_t* registry,
                                         const delegate_config_t* config,
                                         const delegate_env_t* env,
                                         char** errptr) {
  Guard(errptr, [&] {
    if (!Required(errptr, registry, "registry") ||
        !Required(errptr, config, "config")) {
      return;
    }
    SaveError(errptr, delegate::RegisterBuiltins(
                          config->config,
                          env ? env->map : delegate::ProcessEnvironment(),
                          registry->rep->executors, &registry->rep->managers));
  });
}

void delegate_registry_register_executor(
    delegate_registry_t* registry, const char* platform, void* state,
    void (*destructor)(void* state),
    void (*initialize)(void* state, delegate_stage_context_t* ctx),
    void (*execute)(void* state, delegate_step_context_t* ctx),
    void (*cleanup)(void* state, delegate_stage_context_t* ctx),
    char** errptr) {
  // Made first, so that the destructor runs on every failure too.
  std::shared_ptr<CExecutorDef> def;
  try {
    def = std::make_shared<CExecutorDef>(state, destructor);
  } catch (...) {
    SetError(errptr, "internal error: out of memory");
    if (destructor != nullptr) destructor(state);
    return;
  }
  Guard(errptr, [&] {
    if (!Required(errptr, registry, "registry") ||
        !Required(errptr, platform, "platform")) {
      return;
    }
    if (execute == nullptr) {
      SetError(errptr, "execute: must not be NULL");
      return;
    }
    def->initialize = initialize;
    def->execute = execute;
    def->cleanup = cleanup;
    SaveError(errptr, registry->rep->executors.Register(platform, [def] {
      return std::make_unique<CExecutor>(def);
    }));
  });
}

// ----------------------------------------------------- C executor contexts

const char* delegate_stage_context_task_id(
    const delegate_stage_context_t* ctx) {
  return Guard(nullptr, [&]() -> const char* {
    return ctx ? ctx->ctx->task_id.c_str() : nullptr;
  });
}

const char* delegate_stage_context_stage_name(
    const delegate_stage_context_t* ctx) {
  return Guard(nullptr, [&]() -> const char* {
    return ctx ? ctx->ctx->stage.name.c_str() : nullptr;
  });
}

size_t delegate_stage_context_step_count(const delegate_stage_context_t* ctx) {
  return Guard(nullptr, [&]() -> size_t {
    return ctx ? ctx->ctx->stage.steps.size() : 0;
  });
}

void delegate_stage_context_set_data(delegate_stage_context_t* ctx,
                                     void* data) {
  Guard(nullptr, [&] {
    if (ctx != nullptr) ctx->executor->set_data(data);
  });
}

void* delegate_stage_context_data(const delegate_stage_context_t* ctx) {
  return Guard(nullptr, [&]() -> void* {
    return ctx ? ctx->executor->data() : nullptr;
  });
}

void delegate_stage_context_log(delegate_stage_context_t* ctx,
                                const char* line) {
  Guard(nullptr, [&] {
    if (ctx != nullptr && line != nullptr) ctx->ctx->output.SystemLine(line);
  });
}

void delegate_stage_context_fail(delegate_stage_context_t* ctx,
                                 const char* message) {
  Guard(nullptr, [&] {
    if (ctx == nullptr) return;
    ctx->failed = true;
    ctx->failure = message ? message : "";
  });
}

const char* delegate_step_context_id(const delegate_step_context_t* ctx) {
  return Guard(nullptr, [&]() -> const char* {
    return ctx ? ctx->ctx->step.id.c_str() : nullptr;
  });
}

const char* delegate_step_context_name(const delegate_step_context_t* ctx) {
  return Guard(nullptr, [&]() -> const char* {
    if (ctx == nullptr) return nullptr;
    const delegate::Step& step = ctx->ctx->step;
    return step.name.empty() ? step.id.c_str() : step.name.c_str();
  });
}

const char* delegate_step_context_image(const delegate_step_context_t* ctx) {
  return Guard(nullptr, [&]() -> const char* {
    return ctx ? ctx->ctx->step.image.c_str() : nullptr;
  });
}

size_t delegate_step_context_index(const delegate_step_context_t* ctx) {
  return Guard(nullptr, [&]() -> size_t { return ctx ? ctx->ctx->index : 0; });
}

size_t delegate_step_context_command_count(const delegate_step_context_t* ctx) {
  return Guard(nullptr, [&]() -> size_t {
    return ctx ? ctx->ctx->step.commands.size() : 0;
  });
}

const char* delegate_step_context_command(const delegate_step_context_t* ctx,
                                          size_t i) {
  return Guard(nullptr, [&]() -> const char* {
    if (ctx == nullptr || i >= ctx->ctx->step.commands.size()) return nullptr;
    return ctx->ctx->step.commands[i].c_str();
  });
}

const char* delegate_step_context_env(const delegate_step_context_t* ctx,
                                      const char* name) {
  return Guard(nullptr, [&]() -> const char* {
    if (ctx == nullptr || name == nullptr) return nullptr;
    const auto& envs = ctx->ctx->step.envs;
    auto it = envs.find(name);
    return it == envs.end() ? nullptr : it->second.c_str();
  });
}

size_t delegate_step_context_output_count(const delegate_step_context_t* ctx) {
  return Guard(nullptr, [&]() -> size_t {
    return ctx ? ctx->ctx->step.outputs.size() : 0;
  });
}

const char* delegate_step_context_output_name(
    const delegate_step_context_t* ctx, size_t i) {
  return Guard(nullptr, [&]() -> const char* {
    if (ctx == nullptr || i >= ctx->ctx->step.outputs.size()) return nullptr;
    return ctx->ctx->step.outputs[i].c_str();
  });
}

delegate_stage_context_t* delegate_step_context_stage(
    delegate_step_context_t* ctx) {
  return Guard(nullptr, [&]() -> delegate_stage_context_t* {
    return ctx ? &ctx->stage : nullptr;
  });
}

void delegate_step_context_write(delegate_step_context_t* ctx, int stream,
                                 const char* data, size_t len) {
  Guard(nullptr, [&] {
    if (ctx == nullptr || (data == nullptr && len > 0)) return;
    delegate::LogStream to;
    switch (stream) {
      case DELEGATE_STREAM_STDOUT:
        to = delegate::LogStream::kStdout;
        break;
      case DELEGATE_STREAM_STDERR:
        to = delegate::LogStream::kStderr;
        break;
      case DELEGATE_STREAM_SYSTEM:
        to = delegate::LogStream::kSystem;
        break;
      default:
        return;  // documented: any other value writes nothing
    }
    ctx->ctx->output.Write(to, std::string_view(data, len));
  });
}

void delegate_step_context_log(delegate_step_context_t* ctx, const char* line) {
  Guard(nullptr, [&] {
    if (ctx != nullptr && line != nullptr) ctx->ctx->output.SystemLine(line);
  });
}

void delegate_step_context_set_exit_code(delegate_step_context_t* ctx,
                                         int exit_code) {
  Guard(nullptr, [&] {
    if (ctx != nullptr) ctx->exit_code = exit_code;
  });
}

void delegate_step_context_set_output(delegate_step_context_t* ctx,
                                      const char* name, const char* value) {
  Guard(nullptr, [&] {
    if (ctx == nullptr || name == nullptr) return;
    ctx->outputs[name] = value ? value : "";
  });
}

void delegate_step_context_fail(delegate_step_context_t* ctx,
                                const char* message) {
  Guard(nullptr, [&] {
    if (ctx == nullptr) return;
    ctx->failed = true;
    ctx->failure = message ? message : "";
  });
}

int delegate_step_context_stop_reason(const delegate_step_context_t* ctx) {
  return Guard(nullptr, [&]() -> int {
    if (ctx == nullptr) return 0;
    std::optional<StepStatus> stop = delegate::StopReason(*ctx->ctx);
    return stop ? StatusToC(*stop) : 0;
  });
}

int delegate_step_context_wait(const delegate_step_context_t* ctx,
                               int64_t timeout_ms) {
  return Guard(nullptr, [&]() -> int {
    if (ctx == nullptr) return 0;
    const delegate::StepContext& step = *ctx->ctx;
    // Negative: until the step must stop (or its deadline).
    absl::Duration wait =
        timeout_ms < 0 ? absl::InfiniteDuration() : Millis(timeout_ms);
    if (step.deadline != absl::InfiniteFuture()) {
      wait = std::min(wait, std::max(step.deadline - step.stage.clock.Now(),
                                     absl::ZeroDuration()));
    }
    absl::Notification stopped;
    std::stop_callback on_stop(step.stop, [&stopped] { stopped.Notify(); });
    stopped.WaitForNotificationWithTimeout(wait);
    std::optional<StepStatus> stop = delegate::StopReason(step);
    return stop ? StatusToC(*stop) : 0;
  });
}

// ------------------------------------------------------------------- stage

delegate_stage_t* delegate_stage_parse(const char* text, size_t len,
                                       const char* source, char** errptr) {
  return Guard(errptr, [&]() -> delegate_stage_t* {
    if (text == nullptr && len > 0) {
      SetError(errptr, "text: must not be NULL");
      return nullptr;
    }
    absl::StatusOr<delegate::Stage> stage = delegate::ParseStage(
        std::string_view(text ? text : "", len), source ? source : "stage");
    if (SaveError(errptr, stage.status())) return nullptr;
    return new delegate_stage_t{*std::move(stage)};
  });
}

delegate_stage_t* delegate_stage_load_file(const char* path, char** errptr) {
  return Guard(errptr, [&]() -> delegate_stage_t* {
    if (!Required(errptr, path, "path")) return nullptr;
    absl::StatusOr<delegate::Stage> stage = delegate::LoadStageFile(path);
    if (SaveError(errptr, stage.status())) return nullptr;
    return new delegate_stage_t{*std::move(stage)};
  });
}

const char* delegate_stage_name(const delegate_stage_t* stage) {
  return Guard(nullptr, [&]() -> const char* {
    return stage ? stage->stage.name.c_str() : nullptr;
  });
}

const char* delegate_stage_platform(const delegate_stage_t* stage) {
  return Guard(nullptr, [&]() -> const char* {
    return stage ? stage->stage.platform.c_str() : nullptr;
  });
}

size_t delegate_stage_step_count(const delegate_stage_t* stage) {
  return Guard(nullptr, [&]() -> size_t {
    return stage ? stage->stage.steps.size() : 0;
  });
}

void delegate_stage_destroy(delegate_stage_t* stage) {
  Guard(nullptr, [&] { delete stage; });
}

void delegate_validate(const delegate_registry_t* registry,
                       const delegate_stage_t* stage,
                       const delegate_policy_t* policy, char** errptr) {
  Guard(errptr, [&] {
    if (!Required(errptr, registry, "registry") ||
        !Required(errptr, stage, "stage")) {
      return;
    }
    SaveError(errptr,
              delegate::ValidateForPlatform(
                  registry->rep->executors, stage->stage,
                  policy ? policy->policy : delegate::OperatorPolicy{}));
  });
}

// --------------------------------------------------------------- scheduler

delegate_scheduler_t* delegate_scheduler_create(delegate_registry_t* registry,
                                                const delegate_config_t* config,
                                                const delegate_policy_t* policy,
                                                char** errptr) {
  return Guard(errptr, [&]() -> delegate_scheduler_t* {
    if (!Required(errptr, registry, "registry")) return nullptr;
    delegate::SchedulerOptions options;
    options.registry = &registry->rep->executors;
    if (config != nullptr) {
      options.delegate_name = config->config.name;
      options.max_stages = config->config.max_stages;
    }
    if (policy != nullptr) options.policy = policy->policy;
    return new delegate_scheduler_t{
        std::make_shared<SchedulerHolder>(registry->rep, std::move(options))};
  });
}

delegate_run_t* delegate_scheduler_submit(
    delegate_scheduler_t* scheduler, const delegate_stage_t* stage,
    const char* task_id, void* state, void (*destructor)(void* state),
    void (*on_line)(void* state, const delegate_log_line_t* line),
    char** errptr) {
  // Made first, so that the destructor runs on every failure too.
  std::shared_ptr<LineObserver> observer;
  try {
    observer = std::make_shared<LineObserver>(state, destructor, on_line);
  } catch (...) {
    SetError(errptr, "internal error: out of memory");
    if (destructor != nullptr) destructor(state);
    return nullptr;
  }
  return Guard(errptr, [&]() -> delegate_run_t* {
    if (!Required(errptr, scheduler, "scheduler") ||
        !Required(errptr, stage, "stage")) {
      return nullptr;
    }
    if (task_id != nullptr && *task_id == '\0') {
      SetError(errptr, "task_id: must not be empty (NULL: one is made)");
      return nullptr;
    }
    auto run = std::make_unique<delegate_run_t>();
    run->scheduler = scheduler->rep;
    run->observer = observer;
    run->task_id = task_id ? task_id : NextTaskId(stage->stage);
    delegate::StageTask task;
    task.id = run->task_id;
    task.stage = stage->stage;
    task.observer = observer;
    run->run = std::make_unique<delegate::StageRun>(run->scheduler->scheduler,
                                                    std::move(task));
    if (SaveError(errptr, run->run->submitted())) return nullptr;
    return run.release();
  });
}

delegate_result_t* delegate_scheduler_run(
    delegate_scheduler_t* scheduler, const delegate_stage_t* stage,
    const char* task_id, void* state, void (*destructor)(void* state),
    void (*on_line)(void* state, const delegate_log_line_t* line),
    char** errptr) {
  delegate_run_t* run = delegate_scheduler_submit(
      scheduler, stage, task_id, state, destructor, on_line, errptr);
  if (run == nullptr) return nullptr;
  delegate_result_t* result = delegate_run_wait(run);
  delegate_run_destroy(run);
  if (result == nullptr) SetError(errptr, "internal error: out of memory");
  return result;
}

void delegate_scheduler_cancel(delegate_scheduler_t* scheduler,
                               const char* task_id, char** errptr) {
  Guard(errptr, [&] {
    if (!Required(errptr, scheduler, "scheduler") ||
        !Required(errptr, task_id, "task_id")) {
      return;
    }
    SaveError(errptr, scheduler->rep->scheduler.Cancel(task_id));
  });
}

void delegate_scheduler_shutdown(delegate_scheduler_t* scheduler,
                                 int64_t drain_ms) {
  Guard(nullptr, [&] {
    if (scheduler != nullptr) {
      scheduler->rep->scheduler.Shutdown(Millis(drain_ms));
    }
  });
}

void delegate_scheduler_destroy(delegate_scheduler_t* scheduler) {
  Guard(nullptr, [&] {
    if (scheduler == nullptr) return;
    scheduler->rep->scheduler.Shutdown(absl::ZeroDuration());
    delete scheduler;
  });
}

// --------------------------------------------------------------------- run

const char* delegate_run_task_id(const delegate_run_t* run) {
  return Guard(nullptr, [&]() -> const char* {
    return run ? run->task_id.c_str() : nullptr;
  });
}

delegate_result_t* delegate_run_wait(delegate_run_t* run) {
  return Guard(nullptr, [&]() -> delegate_result_t* {
    if (run == nullptr) return nullptr;
    return new delegate_result_t{run->run->Wait()};
  });
}

int delegate_run_interrupt(delegate_run_t* run, int64_t drain_ms) {
  return Guard(nullptr, [&]() -> int {
    if (run == nullptr) return 0;
    try {
      return run->run->Interrupt(Millis(drain_ms)) ? 1 : 0;
    } catch (const std::system_error&) {
      // No thread for the drain's timer: cancel at once rather than report
      // a running stage as finished.
      return run->scheduler->scheduler
                     .Cancel(run->task_id,
                             delegate::Scheduler::CancelKind::kShutdown)
                     .ok()
                 ? 1
                 : 0;
    }
  });
}

void delegate_run_destroy(delegate_run_t* run) {
  Guard(nullptr, [&] { delete run; });
}

// ---------------------------------------------------------------- log line

const char* delegate_log_line_task_id(const delegate_log_line_t* line) {
  return Guard(nullptr, [&]() -> const char* {
    return line ? line->task_id.c_str() : nullptr;
  });
}

const char* delegate_log_line_step_id(const delegate_log_line_t* line) {
  return Guard(nullptr, [&]() -> const char* {
    return line ? line->step_id.c_str() : nullptr;
  });
}

int delegate_log_line_stream(const delegate_log_line_t* line) {
  return Guard(nullptr, [&]() -> int { return line ? line->stream : -1; });
}

uint64_t delegate_log_line_number(const delegate_log_line_t* line) {
  return Guard(nullptr, [&]() -> uint64_t { return line ? line->number : 0; });
}

const char* delegate_log_line_text(const delegate_log_line_t* line,
                                   size_t* len) {
  return Guard(nullptr, [&]() -> const char* {
    if (line == nullptr) {
      if (len != nullptr) *len = 0;
      return nullptr;
    }
    if (len != nullptr) *len = line->text.size();
    return line->text.c_str();
  });
}

int delegate_log_line_partial(const delegate_log_line_t* line) {
  return Guard(nullptr, [&]() -> int { return line && line->partial ? 1 : 0; });
}

int64_t delegate_log_line_time_us(const delegate_log_line_t* line) {
  return Guard(nullptr, [&]() -> int64_t { return line ? line->time_us : 0; });
}

// ------------------------------------------------------------------ result

int delegate_result_status(const delegate_result_t* result) {
  return Guard(nullptr, [&]() -> int {
    return result ? StatusToC(result->result.status) : -1;
  });
}

const char* delegate_result_error(const delegate_result_t* result) {
  return Guard(nullptr, [&]() -> const char* {
    return result ? result->result.error.c_str() : nullptr;
  });
}

const char* delegate_result_task_id(const delegate_result_t* result) {
  return Guard(nullptr, [&]() -> const char* {
    return result ? result->result.task_id.c_str() : nullptr;
  });
}

size_t delegate_result_step_count(const delegate_result_t* result) {
  return Guard(nullptr, [&]() -> size_t {
    return result ? result->result.steps.size() : 0;
  });
}

namespace {
const delegate::StepResult* StepAt(const delegate_result_t* result, size_t i) {
  if (result == nullptr || i >= result->result.steps.size()) return nullptr;
  return &result->result.steps[i];
}
}  // namespace

const char* delegate_result_step_id(const delegate_result_t* result, size_t i) {
  return Guard(nullptr, [&]() -> const char* {
    const delegate::StepResult* step = StepAt(result, i);
    return step ? step->id.c_str() : nullptr;
  });
}

int delegate_result_step_status(const delegate_result_t* result, size_t i) {
  return Guard(nullptr, [&]() -> int {
    const delegate::StepResult* step = StepAt(result, i);
    return step ? StatusToC(step->status) : -1;
  });
}

int delegate_result_step_exit_code(const delegate_result_t* result, size_t i) {
  return Guard(nullptr, [&]() -> int {
    const delegate::StepResult* step = StepAt(result, i);
    return step && step->exit_code ? *step->exit_code : -1;
  });
}

const char* delegate_result_step_error(const delegate_result_t* result,
                                       size_t i) {
  return Guard(nullptr, [&]() -> const char* {
    const delegate::StepResult* step = StepAt(result, i);
    return step ? step->error.c_str() : nullptr;
  });
}

const char* delegate_result_step_output(const delegate_result_t* result,
                                        size_t i, const char* name) {
  return Guard(nullptr, [&]() -> const char* {
    const delegate::StepResult* step = StepAt(result, i);
    if (step == nullptr || name == nullptr) return nullptr;
    auto it = step->outputs.find(name);
    return it == step->outputs.end() ? nullptr : it->second.c_str();
  });
}

char* delegate_result_json(const delegate_result_t* result) {
  return Guard(nullptr, [&]() -> char* {
    return result ? CopyString(delegate::StageResultToJson(result->result))
                  : nullptr;
  });
}

char* delegate_result_summary(const delegate_result_t* result) {
  return Guard(nullptr, [&]() -> char* {
    return result ? CopyString(delegate::FormatSummary(result->result))
                  : nullptr;
  });
}

void delegate_result_destroy(delegate_result_t* result) {
  Guard(nullptr, [&] { delete result; });
}

// ------------------------------------------------------------------ server

delegate_server_options_t* delegate_server_options_create(void) {
  return Guard(nullptr, [] { return new delegate_server_options_t; });
}

void delegate_server_options_set_manager(delegate_server_options_t* options,
                                         const char* manager) {
  Guard(nullptr, [&] {
    if (options != nullptr) options->rep.server.manager = manager ? manager : "";
  });
}

void delegate_server_options_set_runtime_listen(
    delegate_server_options_t* options, const char* address) {
  Guard(nullptr, [&] {
    if (options != nullptr) {
      options->rep.server.runtime_listen = address ? address : "";
    }
  });
}

void delegate_server_options_set_runtime_tls(delegate_server_options_t* options,
                                             const char* cert_file,
                                             const char* key_file,
                                             const char* client_ca_file) {
  Guard(nullptr, [&] {
    if (options == nullptr) return;
    options->rep.server.runtime_tls_cert_file = cert_file ? cert_file : "";
    options->rep.server.runtime_tls_key_file = key_file ? key_file : "";
    options->rep.server.runtime_client_ca_file = client_ca_file ? client_ca_file : "";
  });
}

void delegate_server_options_set_start_executors(
    delegate_server_options_t* options, int start) {
  Guard(nullptr, [&] {
    if (options != nullptr) options->rep.server.start_executors = start != 0;
  });
}

void delegate_server_options_set_event_log(
    delegate_server_options_t* options, void* state,
    void (*destructor)(void* state),
    void (*on_event)(void* state, const char* json, size_t len)) {
  std::shared_ptr<CState> events;
  std::shared_ptr<std::mutex> events_mu;
  try {
    events = std::make_shared<CState>(state, destructor);
    events_mu = std::make_shared<std::mutex>();
  } catch (...) {
    if (destructor != nullptr) destructor(state);
    return;
  }
  Guard(nullptr, [&] {
    if (options == nullptr) return;  // `events` lets go of the state
    options->rep.events_state = std::move(events);
    options->rep.events_mu = std::move(events_mu);
    options->rep.on_event = on_event;
  });
}

void delegate_server_options_destroy(delegate_server_options_t* options) {
  Guard(nullptr, [&] { delete options; });
}

delegate_server_t* delegate_server_create(delegate_registry_t* registry,
                                          const delegate_config_t* config,
                                          const delegate_policy_t* policy,
                                          delegate_server_options_t* options,
                                          char** errptr) {
  return Guard(errptr, [&]() -> delegate_server_t* {
    if (!Required(errptr, registry, "registry") ||
        !Required(errptr, config, "config")) {
      return nullptr;
    }
    const ServerOptions given = options ? options->rep : ServerOptions{};
    auto server = std::make_unique<delegate_server_t>();
    server->registries = registry->rep;
    if (given.on_event != nullptr) {
      server->events_state = given.events_state;
      // One lock for every server sharing the callback (each EventLog has
      // its own): on_event is never called by two threads at once.
      server->log = std::make_unique<delegate::EventLog>(
          [state = given.events_state.get(), mu = given.events_mu,
           on_event = given.on_event](std::string_view line) {
            const std::string text(line);
            std::lock_guard<std::mutex> lock(*mu);
            on_event(state->get(), text.c_str(), text.size());
          });
    }
    delegate::DelegateServerOptions o = given.server;
    o.config = config->config;
    if (policy != nullptr) o.policy = policy->policy;
    o.log = server->log.get();
    server->server = std::make_unique<delegate::DelegateServer>(
        std::move(o), server->registries->executors,
        server->registries->managers);
    return server.release();
  });
}

void delegate_server_start(delegate_server_t* server, char** errptr) {
  Guard(errptr, [&] {
    if (!Required(errptr, server, "server")) return;
    if (server->started) {
      SetError(errptr, "server: already started");
      return;
    }
    server->thread = std::thread([server] {
      absl::Status status;
      try {
        status = server->server->Run();
      } catch (const std::exception& e) {
        status =
            absl::InternalError(absl::StrCat("internal error: ", e.what()));
      } catch (...) {
        status = absl::InternalError("internal error: unknown exception");
      }
      server->status = std::move(status);
    });
    server->started = true;
  });
}

void delegate_server_drain(delegate_server_t* server) {
  Guard(nullptr, [&] {
    if (server != nullptr) server->server->Drain();
  });
}

void delegate_server_wait(delegate_server_t* server, char** errptr) {
  Guard(errptr, [&] {
    if (!Required(errptr, server, "server")) return;
    if (server->thread.joinable()) server->thread.join();
    SaveError(errptr, server->status);
  });
}

int delegate_server_ops_port(const delegate_server_t* server) {
  return Guard(nullptr, [&]() -> int {
    return server ? server->server->ops_port() : 0;
  });
}

void delegate_server_destroy(delegate_server_t* server) {
  Guard(nullptr, [&] {
    if (server == nullptr) return;
    if (server->thread.joinable()) {
      server->server->Drain();
      server->thread.join();
    }
    server->server.reset();
    delete server;
  });
}

}  // extern "C"

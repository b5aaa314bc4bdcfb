// The C API's behaviour, through libdelegate_c.so alone (this program links
// nothing else of libdelegate): configuration, stages, validation, C and
// host executors, logs, cancel, the server, and every error path. Under
// DELEGATE_SANITIZE the same tests run with LeakSanitizer, so an error path
// that leaks fails here.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "delegate/c.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

extern char** environ;

namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// *errptr for one call at a time; frees what the library allocated.
class Err {
 public:
  Err() = default;
  Err(const Err&) = delete;
  Err& operator=(const Err&) = delete;
  ~Err() { delegate_free(msg_); }
  char** ptr() { return &msg_; }
  bool set() const { return msg_ != nullptr; }
  std::string str() const { return msg_ ? msg_ : ""; }
  void Clear() {
    delegate_free(msg_);
    msg_ = nullptr;
  }

 private:
  char* msg_ = nullptr;
};

template <typename T, void (*Destroy)(T*)>
struct Deleter {
  void operator()(T* p) const { Destroy(p); }
};
template <typename T, void (*Destroy)(T*)>
using Handle = std::unique_ptr<T, Deleter<T, Destroy>>;
using Env = Handle<delegate_env_t, delegate_env_destroy>;
using Config = Handle<delegate_config_t, delegate_config_destroy>;
using Policy = Handle<delegate_policy_t, delegate_policy_destroy>;
using Registry = Handle<delegate_registry_t, delegate_registry_destroy>;
using Stage = Handle<delegate_stage_t, delegate_stage_destroy>;
using Scheduler = Handle<delegate_scheduler_t, delegate_scheduler_destroy>;
using StageRun = Handle<delegate_run_t, delegate_run_destroy>;
using Result = Handle<delegate_result_t, delegate_result_destroy>;
using ServerOptions =
    Handle<delegate_server_options_t, delegate_server_options_destroy>;
using Server = Handle<delegate_server_t, delegate_server_destroy>;

std::string Owned(char* s) {
  std::string out = s ? s : "";
  delegate_free(s);
  return out;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// A directory of its own for each test, removed after it.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "c-abi-XXXXXX";
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::string Write(const std::string& name, const std::string& content) {
    const std::string file = path_ + "/" + name;
    std::ofstream(file) << content;
    return file;
  }

 private:
  std::string path_;
};

Stage Parse(const std::string& text, Err& err) {
  return Stage(
      delegate_stage_parse(text.data(), text.size(), "test.yaml", err.ptr()));
}

// Every log line of a run, and a way to wait for one.
struct LineLog {
  struct Line {
    std::string step;
    uint64_t number;
    int stream;
    std::string text;
    int partial;
    int64_t time_us;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Line> lines;
  bool destroyed = false;
  std::string task_id;  // of every line
  std::atomic<int> concurrent{0};
  std::atomic<bool> overlapped{false};

  static void OnLine(void* state, const delegate_log_line_t* line) {
    auto* self = static_cast<LineLog*>(state);
    if (self->concurrent.fetch_add(1) != 0) self->overlapped = true;
    size_t len = 0;
    const char* text = delegate_log_line_text(line, &len);
    {
      std::lock_guard lock(self->mu);
      self->lines.push_back(
          {delegate_log_line_step_id(line), delegate_log_line_number(line),
           delegate_log_line_stream(line), std::string(text, len),
           delegate_log_line_partial(line), delegate_log_line_time_us(line)});
      if (!self->task_id.empty()) {
        EXPECT_STREQ(delegate_log_line_task_id(line), self->task_id.c_str());
      }
    }
    self->cv.notify_all();
    self->concurrent.fetch_sub(1);
  }
  static void Destroy(void* state) {
    auto* self = static_cast<LineLog*>(state);
    std::lock_guard lock(self->mu);
    self->destroyed = true;
  }
  bool WaitFor(const std::string& text, std::chrono::seconds timeout) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, timeout, [&] {
      for (const Line& l : lines) {
        if (l.text == text) return true;
      }
      return false;
    });
  }
  std::vector<std::string> TextsOf(const std::string& step) {
    std::lock_guard lock(mu);
    std::vector<std::string> out;
    for (const Line& l : lines) {
      if (l.step == step) out.push_back(l.text);
    }
    return out;
  }
};

// A configuration for local runs whose workspaces go to `workdir`.
Config LocalConfig(const std::string& workdir, Err& err) {
  Env env(delegate_env_create());
  delegate_env_set(env.get(), "HARNESS_WORKDIR", workdir.c_str(), err.ptr());
  delegate_env_set(env.get(), "CLEANUP_GRACE_PERIOD_SECONDS", "1", err.ptr());
  delegate_env_set(env.get(), "HARNESS_NAME", "c-abi-test", err.ptr());
  return Config(delegate_config_load(env.get(), nullptr, DELEGATE_CONFIG_LOCAL,
                                     err.ptr()));
}

// ------------------------------------------------------------- the basics

TEST(CApi, VersionIsThePackageVersion) {
  EXPECT_STREQ(delegate_version(), DELEGATE_TEST_VERSION);
  EXPECT_EQ(delegate_version_major(), DELEGATE_TEST_VERSION_MAJOR);
  EXPECT_EQ(delegate_version_minor(), DELEGATE_TEST_VERSION_MINOR);
  EXPECT_EQ(delegate_version_patch(), DELEGATE_TEST_VERSION_PATCH);
  char joined[64];
  snprintf(joined, sizeof(joined), "%d.%d.%d", delegate_version_major(),
           delegate_version_minor(), delegate_version_patch());
  EXPECT_STREQ(joined, delegate_version());
}

TEST(CApi, StatusNames) {
  EXPECT_STREQ(delegate_status_name(DELEGATE_STATUS_SUCCESS), "SUCCESS");
  EXPECT_STREQ(delegate_status_name(DELEGATE_STATUS_FAILURE), "FAILURE");
  EXPECT_STREQ(delegate_status_name(DELEGATE_STATUS_TIMEOUT), "TIMEOUT");
  EXPECT_STREQ(delegate_status_name(DELEGATE_STATUS_SKIPPED), "SKIPPED");
  EXPECT_STREQ(delegate_status_name(DELEGATE_STATUS_CANCELLED), "CANCELLED");
  EXPECT_EQ(delegate_status_name(42), nullptr);
}

TEST(CApi, AnErrorReplacesAnEarlierMessageAndSuccessLeavesItAlone) {
  char* err = static_cast<char*>(malloc(8));
  strcpy(err, "earlier");
  Env env(delegate_env_create());
  delegate_env_set(env.get(), "A", "1", &err);  // succeeds
  EXPECT_STREQ(err, "earlier");
  // Freed and replaced (LeakSanitizer would see the first one otherwise).
  EXPECT_EQ(delegate_stage_load_file("/nonexistent/stage.yaml", &err), nullptr);
  EXPECT_THAT(err, HasSubstr("/nonexistent/stage.yaml"));
  delegate_free(err);
}

TEST(CApi, ANullErrptrDropsTheMessage) {
  EXPECT_EQ(delegate_stage_parse("{", 1, nullptr, nullptr), nullptr);
  EXPECT_EQ(delegate_env_read_file("/nonexistent/env", nullptr), nullptr);
}

TEST(CApi, NullArgumentsAreErrorsNamingTheArgument) {
  Err err;
  EXPECT_EQ(delegate_stage_parse(nullptr, 10, nullptr, err.ptr()), nullptr);
  EXPECT_EQ(err.str(), "text: must not be NULL");
  err.Clear();
  EXPECT_EQ(delegate_stage_load_file(nullptr, err.ptr()), nullptr);
  EXPECT_EQ(err.str(), "path: must not be NULL");
  err.Clear();
  EXPECT_EQ(delegate_env_read_file(nullptr, err.ptr()), nullptr);
  EXPECT_EQ(err.str(), "path: must not be NULL");
  err.Clear();
  delegate_env_set(nullptr, "A", "1", err.ptr());
  EXPECT_EQ(err.str(), "env: must not be NULL");
  err.Clear();
  Env env(delegate_env_create());
  delegate_env_set(env.get(), "A", nullptr, err.ptr());
  EXPECT_EQ(err.str(), "value: must not be NULL");
  err.Clear();
  delegate_env_set(env.get(), "A=B", "1", err.ptr());
  EXPECT_THAT(err.str(), StartsWith("name: expected a variable name"));
  err.Clear();
  EXPECT_EQ(delegate_config_load(nullptr, nullptr, 7, err.ptr()), nullptr);
  EXPECT_THAT(err.str(), StartsWith("need: expected DELEGATE_CONFIG_LOCAL"));
  err.Clear();
  EXPECT_EQ(delegate_scheduler_create(nullptr, nullptr, nullptr, err.ptr()),
            nullptr);
  EXPECT_EQ(err.str(), "registry: must not be NULL");
  err.Clear();
  Stage stage = Parse("name: s\nsteps: [{id: a, commands: [true]}]\n", err);
  ASSERT_TRUE(stage) << err.str();
  delegate_validate(nullptr, stage.get(), nullptr, err.ptr());
  EXPECT_EQ(err.str(), "registry: must not be NULL");
  err.Clear();
  Registry registry(delegate_registry_create());
  delegate_validate(registry.get(), nullptr, nullptr, err.ptr());
  EXPECT_EQ(err.str(), "stage: must not be NULL");
  err.Clear();
  delegate_registry_register_builtins(registry.get(), nullptr, nullptr,
                                      err.ptr());
  EXPECT_EQ(err.str(), "config: must not be NULL");
  err.Clear();
  delegate_scheduler_cancel(nullptr, "x", err.ptr());
  EXPECT_EQ(err.str(), "scheduler: must not be NULL");
  err.Clear();
  delegate_server_start(nullptr, err.ptr());
  EXPECT_EQ(err.str(), "server: must not be NULL");
  err.Clear();
  EXPECT_EQ(delegate_server_create(registry.get(), nullptr, nullptr, nullptr,
                                   err.ptr()),
            nullptr);
  EXPECT_EQ(err.str(), "config: must not be NULL");

  // A callback's state is let go of even when the call is refused.
  int destroyed = 0;
  auto count = [](void* state) { ++*static_cast<int*>(state); };
  err.Clear();
  EXPECT_EQ(delegate_scheduler_submit(nullptr, stage.get(), nullptr, &destroyed,
                                      count, nullptr, err.ptr()),
            nullptr);
  EXPECT_EQ(err.str(), "scheduler: must not be NULL");
  EXPECT_EQ(destroyed, 1);
  err.Clear();
  delegate_registry_register_executor(registry.get(), "c", &destroyed, count,
                                      nullptr, nullptr, nullptr, err.ptr());
  EXPECT_EQ(err.str(), "execute: must not be NULL");
  EXPECT_EQ(destroyed, 2);

  // Accessors and destructors take NULL.
  EXPECT_EQ(delegate_stage_name(nullptr), nullptr);
  EXPECT_EQ(delegate_stage_step_count(nullptr), 0u);
  EXPECT_EQ(delegate_result_status(nullptr), -1);
  EXPECT_EQ(delegate_result_json(nullptr), nullptr);
  EXPECT_EQ(delegate_config_name(nullptr), nullptr);
  EXPECT_EQ(delegate_env_get(nullptr, "A"), nullptr);
  EXPECT_EQ(delegate_run_interrupt(nullptr, 0), 0);
  EXPECT_EQ(delegate_server_ops_port(nullptr), 0);
  delegate_free(nullptr);
  delegate_env_destroy(nullptr);
  delegate_config_destroy(nullptr);
  delegate_policy_destroy(nullptr);
  delegate_registry_destroy(nullptr);
  delegate_stage_destroy(nullptr);
  delegate_scheduler_destroy(nullptr);
  delegate_run_destroy(nullptr);
  delegate_result_destroy(nullptr);
  delegate_server_options_destroy(nullptr);
  delegate_server_destroy(nullptr);
}

// ---------------------------------------------------------- configuration

TEST(CApi, ABadVariableNameIsNamedButWhatFollowsItsEqualsSignIsNot) {
  Err err;
  Env env(delegate_env_create());
  // A caller that passed NAME=VALUE as the name: the value is a secret.
  delegate_env_set(env.get(), "HARNESS_TOKEN=tok-do-not-print", "", err.ptr());
  EXPECT_THAT(err.str(), HasSubstr("'HARNESS_TOKEN'"));
  EXPECT_THAT(err.str(), Not(HasSubstr("tok-do-not-print")));
  EXPECT_EQ(delegate_env_get(env.get(), "HARNESS_TOKEN"), nullptr);
  err.Clear();
  delegate_env_set(env.get(), "", "1", err.ptr());
  EXPECT_EQ(err.str(), "name: must not be empty");
}

TEST(CApiConfig, FromAnEnvFileWithTheProcessWinning) {
  TempDir dir;
  const std::string file = dir.Write(
      "delegate.env",
      "# settings\nexport HARNESS_NAME=from-file\nMAX_STAGES='3'\n\n");
  Err err;
  Env from_file(delegate_env_read_file(file.c_str(), err.ptr()));
  ASSERT_TRUE(from_file) << err.str();
  EXPECT_STREQ(delegate_env_get(from_file.get(), "MAX_STAGES"), "3");
  EXPECT_EQ(delegate_env_get(from_file.get(), "NOPE"), nullptr);

  Env process(delegate_env_create());
  Config config(delegate_config_load(process.get(), from_file.get(),
                                     DELEGATE_CONFIG_LOCAL, err.ptr()));
  ASSERT_TRUE(config) << err.str();
  EXPECT_STREQ(delegate_config_name(config.get()), "from-file");

  delegate_env_set(process.get(), "HARNESS_NAME", "from-process", err.ptr());
  config.reset(delegate_config_load(process.get(), from_file.get(),
                                    DELEGATE_CONFIG_LOCAL, err.ptr()));
  ASSERT_TRUE(config) << err.str();
  EXPECT_STREQ(delegate_config_name(config.get()), "from-process");
  EXPECT_THAT(Owned(delegate_config_dump(config.get())),
              HasSubstr("from-process"));
}

TEST(CApiConfig, FromTheProcessEnvironmentWithWarnings) {
  setenv("HARNESS_NAME", "from-environ", 1);
  setenv("C_ABI_TEST_VARIABLE", "seen", 1);
  Env process(delegate_env_from_process());
  EXPECT_STREQ(delegate_env_get(process.get(), "C_ABI_TEST_VARIABLE"), "seen");
  Err err;
  Config config(
      delegate_config_load(nullptr, nullptr, DELEGATE_CONFIG_LOCAL, err.ptr()));
  ASSERT_TRUE(config) << err.str();
  EXPECT_STREQ(delegate_config_name(config.get()), "from-environ");
  EXPECT_EQ(delegate_config_warning_count(config.get()), 0u);

  // Two names of one setting that disagree: the first wins, with a warning.
  Env env(delegate_env_create());
  delegate_env_set(env.get(), "HARNESS_NAME", "first", err.ptr());
  delegate_env_set(env.get(), "DELEGATE_NAME", "second", err.ptr());
  config.reset(delegate_config_load(env.get(), nullptr, DELEGATE_CONFIG_LOCAL,
                                    err.ptr()));
  ASSERT_TRUE(config) << err.str();
  EXPECT_STREQ(delegate_config_name(config.get()), "first");
  ASSERT_EQ(delegate_config_warning_count(config.get()), 1u);
  EXPECT_THAT(delegate_config_warning(config.get(), 0),
              HasSubstr("DELEGATE_NAME"));
  EXPECT_EQ(delegate_config_warning(config.get(), 1), nullptr);
}

TEST(CApiConfig, ABadEnvFileLineIsNamedButNotEchoed) {
  TempDir dir;
  const std::string file =
      dir.Write("bad.env", "HARNESS_NAME=ok\nthis-is-a-secret-line\n");
  Err err;
  EXPECT_EQ(delegate_env_read_file(file.c_str(), err.ptr()), nullptr);
  EXPECT_EQ(err.str(), file + ":2: expected KEY=VALUE");
  err.Clear();
  const std::string missing = dir.path() + "/missing.env";
  EXPECT_EQ(delegate_env_read_file(missing.c_str(), err.ptr()), nullptr);
  EXPECT_THAT(err.str(), HasSubstr(missing));
}

TEST(CApiConfig, ErrorsNameTheVariableAndNeverTheToken) {
  Err err;
  Env env(delegate_env_create());
  delegate_env_set(env.get(), "HARNESS_TOKEN", "tok-do-not-print", err.ptr());
  delegate_env_set(env.get(), "MAX_STAGES", "ten", err.ptr());
  EXPECT_EQ(delegate_config_load(env.get(), nullptr, DELEGATE_CONFIG_LOCAL,
                                 err.ptr()),
            nullptr);
  EXPECT_EQ(err.str(), "MAX_STAGES: expected a positive integer, got 'ten'");
  err.Clear();
  EXPECT_EQ(delegate_config_load(env.get(), nullptr, DELEGATE_CONFIG_SERVER,
                                 err.ptr()),
            nullptr);
  EXPECT_THAT(err.str(), StartsWith("HARNESS_ACCOUNT_ID is not set"));
  EXPECT_THAT(err.str(), Not(HasSubstr("tok-do-not-print")));

  delegate_env_set(env.get(), "MAX_STAGES", "2", err.ptr());
  err.Clear();
  Config config(delegate_config_load(env.get(), nullptr, DELEGATE_CONFIG_LOCAL,
                                     err.ptr()));
  ASSERT_TRUE(config) << err.str();
  const std::string dump = Owned(delegate_config_dump(config.get()));
  EXPECT_THAT(dump, Not(HasSubstr("tok-do-not-print")));
  EXPECT_THAT(dump, HasSubstr("<set>"));
}

TEST(CApiConfig, PolicyErrorsNameTheVariable) {
  Err err;
  Env env(delegate_env_create());
  delegate_env_set(env.get(), "DELEGATE_POLICY_MAX_CPUS", "lots", err.ptr());
  EXPECT_EQ(delegate_policy_load(env.get(), err.ptr()), nullptr);
  EXPECT_THAT(err.str(), StartsWith("DELEGATE_POLICY_MAX_CPUS"));
}

// ----------------------------------------------------- stages, validation

TEST(CApiStage, ParsesAndLoads) {
  TempDir dir;
  const std::string yaml =
      "name: build\nplatform: host\nsteps:\n"
      "  - id: a\n    commands: [true]\n  - id: b\n    commands: [true]\n";
  Err err;
  Stage parsed = Parse(yaml, err);
  ASSERT_TRUE(parsed) << err.str();
  EXPECT_STREQ(delegate_stage_name(parsed.get()), "build");
  EXPECT_STREQ(delegate_stage_platform(parsed.get()), "host");
  EXPECT_EQ(delegate_stage_step_count(parsed.get()), 2u);
  const std::string file = dir.Write("stage.yaml", yaml);
  Stage loaded(delegate_stage_load_file(file.c_str(), err.ptr()));
  ASSERT_TRUE(loaded) << err.str();
  EXPECT_EQ(delegate_stage_step_count(loaded.get()), 2u);
}

TEST(CApiStage, BadTextListsEveryProblem) {
  Err err;
  Stage stage = Parse(
      "name: broken\n"
      "steps:\n"
      "  - id: a\n"
      "    commands: [true]\n"
      "    timeout: ten\n"
      "  - id: a\n"
      "    comands: [true]\n",
      err);
  EXPECT_FALSE(stage);
  const std::vector<std::string> lines = Lines(err.str());
  ASSERT_GE(lines.size(), 3u) << err.str();
  for (const std::string& line : lines) {
    EXPECT_THAT(line, StartsWith("test.yaml:")) << err.str();
  }
  EXPECT_THAT(err.str(), HasSubstr("steps[0].timeout"));
  EXPECT_THAT(err.str(), HasSubstr("comands"));
  EXPECT_THAT(err.str(), HasSubstr("steps[1].id"));

  err.Clear();
  TempDir dir;
  const std::string missing = dir.path() + "/none.yaml";
  EXPECT_EQ(delegate_stage_load_file(missing.c_str(), err.ptr()), nullptr);
  EXPECT_THAT(err.str(), HasSubstr(missing));
}

TEST(CApiStage, ValidateIsTheCheckSubmitMakes) {
  TempDir dir;
  Err err;
  Config config = LocalConfig(dir.path(), err);
  ASSERT_TRUE(config) << err.str();
  Registry registry(delegate_registry_create());
  delegate_registry_register_builtins(registry.get(), config.get(), nullptr,
                                      err.ptr());
  ASSERT_FALSE(err.set()) << err.str();

  Stage unknown = Parse(
      "name: s\nplatform: mainframe\nsteps: [{id: a, commands: [true]}]\n",
      err);
  ASSERT_TRUE(unknown) << err.str();
  delegate_validate(registry.get(), unknown.get(), nullptr, err.ptr());
  EXPECT_THAT(err.str(), StartsWith("platform: no executor is registered for "
                                    "'mainframe'; registered: "));
  EXPECT_THAT(err.str(), HasSubstr("host"));

  // Every problem, one a line, and the same as a refused submit.
  Stage bad = Parse(
      "name: s\nplatform: host\nsteps:\n"
      "  - id: a\n    commands: [true]\n"
      "    security_context: {privileged: true}\n"
      "  - id: b\n    image: alpine\n    commands: [true]\n",
      err);
  ASSERT_TRUE(bad) << err.str();
  err.Clear();
  delegate_validate(registry.get(), bad.get(), nullptr, err.ptr());
  const std::string validated = err.str();
  EXPECT_EQ(Lines(validated).size(), 2u) << validated;
  EXPECT_THAT(validated, HasSubstr("steps[0].security_context.privileged"));
  EXPECT_THAT(validated, HasSubstr("steps[1].image"));

  Scheduler scheduler(delegate_scheduler_create(registry.get(), config.get(),
                                                nullptr, err.ptr()));
  ASSERT_TRUE(scheduler);
  LineLog log;
  err.Clear();
  EXPECT_EQ(
      delegate_scheduler_submit(scheduler.get(), bad.get(), nullptr, &log,
                                LineLog::Destroy, LineLog::OnLine, err.ptr()),
      nullptr);
  EXPECT_EQ(err.str(), validated);
  EXPECT_TRUE(log.destroyed);
  EXPECT_TRUE(log.lines.empty());

  // The operator policy is part of the check.
  Stage capable = Parse(
      "name: s\nplatform: docker\nsteps:\n"
      "  - id: a\n    image: alpine\n    commands: [true]\n"
      "    security_context: {add_capability: [NET_ADMIN]}\n",
      err);
  ASSERT_TRUE(capable) << err.str();
  err.Clear();
  delegate_validate(registry.get(), capable.get(), nullptr, err.ptr());
  EXPECT_FALSE(err.set()) << err.str();
  Env policy_env(delegate_env_create());
  delegate_env_set(policy_env.get(), "DELEGATE_POLICY_FORBID_CAP_ADD", "true",
                   err.ptr());
  Policy policy(delegate_policy_load(policy_env.get(), err.ptr()));
  ASSERT_TRUE(policy) << err.str();
  delegate_validate(registry.get(), capable.get(), policy.get(), err.ptr());
  EXPECT_THAT(err.str(), HasSubstr("add_capability"));
}

// ------------------------------------------------------------ C executors

// What the test executor saw, shared by its callbacks.
struct Recorder {
  std::mutex mu;
  std::vector<std::string> calls;
  std::atomic<int> destroyed{0};
  bool fail_initialize = false;
  void Add(std::string call) {
    std::lock_guard lock(mu);
    calls.push_back(std::move(call));
  }
};

struct StageData {
  std::string task_id;
  int steps_seen = 0;
};

void RecInitialize(void* state, delegate_stage_context_t* ctx) {
  auto* rec = static_cast<Recorder*>(state);
  rec->Add(std::string("initialize ") + delegate_stage_context_stage_name(ctx) +
           " " + std::to_string(delegate_stage_context_step_count(ctx)));
  delegate_stage_context_set_data(
      ctx, new StageData{delegate_stage_context_task_id(ctx), 0});
  delegate_stage_context_log(ctx, "initialized in C");
  if (rec->fail_initialize) delegate_stage_context_fail(ctx, "no workers");
}

void RecExecute(void* state, delegate_step_context_t* ctx) {
  auto* rec = static_cast<Recorder*>(state);
  auto* data = static_cast<StageData*>(
      delegate_stage_context_data(delegate_step_context_stage(ctx)));
  ++data->steps_seen;
  const std::string id = delegate_step_context_id(ctx);
  rec->Add("execute " + id + " #" +
           std::to_string(delegate_step_context_index(ctx)));
  for (size_t i = 0; i < delegate_step_context_command_count(ctx); ++i) {
    const std::string c = delegate_step_context_command(ctx, i);
    // Raw bytes: two lines in three writes.
    delegate_step_context_write(ctx, DELEGATE_STREAM_STDOUT, "ran ", 4);
    delegate_step_context_write(ctx, DELEGATE_STREAM_STDOUT, c.data(),
                                c.size());
    delegate_step_context_write(ctx, DELEGATE_STREAM_STDOUT, "\n", 1);
  }
  const char* mode = delegate_step_context_env(ctx, "MODE");
  const std::string m = mode ? mode : "";
  if (m == "outputs") {
    rec->Add(std::string("name '") + delegate_step_context_name(ctx) +
             "' image '" + delegate_step_context_image(ctx) + "'");
    for (size_t i = 0; i < delegate_step_context_output_count(ctx); ++i) {
      const std::string name = delegate_step_context_output_name(ctx, i);
      delegate_step_context_set_output(ctx, name.c_str(),
                                       (name + "-value").c_str());
    }
    delegate_step_context_set_exit_code(ctx, 0);
  } else if (m == "fail") {
    delegate_step_context_write(ctx, DELEGATE_STREAM_STDERR, "bad\n", 4);
    delegate_step_context_fail(ctx, "it did not work");
  } else if (m == "exit") {
    delegate_step_context_set_exit_code(ctx, 3);
  } else if (m == "streams") {
    delegate_step_context_write(ctx, DELEGATE_STREAM_SYSTEM, "from C\n", 7);
    delegate_step_context_write(ctx, 7, "lost\n", 5);
    delegate_step_context_write(ctx, -1, "lost too\n", 9);
  } else if (m == "wait-forever") {
    delegate_step_context_log(ctx, "waiting forever");
    const int stop = delegate_step_context_wait(ctx, -1);
    rec->Add("stopped " + std::string(delegate_status_name(stop)
                                          ? delegate_status_name(stop)
                                          : "no"));
  } else if (m == "wait") {
    delegate_step_context_log(ctx, "waiting");
    const int stop = delegate_step_context_wait(ctx, 30000);
    rec->Add("stopped " + std::string(delegate_status_name(stop)
                                          ? delegate_status_name(stop)
                                          : "no"));
  }
}

void RecCleanup(void* state, delegate_stage_context_t* ctx) {
  auto* rec = static_cast<Recorder*>(state);
  auto* data = static_cast<StageData*>(delegate_stage_context_data(ctx));
  rec->Add("cleanup after " + std::to_string(data ? data->steps_seen : -1) +
           " steps, same task " +
           (data && data->task_id == delegate_stage_context_task_id(ctx)
                ? "yes"
                : "no"));
  delete data;
}

void RecDestroy(void* state) { ++static_cast<Recorder*>(state)->destroyed; }

class CApiRunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Err err;
    config_ = LocalConfig(dir_.path(), err);
    ASSERT_TRUE(config_) << err.str();
    registry_.reset(delegate_registry_create());
    delegate_registry_register_builtins(registry_.get(), config_.get(), nullptr,
                                        err.ptr());
    ASSERT_FALSE(err.set()) << err.str();
    delegate_registry_register_executor(registry_.get(), "c-test", &rec_,
                                        RecDestroy, RecInitialize, RecExecute,
                                        RecCleanup, err.ptr());
    ASSERT_FALSE(err.set()) << err.str();
    scheduler_.reset(delegate_scheduler_create(registry_.get(), config_.get(),
                                               nullptr, err.ptr()));
    ASSERT_TRUE(scheduler_) << err.str();
  }
  void TearDown() override {
    scheduler_.reset();
    registry_.reset();
    EXPECT_EQ(rec_.destroyed.load(), 1);
  }

  TempDir dir_;
  Recorder rec_;
  Config config_;
  Registry registry_;
  Scheduler scheduler_;
};

TEST_F(CApiRunTest, AStageThroughACExecutor) {
  Err err;
  Stage stage = Parse(
      "name: c-stage\nplatform: c-test\nsteps:\n"
      "  - id: build\n    name: Build it\n"
      "    commands: ['make', 'make install']\n"
      "    envs: {MODE: outputs}\n    outputs: [VERSION, DIGEST]\n"
      "  - id: lint\n    commands: [lint]\n    envs: {MODE: fail}\n"
      "    continue_on_error: true\n"
      "  - id: test\n    commands: [test]\n    envs: {MODE: exit}\n"
      "  - id: never\n    commands: [deploy]\n",
      err);
  ASSERT_TRUE(stage) << err.str();
  LineLog log;
  log.task_id = "c-1";
  Result result(delegate_scheduler_run(scheduler_.get(), stage.get(), "c-1",
                                       &log, LineLog::Destroy, LineLog::OnLine,
                                       err.ptr()));
  ASSERT_TRUE(result) << err.str();
  EXPECT_TRUE(log.destroyed);
  EXPECT_FALSE(log.overlapped);

  EXPECT_EQ(delegate_result_status(result.get()), DELEGATE_STATUS_FAILURE);
  EXPECT_STREQ(delegate_result_task_id(result.get()), "c-1");
  ASSERT_EQ(delegate_result_step_count(result.get()), 4u);
  EXPECT_STREQ(delegate_result_step_id(result.get(), 0), "build");
  EXPECT_EQ(delegate_result_step_status(result.get(), 0),
            DELEGATE_STATUS_SUCCESS);
  EXPECT_EQ(delegate_result_step_exit_code(result.get(), 0), 0);
  EXPECT_STREQ(delegate_result_step_output(result.get(), 0, "VERSION"),
               "VERSION-value");
  EXPECT_STREQ(delegate_result_step_output(result.get(), 0, "DIGEST"),
               "DIGEST-value");
  EXPECT_EQ(delegate_result_step_output(result.get(), 0, "OTHER"), nullptr);
  EXPECT_EQ(delegate_result_step_status(result.get(), 1),
            DELEGATE_STATUS_FAILURE);
  EXPECT_STREQ(delegate_result_step_error(result.get(), 1), "it did not work");
  EXPECT_EQ(delegate_result_step_exit_code(result.get(), 1), -1);
  EXPECT_EQ(delegate_result_step_status(result.get(), 2),
            DELEGATE_STATUS_FAILURE);
  EXPECT_STREQ(delegate_result_step_error(result.get(), 2), "exit status 3");
  EXPECT_EQ(delegate_result_step_exit_code(result.get(), 2), 3);
  EXPECT_EQ(delegate_result_step_status(result.get(), 3),
            DELEGATE_STATUS_SKIPPED);
  EXPECT_EQ(delegate_result_step_id(result.get(), 4), nullptr);
  EXPECT_EQ(delegate_result_step_status(result.get(), 4), -1);

  {
    std::lock_guard lock(rec_.mu);
    EXPECT_THAT(
        rec_.calls,
        ElementsAre("initialize c-stage 4", "execute build #0",
                    "name 'Build it' image ''", "execute lint #1",
                    "execute test #2", "cleanup after 3 steps, same task yes"));
  }
  EXPECT_THAT(log.TextsOf(""), ElementsAre("initialized in C"));
  EXPECT_THAT(log.TextsOf("build"),
              ElementsAre("ran make", "ran make install"));
  EXPECT_THAT(log.TextsOf("lint"), ElementsAre("ran lint", "bad"));

  const std::string json = Owned(delegate_result_json(result.get()));
  EXPECT_THAT(json, HasSubstr("\"stage\":\"c-stage\""));
  EXPECT_THAT(json, HasSubstr("\"status\":\"FAILURE\""));
  EXPECT_THAT(json, HasSubstr("\"VERSION\":\"VERSION-value\""));
  EXPECT_THAT(Owned(delegate_result_summary(result.get())),
              HasSubstr("exit status 3"));
}

TEST_F(CApiRunTest, AFailedInitializeSkipsTheStepsAndStillCleansUp) {
  rec_.fail_initialize = true;
  Err err;
  Stage stage = Parse(
      "name: c-stage\nplatform: c-test\nsteps: [{id: a, commands: [x]}]\n",
      err);
  ASSERT_TRUE(stage) << err.str();
  Result result(delegate_scheduler_run(scheduler_.get(), stage.get(), nullptr,
                                       nullptr, nullptr, nullptr, err.ptr()));
  ASSERT_TRUE(result) << err.str();
  EXPECT_EQ(delegate_result_status(result.get()), DELEGATE_STATUS_FAILURE);
  EXPECT_STREQ(delegate_result_error(result.get()), "initialize: no workers");
  EXPECT_EQ(delegate_result_step_status(result.get(), 0),
            DELEGATE_STATUS_SKIPPED);
  std::lock_guard lock(rec_.mu);
  EXPECT_THAT(rec_.calls, ElementsAre("initialize c-stage 1",
                                      "cleanup after 0 steps, same task yes"));
}

TEST_F(CApiRunTest, HostStepsWithTheirLogLinesInOrder) {
  Err err;
  Stage stage = Parse(
      "name: host-stage\nplatform: host\nsecrets: {pw: hunter2-secret}\n"
      "steps:\n"
      "  - id: count\n"
      "    commands: ['for i in 1 2 3 4 5 6 7 8; do echo line $i; done',\n"
      "               'echo oops >&2', 'echo pw=${{secrets.pw}}']\n"
      "  - id: out\n"
      "    commands: ['echo V=7 > \"$HARNESS_OUTPUT_FILE\"']\n"
      "    outputs: [V]\n",
      err);
  ASSERT_TRUE(stage) << err.str();
  LineLog log;
  Result result(delegate_scheduler_run(scheduler_.get(), stage.get(), nullptr,
                                       &log, LineLog::Destroy, LineLog::OnLine,
                                       err.ptr()));
  ASSERT_TRUE(result) << err.str();
  ASSERT_EQ(delegate_result_status(result.get()), DELEGATE_STATUS_SUCCESS)
      << Owned(delegate_result_json(result.get()));
  EXPECT_STREQ(delegate_result_step_output(result.get(), 1, "V"), "7");
  EXPECT_THAT(delegate_result_task_id(result.get()), StartsWith("host-stage-"));

  const int64_t now_us =
      std::chrono::duration_cast<std::chrono::microseconds>(
          std::chrono::system_clock::now().time_since_epoch())
          .count();
  // Every line of the step is numbered from 1 without a gap. The shell
  // echoes each command ("+ ...") before its output; stdout comes in its
  // order (stderr is a pipe of its own, so where its lines fall between
  // stdout's is not fixed).
  std::vector<std::string> out, err_lines;
  uint64_t number = 0;
  for (const LineLog::Line& l : log.lines) {
    if (l.step != "count") continue;
    EXPECT_EQ(l.number, ++number) << l.text;
    EXPECT_EQ(l.partial, 0);
    // Within a minute of now: stamped when written, in microseconds.
    EXPECT_LT(std::llabs(l.time_us - now_us), 60LL * 1000 * 1000);
    if (l.stream == DELEGATE_STREAM_STDERR) err_lines.push_back(l.text);
    if (l.stream == DELEGATE_STREAM_STDOUT && l.text.rfind("+ ", 0) != 0) {
      out.push_back(l.text);
    }
  }
  ASSERT_EQ(out.size(), 9u);
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(out[i], "line " + std::to_string(i + 1));
  }
  EXPECT_THAT(out[8], StartsWith("pw="));
  EXPECT_THAT(err_lines, ElementsAre("oops"));
  for (const LineLog::Line& l : log.lines) {
    EXPECT_THAT(l.text, Not(HasSubstr("hunter2")));
  }
}

TEST_F(CApiRunTest, CancelARunningHostStepFromAnotherThread) {
  Err err;
  Stage stage = Parse(
      "name: long\nplatform: host\n"
      "steps:\n"
      "  - id: sleep\n    commands: ['echo started', 'sleep 30']\n"
      "  - id: after\n    commands: ['echo never']\n",
      err);
  ASSERT_TRUE(stage) << err.str();
  LineLog log;
  StageRun run(delegate_scheduler_submit(scheduler_.get(), stage.get(),
                                         "long-1", &log, LineLog::Destroy,
                                         LineLog::OnLine, err.ptr()));
  ASSERT_TRUE(run) << err.str();
  EXPECT_STREQ(delegate_run_task_id(run.get()), "long-1");
  ASSERT_TRUE(log.WaitFor("started", std::chrono::seconds(20)));
  const auto start = std::chrono::steady_clock::now();
  std::thread canceller([&] {
    Err cancel_err;
    delegate_scheduler_cancel(scheduler_.get(), "long-1", cancel_err.ptr());
    EXPECT_FALSE(cancel_err.set()) << cancel_err.str();
  });
  Result result(delegate_run_wait(run.get()));
  canceller.join();
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(result);
  EXPECT_EQ(delegate_result_status(result.get()), DELEGATE_STATUS_CANCELLED);
  EXPECT_STREQ(delegate_result_error(result.get()), "cancelled");
  EXPECT_EQ(delegate_result_step_status(result.get(), 0),
            DELEGATE_STATUS_CANCELLED);
  EXPECT_EQ(delegate_result_step_status(result.get(), 1),
            DELEGATE_STATUS_SKIPPED);
  // The task asks for a prompt cancel: SIGTERM stops `sleep` at once (the
  // grace period before SIGKILL is 1 s here), far inside 30 s.
  EXPECT_LT(took, std::chrono::seconds(10));
  EXPECT_TRUE(log.destroyed);
  EXPECT_EQ(delegate_run_interrupt(run.get(), 0), 0);  // already finished
  // Cleanup ran: the host executor removed the stage's workspace.
  EXPECT_TRUE(std::filesystem::is_empty(dir_.path()));

  // A stage that is neither queued nor running cannot be cancelled.
  err.Clear();
  delegate_scheduler_cancel(scheduler_.get(), "no-such-task", err.ptr());
  EXPECT_THAT(err.str(), HasSubstr("no-such-task"));
}

TEST_F(CApiRunTest, InterruptACExecutorThatWaitsForItsStop) {
  Err err;
  Stage stage = Parse(
      "name: c-wait\nplatform: c-test\n"
      "steps: [{id: w, commands: [x], envs: {MODE: wait}}]\n",
      err);
  ASSERT_TRUE(stage) << err.str();
  LineLog log;
  StageRun run(delegate_scheduler_submit(scheduler_.get(), stage.get(), nullptr,
                                         &log, LineLog::Destroy,
                                         LineLog::OnLine, err.ptr()));
  ASSERT_TRUE(run) << err.str();
  ASSERT_TRUE(log.WaitFor("waiting", std::chrono::seconds(20)));
  std::thread interrupter([&] {
    // No drain: cancelled as a delegate shutting down, at once.
    EXPECT_EQ(delegate_run_interrupt(run.get(), 0), 1);
  });
  Result result(delegate_run_wait(run.get()));
  interrupter.join();
  ASSERT_TRUE(result);
  EXPECT_EQ(delegate_result_status(result.get()), DELEGATE_STATUS_CANCELLED);
  EXPECT_STREQ(delegate_result_error(result.get()),
               "cancelled: the delegate is shutting down");
  EXPECT_EQ(delegate_result_step_status(result.get(), 0),
            DELEGATE_STATUS_CANCELLED);
  std::lock_guard lock(rec_.mu);
  EXPECT_THAT(rec_.calls, ElementsAre("initialize c-wait 1", "execute w #0",
                                      "stopped CANCELLED",
                                      "cleanup after 1 steps, same task yes"));
}

TEST_F(CApiRunTest, ANegativeWaitLastsUntilTheStepMustStop) {
  Err err;
  // No cancel comes: only the step's deadline ends the wait (a wait that
  // returned at once would leave the step to succeed).
  Stage stage = Parse(
      "name: c-forever\nplatform: c-test\n"
      "steps: [{id: w, commands: [x], timeout: 1s, "
      "envs: {MODE: wait-forever}}]\n",
      err);
  ASSERT_TRUE(stage) << err.str();
  Result result(delegate_scheduler_run(scheduler_.get(), stage.get(), nullptr,
                                       nullptr, nullptr, nullptr, err.ptr()));
  ASSERT_TRUE(result) << err.str();
  EXPECT_EQ(delegate_result_step_status(result.get(), 0),
            DELEGATE_STATUS_TIMEOUT);
  std::lock_guard lock(rec_.mu);
  EXPECT_THAT(rec_.calls, Contains("stopped TIMEOUT"));
}

TEST_F(CApiRunTest, SystemOutputIsASystemLineAndAnUnknownStreamWritesNothing) {
  Err err;
  Stage stage = Parse(
      "name: c-streams\nplatform: c-test\n"
      "steps: [{id: s, commands: [x], envs: {MODE: streams}}]\n",
      err);
  ASSERT_TRUE(stage) << err.str();
  LineLog log;
  Result result(delegate_scheduler_run(scheduler_.get(), stage.get(), nullptr,
                                       &log, LineLog::Destroy, LineLog::OnLine,
                                       err.ptr()));
  ASSERT_TRUE(result) << err.str();
  std::vector<std::pair<int, std::string>> step_lines;
  for (const LineLog::Line& line : log.lines) {
    if (line.step == "s") step_lines.emplace_back(line.stream, line.text);
  }
  EXPECT_THAT(
      step_lines,
      ElementsAre(
          std::make_pair(DELEGATE_STREAM_STDOUT, std::string("ran x")),
          std::make_pair(DELEGATE_STREAM_SYSTEM, std::string("from C"))));
}

TEST_F(CApiRunTest, DestroyingARunningRunCancelsItAndCleansUp) {
  Err err;
  Stage stage = Parse(
      "name: c-wait\nplatform: c-test\n"
      "steps: [{id: w, commands: [x], envs: {MODE: wait}}]\n",
      err);
  ASSERT_TRUE(stage) << err.str();
  LineLog log;
  StageRun run(delegate_scheduler_submit(scheduler_.get(), stage.get(), nullptr,
                                         &log, LineLog::Destroy,
                                         LineLog::OnLine, err.ptr()));
  ASSERT_TRUE(run) << err.str();
  ASSERT_TRUE(log.WaitFor("waiting", std::chrono::seconds(20)));
  run.reset();
  EXPECT_TRUE(log.destroyed);
  std::lock_guard lock(rec_.mu);
  ASSERT_FALSE(rec_.calls.empty());
  EXPECT_EQ(rec_.calls.back(), "cleanup after 1 steps, same task yes");
}

TEST_F(CApiRunTest, ATaskIdIsTakenOnlyOnce) {
  Err err;
  Stage stage = Parse(
      "name: c-stage\nplatform: c-test\nsteps: [{id: a, commands: [x]}]\n",
      err);
  ASSERT_TRUE(stage) << err.str();
  Result first(delegate_scheduler_run(scheduler_.get(), stage.get(), "same",
                                      nullptr, nullptr, nullptr, err.ptr()));
  ASSERT_TRUE(first) << err.str();
  Result second(delegate_scheduler_run(scheduler_.get(), stage.get(), "same",
                                       nullptr, nullptr, nullptr, err.ptr()));
  EXPECT_FALSE(second);
  EXPECT_THAT(err.str(), HasSubstr("same"));
  err.Clear();
  EXPECT_EQ(delegate_scheduler_submit(scheduler_.get(), stage.get(), "",
                                      nullptr, nullptr, nullptr, err.ptr()),
            nullptr);
  EXPECT_THAT(err.str(), StartsWith("task_id: must not be empty"));
}

TEST_F(CApiRunTest, HandlesMayBeDestroyedInAnyOrder) {
  Err err;
  Stage stage = Parse(
      "name: c-stage\nplatform: c-test\nsteps: [{id: a, commands: [x]}]\n",
      err);
  ASSERT_TRUE(stage) << err.str();
  // The registry goes first: the scheduler keeps what it needs of it.
  registry_.reset();
  EXPECT_EQ(rec_.destroyed.load(), 0);
  StageRun run(delegate_scheduler_submit(scheduler_.get(), stage.get(), nullptr,
                                         nullptr, nullptr, nullptr, err.ptr()));
  ASSERT_TRUE(run) << err.str();
  stage.reset();  // the run has its own copy
  // Then the scheduler, with a run still open: the run stays usable.
  scheduler_.reset();
  Result result(delegate_run_wait(run.get()));
  ASSERT_TRUE(result);
  EXPECT_NE(delegate_result_status(result.get()), -1);
  EXPECT_EQ(rec_.destroyed.load(), 0);
  run.reset();
  EXPECT_EQ(rec_.destroyed.load(), 1);
}

TEST_F(CApiRunTest, ATakenPlatformNameIsRefused) {
  Err err;
  int destroyed = 0;
  delegate_registry_register_executor(
      registry_.get(), "host", &destroyed,
      [](void* s) { ++*static_cast<int*>(s); }, nullptr, RecExecute, nullptr,
      err.ptr());
  EXPECT_THAT(err.str(), HasSubstr("host"));
  EXPECT_EQ(destroyed, 1);
  err.Clear();
  delegate_registry_register_builtins(registry_.get(), config_.get(), nullptr,
                                      err.ptr());
  EXPECT_THAT(err.str(), HasSubstr("host"));
}

// ------------------------------------------------------------------ server

// The server's event log lines, and a way to wait for one.
struct Events {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> lines;
  bool destroyed = false;
  static void OnEvent(void* state, const char* json, size_t len) {
    auto* self = static_cast<Events*>(state);
    EXPECT_EQ(strlen(json), len);
    {
      std::lock_guard lock(self->mu);
      self->lines.emplace_back(json, len);
    }
    self->cv.notify_all();
  }
  static void Destroy(void* state) {
    static_cast<Events*>(state)->destroyed = true;
  }
  bool WaitFor(const std::string& text, std::chrono::seconds timeout) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, timeout, [&] { return Has(text); });
  }
  bool Has(const std::string& text) {
    for (const std::string& l : lines) {
      if (l.find(text) != std::string::npos) return true;
    }
    return false;
  }
  std::string All() {
    std::lock_guard lock(mu);
    std::string out;
    for (const std::string& l : lines) out += l + "\n";
    return out;
  }
};

TEST(CApiServer, AManagerOfNoneWithoutRuntimeIsAnError) {
  Err err;
  Config config = LocalConfig(::testing::TempDir(), err);
  ASSERT_TRUE(config) << err.str();
  Registry registry(delegate_registry_create());
  delegate_registry_register_builtins(registry.get(), config.get(), nullptr,
                                      err.ptr());
  ASSERT_FALSE(err.set()) << err.str();
  ServerOptions options(delegate_server_options_create());
  delegate_server_options_set_manager(options.get(), "none");
  Events events;
  delegate_server_options_set_event_log(options.get(), &events, Events::Destroy,
                                        Events::OnEvent);
  Server server(delegate_server_create(registry.get(), config.get(), nullptr,
                                       options.get(), err.ptr()));
  ASSERT_TRUE(server) << err.str();
  options.reset();
  EXPECT_FALSE(events.destroyed);  // the server still holds it
  delegate_server_start(server.get(), err.ptr());
  ASSERT_FALSE(err.set()) << err.str();
  delegate_server_start(server.get(), err.ptr());
  EXPECT_EQ(err.str(), "server: already started");
  err.Clear();
  delegate_server_wait(server.get(), err.ptr());
  EXPECT_THAT(err.str(), HasSubstr("--manager none"));
  server.reset();
  EXPECT_TRUE(events.destroyed);
}

// A test HTTP/1.1 exchange on loopback; the body of the answer ("" when the
// connection failed) and its status.
std::pair<int, std::string> Http(int port, const std::string& method,
                                 const std::string& path,
                                 const std::string& body = "") {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return {0, ""};
  }
  const std::string request =
      method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
      "Content-Type: application/json\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
  (void)!write(fd, request.data(), request.size());
  std::string response;
  char buf[4096];
  size_t need = std::string::npos;
  for (;;) {
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) break;
    response.append(buf, static_cast<size_t>(n));
    const size_t head_end = response.find("\r\n\r\n");
    if (head_end != std::string::npos && need == std::string::npos) {
      std::string head = response.substr(0, head_end);
      for (char& c : head) c = static_cast<char>(tolower(c));
      const size_t cl = head.find("content-length:");
      if (cl != std::string::npos) {
        need = head_end + 4 + std::stoul(head.substr(cl + 15));
      }
    }
    if (need != std::string::npos && response.size() >= need) break;
  }
  close(fd);
  const size_t head_end = response.find("\r\n\r\n");
  if (response.size() < 12 || head_end == std::string::npos) return {0, ""};
  return {std::stoi(response.substr(9, 3)), response.substr(head_end + 4)};
}

// The reference manager (apps/reference-manager) as a child process.
class ReferenceManager {
 public:
  explicit ReferenceManager(const std::string& dir) {
    const std::string token_file = dir + "/token";
    std::ofstream(token_file) << kToken << "\n";
    int out[2];
    if (pipe(out) != 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_addclose(&actions, out[0]);
    std::vector<std::string> args = {REFERENCE_MANAGER_BINARY,
                                     "--account",
                                     kAccount,
                                     "--token-file",
                                     token_file,
                                     "--listen",
                                     "127.0.0.1:0"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ) !=
        0) {
      pid_ = -1;
    }
    posix_spawn_file_actions_destroy(&actions);
    close(out[1]);
    // "listening URL\n"
    std::string line;
    char c;
    while (read(out[0], &c, 1) == 1 && c != '\n') line += c;
    close(out[0]);
    if (line.rfind("listening ", 0) == 0) url_ = line.substr(10);
    const size_t colon = url_.rfind(':');
    if (colon != std::string::npos) port_ = std::stoi(url_.substr(colon + 1));
  }
  ~ReferenceManager() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
  const std::string& url() const { return url_; }
  int port() const { return port_; }

  static constexpr const char* kAccount = "acct-c-abi";
  static constexpr const char* kToken = "5d41402abc4b2a76b9719d911017c592";

 private:
  pid_t pid_ = -1;
  std::string url_;
  int port_ = 0;
};

// What a server without a manager is made from: an environment serving the
// ops endpoint on a free loopback port, its config, the built-in executors,
// and options with no manager and RuntimeService on `runtime_listen`.
struct ServerParts {
  Env env{delegate_env_create()};
  Config config;
  Registry registry{delegate_registry_create()};
  ServerOptions options{delegate_server_options_create()};
};

void MakeServerParts(const char* runtime_listen, ServerParts& parts) {
  Err err;
  delegate_env_set(parts.env.get(), "HTTPS_BIND", "127.0.0.1:0", err.ptr());
  delegate_env_set(parts.env.get(), "HARNESS_WORKDIR",
                   ::testing::TempDir().c_str(), err.ptr());
  parts.config.reset(delegate_config_load(parts.env.get(), nullptr,
                                          DELEGATE_CONFIG_LOCAL, err.ptr()));
  ASSERT_TRUE(parts.config) << err.str();
  delegate_registry_register_builtins(parts.registry.get(), parts.config.get(),
                                      parts.env.get(), err.ptr());
  ASSERT_FALSE(err.set()) << err.str();
  delegate_server_options_set_manager(parts.options.get(), "none");
  delegate_server_options_set_runtime_listen(parts.options.get(),
                                             runtime_listen);
}

TEST(CApiServer, ServesRuntimeServiceWithoutAManager) {
  Err err;
  ServerParts parts;
  MakeServerParts("127.0.0.1:0", parts);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  delegate_server_options_set_start_executors(parts.options.get(), 0);
  Events events;
  delegate_server_options_set_event_log(parts.options.get(), &events,
                                        Events::Destroy, Events::OnEvent);
  Server server(delegate_server_create(parts.registry.get(), parts.config.get(),
                                       nullptr, parts.options.get(),
                                       err.ptr()));
  ASSERT_TRUE(server) << err.str();
  delegate_server_start(server.get(), err.ptr());
  ASSERT_FALSE(err.set()) << err.str();
  ASSERT_TRUE(events.WaitFor("\"msg\":\"serving RuntimeService\"",
                             std::chrono::seconds(30)))
      << events.All();
  const int ops = delegate_server_ops_port(server.get());
  ASSERT_GT(ops, 0);
  // Ready once RuntimeService takes stages, which follows its start closely.
  std::pair<int, std::string> ready;
  for (int i = 0; i < 200 && ready.first != 200; ++i) {
    if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ready = Http(ops, "GET", "/ready");
  }
  EXPECT_EQ(ready, std::make_pair(200, std::string("ready\n")));
  delegate_server_drain(server.get());
  delegate_server_wait(server.get(), err.ptr());
  EXPECT_FALSE(err.set()) << err.str();
  EXPECT_TRUE(events.Has("RuntimeService stopped")) << events.All();
  server.reset();
  EXPECT_FALSE(events.destroyed);  // the options still hold it
  parts.options.reset();
  EXPECT_TRUE(events.destroyed);
}

// Two servers from one options handle share its event callback: its calls
// are still one at a time.
struct SlowEvents {
  std::atomic<int> in_call{0};
  std::atomic<bool> overlapped{false};
  std::atomic<int> calls{0};
  static void OnEvent(void* state, const char*, size_t) {
    auto* self = static_cast<SlowEvents*>(state);
    if (self->in_call.fetch_add(1) != 0) self->overlapped = true;
    // Long enough for the other server's thread to come in meanwhile.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    self->in_call.fetch_sub(1);
    ++self->calls;
  }
};

TEST(CApiServer, ServersSharingAnEventCallbackCallItOneAtATime) {
  Err err;
  ServerParts parts;
  MakeServerParts("127.0.0.1:0", parts);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  delegate_server_options_set_start_executors(parts.options.get(), 0);
  SlowEvents events;
  delegate_server_options_set_event_log(parts.options.get(), &events, nullptr,
                                        SlowEvents::OnEvent);
  std::vector<Server> servers;
  for (int i = 0; i < 3; ++i) {
    servers.emplace_back(
        delegate_server_create(parts.registry.get(), parts.config.get(),
                               nullptr, parts.options.get(), err.ptr()));
    ASSERT_TRUE(servers.back()) << err.str();
  }
  for (Server& server : servers) {
    delegate_server_start(server.get(), err.ptr());
    ASSERT_FALSE(err.set()) << err.str();
  }
  for (Server& server : servers) delegate_server_drain(server.get());
  for (Server& server : servers) {
    delegate_server_wait(server.get(), err.ptr());
    EXPECT_FALSE(err.set()) << err.str();
  }
  EXPECT_GE(events.calls.load(), 6);
  EXPECT_FALSE(events.overlapped);
}

// A runtime address that cannot be served is the server's error.
TEST(CApiServer, AnUnusableRuntimeAddressIsAnError) {
  Err err;
  ServerParts parts;
  MakeServerParts("0.0.0.0:0", parts);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  delegate_server_options_set_event_log(parts.options.get(), nullptr, nullptr,
                                        [](void*, const char*, size_t) {});
  Server server(delegate_server_create(parts.registry.get(), parts.config.get(),
                                       nullptr, parts.options.get(),
                                       err.ptr()));
  ASSERT_TRUE(server) << err.str();
  delegate_server_start(server.get(), err.ptr());
  delegate_server_wait(server.get(), err.ptr());
  EXPECT_THAT(err.str(), HasSubstr("0.0.0.0 is not a loopback address"));
}

TEST(CApiServer, RunsAStageForTheReferenceManagerAndStopsCleanly) {
  TempDir dir;
  ReferenceManager manager(dir.path());
  ASSERT_NE(manager.port(), 0) << "the reference manager did not start";

  Err err;
  Env env(delegate_env_create());
  const std::pair<const char*, std::string> settings[] = {
      {"HARNESS_ACCOUNT_ID", ReferenceManager::kAccount},
      {"HARNESS_TOKEN", ReferenceManager::kToken},
      {"HARNESS_URL", manager.url()},
      {"HARNESS_NAME", "c-abi-server"},
      {"HARNESS_WORKDIR", dir.path()},
      {"POLL_INTERVAL_MILLISECS", "50"},
      {"HTTPS_BIND", "127.0.0.1:0"},
      {"CLEANUP_GRACE_PERIOD_SECONDS", "1"}};
  for (const auto& [name, value] : settings) {
    delegate_env_set(env.get(), name, value.c_str(), err.ptr());
  }
  Config config(delegate_config_load(env.get(), nullptr, DELEGATE_CONFIG_SERVER,
                                     err.ptr()));
  ASSERT_TRUE(config) << err.str();
  Registry registry(delegate_registry_create());
  delegate_registry_register_builtins(registry.get(), config.get(), env.get(),
                                      err.ptr());
  ASSERT_FALSE(err.set()) << err.str();
  ServerOptions options(delegate_server_options_create());
  delegate_server_options_set_start_executors(options.get(), 0);
  Events events;
  delegate_server_options_set_event_log(options.get(), &events, Events::Destroy,
                                        Events::OnEvent);
  Server server(delegate_server_create(registry.get(), config.get(), nullptr,
                                       options.get(), err.ptr()));
  ASSERT_TRUE(server) << err.str();
  options.reset();
  delegate_server_start(server.get(), err.ptr());
  ASSERT_FALSE(err.set()) << err.str();
  ASSERT_TRUE(events.WaitFor("\"msg\":\"connected\"", std::chrono::seconds(30)))
      << events.All();
  const int ops = delegate_server_ops_port(server.get());
  ASSERT_GT(ops, 0);
  EXPECT_EQ(Http(ops, "GET", "/health"),
            std::make_pair(200, std::string("ok\n")));

  const auto [posted, posted_body] = Http(
      manager.port(), "POST", "/admin/stages",
      R"({"id":"c-abi-1","steps":[{"id":"hello","run":{"commands":["echo hello from C"]}}]})");
  ASSERT_EQ(posted, 200) << posted_body;
  std::string stage;
  for (int i = 0; i < 600; ++i) {
    stage = Http(manager.port(), "GET", "/admin/stages/c-abi-1").second;
    if (stage.find("\"status\":\"SUCCESS\"") != std::string::npos ||
        stage.find("\"status\":\"FAILURE\"") != std::string::npos) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_THAT(stage, HasSubstr("\"status\":\"SUCCESS\"")) << events.All();

  delegate_server_drain(server.get());
  delegate_server_wait(server.get(), err.ptr());
  EXPECT_FALSE(err.set()) << err.str() << "\n" << events.All();
  EXPECT_EQ(Http(ops, "GET", "/health").first, 0);  // no longer served
  server.reset();
  EXPECT_TRUE(events.destroyed);
}

}  // namespace

/* libdelegate's C API: libdelegate_c.so.MAJOR (CMake target delegate::c).
 *
 * C99, in the manner of LevelDB's c.h:
 *
 * - Every object is an opaque handle made by a *_create, *_load, *_parse or
 *   *_submit function and released by its *_destroy. Destroying NULL does
 *   nothing.
 * - A call that can fail takes `char** errptr` as its last argument. On
 *   success it leaves *errptr alone. On failure it sets *errptr to a message
 *   allocated with malloc(), which the caller releases with delegate_free();
 *   a message already in *errptr is freed first. errptr may be NULL: the
 *   message is then dropped, and the return value (NULL, or 0) still tells.
 *   Messages name what is wrong (the file and line, the variable, the
 *   field); secret values never appear in them.
 * - A string or object returned to the caller is the caller's, with the
 *   matching release function named at the function. `const char*` results
 *   are borrowed: valid as long as the handle they came from (or, in a
 *   callback, until the callback returns).
 * - A callback is a function pointer plus `void* state`, and a
 *   `void (*destructor)(void* state)` (may be NULL) that the library calls
 *   exactly once when it no longer needs `state`, including when the call
 *   that was given it fails.
 * - No C++ exception leaves the library: every entry point reports failure
 *   through errptr or its return value.
 * - A NULL handle or string where a value is required is an error through
 *   errptr ("stage: must not be NULL"); accessors given NULL return NULL, 0
 *   or -1.
 *
 * Threads: unless a function says otherwise, a handle may be used by one
 * thread at a time, and distinct handles by distinct threads at once.
 * delegate_run_interrupt, delegate_scheduler_cancel and delegate_server_drain
 * are safe from any thread, while other threads wait.
 */
#ifndef DELEGATE_C_H_
#define DELEGATE_C_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define DELEGATE_C_EXPORT __attribute__((visibility("default")))
#else
#define DELEGATE_C_EXPORT
#endif

/* ------------------------------------------------------------- handles */

typedef struct delegate_env_t delegate_env_t;
typedef struct delegate_config_t delegate_config_t;
typedef struct delegate_policy_t delegate_policy_t;
typedef struct delegate_registry_t delegate_registry_t;
typedef struct delegate_stage_t delegate_stage_t;
typedef struct delegate_scheduler_t delegate_scheduler_t;
typedef struct delegate_run_t delegate_run_t;
typedef struct delegate_result_t delegate_result_t;
typedef struct delegate_log_line_t delegate_log_line_t;
typedef struct delegate_stage_context_t delegate_stage_context_t;
typedef struct delegate_step_context_t delegate_step_context_t;
typedef struct delegate_server_options_t delegate_server_options_t;
typedef struct delegate_server_t delegate_server_t;

/* Step and stage status (a stage is never SKIPPED). */
enum {
  DELEGATE_STATUS_SUCCESS = 0,
  DELEGATE_STATUS_FAILURE = 1,
  DELEGATE_STATUS_TIMEOUT = 2,
  DELEGATE_STATUS_SKIPPED = 3,
  DELEGATE_STATUS_CANCELLED = 4
};

/* Log line streams. */
enum {
  DELEGATE_STREAM_STDOUT = 0,
  DELEGATE_STREAM_STDERR = 1,
  DELEGATE_STREAM_SYSTEM = 2 /* written by the delegate or an executor */
};

/* What a configuration must hold (delegate_config_load). */
enum {
  DELEGATE_CONFIG_LOCAL = 0, /* running stages here: nothing is required */
  DELEGATE_CONFIG_SERVER = 1 /* a manager connection: account, token, URL */
};

/* ------------------------------------------------------ memory, version */

/* Releases a string or message the library allocated. NULL: nothing. */
DELEGATE_C_EXPORT void delegate_free(void* ptr);

/* The library's version, as delegate::Version() ("0.1.0"). The string is
 * static. */
DELEGATE_C_EXPORT const char* delegate_version(void);
DELEGATE_C_EXPORT int delegate_version_major(void);
DELEGATE_C_EXPORT int delegate_version_minor(void);
DELEGATE_C_EXPORT int delegate_version_patch(void);

/* "SUCCESS", "FAILURE", "TIMEOUT", "SKIPPED", "CANCELLED"; NULL for any
 * other value. Static. */
DELEGATE_C_EXPORT const char* delegate_status_name(int status);

/* ---------------------------------------------------------- environment */

/* Variables as name -> value: the process environment, an env file, or
 * set one by one. */
DELEGATE_C_EXPORT delegate_env_t* delegate_env_create(void);
/* A copy of the process environment (environ) as it is now. */
DELEGATE_C_EXPORT delegate_env_t* delegate_env_from_process(void);
/* Reads KEY=VALUE lines: blank lines and '#' comments are skipped, a
 * leading "export " is dropped, values may be quoted. Errors name the file
 * and the line number, never the line's value. */
DELEGATE_C_EXPORT delegate_env_t* delegate_env_read_file(const char* path,
                                                         char** errptr);
/* Sets (or replaces) one variable. An empty name, or one with '=' in it,
 * is an error (which quotes at most the part before '=', never what
 * follows it). */
DELEGATE_C_EXPORT void delegate_env_set(delegate_env_t* env, const char* name,
                                        const char* value, char** errptr);
/* The value, or NULL when the name is not set. Borrowed until the variable
 * is set again or the env is destroyed. */
DELEGATE_C_EXPORT const char* delegate_env_get(const delegate_env_t* env,
                                               const char* name);
DELEGATE_C_EXPORT void delegate_env_destroy(delegate_env_t* env);

/* ------------------------------------------------------- configuration */

/* The delegate's configuration, read as `delegate` reads it (README
 * "Configuration": HARNESS_ACCOUNT_ID, HARNESS_TOKEN, HARNESS_URL,
 * HARNESS_NAME, MAX_STAGES, HARNESS_WORKDIR, ... and their aliases).
 * `process` NULL: the process environment; `file` NULL: no env file;
 * `process` wins over `file` for the same name. `need` is
 * DELEGATE_CONFIG_LOCAL or DELEGATE_CONFIG_SERVER. An error is one line
 * naming the variable, for example "MAX_STAGES: expected a positive
 * integer, got 'ten'"; the token never appears. */
DELEGATE_C_EXPORT delegate_config_t* delegate_config_load(
    const delegate_env_t* process, const delegate_env_t* file, int need,
    char** errptr);
/* name = value lines for people (the token shows as "<set>" or "<unset>").
 * Free with delegate_free. */
DELEGATE_C_EXPORT char* delegate_config_dump(const delegate_config_t* config);
/* HARNESS_NAME (default "harness-delegate"). Borrowed. */
DELEGATE_C_EXPORT const char* delegate_config_name(
    const delegate_config_t* config);
/* Warnings for the log (two aliases set to different values, ...). */
DELEGATE_C_EXPORT size_t
delegate_config_warning_count(const delegate_config_t* config);
/* Borrowed; NULL when i is out of range. */
DELEGATE_C_EXPORT const char* delegate_config_warning(
    const delegate_config_t* config, size_t i);
DELEGATE_C_EXPORT void delegate_config_destroy(delegate_config_t* config);

/* The operator policy from DELEGATE_POLICY_* (README "Operator policy").
 * `env` NULL: the process environment. */
DELEGATE_C_EXPORT delegate_policy_t* delegate_policy_load(
    const delegate_env_t* env, char** errptr);
DELEGATE_C_EXPORT void delegate_policy_destroy(delegate_policy_t* policy);

/* ------------------------------------------------------------ registry */

/* Executors by platform name, and manager connections by scheme. A
 * scheduler or server made from a registry keeps what it needs of it: the
 * registry may be destroyed before them. */
DELEGATE_C_EXPORT delegate_registry_t* delegate_registry_create(void);
DELEGATE_C_EXPORT void delegate_registry_destroy(delegate_registry_t* registry);

/* Registers what ships with the library, configured from `config` and
 * `env` (NULL: the process environment): the executors "host", "docker",
 * "local", "ecs-fargate", "ecs-ec2", and the manager connections "harness",
 * "grpc", "grpcs". Nothing is contacted here. Errors name the variable of a
 * malformed value, or the platform name already taken. */
DELEGATE_C_EXPORT void delegate_registry_register_builtins(
    delegate_registry_t* registry, const delegate_config_t* config,
    const delegate_env_t* env, char** errptr);

/* Registers an executor written in C as platform `platform` (a stage
 * selects it with `platform: NAME`). For each stage: `initialize` once,
 * then `execute` once per step in order, then `cleanup` once whenever
 * initialize was called, whatever it or the steps did; all on the same
 * scheduler worker thread. Stages run at once call them from several
 * threads with the same `state`. `initialize` and `cleanup` may be NULL
 * (nothing to do). `destructor(state)` runs once, when the registry and
 * every scheduler, run and server made from it are gone, or at once when
 * registering fails (an empty or taken name, a NULL execute). */
DELEGATE_C_EXPORT void delegate_registry_register_executor(
    delegate_registry_t* registry, const char* platform, void* state,
    void (*destructor)(void* state),
    void (*initialize)(void* state, delegate_stage_context_t* ctx),
    void (*execute)(void* state, delegate_step_context_t* ctx),
    void (*cleanup)(void* state, delegate_stage_context_t* ctx), char** errptr);

/* ------------------------------------------- writing a C executor: stage */

/* A context is valid only during the callback it is given to. */

/* The stage transaction's id (unique per delegate), the stage's name and
 * its number of steps. Borrowed. */
DELEGATE_C_EXPORT const char* delegate_stage_context_task_id(
    const delegate_stage_context_t* ctx);
DELEGATE_C_EXPORT const char* delegate_stage_context_stage_name(
    const delegate_stage_context_t* ctx);
DELEGATE_C_EXPORT size_t
delegate_stage_context_step_count(const delegate_stage_context_t* ctx);
/* A pointer of the executor's own for this stage: set in initialize, read
 * in the steps and cleanup (delegate_step_context_stage gives the step's
 * stage context). NULL until set. The executor frees it in cleanup. */
DELEGATE_C_EXPORT void delegate_stage_context_set_data(
    delegate_stage_context_t* ctx, void* data);
DELEGATE_C_EXPORT void* delegate_stage_context_data(
    const delegate_stage_context_t* ctx);
/* Writes one stage-level log line (secrets masked, like all output). */
DELEGATE_C_EXPORT void delegate_stage_context_log(delegate_stage_context_t* ctx,
                                                  const char* line);
/* Makes initialize (or cleanup) fail with this message: a failed
 * initialize fails the stage ("initialize: MESSAGE") and skips its steps;
 * cleanup still runs. */
DELEGATE_C_EXPORT void delegate_stage_context_fail(
    delegate_stage_context_t* ctx, const char* message);

/* -------------------------------------------- writing a C executor: step */

/* The step as it runs: secrets substituted, the stage env merged under its
 * own. Borrowed. */
DELEGATE_C_EXPORT const char* delegate_step_context_id(
    const delegate_step_context_t* ctx);
DELEGATE_C_EXPORT const char* delegate_step_context_name(
    const delegate_step_context_t* ctx);
/* "" for a step without an image. */
DELEGATE_C_EXPORT const char* delegate_step_context_image(
    const delegate_step_context_t* ctx);
/* Position in the stage's steps, from 0. */
DELEGATE_C_EXPORT size_t
delegate_step_context_index(const delegate_step_context_t* ctx);
DELEGATE_C_EXPORT size_t
delegate_step_context_command_count(const delegate_step_context_t* ctx);
/* NULL when i is out of range. */
DELEGATE_C_EXPORT const char* delegate_step_context_command(
    const delegate_step_context_t* ctx, size_t i);
/* The value of the step's variable `name`, or NULL. */
DELEGATE_C_EXPORT const char* delegate_step_context_env(
    const delegate_step_context_t* ctx, const char* name);
/* The output names the step declares (`outputs:`). */
DELEGATE_C_EXPORT size_t
delegate_step_context_output_count(const delegate_step_context_t* ctx);
DELEGATE_C_EXPORT const char* delegate_step_context_output_name(
    const delegate_step_context_t* ctx, size_t i);
/* The stage this step belongs to (for its data). */
DELEGATE_C_EXPORT delegate_stage_context_t* delegate_step_context_stage(
    delegate_step_context_t* ctx);

/* Step output: raw bytes on DELEGATE_STREAM_STDOUT, _STDERR or _SYSTEM
 * (lines from the executor rather than the step's process), split into
 * lines and masked by the library; a partial last line is held until more
 * comes or the step ends. Any other `stream` value writes nothing. */
DELEGATE_C_EXPORT void delegate_step_context_write(delegate_step_context_t* ctx,
                                                   int stream, const char* data,
                                                   size_t len);
/* One whole line on DELEGATE_STREAM_SYSTEM. */
DELEGATE_C_EXPORT void delegate_step_context_log(delegate_step_context_t* ctx,
                                                 const char* line);

/* The step's result. By default it succeeds with no exit code. An exit code
 * other than 0 fails it ("exit status N") unless a failure message was
 * set; delegate_step_context_fail fails it with that message. A step that
 * returns after a cancel or its deadline without failing is reported
 * CANCELLED or TIMEOUT. */
DELEGATE_C_EXPORT void delegate_step_context_set_exit_code(
    delegate_step_context_t* ctx, int exit_code);
DELEGATE_C_EXPORT void delegate_step_context_set_output(
    delegate_step_context_t* ctx, const char* name, const char* value);
DELEGATE_C_EXPORT void delegate_step_context_fail(delegate_step_context_t* ctx,
                                                  const char* message);

/* Whether the step must stop now: DELEGATE_STATUS_CANCELLED (cancel or
 * shutdown), DELEGATE_STATUS_TIMEOUT (its or the stage's deadline has
 * passed), or 0 while it may go on. An executor doing long work polls it,
 * or waits with delegate_step_context_wait. */
DELEGATE_C_EXPORT int delegate_step_context_stop_reason(
    const delegate_step_context_t* ctx);
/* Blocks until the step must stop or `timeout_ms` has passed (negative:
 * no timeout, only the step's stop or deadline ends it); returns
 * delegate_step_context_stop_reason then. */
DELEGATE_C_EXPORT int delegate_step_context_wait(
    const delegate_step_context_t* ctx, int64_t timeout_ms);

/* --------------------------------------------------------------- stage */

/* Parses a stage document: JSON when the first non-blank character is '{',
 * YAML otherwise. On failure the message lists every problem found, one per
 * line in file order, as "SOURCE:LINE:COL: PATH: what is wrong and what is
 * expected". `source` names the text in messages (NULL: "stage"). */
DELEGATE_C_EXPORT delegate_stage_t* delegate_stage_parse(const char* text,
                                                         size_t len,
                                                         const char* source,
                                                         char** errptr);
/* Reads and parses a file; the messages name the path. */
DELEGATE_C_EXPORT delegate_stage_t* delegate_stage_load_file(const char* path,
                                                             char** errptr);
/* Borrowed. */
DELEGATE_C_EXPORT const char* delegate_stage_name(
    const delegate_stage_t* stage);
DELEGATE_C_EXPORT const char* delegate_stage_platform(
    const delegate_stage_t* stage);
DELEGATE_C_EXPORT size_t
delegate_stage_step_count(const delegate_stage_t* stage);
DELEGATE_C_EXPORT void delegate_stage_destroy(delegate_stage_t* stage);

/* Everything checked before a stage runs, as a scheduler checks it when it
 * is submitted: the platform is registered, every ${{secrets.ID}} is
 * defined, the platform and `policy` (NULL: none) allow its volumes and
 * security contexts, and the platform's executor accepts it. Runs nothing.
 * The message lists every problem, one per line. */
DELEGATE_C_EXPORT void delegate_validate(const delegate_registry_t* registry,
                                         const delegate_stage_t* stage,
                                         const delegate_policy_t* policy,
                                         char** errptr);

/* ----------------------------------------------------------- scheduler */

/* Runs stages on the registry's executors: MAX_STAGES and HARNESS_NAME from
 * `config` (NULL: defaults, no limit), every stage checked against `policy`
 * (NULL: none). */
DELEGATE_C_EXPORT delegate_scheduler_t* delegate_scheduler_create(
    delegate_registry_t* registry, const delegate_config_t* config,
    const delegate_policy_t* policy, char** errptr);

/* Submits a copy of `stage` under `task_id` (NULL: one is made; it must be
 * unique among the scheduler's recent ones) and returns at once. A refused
 * stage is an error listing every problem, as delegate_validate does.
 *
 * `on_line` (may be NULL) receives every log line of the stage (init, each
 * step, cleanup), masked, in order: lines of one step by their number.
 * It is called on a library thread (a scheduler worker or an executor's
 * output reader), one call at a time per run, in order, and must not
 * block for long: the step's output waits for it. `destructor(state)` runs once, after the last line, by the time
 * delegate_run_wait or delegate_run_destroy returns (at once when this call
 * fails).
 *
 * Free the run with delegate_run_destroy. */
DELEGATE_C_EXPORT delegate_run_t* delegate_scheduler_submit(
    delegate_scheduler_t* scheduler, const delegate_stage_t* stage,
    const char* task_id, void* state, void (*destructor)(void* state),
    void (*on_line)(void* state, const delegate_log_line_t* line),
    char** errptr);

/* delegate_scheduler_submit, then delegate_run_wait: blocks until the stage
 * has been cleaned up. Free the result with delegate_result_destroy. */
DELEGATE_C_EXPORT delegate_result_t* delegate_scheduler_run(
    delegate_scheduler_t* scheduler, const delegate_stage_t* stage,
    const char* task_id, void* state, void (*destructor)(void* state),
    void (*on_line)(void* state, const delegate_log_line_t* line),
    char** errptr);

/* Cancels a queued or running stage by its task id: its current step is
 * stopped, the rest skipped, cleanup run, and its result is CANCELLED
 * ("cancelled"). An error when no such stage is queued or running.
 * Thread-safe. */
DELEGATE_C_EXPORT void delegate_scheduler_cancel(
    delegate_scheduler_t* scheduler, const char* task_id, char** errptr);

/* Takes no new stage; lets the running ones go on for up to `drain_ms`,
 * then cancels them; returns once every stage has been cleaned up. */
DELEGATE_C_EXPORT void delegate_scheduler_shutdown(
    delegate_scheduler_t* scheduler, int64_t drain_ms);

/* delegate_scheduler_shutdown(scheduler, 0) and frees it. Runs not yet
 * destroyed stay valid. */
DELEGATE_C_EXPORT void delegate_scheduler_destroy(
    delegate_scheduler_t* scheduler);

/* ----------------------------------------------------------------- run */

/* Borrowed. */
DELEGATE_C_EXPORT const char* delegate_run_task_id(const delegate_run_t* run);
/* Blocks until the stage has been cleaned up; its result. May be called
 * again (each call returns a new result). Free with
 * delegate_result_destroy. NULL only when `run` is NULL or memory ran
 * out. */
DELEGATE_C_EXPORT delegate_result_t* delegate_run_wait(delegate_run_t* run);
/* Stops the stage, gracefully first: the first call lets it run for up to
 * `drain_ms` more (steps and cleanup), then cancels it as a delegate
 * shutting down; a later call cancels it at once (so does the first when
 * no thread can be started for the drain). Returns at once; 0 when the
 * stage had already finished, 1 otherwise. Thread-safe (until
 * delegate_run_destroy). */
DELEGATE_C_EXPORT int delegate_run_interrupt(delegate_run_t* run,
                                             int64_t drain_ms);
/* Cancels the stage if it is still running, waits for its cleanup, and
 * frees the run. */
DELEGATE_C_EXPORT void delegate_run_destroy(delegate_run_t* run);

/* ------------------------------------------------------------ log line */

/* Valid during the on_line call only; strings are borrowed. */
DELEGATE_C_EXPORT const char* delegate_log_line_task_id(
    const delegate_log_line_t* line);
/* "" for a stage-level line (initialize, cleanup). */
DELEGATE_C_EXPORT const char* delegate_log_line_step_id(
    const delegate_log_line_t* line);
/* DELEGATE_STREAM_* */
DELEGATE_C_EXPORT int delegate_log_line_stream(const delegate_log_line_t* line);
/* 1-based, per task and step. */
DELEGATE_C_EXPORT uint64_t
delegate_log_line_number(const delegate_log_line_t* line);
/* The line without its newline, masked, NUL-terminated; `len` (may be
 * NULL) gets its length in bytes. */
DELEGATE_C_EXPORT const char* delegate_log_line_text(
    const delegate_log_line_t* line, size_t* len);
/* 1 when an over-long line was split and more of it follows. */
DELEGATE_C_EXPORT int delegate_log_line_partial(
    const delegate_log_line_t* line);
/* When the line was written, in microseconds since the Unix epoch. */
DELEGATE_C_EXPORT int64_t
delegate_log_line_time_us(const delegate_log_line_t* line);

/* -------------------------------------------------------------- result */

/* DELEGATE_STATUS_* of the stage; never SKIPPED. */
DELEGATE_C_EXPORT int delegate_result_status(const delegate_result_t* result);
/* Why the stage failed apart from its steps: an initialize or cleanup
 * failure, the stage's timeout, or why it was cancelled; "" when there is
 * no such reason (a step's failure is that step's error). Borrowed. */
DELEGATE_C_EXPORT const char* delegate_result_error(
    const delegate_result_t* result);
/* The task id the stage ran under (given or made at submit). Borrowed. */
DELEGATE_C_EXPORT const char* delegate_result_task_id(
    const delegate_result_t* result);
DELEGATE_C_EXPORT size_t
delegate_result_step_count(const delegate_result_t* result);
/* Per step, i from 0. Borrowed; NULL (or -1) when i is out of range. */
DELEGATE_C_EXPORT const char* delegate_result_step_id(
    const delegate_result_t* result, size_t i);
DELEGATE_C_EXPORT int delegate_result_step_status(
    const delegate_result_t* result, size_t i);
/* -1 when no exit code is known (no process ran, or it was killed). */
DELEGATE_C_EXPORT int delegate_result_step_exit_code(
    const delegate_result_t* result, size_t i);
/* The step's error, one line for people: why it failed, timed out, was
 * cancelled or skipped; "" when it succeeded. Borrowed; NULL when i is out
 * of range. */
DELEGATE_C_EXPORT const char* delegate_result_step_error(
    const delegate_result_t* result, size_t i);
/* NULL when the step has no such output. */
DELEGATE_C_EXPORT const char* delegate_result_step_output(
    const delegate_result_t* result, size_t i, const char* name);
/* {"stage", "status", "error", "duration_ms", "steps": [{"id", "status",
 * "exit_code", "error", "outputs", "duration_ms"}]}, as `delegate exec
 * --result` writes it. Free with delegate_free. */
DELEGATE_C_EXPORT char* delegate_result_json(const delegate_result_t* result);
/* A table for people. Free with delegate_free. */
DELEGATE_C_EXPORT char* delegate_result_summary(
    const delegate_result_t* result);
DELEGATE_C_EXPORT void delegate_result_destroy(delegate_result_t* result);

/* -------------------------------------------------------------- server */

/* `delegate server` in this process: /health, /ready and /metrics on
 * HTTPS_BIND, the executors' start-up hooks, a manager connection and,
 * when asked, RuntimeService, until drained. */
DELEGATE_C_EXPORT delegate_server_options_t* delegate_server_options_create(
    void);
/* The manager: "grpc://HOST:PORT" picks the connection registered for the
 * scheme; an http(s) URL, or NULL / "" (the config's HARNESS_URL), the
 * Harness one; "none": RuntimeService only. */
DELEGATE_C_EXPORT void delegate_server_options_set_manager(
    delegate_server_options_t* options, const char* manager);
/* Serves RuntimeService on "HOST:PORT" (loopback; port 0 for a free one) or
 * "unix:PATH"; NULL or "": not served. */
DELEGATE_C_EXPORT void delegate_server_options_set_runtime_listen(
    delegate_server_options_t* options, const char* address);
/* PEM files for RuntimeService over TLS; client_ca (may be NULL) requires
 * client certificates. */
DELEGATE_C_EXPORT void delegate_server_options_set_runtime_tls(
    delegate_server_options_t* options, const char* cert_file,
    const char* key_file, const char* client_ca_file);
/* Whether to run the executors' start-up hooks (default 1). */
DELEGATE_C_EXPORT void delegate_server_options_set_start_executors(
    delegate_server_options_t* options, int start);
/* The server's own event log: one JSON object per line, without its
 * newline, to `on_event` instead of stdout. It is called from the
 * servers' threads, one call at a time for this callback, also when
 * several servers made from these options run at once. `destructor(state)`
 * runs once, when the options and every server made from them are
 * destroyed. */
DELEGATE_C_EXPORT void delegate_server_options_set_event_log(
    delegate_server_options_t* options, void* state,
    void (*destructor)(void* state),
    void (*on_event)(void* state, const char* json, size_t len));
DELEGATE_C_EXPORT void delegate_server_options_destroy(
    delegate_server_options_t* options);

/* A server from the registry's executors and manager connections (register
 * the built-ins first), `config` (load it with DELEGATE_CONFIG_SERVER for a
 * Harness manager) and `policy` (NULL: none). `options` (NULL: defaults)
 * is copied; the server shares its event log callback. */
DELEGATE_C_EXPORT delegate_server_t* delegate_server_create(
    delegate_registry_t* registry, const delegate_config_t* config,
    const delegate_policy_t* policy, delegate_server_options_t* options,
    char** errptr);
/* Starts serving on a thread of the server's own and returns at once. An
 * error when it was started before. */
DELEGATE_C_EXPORT void delegate_server_start(delegate_server_t* server,
                                             char** errptr);
/* What SIGTERM does to `delegate server`: takes no new stage, lets the
 * running ones finish, unregisters, stops. A second call cancels the
 * running stages. Returns at once; thread-safe; may come before start. */
DELEGATE_C_EXPORT void delegate_server_drain(delegate_server_t* server);
/* Blocks until the server has stopped: after a drain (no error), or when
 * the manager connection gave up (its error, for example a refused token),
 * or it could not start (an unusable HTTPS_BIND, manager or runtime
 * address). Returns at once when it was never started. */
DELEGATE_C_EXPORT void delegate_server_wait(delegate_server_t* server,
                                            char** errptr);
/* The port /health is served on once serving has started; 0 before. */
DELEGATE_C_EXPORT int delegate_server_ops_port(const delegate_server_t* server);
/* Drains the server if it runs, waits for it to stop, and frees it. */
DELEGATE_C_EXPORT void delegate_server_destroy(delegate_server_t* server);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* DELEGATE_C_H_ */

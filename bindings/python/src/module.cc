// The `delegate._delegate` extension: pybind11 bindings straight over the
// C++ API (README.md here says why not over a C ABI).
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/time.h"
#include "delegate/result.h"
#include "delegate/stage.h"
#include "delegate/stage_file.h"
#include "delegate/version.h"
#include "errors.h"
#include "gil.h"
#include "py_executor.h"
#include "pybind11/pybind11.h"
#include "pybind11/stl.h"
#include "runtime.h"
#include "server.h"
#include "stage_run.h"

namespace delegate::python {
namespace {
namespace py = pybind11;

std::optional<double> Seconds(const std::optional<absl::Duration>& d) {
  if (!d) return std::nullopt;
  return absl::ToDoubleSeconds(*d);
}

const char* StreamName(LogStream stream) {
  switch (stream) {
    case LogStream::kStdout:
      return "stdout";
    case LogStream::kStderr:
      return "stderr";
    case LogStream::kSystem:
      return "system";
  }
  return "stdout";
}

template <typename T>
T OrRaise(absl::StatusOr<T> value, ErrorKind kind = ErrorKind::kGeneral) {
  if (!value.ok()) Raise(value.status(), kind);
  return *std::move(value);
}

void OrRaise(const absl::Status& status, ErrorKind kind = ErrorKind::kGeneral) {
  if (!status.ok()) Raise(status, kind);
}

// Any Mapping of str to str (a dict, os.environ). TypeError names the
// problem, never a value.
std::optional<EnvMap> ToEnv(const py::object& env) {
  if (env.is_none()) return std::nullopt;
  if (!py::isinstance(env,
                      py::module_::import("collections.abc").attr("Mapping"))) {
    throw py::type_error(absl::StrCat(
        "env: expected a mapping of str to str (a dict, os.environ), got ",
        py::str(py::type::of(env).attr("__name__")).cast<std::string>()));
  }
  EnvMap out;
  for (py::handle item : env.attr("items")()) {
    py::tuple pair = py::reinterpret_borrow<py::object>(item);
    if (!py::isinstance<py::str>(pair[0])) {
      throw py::type_error("env: every variable name must be a str");
    }
    const std::string name = pair[0].cast<std::string>();
    if (!py::isinstance<py::str>(pair[1])) {
      throw py::type_error(
          absl::StrCat("env: ", name, ": the value must be a str"));
    }
    out[name] = pair[1].cast<std::string>();
  }
  return out;
}

// StepResult.outputs is a Python dict kept with the object (in its
// __dict__ under this key), so that edits in place stay: a plain
// std::map field would hand out a new copy on each read.
constexpr char kOutputsAttr[] = "_outputs";

py::object OutputsOf(py::object self) {
  py::dict attrs = self.attr("__dict__");
  if (!attrs.contains(kOutputsAttr)) {
    attrs[kOutputsAttr] = py::cast(self.cast<const StepResult&>().outputs);
  }
  return attrs[kOutputsAttr];
}

std::shared_ptr<StageRunHandle> StartRun(
    const std::shared_ptr<Runtime>& runtime, const Stage& stage,
    const std::optional<std::string>& task_id, bool logs, bool echo) {
  std::string id = task_id.value_or("");
  if (task_id && id.empty())
    throw py::value_error("task_id: must not be empty");
  Stage copy = stage;
  std::shared_ptr<RunState> state =
      OrRaise(WithoutGil([&] {
                return runtime->Start(std::move(copy), id, logs, echo);
              }),
              ErrorKind::kStage);
  return std::make_shared<StageRunHandle>(runtime, std::move(id),
                                          std::move(state));
}

void BindValues(py::module_& m) {
  py::enum_<StepStatus>(m, "Status", "How a step or a stage ended.")
      .value("SUCCESS", StepStatus::kSuccess)
      .value("FAILURE", StepStatus::kFailure)
      .value("TIMEOUT", StepStatus::kTimeout)
      .value("SKIPPED", StepStatus::kSkipped)
      .value("CANCELLED", StepStatus::kCancelled);

  py::class_<Step>(m, "Step", "One step of a stage (read-only).")
      .def_readonly("id", &Step::id)
      .def_readonly("name", &Step::name)
      .def_readonly("image", &Step::image)
      .def_readonly("commands", &Step::commands)
      .def_readonly("entrypoint", &Step::entrypoint)
      .def_readonly("args", &Step::args)
      .def_readonly("envs", &Step::envs)
      .def_readonly("working_dir", &Step::working_dir)
      .def_property_readonly(
          "timeout", [](const Step& s) { return Seconds(s.timeout); },
          "Seconds, or None.")
      .def_readonly("outputs", &Step::outputs)
      .def_readonly("continue_on_error", &Step::continue_on_error)
      .def("__repr__", [](const Step& s) {
        return absl::StrCat("<delegate.Step ", s.id, ">");
      });

  py::class_<Stage>(m, "Stage",
                    "A stage: parsed from YAML or JSON (Stage.load, "
                    "Stage.parse). Read-only; its secrets are not shown.")
      .def_static(
          "load",
          [](const std::string& path) {
            return OrRaise(LoadStageFile(path), ErrorKind::kStage);
          },
          py::arg("path"),
          "Reads a stage file. StageError lists every problem, one per "
          "line; FileNotFoundError / PermissionError name the path.")
      .def_static(
          "parse",
          [](const std::string& text, const std::string& source) {
            return OrRaise(ParseStage(text, source), ErrorKind::kStage);
          },
          py::arg("text"), py::arg("source") = "stage",
          "Parses a stage document (JSON when it starts with '{', YAML "
          "otherwise). StageError lists every problem as "
          "'<source>:<line>:<col>: <field>: <what is wrong>'.")
      .def_readonly("name", &Stage::name)
      .def_readonly("platform", &Stage::platform)
      .def_readonly("env", &Stage::env)
      .def_readonly("steps", &Stage::steps)
      .def_readonly("tags", &Stage::tags)
      .def_property_readonly(
          "timeout", [](const Stage& s) { return Seconds(s.timeout); },
          "Seconds, or None.")
      .def_property_readonly(
          "secret_ids",
          [](const Stage& s) {
            std::vector<std::string> ids;
            for (const auto& [id, value] : s.secrets) ids.push_back(id);
            return ids;
          },
          "The ids of its secrets (never their values).")
      .def("__repr__", [](const Stage& s) {
        return absl::StrCat("<delegate.Stage '", s.name,
                            "' platform=", s.platform,
                            " steps=", s.steps.size(), ">");
      });

  py::class_<StepResult>(
      m, "StepResult", py::dynamic_attr(),
      "A step's result; also what a Python executor's execute() may return.")
      .def(py::init([](StepStatus status, std::optional<int> exit_code,
                       std::string error,
                       std::map<std::string, std::string> outputs) {
             StepResult r;
             r.status = status;
             r.exit_code = exit_code;
             r.error = std::move(error);
             r.outputs = std::move(outputs);
             return r;
           }),
           py::kw_only(), py::arg("status") = StepStatus::kSuccess,
           py::arg("exit_code") = std::nullopt, py::arg("error") = "",
           py::arg("outputs") = std::map<std::string, std::string>{})
      .def_readwrite("id", &StepResult::id)
      .def_readwrite("status", &StepResult::status)
      .def_readwrite("exit_code", &StepResult::exit_code)
      .def_readwrite("error", &StepResult::error)
      .def_property(
          "outputs", &OutputsOf,
          [](py::object self, py::object value) {
            if (!py::isinstance<py::dict>(value)) value = py::dict(value);
            self.attr("__dict__")[kOutputsAttr] = value;
          },
          "A dict of output name -> value; edit it in place or replace it.")
      .def_property_readonly(
          "duration",
          [](const StepResult& r) { return absl::ToDoubleSeconds(r.duration); },
          "Seconds.")
      .def("__repr__", [](const StepResult& r) {
        return absl::StrCat("<delegate.StepResult ", r.id, " ",
                            StepStatusName(r.status), ">");
      });

  py::class_<StageResult>(m, "StageResult", "What a stage came to.")
      .def_readonly("task_id", &StageResult::task_id)
      .def_readonly("stage", &StageResult::stage)
      .def_readonly("status", &StageResult::status)
      .def_readonly("error", &StageResult::error)
      .def_readonly("steps", &StageResult::steps)
      .def_property_readonly(
          "duration",
          [](const StageResult& r) {
            return absl::ToDoubleSeconds(r.duration);
          },
          "Seconds.")
      .def_property_readonly(
          "ok",
          [](const StageResult& r) { return r.status == StepStatus::kSuccess; },
          "True when every step succeeded.")
      .def("json", &StageResultToJson,
           "The result as JSON (StageResultToJson): stage, status, error, "
           "duration_ms and steps.")
      .def("summary", &FormatSummary,
           "A table for people: one row per step, then the stage.")
      .def("__repr__", [](const StageResult& r) {
        return absl::StrCat("<delegate.StageResult ", r.stage, " ",
                            StepStatusName(r.status), ">");
      });

  py::class_<LogRecord>(m, "LogLine", "One line of a stage's log.")
      .def_readonly("step", &LogRecord::step,
                    "The step's id; '' for stage-level lines (init, cleanup).")
      .def_property_readonly(
          "stream", [](const LogRecord& l) { return StreamName(l.stream); },
          "'stdout', 'stderr' or 'system' (written by the delegate).")
      .def_property_readonly(
          "time",
          [](const LogRecord& l) {
            return absl::ToDoubleSeconds(l.time - absl::UnixEpoch());
          },
          "Seconds since the epoch.")
      .def_readonly("number", &LogRecord::number,
                    "1-based within the step (or the stage-level lines).")
      .def_readonly("text", &LogRecord::text,
                    "Without its newline; secrets masked.")
      .def_readonly("partial", &LogRecord::partial,
                    "Set on every piece but the last of an over-long line.")
      .def("__repr__", [](const LogRecord& l) {
        return absl::StrCat("<delegate.LogLine ", l.step, ":", l.number, " ",
                            StreamName(l.stream), ">");
      });
}

void BindRuns(py::module_& m) {
  py::class_<LogIterator>(m, "LogIterator")
      .def("__iter__", [](py::object self) { return self; })
      .def("__next__", &LogIterator::Next);

  py::class_<StageRunHandle, std::shared_ptr<StageRunHandle>>(
      m, "StageRun",
      "A submitted stage (Runtime.start). Dropping it does not stop the "
      "stage; only its log lines are no longer kept.")
      .def_property_readonly("task_id", &StageRunHandle::task_id)
      .def_property_readonly(
          "done", [](const StageRunHandle& r) { return r.state()->done(); },
          "True once the stage has been cleaned up.")
      .def_property_readonly(
          "result", [](const StageRunHandle& r) { return r.state()->result(); },
          "The StageResult once done, else None.")
      .def("wait", &StageRunHandle::Wait, py::arg("timeout") = std::nullopt,
           "Blocks (without the GIL) until the stage is done and returns its "
           "StageResult, or None after `timeout` seconds. Ctrl-C (or any "
           "exception from a signal handler) cancels the stage, waits for "
           "its cleanup and is re-raised.")
      .def("cancel", &StageRunHandle::Cancel,
           "Cancels the stage (from any thread): its step is stopped, the "
           "rest skipped, cleanup run. False when it had already finished.")
      .def(
          "logs",
          [](const std::shared_ptr<StageRunHandle>& r) {
            return LogIterator(r);
          },
          "An iterator over the stage's log lines, in order, each once; it "
          "ends when the stage is done and every line was taken. Waits "
          "without the GIL; Ctrl-C cancels the stage as in wait().")
      .def("__enter__", [](py::object self) { return self; })
      .def(
          "__exit__",
          [](StageRunHandle& r, py::object type, py::object, py::object) {
            // As subprocess.Popen: leaving the block waits for the stage;
            // leaving it by an exception cancels the stage first.
            if (type.is_none()) {
              r.Wait(std::nullopt);
            } else if (!r.state()->done()) {
              WithoutGil([&] { r.CancelAndWait(); });
            }
          },
          "Waits for the stage; when the block raised, cancels it first.");
}

void BindRuntime(py::module_& m) {
  py::class_<Runtime, std::shared_ptr<Runtime>>(
      m, "Runtime",
      "Runs stages in this process: the delegate's configuration (from "
      "`env`, default os.environ), the built-in executors (host, docker, "
      "ecs-*) and Python ones, and one scheduler.")
      .def(py::init([](const py::object& env, std::optional<int> max_stages,
                       std::optional<std::string> workdir,
                       std::optional<std::string> name) {
             RuntimeOptions options;
             options.env = ToEnv(env);
             options.max_stages = max_stages;
             options.workdir = std::move(workdir);
             options.name = std::move(name);
             return OrRaise(Runtime::Create(std::move(options)));
           }),
           py::arg("env") = py::none(), py::kw_only(),
           py::arg("max_stages") = std::nullopt,
           py::arg("workdir") = std::nullopt, py::arg("name") = std::nullopt)
      .def(
          "register_executor",
          [](Runtime& r, std::string name, py::object factory) {
            OrRaise(r.RegisterExecutor(std::move(name), std::move(factory)));
          },
          py::arg("name"), py::arg("factory"),
          "Adds a platform: `factory()` (usually a class) makes one executor "
          "per stage, with execute(step) and optionally initialize(stage), "
          "cleanup(stage), validate(stage).")
      .def(
          "validate",
          [](const Runtime& r, const Stage& stage) {
            OrRaise(WithoutGil([&] { return r.Validate(stage); }),
                    ErrorKind::kStage);
          },
          py::arg("stage"),
          "The whole check a stage passes before it runs (platform, secrets, "
          "policy, the executor's own); StageError lists every problem.")
      .def("start", &StartRun, py::arg("stage"), py::kw_only(),
           py::arg("task_id") = std::nullopt, py::arg("logs") = true,
           py::arg("echo") = false,
           "Submits the stage and returns its StageRun at once. `logs`: keep "
           "its log lines for StageRun.logs(); `echo`: also print them to "
           "stdout. StageError when it cannot run.")
      .def(
          "run",
          [](const std::shared_ptr<Runtime>& r, const Stage& stage,
             std::optional<std::string> task_id, bool echo) {
            std::shared_ptr<StageRunHandle> run =
                StartRun(r, stage, task_id, /*logs=*/false, echo);
            try {
              return *run->Wait(std::nullopt);
            } catch (py::error_already_set& e) {
              // Interrupted: the stage was cancelled and cleaned up; its
              // result goes with the exception, as there is no handle.
              if (std::optional<StageResult> result = run->state()->result()) {
                e.value().attr("stage_result") = py::cast(*result);
              }
              throw;
            }
          },
          py::arg("stage"), py::kw_only(), py::arg("task_id") = std::nullopt,
          py::arg("echo") = false,
          "Runs the stage to its end and returns its StageResult; blocks "
          "without the GIL. Ctrl-C cancels it, waits for its cleanup and "
          "re-raises KeyboardInterrupt, with the StageResult as its "
          ".stage_result.")
      .def(
          "cancel",
          [](Runtime& r, const std::string& task_id) {
            return WithoutGil([&] { return r.Cancel(task_id).ok(); });
          },
          py::arg("task_id"),
          "Cancels a queued or running stage by id; False when there is "
          "none.")
      .def(
          "close",
          [](Runtime& r, double drain) {
            WithoutGil(
                [&] { r.Shutdown(absl::Seconds(std::max(0.0, drain))); });
          },
          py::arg("drain") = 0.0,
          "Takes no new stages; lets running ones go on for up to `drain` "
          "seconds, then cancels them; returns once all are cleaned up.")
      .def_property_readonly(
          "executors",
          [](const Runtime& r) {
            return WithoutGil([&] { return r.executors(); });
          },
          "The registered platforms, sorted.")
      .def_property_readonly(
          "name", [](const Runtime& r) { return r.config().name; },
          "The delegate's name.")
      .def_property_readonly("stats",
                             [](const Runtime& r) {
                               const SchedulerStats s =
                                   WithoutGil([&] { return r.stats(); });
                               py::dict d;
                               d["queued"] = s.queued;
                               d["running"] = s.running;
                               d["completed"] = s.completed;
                               return d;
                             })
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__",
           [](Runtime& r, py::args) { WithoutGil([&] { r.Close(); }); });
}

// DelegateServer's errors name the `delegate server` flags; here they are
// the Server's parameters.
absl::Status WithParameterNames(const absl::Status& status) {
  if (status.ok()) return status;
  std::string message(status.message());
  for (const auto& [flag, parameter] :
       {std::pair{"--runtime-listen", "runtime_listen"},
        {"--runtime-tls-cert", "runtime_tls_cert_file"},
        {"--runtime-tls-key", "runtime_tls_key_file"},
        {"--runtime-client-ca", "runtime_client_ca_file"},
        {"--manager", "manager"}}) {
    message = absl::StrReplaceAll(message, {{flag, parameter}});
  }
  return absl::Status(status.code(), message);
}

void BindServer(py::module_& m) {
  py::class_<Server, std::shared_ptr<Server>>(
      m, "Server",
      "`delegate server` in this process (DelegateServer): the ops "
      "endpoints, a manager connection and/or RuntimeService, on a thread "
      "of its own.")
      .def(py::init([](std::string manager, std::string runtime_listen,
                       const py::object& env,
                       std::optional<std::string> ops_bind,
                       std::string tls_cert, std::string tls_key,
                       std::string client_ca, bool start_executors,
                       bool echo_events, std::optional<int> max_stages,
                       std::optional<std::string> workdir,
                       std::optional<std::string> name) {
             ServerOptions o;
             o.runtime.env = ToEnv(env);
             o.runtime.max_stages = max_stages;
             o.runtime.workdir = std::move(workdir);
             o.runtime.name = std::move(name);
             o.server.manager = std::move(manager);
             o.server.runtime_listen = std::move(runtime_listen);
             o.ops_bind = std::move(ops_bind);
             o.server.runtime_tls_cert_file = std::move(tls_cert);
             o.server.runtime_tls_key_file = std::move(tls_key);
             o.server.runtime_client_ca_file = std::move(client_ca);
             o.server.start_executors = start_executors;
             o.echo_events = echo_events;
             return OrRaise(Server::Create(std::move(o)));
           }),
           py::arg("manager") = "", py::kw_only(),
           py::arg("runtime_listen") = "", py::arg("env") = py::none(),
           py::arg("ops_bind") = std::nullopt,
           py::arg("runtime_tls_cert_file") = "",
           py::arg("runtime_tls_key_file") = "",
           py::arg("runtime_client_ca_file") = "",
           py::arg("start_executors") = true, py::arg("echo_events") = false,
           py::arg("max_stages") = std::nullopt,
           py::arg("workdir") = std::nullopt, py::arg("name") = std::nullopt)
      .def(
          "register_executor",
          [](Server& s, std::string name, py::object factory) {
            OrRaise(s.RegisterExecutor(std::move(name), std::move(factory)));
          },
          py::arg("name"), py::arg("factory"),
          "As Runtime.register_executor; before start().")
      .def(
          "start",
          [](const std::shared_ptr<Server>& s, double timeout) {
            OrRaise(WithoutGil([&] { return s->Start(); }));
            const bool started = WaitInterruptibly(
                [&](absl::Duration slice) { return s->WaitStarted(slice); },
                absl::Now() + absl::Seconds(timeout), [&] { s->Close(); });
            if (std::optional<absl::Status> ended = s->ended()) {
              OrRaise(WithParameterNames(*ended));
              throw py::value_error("the server stopped as it started");
            }
            if (!started) {
              WithoutGil([&] { s->Close(); });
              PyErr_SetString(PyExc_TimeoutError,
                              "the server did not start serving in time");
              throw py::error_already_set();
            }
          },
          py::arg("timeout") = 30.0,
          "Starts serving; returns once the ops endpoints (and "
          "RuntimeService, when asked for) listen. Raises what stopped it "
          "(ValueError naming the option for a bad one).")
      .def(
          "stop",
          [](const std::shared_ptr<Server>& s, bool cancel,
             std::optional<double> timeout) {
            WithoutGil([&] {
              s->Drain();
              if (cancel) s->Drain();
            });
            const absl::Time deadline =
                timeout ? absl::Now() + absl::Seconds(*timeout)
                        : absl::InfiniteFuture();
            if (!WaitInterruptibly(
                    [&](absl::Duration slice) { return s->WaitEnded(slice); },
                    deadline, [&] { s->Close(); })) {
              return false;
            }
            WithoutGil([&] { s->Close(); });  // joins the thread
            if (std::optional<absl::Status> ended = s->ended()) {
              OrRaise(WithParameterNames(*ended));
            }
            return true;
          },
          py::kw_only(), py::arg("cancel") = false,
          py::arg("timeout") = std::nullopt,
          "Drains: takes no new stages and lets running ones finish "
          "(`cancel`: cancels them), then stops serving. True once stopped; "
          "False when `timeout` seconds passed first. Raises the error the "
          "server ended with, if any.")
      .def(
          "wait",
          [](const std::shared_ptr<Server>& s, std::optional<double> timeout) {
            const absl::Time deadline =
                timeout ? absl::Now() + absl::Seconds(*timeout)
                        : absl::InfiniteFuture();
            return WaitInterruptibly(
                [&](absl::Duration slice) { return s->WaitEnded(slice); },
                deadline, [&] { s->Close(); });
          },
          py::arg("timeout") = std::nullopt,
          "Blocks until the server stops on its own (True) or `timeout` "
          "passes (False). Ctrl-C stops it, cancelling its stages, and is "
          "re-raised.")
      .def_property_readonly("running",
                             [](const Server& s) {
                               return WithoutGil([&] {
                                 return s.ops_port() > 0 &&
                                        !s.ended().has_value();
                               });
                             })
      .def_property_readonly(
          "ops_port",
          [](const Server& s) {
            return WithoutGil([&] { return s.ops_port(); });
          },
          "The port of /health, /ready and /metrics.")
      .def_property_readonly(
          "runtime_address",
          [](const Server& s) {
            return WithoutGil([&] { return s.runtime_address(); });
          },
          "Where RuntimeService listens ('' if not).")
      .def(
          "events",
          [](const Server& s) {
            return WithoutGil([&] { return s.events(); });
          },
          "The server's event log so far, as JSON lines.")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__",
           [](Server& s, py::args) { WithoutGil([&] { s.Close(); }); });
}

}  // namespace

PYBIND11_MODULE(_delegate, m) {
  m.doc() =
      "libdelegate: run CI stages from Python (see the delegate package).";
  RememberMainThread();
  RegisterExceptions(m);
  m.attr("__version__") = std::string(Version());
  m.attr("git_commit") = std::string(GitCommit());
  BindValues(m);
  BindExecutorContexts(m);
  BindRuns(m);
  BindRuntime(m);
  BindServer(m);
  // The package is the public name: reprs and pickling say delegate.X.
  for (const char* name :
       {"Status", "Step", "Stage", "StepResult", "StageResult", "LogLine",
        "LogIterator", "StageRun", "StageContext", "StepContext", "Runtime",
        "Server"}) {
    m.attr(name).attr("__module__") = "delegate";
  }
  m.def("_close_all", &CloseAll,
        "The atexit hook: cancels and joins every stage of every Runtime and "
        "Server while Python still works.");
  py::module_::import("atexit").attr("register")(m.attr("_close_all"));
}

}  // namespace delegate::python

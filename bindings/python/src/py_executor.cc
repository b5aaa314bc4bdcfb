#include "py_executor.h"

#include <optional>
#include <stop_token>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gil.h"
#include "pybind11/stl.h"

namespace delegate::python {
namespace py = pybind11;
namespace {

// The contexts given to Python point at the library's, which live only
// while the call runs: they are cut off when it returns.
class PyStageContext {
 public:
  explicit PyStageContext(const StageContext* ctx) : ctx_(ctx) {}
  const StageContext& get() const {
    if (ctx_ == nullptr) {
      throw std::runtime_error(
          "this StageContext was used after the call it was given to "
          "returned");
    }
    return *ctx_;
  }
  void Expire() { ctx_ = nullptr; }

 private:
  const StageContext* ctx_;
};

class PyStepContext {
 public:
  PyStepContext(const StepContext* ctx, std::shared_ptr<PyStageContext> stage)
      : ctx_(ctx), stage_(std::move(stage)) {}
  const StepContext& get() const {
    if (ctx_ == nullptr) {
      throw std::runtime_error(
          "this StepContext was used after the execute() call it was given "
          "to returned");
    }
    return *ctx_;
  }
  const std::shared_ptr<PyStageContext>& stage() const { return stage_; }
  void Expire() { ctx_ = nullptr; }

 private:
  const StepContext* ctx_;
  const std::shared_ptr<PyStageContext> stage_;
};

// Cuts the contexts off when the call returns, however it returns.
struct ExpireOnExit {
  std::shared_ptr<PyStageContext> stage;
  std::shared_ptr<PyStepContext> step;
  ~ExpireOnExit() {
    if (step) step->Expire();
    if (stage) stage->Expire();
  }
};

LogStream ParseStream(const std::string& name) {
  if (name == "stdout") return LogStream::kStdout;
  if (name == "stderr") return LogStream::kStderr;
  if (name == "system") return LogStream::kSystem;
  throw py::value_error(absl::StrCat(
      "stream: expected 'stdout', 'stderr' or 'system', got '", name, "'"));
}

void Write(OutputWriter& output, LogStream stream, const std::string& text) {
  WithoutGil([&] { output.Write(stream, text); });
}

std::optional<double> TimeLeft(absl::Time deadline, Clock& clock) {
  if (deadline == absl::InfiniteFuture()) return std::nullopt;
  return std::max(0.0, absl::ToDoubleSeconds(deadline - clock.Now()));
}

// "ValueError: bad input", for a result's one-line error.
std::string OneLine(const py::error_already_set& e) {
  std::string text = py::str(e.value());
  std::string name = py::str(e.type().attr("__name__"));
  const size_t newline = text.find('\n');
  if (newline != std::string::npos) text.resize(newline);
  return text.empty() ? name : absl::StrCat(name, ": ", text);
}

// Python's traceback, as system lines of the stage or step's log.
void WriteTraceback(const py::error_already_set& e, OutputWriter& output) {
  std::string text;
  try {
    py::object lines =
        py::module_::import("traceback")
            .attr("format_exception")(e.type(), e.value(), e.trace());
    for (py::handle line : lines) text += py::str(line).cast<std::string>();
  } catch (const py::error_already_set&) {
    return;  // the traceback is a courtesy
  }
  Write(output, LogStream::kSystem, text);
}

class PyExecutor final : public Executor {
 public:
  PyExecutor(std::shared_ptr<PyRef> factory, std::string platform)
      : factory_(std::move(factory)), platform_(std::move(platform)) {}

  absl::Status Validate(const Stage& stage) override {
    if (PythonGone()) return Gone();
    py::gil_scoped_acquire gil;
    try {
      const py::object& self = Instance();
      if (!py::hasattr(self, "validate")) return absl::OkStatus();
      self.attr("validate")(stage);
    } catch (const py::error_already_set& e) {
      // A ValueError (StageError) lists problems; anything else is one.
      std::string message =
          e.matches(PyExc_ValueError)
              ? py::str(e.value()).cast<std::string>()
              : absl::StrCat(platform_, ": validate raised ", OneLine(e));
      return absl::InvalidArgumentError(message);
    }
    return absl::OkStatus();
  }

  absl::Status Initialize(const StageContext& ctx) override {
    return StageCall("initialize", ctx);
  }

  StepResult Execute(const StepContext& ctx) override {
    StepResult result;
    if (PythonGone()) {
      result.status = StepStatus::kFailure;
      result.error = std::string(Gone().message());
      return result;
    }
    py::gil_scoped_acquire gil;
    ExpireOnExit contexts;
    contexts.stage = std::make_shared<PyStageContext>(&ctx.stage);
    contexts.step = std::make_shared<PyStepContext>(&ctx, contexts.stage);
    try {
      py::object returned = Instance().attr("execute")(contexts.step);
      return ToResult(returned);
    } catch (const py::error_already_set& e) {
      WriteTraceback(e, ctx.output);
      result.error = OneLine(e);
    } catch (const std::exception& e) {
      result.error = e.what();
    }
    result.status = StepStatus::kFailure;
    return result;
  }

  absl::Status Cleanup(const StageContext& ctx) override {
    absl::Status status = StageCall("cleanup", ctx);
    if (!PythonGone()) {
      // The instance goes with the stage, on this thread, with the GIL.
      py::gil_scoped_acquire gil;
      instance_.reset();
    }
    return status;
  }

 private:
  absl::Status Gone() const {
    return absl::UnavailableError(absl::StrCat(
        platform_, ": the Python interpreter is exiting; not called"));
  }

  // REQUIRES: the GIL.
  const py::object& Instance() {
    if (!instance_) {
      instance_ = std::make_unique<PyRef>(factory_->get()());
    }
    return instance_->get();
  }

  absl::Status StageCall(const char* method, const StageContext& ctx) {
    if (PythonGone()) return Gone();
    py::gil_scoped_acquire gil;
    ExpireOnExit contexts;
    contexts.stage = std::make_shared<PyStageContext>(&ctx);
    try {
      const py::object& self = Instance();
      if (py::hasattr(self, method)) self.attr(method)(contexts.stage);
      return absl::OkStatus();
    } catch (const py::error_already_set& e) {
      WriteTraceback(e, ctx.output);
      return absl::FailedPreconditionError(
          absl::StrCat(method, " raised ", OneLine(e)));
    } catch (const std::exception& e) {
      return absl::FailedPreconditionError(
          absl::StrCat(method, ": ", e.what()));
    }
  }

  // What execute() may return: None (success), an exit code, a Status or a
  // StepResult. REQUIRES: the GIL.
  static StepResult ToResult(const py::object& returned) {
    StepResult result;
    if (returned.is_none()) {
      result.exit_code = 0;
    } else if (py::isinstance<StepResult>(returned)) {
      result = returned.cast<StepResult>();
    } else if (py::isinstance<StepStatus>(returned)) {
      result.status = returned.cast<StepStatus>();
    } else if (py::isinstance<py::int_>(returned) &&
               !py::isinstance<py::bool_>(returned)) {
      result.exit_code = returned.cast<int>();
      if (*result.exit_code != 0) {
        result.status = StepStatus::kFailure;
        result.error = absl::StrCat("exit code ", *result.exit_code);
      }
    } else {
      result.status = StepStatus::kFailure;
      result.error = absl::StrCat(
          "execute returned ",
          py::str(py::type::of(returned).attr("__name__")).cast<std::string>(),
          "; expected None, an int exit code, a delegate.Status or a "
          "delegate.StepResult");
    }
    return result;
  }

  const std::shared_ptr<PyRef> factory_;
  const std::string platform_;
  std::unique_ptr<PyRef> instance_;
};

}  // namespace

absl::Status RegisterPythonExecutor(ExecutorRegistry& registry,
                                    std::string name, py::object factory) {
  if (!PyCallable_Check(factory.ptr())) {
    throw py::type_error(
        "register_executor: factory must be a class or a callable that "
        "returns an executor object");
  }
  auto shared = std::make_shared<PyRef>(std::move(factory));
  return WithoutGil([&] {
    return registry.Register(name, [shared, name] {
      return std::make_unique<PyExecutor>(shared, name);
    });
  });
}

void BindExecutorContexts(py::module_& m) {
  py::class_<PyStageContext, std::shared_ptr<PyStageContext>>(
      m, "StageContext",
      "What an executor's initialize() and cleanup() are given. Usable only "
      "during that call.")
      .def_property_readonly(
          "stage", [](const PyStageContext& c) { return c.get().stage; },
          "The stage (a copy), secrets substituted in its steps.")
      .def_property_readonly(
          "task_id", [](const PyStageContext& c) { return c.get().task_id; })
      .def_property_readonly(
          "delegate_name",
          [](const PyStageContext& c) { return c.get().delegate_name; })
      .def_property_readonly(
          "cancelled",
          [](const PyStageContext& c) { return c.get().stop.stop_requested(); },
          "True once the stage was cancelled or the runtime shuts down.")
      .def_property_readonly(
          "time_left",
          [](const PyStageContext& c) {
            return TimeLeft(c.get().deadline, c.get().clock);
          },
          "Seconds until the stage's timeout, or None without one.")
      .def(
          "write",
          [](const PyStageContext& c, const std::string& text,
             const std::string& stream) {
            Write(c.get().output, ParseStream(stream), text);
          },
          py::arg("text"), py::arg("stream") = "stdout",
          "Writes raw output to the stage's log (split into lines, secrets "
          "masked).")
      .def(
          "log",
          [](const PyStageContext& c, const std::string& line) {
            Write(c.get().output, LogStream::kSystem, line + "\n");
          },
          py::arg("line"), "Writes one system line to the stage's log.");

  py::class_<PyStepContext, std::shared_ptr<PyStepContext>>(
      m, "StepContext",
      "What an executor's execute() is given. Usable only during that call.")
      .def_property_readonly(
          "step", [](const PyStepContext& c) { return c.get().step; },
          "The step (a copy): secrets substituted, stage env merged.")
      .def_property_readonly(
          "index", [](const PyStepContext& c) { return c.get().index; })
      .def_property_readonly("stage", &PyStepContext::stage)
      .def_property_readonly(
          "task_id",
          [](const PyStepContext& c) { return c.get().stage.task_id; })
      .def_property_readonly(
          "cancelled",
          [](const PyStepContext& c) { return c.get().stop.stop_requested(); },
          "True once the step must stop (cancel or shutdown).")
      .def_property_readonly(
          "stop_reason",
          [](const PyStepContext& c) { return StopReason(c.get()); },
          "Status.CANCELLED or Status.TIMEOUT once the step must stop, "
          "else None. Return it from execute() when you stop for it.")
      .def_property_readonly(
          "time_left",
          [](const PyStepContext& c) {
            return TimeLeft(c.get().deadline, c.get().stage.clock);
          },
          "Seconds until the step's timeout, or None without one.")
      .def(
          "wait",
          [](const PyStepContext& c, double seconds) {
            const StepContext& ctx = c.get();
            absl::Duration timeout = absl::Seconds(std::max(0.0, seconds));
            if (ctx.deadline != absl::InfiniteFuture()) {
              timeout = std::min(timeout, ctx.deadline - ctx.stage.clock.Now());
            }
            absl::Notification stopped;
            std::stop_callback on_stop(ctx.stop, [&] { stopped.Notify(); });
            WithoutGil(
                [&] { stopped.WaitForNotificationWithTimeout(timeout); });
            return StopReason(ctx).has_value();
          },
          py::arg("seconds"),
          "Sleeps up to `seconds` (without the GIL), waking early when the "
          "step must stop; True when it must (see stop_reason).")
      .def(
          "write",
          [](const PyStepContext& c, const std::string& text,
             const std::string& stream) {
            Write(c.get().output, ParseStream(stream), text);
          },
          py::arg("text"), py::arg("stream") = "stdout",
          "Writes raw output to the step's log (split into lines, secrets "
          "masked).")
      .def(
          "log",
          [](const PyStepContext& c, const std::string& line) {
            Write(c.get().output, LogStream::kSystem, line + "\n");
          },
          py::arg("line"), "Writes one system line to the step's log.");
}

}  // namespace delegate::python

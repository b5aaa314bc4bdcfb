#include "py_executor.h"

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gil.h"
#include "pybind11/stl.h"

namespace delegate::python {
namespace py = pybind11;
namespace {

// The contexts given to Python point at the library's, which live only
// while the call runs: they are cut off when it returns. A Python thread of
// the executor's own may still hold one then, and write with it (without
// the GIL) while the call returns: the call's end waits for such uses, and
// any use after it raises RuntimeError.
class CallGuard {
 public:
  // Before a use that releases the GIL: false once the call has ended.
  bool Enter() {
    std::lock_guard<std::mutex> lock(mu_);
    if (expired_) return false;
    ++in_flight_;
    return true;
  }
  void Leave() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--in_flight_ == 0) cv_.notify_all();
  }
  // Whether the call has ended. Uses that keep the GIL throughout need
  // nothing more: the call ends with the GIL held.
  bool expired() const {
    std::lock_guard<std::mutex> lock(mu_);
    return expired_;
  }
  // Waits (between Enter and Leave) up to `timeout` for `stopped` to be
  // set by Wake, or for the call to end. Without the GIL.
  void Wait(absl::Duration timeout, const bool& stopped) {
    std::unique_lock<std::mutex> lock(mu_);
    const auto until =
        std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
    cv_.wait_until(lock, until, [&] { return expired_ || stopped; });
  }
  // Sets `flag` and wakes Wait. Any thread.
  void Wake(bool& flag) {
    std::lock_guard<std::mutex> lock(mu_);
    flag = true;
    cv_.notify_all();
  }
  // The call's end: no use starts from now on, and the ones in flight are
  // waited for (a wait ends at once). REQUIRES: the GIL.
  void Expire() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      expired_ = true;
      cv_.notify_all();
      if (in_flight_ == 0) return;
    }
    WithoutGil([&] {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return in_flight_ == 0; });
    });
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool expired_ = false;
  int in_flight_ = 0;
};

constexpr char kStageExpired[] =
    "this StageContext was used after the call it was given to returned";
constexpr char kStepExpired[] =
    "this StepContext was used after the execute() call it was given to "
    "returned";

[[noreturn]] void RaiseExpired(const char* message) {
  throw std::runtime_error(message);
}

class PyStageContext {
 public:
  PyStageContext(const StageContext* ctx, std::shared_ptr<CallGuard> guard)
      : ctx_(ctx), guard_(std::move(guard)) {}
  // For uses that keep the GIL. REQUIRES: the GIL.
  const StageContext& get() const {
    if (guard_->expired()) RaiseExpired(kStageExpired);
    return *ctx_;
  }
  // Writes without the GIL, unless the call has ended. REQUIRES: the GIL.
  void Write(LogStream stream, const std::string& text) const;

 private:
  const StageContext* const ctx_;
  const std::shared_ptr<CallGuard> guard_;
};

class PyStepContext {
 public:
  PyStepContext(const StepContext* ctx, std::shared_ptr<PyStageContext> stage,
                std::shared_ptr<CallGuard> guard)
      : ctx_(ctx), stage_(std::move(stage)), guard_(std::move(guard)) {}
  const StepContext& get() const {
    if (guard_->expired()) RaiseExpired(kStepExpired);
    return *ctx_;
  }
  const std::shared_ptr<PyStageContext>& stage() const { return stage_; }
  void Write(LogStream stream, const std::string& text) const;
  // Sleeps without the GIL up to `seconds`, or until the step must stop.
  bool Wait(double seconds) const;

 private:
  const StepContext* const ctx_;
  const std::shared_ptr<PyStageContext> stage_;
  const std::shared_ptr<CallGuard> guard_;
};

// A use of a context without the GIL, between Enter and Leave.
template <typename Fn>
void Unlocked(CallGuard& guard, const char* expired, Fn&& fn) {
  if (!guard.Enter()) RaiseExpired(expired);
  WithoutGil([&] {
    try {
      fn();
    } catch (...) {
      guard.Leave();
      throw;
    }
    guard.Leave();
  });
}

void PyStageContext::Write(LogStream stream, const std::string& text) const {
  Unlocked(*guard_, kStageExpired, [&] { ctx_->output.Write(stream, text); });
}

void PyStepContext::Write(LogStream stream, const std::string& text) const {
  Unlocked(*guard_, kStepExpired, [&] { ctx_->output.Write(stream, text); });
}

bool PyStepContext::Wait(double seconds) const {
  bool must_stop = false;
  Unlocked(*guard_, kStepExpired, [&] {
    const StepContext& ctx = *ctx_;
    // Capped (at a year) so that the wait's end is a representable time.
    absl::Duration timeout =
        std::min(absl::Seconds(std::max(0.0, seconds)), absl::Hours(24 * 365));
    if (ctx.deadline != absl::InfiniteFuture()) {
      timeout = std::min(timeout, ctx.deadline - ctx.stage.clock.Now());
    }
    bool stopped = false;
    {
      std::stop_callback on_stop(ctx.stop, [&] { guard_->Wake(stopped); });
      guard_->Wait(timeout, stopped);
    }
    must_stop = StopReason(ctx).has_value();
  });
  // Woken by the call's end: the step is over for this thread too.
  if (guard_->expired()) RaiseExpired(kStepExpired);
  return must_stop;
}

// Cuts the contexts off when the call returns. Not a destructor: it may
// release and take back the GIL (see WithoutGil).
struct Contexts {
  std::shared_ptr<CallGuard> guard = std::make_shared<CallGuard>();
  std::shared_ptr<PyStageContext> stage;
  std::shared_ptr<PyStepContext> step;
  void Expire() { guard->Expire(); }
};

LogStream ParseStream(const std::string& name) {
  if (name == "stdout") return LogStream::kStdout;
  if (name == "stderr") return LogStream::kStderr;
  if (name == "system") return LogStream::kSystem;
  throw py::value_error(absl::StrCat(
      "stream: expected 'stdout', 'stderr' or 'system', got '", name, "'"));
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
  WithoutGil([&] { output.Write(LogStream::kSystem, text); });
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
    ExecutorCallScope on_worker;
    py::gil_scoped_acquire gil;
    DropPendingRefs();
    Contexts contexts;
    contexts.stage =
        std::make_shared<PyStageContext>(&ctx.stage, contexts.guard);
    contexts.step =
        std::make_shared<PyStepContext>(&ctx, contexts.stage, contexts.guard);
    try {
      py::object returned = Instance().attr("execute")(contexts.step);
      result = ToResult(returned);
    } catch (const py::error_already_set& e) {
      WriteTraceback(e, ctx.output);
      result.status = StepStatus::kFailure;
      result.error = OneLine(e);
    } catch (const std::exception& e) {
      result.status = StepStatus::kFailure;
      result.error = e.what();
    }
    contexts.Expire();
    return result;
  }

  absl::Status Cleanup(const StageContext& ctx) override {
    absl::Status status = StageCall("cleanup", ctx);
    if (!PythonGone()) {
      // The instance goes with the stage, on this thread, with the GIL.
      ExecutorCallScope on_worker;
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
    ExecutorCallScope on_worker;
    py::gil_scoped_acquire gil;
    DropPendingRefs();
    Contexts contexts;
    contexts.stage = std::make_shared<PyStageContext>(&ctx, contexts.guard);
    absl::Status status;
    try {
      const py::object& self = Instance();
      if (py::hasattr(self, method)) self.attr(method)(contexts.stage);
    } catch (const py::error_already_set& e) {
      WriteTraceback(e, ctx.output);
      status = absl::FailedPreconditionError(
          absl::StrCat(method, " raised ", OneLine(e)));
    } catch (const std::exception& e) {
      status =
          absl::FailedPreconditionError(absl::StrCat(method, ": ", e.what()));
    }
    contexts.Expire();
    return status;
  }

  // What execute() may return: None (success), an exit code, a Status or a
  // StepResult. REQUIRES: the GIL.
  static StepResult ToResult(const py::object& returned) {
    StepResult result;
    if (returned.is_none()) {
      result.exit_code = 0;
    } else if (py::isinstance<StepResult>(returned)) {
      result = returned.cast<StepResult>();
      // The outputs as Python holds them (module.cc: StepResult.outputs).
      py::object outputs = returned.attr("outputs");
      result.outputs.clear();
      for (py::handle item : outputs.attr("items")()) {
        py::tuple pair = py::reinterpret_borrow<py::object>(item);
        if (!py::isinstance<py::str>(pair[0]) ||
            !py::isinstance<py::str>(pair[1])) {
          StepResult bad;
          bad.status = StepStatus::kFailure;
          bad.error =
              "execute returned a StepResult whose outputs are not all "
              "str -> str";
          return bad;
        }
        result.outputs[pair[0].cast<std::string>()] =
            pair[1].cast<std::string>();
      }
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
             const std::string& stream) { c.Write(ParseStream(stream), text); },
          py::arg("text"), py::arg("stream") = "stdout",
          "Writes raw output to the stage's log (split into lines, secrets "
          "masked).")
      .def(
          "log",
          [](const PyStageContext& c, const std::string& line) {
            c.Write(LogStream::kSystem, line + "\n");
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
      .def("wait", &PyStepContext::Wait, py::arg("seconds"),
           "Sleeps up to `seconds` (without the GIL), waking early when the "
           "step must stop; True when it must (see stop_reason).")
      .def(
          "write",
          [](const PyStepContext& c, const std::string& text,
             const std::string& stream) { c.Write(ParseStream(stream), text); },
          py::arg("text"), py::arg("stream") = "stdout",
          "Writes raw output to the step's log (split into lines, secrets "
          "masked).")
      .def(
          "log",
          [](const PyStepContext& c, const std::string& line) {
            c.Write(LogStream::kSystem, line + "\n");
          },
          py::arg("line"), "Writes one system line to the step's log.");
}

}  // namespace delegate::python

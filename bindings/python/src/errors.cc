#include "errors.h"

#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "pybind11/stl.h"

namespace delegate::python {
namespace py = pybind11;
namespace {

// Leaked on purpose: they are used until the interpreter is gone, and a
// static py::object would be destroyed after it.
PyObject* stage_error = nullptr;
PyObject* delegate_error = nullptr;

[[noreturn]] void RaiseWith(PyObject* type, const std::string& message,
                            const char* attribute, py::object value) {
  py::object error = py::reinterpret_borrow<py::object>(type)(message);
  error.attr(attribute) = std::move(value);
  PyErr_SetObject(type, error.ptr());
  throw py::error_already_set();
}

}  // namespace

void RegisterExceptions(py::module_& m) {
  stage_error = PyErr_NewExceptionWithDoc(
      "delegate.StageError",
      "A stage that cannot run: every problem found, one per line of the "
      "message and one per item of .problems.",
      PyExc_ValueError, nullptr);
  delegate_error = PyErr_NewExceptionWithDoc(
      "delegate.DelegateError",
      "A failure of the runtime itself; .code names the kind "
      "(UNAVAILABLE, INTERNAL, ...).",
      PyExc_RuntimeError, nullptr);
  if (stage_error == nullptr || delegate_error == nullptr) {
    throw py::error_already_set();
  }
  m.add_object("StageError", py::handle(stage_error));
  m.add_object("DelegateError", py::handle(delegate_error));
}

void Raise(const absl::Status& status, ErrorKind kind) {
  const std::string message(status.message());
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
      if (kind == ErrorKind::kStage) {
        std::vector<std::string> problems =
            absl::StrSplit(message, '\n', absl::SkipEmpty());
        RaiseWith(stage_error, message, "problems", py::cast(problems));
      }
      throw py::value_error(message);
    case absl::StatusCode::kNotFound:
      if (kind == ErrorKind::kStage) {
        PyErr_SetString(PyExc_FileNotFoundError, message.c_str());
        throw py::error_already_set();
      }
      break;
    case absl::StatusCode::kPermissionDenied:
      PyErr_SetString(PyExc_PermissionError, message.c_str());
      throw py::error_already_set();
    case absl::StatusCode::kAlreadyExists:
      throw py::value_error(message);
    default:
      break;
  }
  RaiseWith(delegate_error, message, "code",
            py::str(absl::StatusCodeToString(status.code())));
}

}  // namespace delegate::python

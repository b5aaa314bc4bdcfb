// Library errors (absl::Status) as Python exceptions.
#ifndef DELEGATE_PYTHON_ERRORS_H_
#define DELEGATE_PYTHON_ERRORS_H_

#include "absl/status/status.h"
#include "pybind11/pybind11.h"

namespace delegate::python {

// What a failed call was about; decides which exception an error becomes.
enum class ErrorKind {
  kStage,    // parsing, loading, checking or submitting a stage
  kGeneral,  // anything else
};

// Adds StageError (a ValueError with .problems, one per line of the
// message) and DelegateError (a RuntimeError with .code) to `m`.
void RegisterExceptions(pybind11::module_& m);

// Raises (throws pybind11::error_already_set) the exception for `status`:
//   InvalidArgument  StageError for a stage, ValueError otherwise
//   NotFound         FileNotFoundError for a stage file, else DelegateError
//   PermissionDenied PermissionError
//   AlreadyExists    ValueError (a task id used before)
//   anything else    DelegateError
// REQUIRES: the GIL; !status.ok().
[[noreturn]] void Raise(const absl::Status& status,
                        ErrorKind kind = ErrorKind::kGeneral);

}  // namespace delegate::python

#endif  // DELEGATE_PYTHON_ERRORS_H_

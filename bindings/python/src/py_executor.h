// An Executor written in Python: a class (or any callable) that makes an
// object with execute(step) and, when it wants them, initialize(stage),
// cleanup(stage) and validate(stage). The scheduler calls it on its worker
// thread, which takes the GIL for each call: the one place where a library
// thread calls into Python.
#ifndef DELEGATE_PYTHON_PY_EXECUTOR_H_
#define DELEGATE_PYTHON_PY_EXECUTOR_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "delegate/executor.h"
#include "pybind11/pybind11.h"

namespace delegate::python {

// Registers `factory` under `name`. TypeError (thrown) when it is not
// callable. REQUIRES: the GIL.
absl::Status RegisterPythonExecutor(ExecutorRegistry& registry,
                                    std::string name, pybind11::object factory);

// StageContext and StepContext: what the Python methods are given. Each is
// usable only during the call it was given to (RuntimeError after).
void BindExecutorContexts(pybind11::module_& m);

}  // namespace delegate::python

#endif  // DELEGATE_PYTHON_PY_EXECUTOR_H_

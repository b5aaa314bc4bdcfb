// How the module's threads and Python's meet.
//
// Two rules keep the module free of deadlocks:
//  1. A thread that holds the GIL never waits for the library: every call
//     into it from Python runs in WithoutGil. A scheduler worker that calls
//     a Python executor can then always get the GIL.
//  2. A library thread takes the GIL only to call a Python executor, and
//     never once the interpreter has begun to exit: the atexit hook
//     (CloseAll) cancels and joins every stage first, while Python still
//     works, and only then marks Python as gone. A library thread never
//     waits for the GIL to drop a Python reference (PyRef): it may hold a
//     library lock then (the scheduler drops a queued stage, and with it
//     its Python executor, under its own lock), so the reference is handed
//     to the next thread that holds the GIL instead.
#ifndef DELEGATE_PYTHON_GIL_H_
#define DELEGATE_PYTHON_GIL_H_

#include <Python.h>

#include <functional>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include "absl/time/time.h"
#include "pybind11/pybind11.h"

namespace delegate::python {

// Set by CloseAll at interpreter exit; from then on no library thread may
// take the GIL.
bool PythonGone();
// Set when CloseAll begins: nothing new that runs stages may be made.
bool PythonClosing();

// The interpreter's main thread (threading.main_thread()), remembered at
// import: the one thread that runs signal handlers. REQUIRES: the GIL.
void RememberMainThread();
bool OnMainThread();

// Takes the GIL back after a PyEval_SaveThread. A thread other than the main
// one that comes back once Python is gone blocks forever instead: the
// interpreter ends such a thread when it asks for the GIL during
// finalization, and ending it inside C++ frames is not safe. It is a thread
// of a program that is exiting.
void RestoreGil(PyThreadState* state);

// Runs `fn` with the GIL released. REQUIRES: the caller holds the GIL. Not
// RAII on purpose: the GIL is taken back in a plain function, never in a
// destructor (see RestoreGil).
template <typename Fn>
auto WithoutGil(Fn&& fn) -> decltype(fn()) {
  PyThreadState* state = PyEval_SaveThread();
  if constexpr (std::is_void_v<decltype(fn())>) {
    try {
      fn();
    } catch (...) {
      RestoreGil(state);
      throw;
    }
    RestoreGil(state);
  } else {
    std::optional<decltype(fn())> result;
    try {
      result.emplace(fn());
    } catch (...) {
      RestoreGil(state);
      throw;
    }
    RestoreGil(state);
    return *std::move(result);
  }
}

// Waits, without the GIL, until `ready(slice)` (itself waiting up to
// `slice`) answers true or `deadline` passes; false then. Between slices
// (every few milliseconds on the main thread) runs Python's signal
// handlers; when one raises (KeyboardInterrupt on Ctrl-C), calls
// `on_interrupt` without the GIL and re-raises. REQUIRES: the GIL.
bool WaitInterruptibly(const std::function<bool(absl::Duration)>& ready,
                       absl::Time deadline,
                       const std::function<void()>& on_interrupt);

// How long one wait without the GIL lasts on this thread: short on the main
// thread, which must notice Ctrl-C within a quarter of a second (it takes
// the GIL for a few microseconds each time); longer elsewhere, where no
// signal handler runs.
absl::Duration WaitSlice();

// Drops the references PyRefs let go of on threads without the GIL. Runs by
// itself soon after (Py_AddPendingCall), and wherever the module takes the
// GIL back. REQUIRES: the GIL.
void DropPendingRefs();

// Marks the current thread, for the scope's life, as a scheduler worker
// calling a Python executor: code that runs there (a __del__, the cyclic
// GC) must not wait for the scheduler's workers, this one among them.
class ExecutorCallScope {
 public:
  ExecutorCallScope();
  ~ExecutorCallScope();
  ExecutorCallScope(const ExecutorCallScope&) = delete;
  ExecutorCallScope& operator=(const ExecutorCallScope&) = delete;
};
bool OnExecutorThread();

// A Python object owned by C++ that library threads pass around without the
// GIL (a Python executor's factory or instance). The last owner drops the
// reference at once when it holds the GIL; otherwise the reference is
// queued for DropPendingRefs, never waited for (see rule 2). Once Python is
// gone it is left behind instead.
class PyRef {
 public:
  // REQUIRES: the GIL.
  explicit PyRef(pybind11::object object) : object_(std::move(object)) {}
  PyRef(const PyRef&) = delete;
  PyRef& operator=(const PyRef&) = delete;
  ~PyRef();

  // REQUIRES: the GIL.
  const pybind11::object& get() const { return object_; }

 private:
  pybind11::object object_;
};

// Something that runs stages and must be stopped before the interpreter
// finalizes: a Runtime or a Server. Registered for its whole life.
class Closable {
 public:
  virtual ~Closable() = default;
  // Cancels what runs and waits for it, without the GIL. Idempotent.
  virtual void Close() = 0;
};
void Track(const std::shared_ptr<Closable>& closable);

// The atexit hook: closes everything still open (with the GIL released, so
// that Python executors can run their cleanup), then marks Python as gone.
// REQUIRES: the GIL.
void CloseAll();

}  // namespace delegate::python

#endif  // DELEGATE_PYTHON_GIL_H_

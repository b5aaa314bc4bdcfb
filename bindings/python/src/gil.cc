#include "gil.h"

#include <pythread.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/time/clock.h"

namespace delegate::python {
namespace {

std::atomic<bool> closing{false};
std::atomic<bool> gone{false};
std::atomic<unsigned long> main_thread{0};

// Never destroyed: the atexit hook and late destructors use them.
std::mutex& TrackedMutex() {
  static auto* mu = new std::mutex;
  return *mu;
}
std::vector<std::weak_ptr<Closable>>& Tracked() {
  static auto* tracked = new std::vector<std::weak_ptr<Closable>>;
  return *tracked;
}

// References let go of without the GIL, for DropPendingRefs.
std::mutex& PendingMutex() {
  static auto* mu = new std::mutex;
  return *mu;
}
std::vector<PyObject*>& PendingRefs() {
  static auto* refs = new std::vector<PyObject*>;
  return *refs;
}
std::atomic<bool> has_pending{false};
bool drop_scheduled = false;  // guarded by PendingMutex()

int DropPendingCall(void*) {
  {
    std::lock_guard<std::mutex> lock(PendingMutex());
    drop_scheduled = false;
  }
  DropPendingRefs();
  return 0;
}

thread_local int executor_calls = 0;

}  // namespace

bool PythonGone() { return gone.load(std::memory_order_acquire); }
bool PythonClosing() { return closing.load(std::memory_order_acquire); }

void RememberMainThread() {
  namespace py = pybind11;
  main_thread.store(py::module_::import("threading")
                        .attr("main_thread")()
                        .attr("ident")
                        .cast<unsigned long>());
}

bool OnMainThread() {
  return PyThread_get_thread_ident() == main_thread.load();
}

void RestoreGil(PyThreadState* state) {
  if (PythonGone() && !OnMainThread()) {
    for (;;) std::this_thread::sleep_for(std::chrono::hours(24));
  }
  PyEval_RestoreThread(state);
  DropPendingRefs();
}

void DropPendingRefs() {
  if (!has_pending.load(std::memory_order_acquire)) return;
  std::vector<PyObject*> refs;
  {
    std::lock_guard<std::mutex> lock(PendingMutex());
    refs.swap(PendingRefs());
    has_pending.store(false, std::memory_order_release);
  }
  // Outside the lock: a __del__ may drop more.
  for (PyObject* ref : refs) Py_DECREF(ref);
}

ExecutorCallScope::ExecutorCallScope() { ++executor_calls; }
ExecutorCallScope::~ExecutorCallScope() { --executor_calls; }
bool OnExecutorThread() { return executor_calls > 0; }

absl::Duration WaitSlice() {
  return OnMainThread() ? absl::Milliseconds(20) : absl::Milliseconds(500);
}

bool WaitInterruptibly(const std::function<bool(absl::Duration)>& ready,
                       absl::Time deadline,
                       const std::function<void()>& on_interrupt) {
  const absl::Duration slice = WaitSlice();
  for (;;) {
    const bool done = WithoutGil(
        [&] { return ready(std::min(slice, deadline - absl::Now())); });
    if (done) return true;
    if (PyErr_CheckSignals() != 0) {
      pybind11::error_already_set raised;  // takes the pending exception
      WithoutGil(on_interrupt);
      throw raised;
    }
    if (absl::Now() >= deadline) return false;
  }
}

PyRef::~PyRef() {
  if (!object_) return;
  if (PythonGone() || !Py_IsInitialized()) {
    object_.release();  // left behind: the process is exiting
    return;
  }
  if (PyGILState_Check()) {
    object_ = pybind11::object();
    return;
  }
  // Waiting for the GIL here could deadlock (gil.h, rule 2).
  PyObject* ref = object_.release().ptr();
  bool schedule = false;
  {
    std::lock_guard<std::mutex> lock(PendingMutex());
    PendingRefs().push_back(ref);
    has_pending.store(true, std::memory_order_release);
    schedule = !std::exchange(drop_scheduled, true);
  }
  // Needs neither the GIL nor a thread state. When Python's queue of
  // pending calls is full, the next RestoreGil drops the reference.
  if (schedule && Py_AddPendingCall(&DropPendingCall, nullptr) != 0) {
    std::lock_guard<std::mutex> lock(PendingMutex());
    drop_scheduled = false;
  }
}

void Track(const std::shared_ptr<Closable>& closable) {
  std::lock_guard<std::mutex> lock(TrackedMutex());
  auto& tracked = Tracked();
  std::erase_if(tracked,
                [](const std::weak_ptr<Closable>& c) { return c.expired(); });
  tracked.push_back(closable);
}

void CloseAll() {
  closing.store(true, std::memory_order_release);
  std::vector<std::shared_ptr<Closable>> open;
  {
    std::lock_guard<std::mutex> lock(TrackedMutex());
    for (const std::weak_ptr<Closable>& weak : Tracked()) {
      if (std::shared_ptr<Closable> c = weak.lock()) open.push_back(c);
    }
    Tracked().clear();
  }
  WithoutGil([&] {
    for (const std::shared_ptr<Closable>& c : open) c->Close();
  });
  DropPendingRefs();
  gone.store(true, std::memory_order_release);
}

}  // namespace delegate::python

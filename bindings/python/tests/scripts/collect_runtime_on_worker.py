"""The cyclic GC collects a Runtime on one of its own scheduler workers,
while that worker runs a Python executor. Prints "collected" once the
collection returned (it used to wait for that very worker: a hang)."""
import gc
import sys
import threading

import delegate

collected = threading.Event()
go = threading.Event()


class Collector(delegate.Executor):
    def execute(self, step):
        go.wait()
        gc.collect()
        collected.set()


gc.disable()  # collections happen where this script says
runtime = delegate.Runtime(workdir=sys.argv[1])
runtime.register_executor("collector", Collector)
cycle = [runtime]
cycle.append(cycle)
runtime.start(
    delegate.Stage.parse("name: s\nplatform: collector\nsteps: [{id: a, commands: [x]}]\n"),
    logs=False,
)  # the StageRun is dropped at once: only the cycle holds the Runtime
del runtime, cycle
go.set()
if collected.wait(30):
    print("collected", flush=True)

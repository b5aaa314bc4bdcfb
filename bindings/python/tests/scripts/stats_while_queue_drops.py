"""Reads runtime.stats in a loop while the scheduler drops a stage that was
cancelled while queued (and with it its Python executor, under the
scheduler's lock). Prints "ok" unless the two deadlock (the test kills it).
Usage: stats_while_queue_drops.py WORKDIR"""
import sys
import threading
import time

import delegate


class Gated(delegate.Executor):
    gate = threading.Event()

    def execute(self, step):
        Gated.gate.wait()


runtime = delegate.Runtime(max_stages=1, workdir=sys.argv[1])
runtime.register_executor("gated", Gated)
stage = delegate.Stage.parse("name: s\nplatform: gated\nsteps: [{id: a, commands: [x]}]\n")
for _ in range(5):
    Gated.gate = threading.Event()
    running = runtime.start(stage, logs=False)
    queued = runtime.start(stage, logs=False)
    while runtime.stats["running"] != 1:
        time.sleep(0.01)
    assert queued.cancel()
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            runtime.stats

    poller = threading.Thread(target=poll)
    poller.start()
    Gated.gate.set()
    assert running.wait().ok
    assert queued.wait().status == delegate.Status.CANCELLED
    stop.set()
    poller.join()
runtime.close()
print("ok", flush=True)

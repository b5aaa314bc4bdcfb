"""The cyclic GC collects a Server on a scheduler worker of its own, while
that worker runs a Python executor. Prints "collected" once the collection
returned (closing the server there would wait for that very worker).
Usage: collect_server_on_worker.py STUBS_DIR"""
import gc
import os
import pathlib
import subprocess
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
server = delegate.Server(
    "none", runtime_listen="127.0.0.1:0", ops_bind="127.0.0.1:0", start_executors=False
)
server.register_executor("greeter", Collector)
server.start()
env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
client = subprocess.Popen(
    [sys.executable, str(pathlib.Path(__file__).parent / "runtime_client.py"),
     sys.argv[1], server.runtime_address],
    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
cycle = [server]
cycle.append(cycle)
del server, cycle
go.set()
ok = collected.wait(30)
client.kill()
client.wait()
if ok:
    print("collected", flush=True)

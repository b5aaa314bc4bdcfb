"""Started by test_interrupt.py: runs a stage whose step sleeps 30 s, says
READY once the step runs, and waits for it in the main thread until the
test sends SIGINT: in Runtime.run(), StageRun.wait() or the log iterator
(argv[2]).

Prints "RESULT <status>" once KeyboardInterrupt came out and exits 0.
"""
import sys
import threading
import time

import delegate

workdir, how = sys.argv[1], sys.argv[2]
runtime = delegate.Runtime(workdir=workdir)
stage = delegate.Stage.parse(
    """
name: sleepy
steps:
  - id: nap
    commands: ["echo started", "sleep 30"]
"""
)


def wait_until_started(lines):
    for line in lines:
        if line.text == "started":
            print("READY", flush=True)
            return


run = None
try:
    if how == "run":
        # run() blocks: another thread tells when the step runs.
        def say_ready():
            while runtime.stats["running"] == 0:
                time.sleep(0.01)
            time.sleep(0.2)  # the step's shell is sleeping by now
            print("READY", flush=True)

        threading.Thread(target=say_ready, daemon=True).start()
        runtime.run(stage, task_id="sleepy-run")
    elif how == "wait":
        # `with`: an exception anywhere in the block cancels the stage too.
        with runtime.start(stage) as run:
            wait_until_started(run.logs())
            run.wait()
    elif how == "logs":
        with runtime.start(stage) as run:
            lines = run.logs()
            wait_until_started(lines)
            for _ in lines:
                pass
    else:
        raise SystemExit(f"unknown mode {how}")
except KeyboardInterrupt as interrupt:
    # run() gives no handle: its result comes with the exception.
    result = interrupt.stage_result if run is None else run.result
    print("RESULT", result.status.name if result else "RUNNING", flush=True)
    sys.exit(0)
print("RESULT no KeyboardInterrupt", flush=True)
sys.exit(1)

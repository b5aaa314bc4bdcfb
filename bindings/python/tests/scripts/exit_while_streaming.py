"""Started by test_exit.py: calls sys.exit(0) while stages stream.

At the moment of exit: host stages print as fast as they can, one of them
read by the main thread and one by a daemon thread; a daemon thread is
blocked in Runtime.run(); a Python executor's step is waiting. The stages
must all be cancelled and cleaned up (the Python executor notes its
initialize and cleanup in argv[2]) and the process must exit 0, with no
crash or hang.
"""
import sys
import threading

import delegate

workdir, cleanup_marker = sys.argv[1], sys.argv[2]


class Waiter(delegate.Executor):
    def initialize(self, stage):
        with open(cleanup_marker, "a") as f:
            f.write("initialize " + stage.task_id + "\n")

    def execute(self, step):
        step.log("waiting")
        while not step.wait(0.05):
            pass
        return step.stop_reason

    def cleanup(self, stage):
        with open(cleanup_marker, "a") as f:
            f.write("cleanup " + stage.task_id + "\n")


runtime = delegate.Runtime(workdir=workdir)
runtime.register_executor("waiter", Waiter)
chatty = delegate.Stage.parse(
    """
name: chatty
steps:
  - id: talk
    commands: ['i=0; while true; do i=$((i+1)); echo "line $i"; done']
"""
)
sleepy = delegate.Stage.parse(
    """
name: sleepy
steps:
  - id: nap
    commands: ["sleep 30"]
"""
)
waiting = delegate.Stage.parse(
    """
name: waiting
platform: waiter
steps:
  - id: wait
    commands: ["-"]
"""
)

runs = [runtime.start(chatty) for _ in range(3)]
runs.append(runtime.start(waiting))
threading.Thread(target=lambda: runtime.run(sleepy), daemon=True).start()
threading.Thread(target=lambda: list(runs[1].logs()), daemon=True).start()

# The Python step is running...
for line in runs[3].logs():
    if line.text == "waiting":
        break
# ...and the host stages are talking.
seen = 0
for line in runs[0].logs():
    if line.stream == "stdout":
        seen += 1
        if seen == 2000:
            sys.exit(0)

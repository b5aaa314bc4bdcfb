"""The module's threads against Python's: no deadlock between the GIL and
the library's locks, contexts cut off cleanly from helper threads, and a
Runtime collected on its own worker."""
import subprocess
import threading

import pytest

import delegate
from conftest import SCRIPTS, parse, start_script


def finish(proc, timeout=60):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{proc.args[1]} hung; stdout={out!r} stderr={err[-2000:]!r}")
    return proc.returncode, out, err


def test_stats_while_a_cancelled_queued_stage_is_dropped(workdir):
    code, out, err = finish(start_script("stats_while_queue_drops.py", workdir))
    assert (code, out) == (0, "ok\n"), err


def test_a_runtime_collected_on_its_own_worker_does_not_wait_for_it(workdir):
    code, out, err = finish(start_script("collect_runtime_on_worker.py", workdir))
    assert (code, out) == (0, "collected\n"), err


STAGE = "name: s\nplatform: helper\nsteps: [{id: a, commands: [x]}]\n"


def run_with_helper(runtime, helper):
    """execute() starts `helper(step)` on a thread and returns at once;
    returns what the helper raised."""
    raised = []
    threads = []

    class Helper(delegate.Executor):
        def execute(self, step):
            def body():
                try:
                    helper(step)
                except BaseException as e:  # noqa: B036 - reported to the test
                    raised.append(e)

            t = threading.Thread(target=body)
            threads.append(t)
            t.start()

    runtime.register_executor("helper", Helper)
    assert runtime.run(parse(STAGE)).ok
    threads[0].join(timeout=30)
    assert not threads[0].is_alive(), "the helper thread is still blocked"
    return raised


def test_a_step_context_written_after_execute_returned_raises(runtime):
    def keep_writing(step):
        while True:
            step.write("x\n")
            step.log("y")

    raised = run_with_helper(runtime, keep_writing)
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError)
    assert "was used after the execute() call it was given to returned" in str(raised[0])


def test_a_step_wait_on_a_helper_thread_ends_with_the_call(runtime):
    # Without the cut-off the helper sleeps its 60 seconds, then reads the
    # freed context.
    raised = run_with_helper(runtime, lambda step: step.wait(60))
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError)


def test_the_stage_context_of_a_step_is_cut_off_too(runtime):
    def keep_logging(step):
        stage = step.stage
        while True:
            stage.log("y")

    raised = run_with_helper(runtime, keep_logging)
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError)

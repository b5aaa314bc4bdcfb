"""Ctrl-C while the main thread waits for a stage cancels it within 250 ms,
runs its cleanup, and comes out as KeyboardInterrupt."""
import signal
import time

import pytest

from conftest import start_script


@pytest.mark.parametrize("how", ["run", "wait", "logs"])
def test_ctrl_c_cancels_the_stage_within_250ms(workdir, how):
    script = start_script("interrupt.py", workdir, how)
    try:
        assert script.stdout.readline().strip() == "READY"
        assert len(list(workdir.iterdir())) == 1  # the stage's workspace
        # Into the wait: a signal that lands in the script's own Python code
        # is raised there, as Python does.
        time.sleep(0.2)
        sent = time.monotonic()
        script.send_signal(signal.SIGINT)
        line = script.stdout.readline().strip()
        elapsed = time.monotonic() - sent
        script.wait(timeout=30)
    finally:
        script.kill()
        script.wait()
    stderr = script.stderr.read()
    assert line == "RESULT CANCELLED", stderr
    assert elapsed < 0.25, f"{elapsed:.3f}s from SIGINT to the cancelled result"
    assert script.returncode == 0, stderr
    assert list(workdir.iterdir()) == []  # cleanup removed the workspace

"""sys.exit() while stages stream: the process exits 0 every time, with no
crash or hang, and every stage is cancelled and cleaned up first."""
import subprocess

from conftest import start_script

RUNS = 50


def test_sys_exit_while_stages_stream_exits_0_in_50_of_50_runs(tmp_path):
    failures = []
    for i in range(RUNS):
        workdir = tmp_path / f"work{i}"
        workdir.mkdir()
        marker = tmp_path / f"calls{i}"
        script = start_script("exit_while_streaming.py", workdir, marker)
        try:
            _, stderr = script.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            script.kill()
            _, stderr = script.communicate()
            failures.append(f"run {i}: hung\n{stderr}")
            continue
        if script.returncode != 0:
            failures.append(f"run {i}: exit {script.returncode}\n{stderr}")
            continue
        # The Python executor's stage was initialized, then cleaned up at
        # exit; the host stages' workspaces are gone.
        calls = marker.read_text().split()
        if calls[0::2] != ["initialize", "cleanup"]:
            failures.append(f"run {i}: executor calls {calls}")
        leftovers = list(workdir.iterdir())
        if leftovers:
            failures.append(f"run {i}: left {leftovers}")
    assert not failures, f"{len(failures)} of {RUNS} runs failed:\n" + "\n".join(failures[:5])

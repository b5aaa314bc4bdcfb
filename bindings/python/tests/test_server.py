"""The server (DelegateServer) started and stopped from Python."""
import json
import os
import pathlib
import shutil
import socket
import subprocess
import threading
import urllib.request

import pytest

import delegate
from conftest import start_script


def server(**kwargs):
    # No Harness manager: RuntimeService alone, on loopback, free ports.
    return delegate.Server(
        "none",
        runtime_listen="127.0.0.1:0",
        ops_bind="127.0.0.1:0",
        start_executors=False,
        **kwargs,
    )


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
        return reply.status, reply.read().decode()


def test_start_serves_and_stop_drains(tmp_path):
    srv = server(workdir=str(tmp_path))
    assert not srv.running
    srv.start()
    assert srv.running
    assert get(srv.ops_port, "/health") == (200, "ok\n")
    assert get(srv.ops_port, "/ready")[0] == 200
    host, port = srv.runtime_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5):
        pass  # RuntimeService listens
    assert srv.stop(timeout=30) is True
    assert not srv.running
    messages = [json.loads(e)["msg"] for e in srv.events()]
    assert "serving RuntimeService" in messages
    assert messages[-1] == "RuntimeService stopped"
    with pytest.raises(OSError):
        get(srv.ops_port, "/health")


def test_a_server_is_a_context_manager():
    with server() as srv:
        srv.start()
        assert srv.running
    assert not srv.running


def test_start_raises_what_stopped_the_server():
    with pytest.raises(ValueError, match="runtime_listen"):
        delegate.Server("none", ops_bind="127.0.0.1:0").start()
    with pytest.raises(ValueError, match="runtime_listen: 10.1.2.3 is not a loopback address"):
        delegate.Server("none", runtime_listen="10.1.2.3:0", ops_bind="127.0.0.1:0").start()


def test_the_harness_manager_needs_its_credentials():
    with pytest.raises(ValueError, match="HARNESS_ACCOUNT_ID|HARNESS_TOKEN|HARNESS_URL"):
        delegate.Server(env={})


def test_executors_are_registered_before_start():
    with server() as srv:
        srv.register_executor("mine", delegate.Executor)
        srv.start()
        with pytest.raises(delegate.DelegateError, match="before start"):
            srv.register_executor("late", delegate.Executor)


def generate_stubs(out_dir):
    """delegate/v1 compiled for Python (as tests/contract does), or a skip."""
    proto_dir = os.environ.get("DELEGATE_PROTO_DIR")
    protoc = shutil.which("protoc")
    plugin = shutil.which("grpc_python_plugin")
    if not (proto_dir and protoc and plugin):
        pytest.skip("needs DELEGATE_PROTO_DIR (ctest sets it), protoc and grpc_python_plugin")
    try:
        import grpc  # noqa: F401  Debian's python3-grpcio
    except ImportError:
        pytest.skip("needs python3-grpcio")
    protos = sorted(str(p) for p in pathlib.Path(proto_dir, "delegate", "v1").glob("*.proto"))
    subprocess.run(
        [protoc, "-I", proto_dir, "-I", "/usr/include", f"--python_out={out_dir}",
         f"--grpc_out={out_dir}", f"--plugin=protoc-gen-grpc={plugin}", *protos],
        check=True, capture_output=True,
    )


def test_a_stage_sent_to_runtime_service_runs_on_a_python_executor(tmp_path):
    generate_stubs(tmp_path)
    calls = []

    class Greeter(delegate.Executor):
        def execute(self, step):
            calls.append((step.task_id, threading.current_thread() is threading.main_thread()))
            step.write(f"hello from {step.step.id}\n")
            return delegate.StepResult(outputs={"WHO": "python"})

    with server() as srv:
        srv.register_executor("greeter", Greeter)
        srv.start()
        # The client in a process of its own, without this package on its
        # path: the generated modules are a package named delegate too.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        client = start_script("runtime_client.py", tmp_path, srv.runtime_address, env=env)
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        assert srv.stop(timeout=30)
    seen = json.loads(out)
    assert seen["status"] == "STEP_STATUS_SUCCESS"
    assert seen["outputs"] == {"WHO": "python"}
    assert "hello from greet" in seen["lines"]
    assert len(calls) == 1 and "grpc-1" in calls[0][0]
    assert calls[0][1] is False  # on a worker thread


def test_stop_and_wait_before_start_return_at_once():
    srv = server()
    assert srv.wait(timeout=5) is True
    assert srv.stop(timeout=5) is True
    assert not srv.running


def test_a_server_collected_on_its_own_worker_does_not_wait_for_it(tmp_path):
    generate_stubs(tmp_path)
    proc = start_script("collect_server_on_worker.py", tmp_path)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"hung; stdout={out!r} stderr={err[-2000:]!r}")
    assert (proc.returncode, out) == (0, "collected\n"), err

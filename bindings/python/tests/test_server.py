"""The server (DelegateServer) started and stopped from Python."""
import json
import socket
import urllib.request

import pytest

import delegate


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

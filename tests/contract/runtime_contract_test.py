#!/usr/bin/python3
"""RuntimeService (proto/delegate/v1/runtime.proto) from another language.

Generates Python stubs from the .proto files into a temporary directory,
starts the real `delegate server --manager none --runtime-listen 127.0.0.1:0`,
and drives it with grpcio: a host stage watched to its end, an invalid stage,
health and capacity, then SIGTERM with a stage running (it finishes, the
delegate exits 0), and in a second delegate a second SIGTERM that cancels.

  runtime_contract_test.py --delegate PATH --proto-dir DIR [unittest args]

Needs Debian's python3-grpcio, python3-protobuf and protobuf-compiler-grpc
(grpc_python_plugin); exits 77 (skipped) without them.
"""

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

SKIP = 77

try:
    import grpc
    import google.protobuf  # noqa: F401  (the generated code needs it)
except ImportError as e:
    print(f"skipped: {e} (install python3-grpcio and python3-protobuf)")
    sys.exit(SKIP)

ARGS = None  # set in main
# The generated modules, imported in main.
v1_runtime = v1_runtime_grpc = v1_task = None


def generate_stubs(proto_dir, out_dir):
    """Compiles delegate/v1/*.proto for Python into out_dir."""
    plugin = ARGS.grpc_python_plugin or shutil.which("grpc_python_plugin")
    if not plugin:
        print("skipped: no grpc_python_plugin (install protobuf-compiler-grpc)")
        sys.exit(SKIP)
    v1 = os.path.join(proto_dir, "delegate", "v1")
    protos = sorted(
        os.path.join(v1, f) for f in os.listdir(v1) if f.endswith(".proto"))
    command = [ARGS.protoc, "-I", proto_dir]
    # Debian's protoc finds google/protobuf/*.proto there.
    if os.path.exists("/usr/include/google/protobuf/duration.proto"):
        command += ["-I", "/usr/include"]
    command += [
        f"--python_out={out_dir}", f"--grpc_out={out_dir}",
        f"--plugin=protoc-gen-grpc={plugin}"
    ] + protos
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"protoc failed ({' '.join(command)}):\n"
                           f"{run.stderr}")


class Delegate:
    """The delegate binary as a process, its stdout read line by line."""

    def __init__(self, binary, workdir):
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("HARNESS_") and k not in ("TOKEN", "URL")
        }
        env.update({
            "HTTPS_BIND": "127.0.0.1:0",  # the ops port: any free one
            "HARNESS_NAME": "contract-test",
            "HARNESS_WORKDIR": workdir,
        })
        self.lines = []
        self._queue = queue.Queue()
        self.process = subprocess.Popen(
            [
                binary, "server", "--manager", "none", "--runtime-listen",
                "127.0.0.1:0"
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)
        self._queue.put(None)

    def wait_for_event(self, msg, timeout=30):
        """The first event-log object whose "msg" is msg."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=deadline - time.monotonic())
            except queue.Empty:
                break
            if line is None:
                break
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("msg") == msg:
                return event
        raise AssertionError(f"the delegate did not log {msg!r} within "
                             f"{timeout}s; its output:\n" + self.output())

    def output(self):
        return "\n".join(self.lines)

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5)
        self.process.stdout.close()


def kind(event):
    """"stage_started", "step_started:ID", "log:ID", ... of a StageEvent."""
    which = event.WhichOneof("event")
    if which == "step_started":
        return f"step_started:{event.step_started.step_id}"
    if which == "log":
        return f"log:{event.log.step_id}"
    if which == "step_finished":
        status = v1_task.StepStatus.Name(event.step_finished.status)
        return f"step_finished:{event.step_finished.id}:{status}"
    if which == "stage_finished":
        status = v1_task.StepStatus.Name(event.stage_finished.status)
        return f"stage_finished:{status}"
    return which


class RuntimeContractTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="runtime-contract-")
        workdir = os.path.join(cls.tmp, "work")
        os.makedirs(workdir)
        cls.delegate = Delegate(ARGS.delegate, workdir)
        serving = cls.delegate.wait_for_event("serving RuntimeService")
        cls.address = serving.get("address")
        if not cls.address:
            raise AssertionError("the 'serving RuntimeService' line has no "
                                 f"address: {serving}")
        cls.channel = grpc.insecure_channel(cls.address)
        cls.stub = v1_runtime_grpc.RuntimeServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.delegate.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def host_stage(self, command):
        stage = v1_task.Stage(name="from-python")
        stage.steps.add(id="hello", commands=[command])
        return stage

    def test_a_host_stage_is_watched_to_its_end(self):
        submitted = self.stub.SubmitStage(
            v1_runtime.SubmitStageRequest(
                task_id="py-1",
                stage=self.host_stage("echo hello-from-python")),
            timeout=10)
        self.assertTrue(submitted.created)
        self.assertEqual(submitted.task_id, "py-1")

        events = list(
            self.stub.WatchStage(v1_runtime.WatchStageRequest(task_id="py-1"),
                                 timeout=30))

        kinds = [kind(e) for e in events if e.WhichOneof("event") != "log"]
        self.assertEqual(kinds, [
            "stage_started", "step_started:hello",
            "step_finished:hello:STEP_STATUS_SUCCESS",
            "stage_finished:STEP_STATUS_SUCCESS"
        ], f"event kinds: {[kind(e) for e in events]}")
        self.assertEqual([e.sequence for e in events],
                         list(range(1, len(events) + 1)),
                         "sequences must run 1..n without gaps")
        lines = [
            line.text.decode() for e in events
            if e.WhichOneof("event") == "log" and e.log.step_id == "hello"
            for line in e.log.lines
        ]
        self.assertIn("hello-from-python", lines,
                      f"the step's log lines: {lines}")
        self.assertTrue(all(e.task_id == "py-1" for e in events))
        self.assertEqual(events[0].stage_started.platform, "host")
        self.assertEqual(events[0].stage_started.delegate_name,
                         "contract-test")
        result = events[-1].stage_finished
        self.assertEqual(result.task_id, "py-1")
        self.assertEqual(result.steps[0].exit_code, 0)

        again = self.stub.SubmitStage(
            v1_runtime.SubmitStageRequest(task_id="py-1",
                                          stage=self.host_stage("false")),
            timeout=10)
        self.assertFalse(again.created, "a repeated task_id starts nothing")

    def test_an_invalid_stage_is_invalid_argument_naming_the_field(self):
        stage = self.host_stage("true")
        stage.steps[0].timeout.seconds = -5
        with self.assertRaises(grpc.RpcError) as raised:
            self.stub.SubmitStage(v1_runtime.SubmitStageRequest(
                task_id="py-invalid", stage=stage),
                                  timeout=10)
        self.assertEqual(raised.exception.code(),
                         grpc.StatusCode.INVALID_ARGUMENT,
                         raised.exception.details())
        self.assertIn("stage.steps[0].timeout", raised.exception.details())

        with self.assertRaises(grpc.RpcError) as raised:
            self.stub.SubmitStage(v1_runtime.SubmitStageRequest(
                task_id="no spaces allowed", stage=self.host_stage("true")),
                                  timeout=10)
        self.assertEqual(raised.exception.code(),
                         grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("task_id", raised.exception.details())

        with self.assertRaises(grpc.RpcError) as raised:
            list(
                self.stub.WatchStage(
                    v1_runtime.WatchStageRequest(task_id="py-invalid"),
                    timeout=10))
        self.assertEqual(raised.exception.code(), grpc.StatusCode.NOT_FOUND,
                         "a refused stage is not known afterwards")

    def test_health_and_capacity(self):
        health = self.stub.GetHealth(v1_runtime.GetHealthRequest(), timeout=10)
        self.assertEqual(health.state, v1_runtime.Health.STATE_SERVING)
        self.assertEqual(health.delegate_name, "contract-test")
        self.assertTrue(health.version)
        capacity = self.stub.GetCapacity(v1_runtime.GetCapacityRequest(),
                                         timeout=10)
        self.assertIn("host", capacity.platforms)
        self.assertFalse(capacity.draining)

    # Last (tests run in name order): the process is gone afterwards.
    def test_z_sigterm_drains_and_exits_zero(self):
        # The stage runs until the test has seen the drain (a fixed sleep
        # ended first under load, and the server was gone by GetHealth).
        go = os.path.join(self.tmp, "drain-go")
        self.stub.SubmitStage(v1_runtime.SubmitStageRequest(
            task_id="py-drain",
            stage=self.host_stage(
                "while [ ! -e %s ]; do sleep 0.05; done; "
                "echo finished-while-draining" % go)),
                              timeout=10)
        watched = Watch(self.stub, "py-drain")

        self.delegate.process.send_signal(signal.SIGTERM)
        self.delegate.wait_for_event("RuntimeService draining: no new stages")
        health = self.stub.GetHealth(v1_runtime.GetHealthRequest(), timeout=10)
        self.assertEqual(health.state, v1_runtime.Health.STATE_DRAINING)
        with self.assertRaises(grpc.RpcError) as raised:
            self.stub.SubmitStage(v1_runtime.SubmitStageRequest(
                task_id="py-late", stage=self.host_stage("true")),
                                  timeout=10)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE)

        open(go, "w").close()
        code = wait_for_exit(self, self.delegate)
        self.assertEqual(
            code, 0, "exit status after SIGTERM; its output:\n" +
            self.delegate.output())
        events = watched.result(self)
        self.assertEqual(kind(events[-1]), "stage_finished:STEP_STATUS_SUCCESS",
                         "a running stage finishes while the runtime drains")
        self.assertIn("RuntimeService stopped", self.delegate.output())


class SecondSigtermTest(unittest.TestCase):
    """A second SIGTERM cancels the running stages, which are cleaned up."""

    def test_second_sigterm_cancels_and_exits_zero(self):
        tmp = tempfile.mkdtemp(prefix="runtime-contract-")
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        delegate = Delegate(ARGS.delegate, tmp)
        self.addCleanup(delegate.close)
        address = delegate.wait_for_event("serving RuntimeService")["address"]
        channel = grpc.insecure_channel(address)
        self.addCleanup(channel.close)
        stub = v1_runtime_grpc.RuntimeServiceStub(channel)
        stage = v1_task.Stage(name="long")
        stage.steps.add(id="nap", commands=["sleep 60"])
        stub.SubmitStage(v1_runtime.SubmitStageRequest(task_id="py-long",
                                                       stage=stage),
                         timeout=10)
        watched = Watch(stub, "py-long")
        watched.wait_for_step_started(self)

        delegate.process.send_signal(signal.SIGTERM)
        delegate.wait_for_event("RuntimeService draining: no new stages")
        delegate.process.send_signal(signal.SIGTERM)

        self.assertEqual(wait_for_exit(self, delegate, timeout=20), 0,
                         delegate.output())
        events = watched.result(self)
        self.assertEqual(kind(events[-1]),
                         "stage_finished:STEP_STATUS_CANCELLED")


class Watch:
    """WatchStage read on a thread of its own."""

    def __init__(self, stub, task_id):
        self.events = []
        self.error = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run,
                                        args=(stub, task_id),
                                        daemon=True)
        self._thread.start()

    def _run(self, stub, task_id):
        try:
            for event in stub.WatchStage(
                    v1_runtime.WatchStageRequest(task_id=task_id), timeout=60):
                self.events.append(event)
                if event.WhichOneof("event") == "step_started":
                    self._started.set()
        except grpc.RpcError as e:
            self.error = e
        self._started.set()

    def wait_for_step_started(self, test, timeout=10):
        if not self._started.wait(timeout):
            test.fail(f"no step_started within {timeout}s")

    def result(self, test, timeout=30):
        self._thread.join(timeout)
        if self._thread.is_alive():
            test.fail(f"the watch did not end within {timeout}s")
        if self.error is not None:
            test.fail(f"the watch failed: {self.error.code()} "
                      f"{self.error.details()}")
        if not self.events:
            test.fail("the watch saw no events")
        return self.events


def wait_for_exit(test, delegate, timeout=30):
    try:
        code = delegate.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        test.fail(f"the delegate did not exit within {timeout}s of SIGTERM; "
                  "its output:\n" + delegate.output())
    delegate._reader.join(timeout=5)
    return code


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delegate", required=True,
                        help="the delegate binary")
    parser.add_argument("--proto-dir", required=True,
                        help="the import root of delegate/v1/*.proto")
    parser.add_argument("--protoc", default="/usr/bin/protoc")
    parser.add_argument("--grpc-python-plugin", default=None)
    ARGS, rest = parser.parse_known_args()
    if not os.access(ARGS.delegate, os.X_OK):
        print(f"--delegate {ARGS.delegate}: not an executable (build the "
              "delegate target first)")
        return 2
    stubs = tempfile.mkdtemp(prefix="runtime-contract-stubs-")
    try:
        generate_stubs(ARGS.proto_dir, stubs)
        sys.path.insert(0, stubs)
        global v1_runtime, v1_runtime_grpc, v1_task
        from delegate.v1 import runtime_pb2 as v1_runtime
        from delegate.v1 import runtime_pb2_grpc as v1_runtime_grpc
        from delegate.v1 import task_pb2 as v1_task
    except Exception:
        shutil.rmtree(stubs, ignore_errors=True)
        raise
    try:
        program = unittest.main(argv=[sys.argv[0]] + rest, exit=False,
                                verbosity=2)
    finally:
        shutil.rmtree(stubs, ignore_errors=True)
    return 0 if program.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())

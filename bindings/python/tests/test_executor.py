"""Stages through a Python executor and through the built-in host
executor, and cancel from another thread."""
import json
import threading
import time

import pytest

import delegate
from conftest import parse


class Recorder(delegate.Executor):
    """Notes each call and the thread it came on; its steps say what to do
    in their first command."""

    calls = []

    def initialize(self, stage):
        Recorder.calls.append(("initialize", stage.stage.name, threading.current_thread() is threading.main_thread()))
        stage.log(f"initializing {stage.task_id}")

    def execute(self, step):
        Recorder.calls.append(("execute", step.step.id, step.index))
        action = step.step.commands[0]
        step.write(f"{step.step.id} says hello\n")
        step.write("to stderr\n", stream="stderr")
        if action == "ok":
            return None
        if action == "outputs":
            return delegate.StepResult(outputs={"VERSION": "1.2.3"})
        if action == "exit3":
            return 3
        if action == "raise":
            raise RuntimeError("it broke")
        if action == "weird":
            return "yes"
        raise AssertionError(action)

    def cleanup(self, stage):
        Recorder.calls.append(("cleanup", stage.stage.name, False))


@pytest.fixture
def recorder(runtime):
    Recorder.calls = []
    runtime.register_executor("recorder", Recorder)
    return Recorder


def test_a_stage_through_a_python_executor(runtime, recorder):
    stage = parse(
        """
        name: py
        platform: recorder
        steps:
          - {id: first, commands: [ok]}
          - {id: second, commands: [outputs], outputs: [VERSION]}
        """
    )
    run = runtime.start(stage)
    lines = [(l.step, l.stream, l.text) for l in run.logs()]
    result = run.wait()
    assert result.status == delegate.Status.SUCCESS and result.ok
    assert [s.id for s in result.steps] == ["first", "second"]
    assert result.steps[1].outputs == {"VERSION": "1.2.3"}
    assert recorder.calls == [
        ("initialize", "py", False),  # on a worker thread, not this one
        ("execute", "first", 0),
        ("execute", "second", 1),
        ("cleanup", "py", False),
    ]
    assert lines == [
        ("", "system", f"initializing {run.task_id}"),
        ("first", "stdout", "first says hello"),
        ("first", "stderr", "to stderr"),
        ("second", "stdout", "second says hello"),
        ("second", "stderr", "to stderr"),
    ]
    as_json = json.loads(result.json())
    assert as_json["status"] == "SUCCESS"
    assert as_json["steps"][1]["outputs"] == {"VERSION": "1.2.3"}


def test_python_executor_failures_become_step_results(runtime, recorder):
    stage = parse(
        """
        name: failing
        platform: recorder
        steps:
          - {id: code, commands: [exit3], continue_on_error: true}
          - {id: boom, commands: [raise], continue_on_error: true}
          - {id: odd, commands: [weird], continue_on_error: true}
          - {id: last, commands: [raise]}
          - {id: never, commands: [ok]}
        """
    )
    run = runtime.start(stage)
    boom_lines = [l.text for l in run.logs() if l.step == "boom" and l.stream == "system"]
    result = run.wait()
    by_id = {s.id: s for s in result.steps}
    assert by_id["code"].status == delegate.Status.FAILURE
    assert by_id["code"].exit_code == 3
    assert by_id["boom"].error == "RuntimeError: it broke"
    assert boom_lines[0] == "Traceback (most recent call last):"
    assert boom_lines[-1] == "RuntimeError: it broke"
    assert "execute returned str" in by_id["odd"].error
    assert by_id["last"].status == delegate.Status.FAILURE
    assert by_id["never"].status == delegate.Status.SKIPPED
    assert result.status == delegate.Status.FAILURE
    assert recorder.calls[-1][0] == "cleanup"


def test_cleanup_runs_when_initialize_raises(runtime):
    calls = []

    class BadStart(delegate.Executor):
        def initialize(self, stage):
            calls.append("initialize")
            raise OSError("no space left")

        def execute(self, step):
            calls.append("execute")

        def cleanup(self, stage):
            calls.append("cleanup")

    runtime.register_executor("bad-start", BadStart)
    result = runtime.run(parse("name: b\nplatform: bad-start\nsteps: [{id: a, commands: [x]}]\n"))
    assert result.status == delegate.Status.FAILURE
    assert "initialize raised OSError: no space left" in result.error
    assert calls == ["initialize", "cleanup"]


def test_an_executor_without_execute_fails_its_steps_saying_so(runtime):
    class Forgetful(delegate.Executor):
        pass

    runtime.register_executor("forgetful", Forgetful)
    result = runtime.run(parse("name: f\nplatform: forgetful\nsteps: [{id: a, commands: [x]}]\n"))
    assert result.status == delegate.Status.FAILURE
    assert result.steps[0].status == delegate.Status.FAILURE
    assert "Forgetful does not define execute(self, step)" in result.steps[0].error


def test_a_context_is_usable_only_during_its_call(runtime):
    kept = []

    class Keeper(delegate.Executor):
        def execute(self, step):
            kept.append(step)

    runtime.register_executor("keeper", Keeper)
    assert runtime.run(parse("name: k\nplatform: keeper\nsteps: [{id: a, commands: [x]}]\n")).ok
    with pytest.raises(RuntimeError, match="used after the execute"):
        kept[0].write("late\n")


def test_register_executor_refuses_what_cannot_make_executors(runtime):
    with pytest.raises(TypeError, match="callable"):
        runtime.register_executor("nothing", None)
    runtime.register_executor("twice", delegate.Executor)
    with pytest.raises(ValueError, match="'twice' is already registered"):
        runtime.register_executor("twice", delegate.Executor)
    with pytest.raises(ValueError, match="'host' is already registered"):
        runtime.register_executor("host", delegate.Executor)


def test_a_stage_through_the_host_executor(runtime, workdir):
    stage = parse(
        """
        name: on-host
        env: {GREETING: hi}
        steps:
          - id: version
            commands: ['echo "$GREETING from $(pwd)"', 'echo VERSION=2.0 >> "$HARNESS_OUTPUT_FILE"']
            outputs: [VERSION]
          - id: fail
            commands: ['exit 7']
        """
    )
    run = runtime.start(stage)
    stdout = [l.text for l in run.logs() if l.step == "version" and l.stream == "stdout"]
    result = run.wait()
    assert any(t.startswith("hi from " + str(workdir)) for t in stdout), stdout
    assert result.steps[0].outputs == {"VERSION": "2.0"}
    assert result.steps[1].status == delegate.Status.FAILURE
    assert result.steps[1].exit_code == 7
    assert result.status == delegate.Status.FAILURE
    assert "fail" in result.summary()
    assert list(workdir.iterdir()) == []  # cleaned up


def test_cancel_from_another_thread_stops_a_host_step(runtime, workdir):
    stage = parse("name: long\nsteps: [{id: nap, commands: ['sleep 30']}]\n")
    cancelled = []
    timer = threading.Timer(0.3, lambda: cancelled.append(runtime.cancel("long-1")))
    timer.start()
    started = time.monotonic()
    result = runtime.run(stage, task_id="long-1")  # blocks this thread
    timer.join()
    assert cancelled == [True]
    assert result.status == delegate.Status.CANCELLED
    assert result.steps[0].status == delegate.Status.CANCELLED
    assert time.monotonic() - started < 20  # not the 30 s of the step
    assert list(workdir.iterdir()) == []


def test_cancel_reaches_a_waiting_python_step(runtime):
    cleaned = threading.Event()

    class Patient(delegate.Executor):
        def execute(self, step):
            if step.wait(30):
                return step.stop_reason
            return None

        def cleanup(self, stage):
            cleaned.set()

    runtime.register_executor("patient", Patient)
    run = runtime.start(parse("name: p\nplatform: patient\nsteps: [{id: a, commands: [x]}, {id: b, commands: [x]}]\n"))
    assert run.wait(timeout=0.2) is None  # still waiting
    threading.Thread(target=run.cancel).start()
    result = run.wait(timeout=20)
    assert result is not None and result.status == delegate.Status.CANCELLED
    assert [s.status for s in result.steps] == [delegate.Status.CANCELLED, delegate.Status.SKIPPED]
    assert cleaned.is_set()
    assert run.cancel() is False


def test_a_run_block_waits_for_its_stage_or_cancels_it_on_an_exception(runtime):
    stage = parse("name: s\nsteps: [{id: a, commands: ['sleep 0.2; echo done']}]\n")
    with runtime.start(stage) as run:
        pass
    assert run.done and run.result.ok
    long = parse("name: l\nsteps: [{id: a, commands: ['sleep 30']}]\n")
    with pytest.raises(ZeroDivisionError):
        with runtime.start(long) as run:
            1 / 0
    assert run.result.status == delegate.Status.CANCELLED


def test_a_closed_runtime_takes_no_stages(runtime):
    runtime.close()
    with pytest.raises(delegate.DelegateError, match="shutting down") as caught:
        runtime.run(parse("name: s\nsteps: [{id: a, commands: ['true']}]\n"))
    assert caught.value.code == "UNAVAILABLE"


def test_step_result_outputs_edited_in_place_are_kept(runtime):
    class Outputs(delegate.Executor):
        def execute(self, step):
            r = delegate.StepResult()
            if step.step.id == "edit":
                r.outputs["VERSION"] = "3.1"
            elif step.step.id == "assign":
                r.outputs = {"VERSION": "3.2"}
                r.outputs["EXTRA"] = "yes"
            else:
                r.outputs["VERSION"] = 3
            return r

    runtime.register_executor("outputs", Outputs)
    result = runtime.run(parse(
        """
        name: outs
        platform: outputs
        steps:
          - {id: edit, commands: [x], outputs: [VERSION]}
          - {id: assign, commands: [x], outputs: [VERSION, EXTRA]}
          - {id: bad, commands: [x], outputs: [VERSION]}
        """
    ))
    by_id = {s.id: s for s in result.steps}
    assert by_id["edit"].outputs == {"VERSION": "3.1"}
    assert by_id["assign"].outputs == {"VERSION": "3.2", "EXTRA": "yes"}
    assert by_id["bad"].status == delegate.Status.FAILURE
    assert "outputs are not all str" in by_id["bad"].error
    local = delegate.StepResult(outputs={"A": "1"})
    local.outputs["B"] = "2"
    assert local.outputs == {"A": "1", "B": "2"}

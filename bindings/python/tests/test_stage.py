"""Stages in: parsing, loading and the pre-run check, and their errors."""
import pytest

import delegate
from conftest import parse


def test_parse_gives_the_stage_without_its_secret_values():
    stage = parse(
        """
        name: build
        platform: host
        timeout: 10m
        env: {A: "1"}
        secrets: {TOKEN: hunter2}
        steps:
          - id: compile
            commands: ["make", "make test"]
            timeout: 30s
            outputs: [VERSION]
          - id: ship
            entrypoint: [/bin/echo]
            args: [done]
        """
    )
    assert stage.name == "build"
    assert stage.platform == "host"
    assert stage.timeout == 600
    assert stage.env == {"A": "1"}
    assert stage.secret_ids == ["TOKEN"]
    assert [s.id for s in stage.steps] == ["compile", "ship"]
    assert stage.steps[0].commands == ["make", "make test"]
    assert stage.steps[0].timeout == 30
    assert stage.steps[0].outputs == ["VERSION"]
    assert stage.steps[1].entrypoint == ["/bin/echo"]
    assert "hunter2" not in repr(stage)
    assert not hasattr(stage, "secrets")


def test_parse_error_lists_every_problem_with_its_position():
    with pytest.raises(delegate.StageError) as caught:
        parse(
            """
            name: broken
            steps:
              - id: a
                commands: [x]
                timeout: ten
              - commands: [y]
                colour: blue
            """
        )
    error = caught.value
    assert isinstance(error, ValueError)
    assert len(error.problems) == 3, error.problems
    assert str(error).splitlines() == error.problems
    assert any("steps[0].timeout" in p and "'ten'" in p for p in error.problems)
    assert any("steps[1].id: required" in p for p in error.problems)
    assert any("unknown field 'colour'" in p for p in error.problems)
    # <source>:<line>:<col>: for each
    assert all(p.startswith("stage:") for p in error.problems)


def test_parse_names_the_source():
    with pytest.raises(delegate.StageError) as caught:
        delegate.Stage.parse("name: x\nsteps: 3\n", source="mine.yaml")
    assert caught.value.problems[0].startswith("mine.yaml:2:")


def test_load_reads_a_file_and_names_a_missing_one(tmp_path):
    path = tmp_path / "stage.json"
    path.write_text('{"name": "j", "steps": [{"id": "a", "commands": ["true"]}]}')
    assert delegate.Stage.load(str(path)).name == "j"
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        delegate.Stage.load(str(tmp_path / "nowhere.yaml"))


class Picky(delegate.Executor):
    def validate(self, stage):
        problems = [
            f"steps[{i}].image: picky runs no images"
            for i, step in enumerate(stage.steps)
            if step.image
        ]
        if problems:
            raise ValueError("\n".join(problems))

    def execute(self, step):
        return None


def test_validate_lists_every_problem_of_the_pre_run_check(runtime):
    runtime.register_executor("picky", Picky)
    ok = parse(
        """
        name: fine
        platform: picky
        steps: [{id: a, commands: [x]}]
        """
    )
    assert runtime.validate(ok) is None
    bad = parse(
        """
        name: bad
        platform: picky
        steps:
          - {id: a, image: alpine, commands: [x]}
          - {id: b, image: busybox, commands: [y]}
        """
    )
    with pytest.raises(delegate.StageError) as caught:
        runtime.validate(bad)
    assert caught.value.problems == [
        "steps[0].image: picky runs no images",
        "steps[1].image: picky runs no images",
    ]
    nowhere = parse(
        """
        name: nowhere
        platform: moon
        steps: [{id: a, commands: [x]}]
        """
    )
    with pytest.raises(delegate.StageError, match="no executor is registered for 'moon'.*picky"):
        runtime.validate(nowhere)


def test_a_refused_stage_does_not_start(runtime):
    stage = parse(
        """
        name: nowhere
        platform: moon
        steps: [{id: a, commands: [x]}]
        """
    )
    with pytest.raises(delegate.StageError, match="moon"):
        runtime.start(stage)
    with pytest.raises(delegate.StageError, match="moon"):
        runtime.run(stage)
    assert runtime.stats == {"queued": 0, "running": 0, "completed": 0}


def test_a_task_id_is_taken_once(runtime):
    stage = parse("name: s\nsteps: [{id: a, commands: ['true']}]\n")
    assert runtime.run(stage, task_id="one").ok
    with pytest.raises(ValueError, match="task one was already delivered"):
        runtime.run(stage, task_id="one")


def test_bad_settings_name_the_variable_or_option(tmp_path):
    with pytest.raises(ValueError, match="MAX_STAGES"):
        delegate.Runtime({"MAX_STAGES": "ten"})
    with pytest.raises(ValueError, match="max_stages"):
        delegate.Runtime({}, max_stages=0)
    assert delegate.Runtime({}, max_stages=2, name="py-test").name == "py-test"


def test_runtime_env_takes_any_mapping(workdir):
    import os
    import types

    with delegate.Runtime(env=os.environ, workdir=str(workdir)) as rt:
        assert "host" in rt.executors
    with delegate.Runtime(env=types.MappingProxyType({"HARNESS_NAME": "proxied"})) as rt:
        assert rt.name == "proxied"
    with pytest.raises(TypeError, match="env: expected a mapping"):
        delegate.Runtime(env=[("HARNESS_NAME", "x")])
    with pytest.raises(TypeError, match="env: MAX_STAGES: the value must be a str") as raised:
        delegate.Runtime(env={"MAX_STAGES": 12345})
    assert "12345" not in str(raised.value)

"""Shared fixtures. The tests import the package from the build tree: ctest
sets PYTHONPATH=<build>/bindings/python (run pytest by hand the same way)."""
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

import delegate

SCRIPTS = pathlib.Path(__file__).parent / "scripts"


def parse(text: str) -> delegate.Stage:
    return delegate.Stage.parse(textwrap.dedent(text))


@pytest.fixture
def workdir(tmp_path):
    """Where the host executor makes stage workspaces; empty once every
    stage is cleaned up."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def runtime(workdir):
    with delegate.Runtime(workdir=str(workdir)) as rt:
        yield rt


def start_script(name, *args, env=None):
    """A tests/scripts/NAME under this interpreter, with its own stdout."""
    return subprocess.Popen(
        [sys.executable, str(SCRIPTS / name), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ) if env is None else env,
    )

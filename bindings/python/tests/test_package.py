"""The package as users get it: the type hints match the module, `cmake
--install` installs an importable package, and the README's example is the
file this test runs."""
import ast
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

import delegate

HERE = pathlib.Path(__file__).parent
SOURCE = HERE.parent
EXAMPLE = SOURCE / "examples" / "example.py"


def public(names):
    return {n for n in names if not n.startswith("_")}


def stub_tree():
    return ast.parse((SOURCE / "delegate" / "__init__.pyi").read_text())


def test_the_type_hints_name_everything_the_package_exports():
    tree = stub_tree()
    top = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    top |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)}
    assert set(delegate.__all__) <= top | {"__version__"}
    assert (SOURCE / "delegate" / "py.typed").exists()


def test_the_type_hints_list_each_class_s_members_as_the_module_has_them():
    mismatches = []
    for node in stub_tree().body:
        if not isinstance(node, ast.ClassDef) or not hasattr(delegate, node.name):
            continue
        cls = getattr(delegate, node.name)
        if issubclass(cls, BaseException):
            continue  # .problems / .code are set on each instance
        hinted = set()
        for item in node.body:
            if isinstance(item, ast.FunctionDef):
                hinted.add(item.name)
            elif isinstance(item, ast.AnnAssign):
                hinted.add(item.target.id)
            elif isinstance(item, ast.Assign):
                hinted.update(t.id for t in item.targets)
        actual = public(dir(cls))
        if isinstance(cls, type) and issubclass(cls, object) and node.name == "Status":
            actual = set(cls.__members__) | {"name", "value"}
        if public(hinted) != actual:
            mismatches.append(
                f"{node.name}: only hinted {sorted(public(hinted) - actual)}, "
                f"not hinted {sorted(actual - public(hinted))}"
            )
    assert not mismatches, "\n".join(mismatches)


def test_the_readme_shows_the_example_as_it_is():
    readme = (SOURCE / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert EXAMPLE.read_text() in blocks, "paste examples/example.py into README.md again"


def run_example(stage_file):
    return subprocess.run(
        [sys.executable, str(EXAMPLE), str(stage_file)],
        capture_output=True, text=True, timeout=60,
    )


def test_the_example_runs_a_stage_on_its_own_executor(tmp_path):
    stage = tmp_path / "stage.yaml"
    stage.write_text(textwrap.dedent(
        """
        name: example
        platform: dry-run
        steps:
          - id: build
            commands: ["make", "make test"]
            outputs: [VERSION]
        """
    ))
    done = run_example(stage)
    assert done.returncode == 0, done.stderr
    assert "build | would run: make test" in done.stdout
    assert '"outputs":{"VERSION":"(dry run)"}' in done.stdout


def test_the_example_runs_a_host_stage_and_reports_problems(tmp_path):
    stage = tmp_path / "host.yaml"
    stage.write_text("name: h\nsteps: [{id: a, commands: ['echo hi; exit 4']}]\n")
    done = run_example(stage)
    assert done.returncode == 1, done.stderr
    assert "a | hi" in done.stdout
    assert '"exit_code":4' in done.stdout
    stage.write_text("name: h\nplatform: moon\nsteps: [{id: a, commands: [x]}]\n")
    done = run_example(stage)
    assert done.returncode == 2
    assert "no executor is registered for 'moon'" in done.stderr


def test_cmake_install_gives_an_importable_package(tmp_path):
    build = os.environ.get("DELEGATE_BUILD_DIR")
    site = os.environ.get("DELEGATE_PYTHON_INSTALL_DIR")
    if not build or not site:
        pytest.skip("run under ctest (it sets DELEGATE_BUILD_DIR)")
    prefix = tmp_path / "prefix"
    subprocess.run(
        ["cmake", "--install", build, "--component", "python", "--prefix", str(prefix)],
        check=True, capture_output=True, timeout=120,
    )
    package = prefix / site / "delegate"
    assert {p.name for p in package.iterdir()} >= {"__init__.py", "__init__.pyi", "py.typed"}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(prefix / site)
    found = subprocess.run(
        [sys.executable, "-c", "import delegate; print(delegate.__file__, delegate.Runtime().executors)"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith(str(package))
    assert "host" in found.stdout

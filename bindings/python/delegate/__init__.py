"""libdelegate for Python: run CI stages (init, steps, cleanup) in-process.

    import delegate

    stage = delegate.Stage.load("stage.yaml")
    with delegate.Runtime() as runtime:
        runtime.validate(stage)
        result = runtime.run(stage)
    print(result.status.name, result.json())

See README.md beside this package's sources for the whole API.
"""

from ._delegate import (
    DelegateError,
    LogIterator,
    LogLine,
    Runtime,
    Server,
    Stage,
    StageContext,
    StageError,
    StageResult,
    StageRun,
    Status,
    Step,
    StepContext,
    StepResult,
    __version__,
    git_commit,
)


class Executor:
    """A base for executors written in Python (optional: any object with an
    ``execute`` method will do).

    Register the class with ``Runtime.register_executor(name, cls)``; a stage
    with ``platform: name`` then gets one instance, on a scheduler worker
    thread that holds the GIL for each call: ``validate`` (when submitted),
    ``initialize``, ``execute`` once per step, and ``cleanup``, which runs
    whenever ``initialize`` was called. An exception fails the stage
    (initialize), the step (execute, with the traceback in its log) or
    cleanup. A step that waits should use ``step.wait(seconds)`` or poll
    ``step.cancelled``, so that cancel and shutdown stop it promptly.
    """

    def validate(self, stage: Stage) -> None:
        """Raise ValueError (one problem per line) to refuse the stage."""

    def initialize(self, stage: StageContext) -> None:
        """Create what the stage needs."""

    def execute(self, step: StepContext):
        """Run one step. Return None (success), an exit code, a Status or a
        StepResult (with outputs)."""
        raise TypeError(
            f"{type(self).__name__} does not define execute(self, step): "
            "an Executor must run its steps")

    def cleanup(self, stage: StageContext) -> None:
        """Remove what initialize and the steps created."""


__all__ = [
    "DelegateError",
    "Executor",
    "LogIterator",
    "LogLine",
    "Runtime",
    "Server",
    "Stage",
    "StageContext",
    "StageError",
    "StageResult",
    "StageRun",
    "Status",
    "Step",
    "StepContext",
    "StepResult",
    "__version__",
    "git_commit",
]

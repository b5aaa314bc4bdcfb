"""A Python program that embeds libdelegate: it adds an executor of its own
(a dry run that prints what each step would do), registers it next to the
built-in ones, loads a stage file, runs the stage while printing its log
lines, and prints the result.

    python3 example.py STAGE.yaml    exit 0 when every step succeeded
"""
import sys

import delegate


class DryRun(delegate.Executor):
    """platform: dry-run. Runs nothing: each step says what it would run."""

    def initialize(self, stage):
        stage.log(f"dry run of stage {stage.stage.name}")

    def execute(self, step):
        for command in step.step.commands:
            step.write(f"would run: {command}\n")
        outputs = {name: "(dry run)" for name in step.step.outputs}
        return delegate.StepResult(exit_code=0, outputs=outputs)


def main(argv):
    if len(argv) != 2:
        print(f"usage: {argv[0]} STAGE.yaml", file=sys.stderr)
        return 2
    print(f"libdelegate {delegate.__version__}")
    try:
        stage = delegate.Stage.load(argv[1])
        # The delegate's settings from the environment, as `delegate exec`
        # reads them, and every built-in executor next to our own.
        with delegate.Runtime() as runtime:
            runtime.register_executor("dry-run", DryRun)
            runtime.validate(stage)  # every problem, one a line
            run = runtime.start(stage)
            for line in run.logs():  # until the stage is done
                print(f"{line.step or 'stage'} | {line.text}")
            result = run.wait()
    except (delegate.StageError, OSError) as error:
        print(error, file=sys.stderr)
        return 2
    print(result.summary(), end="")
    print(result.json())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Log lines pulled from Python: 8 stages at once, 100,000 lines in all,
none lost and none out of order within a stage."""
import threading

from conftest import parse

STAGES = 8
LINES_PER_STAGE = 12_500  # 100,000 in all
HALF = LINES_PER_STAGE // 2


def test_eight_stages_stream_100000_lines_without_loss_or_reordering(runtime):
    # Two steps each, so that order also holds across a stage's steps.
    stage = parse(
        f"""
        name: chatty
        steps:
          - {{id: first, commands: ['seq 1 {HALF}']}}
          - {{id: second, commands: ['seq {HALF + 1} {LINES_PER_STAGE}']}}
        """
    )
    runs = [runtime.start(stage) for _ in range(STAGES)]
    received = {}

    def read(run):
        # Each reader blocks in the iterator without the GIL between lines.
        received[run.task_id] = [
            (line.step, line.number, line.text)
            for line in run.logs()
            if line.stream == "stdout" and line.text.isdigit()
        ]

    readers = [threading.Thread(target=read, args=(run,)) for run in runs]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(timeout=120)
        assert not reader.is_alive()

    assert all(run.wait().ok for run in runs)
    assert len(received) == STAGES
    total = 0
    for task_id, lines in received.items():
        texts = [int(text) for _, _, text in lines]
        assert texts == list(range(1, LINES_PER_STAGE + 1)), task_id
        for step in ("first", "second"):
            numbers = [n for s, n, _ in lines if s == step]
            assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
        total += len(lines)
    assert total == 100_000


def test_the_iterator_ends_when_the_stage_is_done_and_drained(runtime):
    run = runtime.start(parse("name: s\nsteps: [{id: a, commands: ['echo one; echo two']}]\n"))
    assert run.wait().ok  # done before anything was read: lines were kept
    texts = [l.text for l in run.logs() if l.stream == "stdout"]
    assert texts[-2:] == ["one", "two"]
    assert list(run.logs()) == []  # each line is handed out once


def test_lines_are_not_kept_when_asked_not_to(runtime):
    run = runtime.start(parse("name: s\nsteps: [{id: a, commands: ['echo one']}]\n"), logs=False)
    assert run.wait().ok
    assert list(run.logs()) == []

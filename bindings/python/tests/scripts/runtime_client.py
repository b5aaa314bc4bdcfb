"""Started by test_server.py: submits a stage for the "greeter" platform to
RuntimeService at argv[2], with the stubs generated in argv[1], watches it
to its end and prints what it saw as JSON."""
import json
import sys

import grpc

sys.path.insert(0, sys.argv[1])
from delegate.v1 import runtime_pb2, runtime_pb2_grpc, task_pb2  # noqa: E402

with grpc.insecure_channel(sys.argv[2]) as channel:
    stub = runtime_pb2_grpc.RuntimeServiceStub(channel)
    stage = task_pb2.Stage(name="via-grpc", platform="greeter")
    stage.steps.add(id="greet", commands=["-"], outputs=["WHO"])
    submitted = stub.SubmitStage(
        runtime_pb2.SubmitStageRequest(task_id="grpc-1", stage=stage), timeout=10)
    assert submitted.created
    events = list(stub.WatchStage(runtime_pb2.WatchStageRequest(task_id="grpc-1"), timeout=30))
finished = events[-1].stage_finished
print(json.dumps({
    "status": task_pb2.StepStatus.Name(finished.status),
    "outputs": dict(finished.steps[0].outputs),
    "lines": [
        line.text.decode()
        for e in events if e.WhichOneof("event") == "log"
        for line in e.log.lines
    ],
}))

#!/usr/bin/env python3
"""Fails when a file of libdelegate includes a header of a higher layer.

The library is a core and extensions around it (README "Architecture"):

  delegate::core     util < logs < policy < stage < config < scheduler
                     < executor (host, local) < ops, manager
  delegate::http     http/                       over core
  delegate::docker   executor/docker/            over core, http
  delegate::aws      aws/                        over core, http
  delegate::runner   runner/                     over core (and the protos)
  delegate::ecs      executor/ecs/               over core, http, aws, runner
  delegate::harness  manager/harness/            over core, http
  delegate::grpc     manager/grpc/, runtime/     over core, http
  delegate::delegate server/                     over all of them

A file may include the headers of its own target and of the targets below
it; within the core, only its own layer and lower ones. The core includes no
gRPC, protobuf, curl or OpenSSL header. Run by the build (every library
target depends on it) and by ctest (layers.check).

usage: check-layers.py LIBDELEGATE_DIR [--stamp FILE]
"""
import os
import re
import sys

# Folders under src/, longest prefix first: (target, layer within the core).
FOLDERS = [
    ("executor/docker", "docker", None),
    ("executor/ecs", "ecs", None),
    ("runner", "runner", None),
    ("executor/host", "core", 6),
    ("executor/local", "core", 6),
    ("executor", "core", 6),
    ("manager/harness", "harness", None),
    ("manager/grpc", "grpc", None),
    ("manager", "core", 7),
    ("runtime", "grpc", None),
    ("server", "delegate", None),
    ("http", "http", None),
    ("aws", "aws", None),
    ("ops", "core", 7),
    ("scheduler", "core", 5),
    ("config", "core", 4),
    ("stage", "core", 3),
    ("policy", "core", 2),
    ("logs", "core", 1),
    ("util", "core", 0),
]

# Public headers (include/delegate/): (target, layer within the core).
PUBLIC = {
    "clock.h": ("core", 0), "env.h": ("core", 0), "export.h": ("core", 0),
    "log_sink.h": ("core", 0),
    "process.h": ("core", 0), "result.h": ("core", 0),
    "stage.h": ("core", 0), "version.h": ("core", 0),
    "console_log_sink.h": ("core", 1), "event_log.h": ("core", 1),
    "policy.h": ("core", 2),
    "executor.h": ("core", 3),
    "config.h": ("core", 4), "stage_file.h": ("core", 4),
    "scheduler.h": ("core", 5), "stage_run.h": ("core", 5),
    "host_executor.h": ("core", 6),
    "manager.h": ("core", 7), "metrics.h": ("core", 7),
    "instance.h": ("core", 0),
    "docker_executor.h": ("docker", None),
    "ecs_executor.h": ("ecs", None),
    "step_runner.h": ("runner", None),
    "harness.h": ("harness", None),
    "delegate_session.h": ("grpc", None),
    "runtime_service.h": ("grpc", None),
    "builtin_executors.h": ("delegate", None),
    "builtins.h": ("delegate", None),
    "server.h": ("delegate", None),
}

BELOW = {
    "core": set(),
    "http": {"core"},
    "docker": {"core", "http"},
    "aws": {"core", "http"},
    "runner": {"core", "proto"},
    "ecs": {"core", "http", "aws", "runner", "proto"},
    "harness": {"core", "http"},
    "grpc": {"core", "http", "proto"},
    "delegate": {"core", "http", "docker", "aws", "runner", "ecs", "harness",
                 "grpc", "proto"},
}

# Third-party headers the core must never see.
HEAVY = re.compile(r"^(grpc|grpcpp|google/protobuf|curl|openssl)/|\.pb\.h$")
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^">]+)[">]')


def place_of_source(rel):
    for prefix, target, layer in FOLDERS:
        if rel == prefix or rel.startswith(prefix + "/"):
            return target, layer
    return None


def place_of_include(path):
    if path.startswith("delegate/v1/"):
        return ("proto", None)
    if path.startswith("delegate/"):
        name = path[len("delegate/"):]
        return PUBLIC.get(name, ("?", None))
    return place_of_source(os.path.dirname(path))


def check(root):
    problems = []
    files = []
    for base in ("src", "include/delegate"):
        for dirpath, _, names in os.walk(os.path.join(root, base)):
            for name in sorted(names):
                if name.endswith((".h", ".cc", ".in")):
                    files.append(os.path.join(dirpath, name))
    for path in sorted(files):
        rel = os.path.relpath(path, root)
        if rel.startswith("include/delegate/"):
            name = rel[len("include/delegate/"):]
            if name not in PUBLIC:
                problems.append(f"{rel}: a public header the layer table "
                                "does not know; add it to PUBLIC in "
                                "scripts/check-layers.py")
                continue
            here = PUBLIC[name]
        else:
            here = place_of_source(os.path.dirname(rel[len("src/"):]))
            if here is None:
                if os.path.dirname(rel) == "src":
                    here = ("core", 0)  # version.cc.in
                else:
                    problems.append(f"{rel}: a folder the layer table does "
                                    "not know; add it to FOLDERS in "
                                    "scripts/check-layers.py")
                    continue
        target, layer = here
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                m = INCLUDE.match(line)
                if not m:
                    continue
                inc = m.group(1)
                if target == "core" and HEAVY.search(inc):
                    problems.append(
                        f"{rel}:{number}: includes <{inc}>; the core links "
                        "no gRPC, protobuf, curl or OpenSSL: move this code "
                        "to an extension")
                    continue
                there = place_of_include(inc)
                if there is None:
                    continue  # a system or third-party header
                their_target, their_layer = there
                if their_target == "?":
                    continue  # reported with the header itself
                if their_target != target and their_target not in BELOW[target]:
                    problems.append(
                        f"{rel}:{number}: includes {inc} of "
                        f"delegate::{their_target}, which delegate::{target} "
                        "does not build on")
                elif (their_target == target == "core" and layer is not None
                      and their_layer is not None and their_layer > layer):
                    problems.append(
                        f"{rel}:{number}: includes {inc}, a higher layer of "
                        "the core (see scripts/check-layers.py)")
    return problems


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = sys.argv[1]
    problems = check(root)
    for p in problems:
        print(f"check-layers: libdelegate/{p}", file=sys.stderr)
    if problems:
        return 1
    if len(sys.argv) == 4 and sys.argv[2] == "--stamp":
        with open(sys.argv[3], "w") as f:
            f.write("ok\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

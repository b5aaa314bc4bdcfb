#!/usr/bin/env python3
"""Seeds tests/fuzz/corpus/NAME/ from the project's existing test data.

The seeds are the string literals of the tests that exercise each parser
(stage files, env files, Harness payloads, HTTP requests, AWS and Docker
answers), the example stages, the AWS SigV4 test suite and ECS API examples
(read in place from the shared test data), and a few protobuf messages
encoded with protoc. Each seed is wrapped the way its target reads its input
(tests/fuzz/fuzz_input.h: strings from the front, decisions from the back).
Writes seed-NNN files; the files libFuzzer adds (named by their SHA-1) are
left alone. Run it again after changing a target's input layout:

    tests/fuzz/seed_corpus.py [--aws-testdata DIR]
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")


class Input:
    """Builds bytes that FuzzInput reads back as the same decisions."""

    def __init__(self):
        self.front = b""
        self.back = []  # in the order the target consumes them

    def byte(self, v):
        self.back.append(v & 0xFF)
        return self

    def bool(self, v):
        return self.byte(1 if v else 0)

    def range(self, lo, hi, v):
        span = hi - lo
        d = v - lo
        n, seen = 0, 0
        while seen < span:
            n += 1
            seen = (seen << 8) | 0xFF
        for i in reversed(range(n)):
            self.back.append((d >> (8 * i)) & 0xFF)
        return self

    def string(self, s):
        if isinstance(s, str):
            s = s.encode()
        self.front += s.replace(b"\\", b"\\\\") + b"\\;"
        return self

    def rest(self, s):
        if isinstance(s, str):
            s = s.encode()
        self.front += s
        return self

    def bytes(self):
        return self.front + bytes(reversed(self.back))


ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "'": "'",
           "0": "\0", "a": "\a", "b": "\b", "f": "\f", "v": "\v", "?": "?"}


def literals(path):
    """The string literals of a C++ file: raw strings, and runs of adjacent
    ordinary literals joined as the compiler joins them."""
    text = open(path, encoding="utf-8", errors="replace").read()
    out = []
    pos = 0
    token = re.compile(r'R"([a-z]*)\(|"|//[^\n]*|/\*.*?\*/|\'(?:\\.|[^\\\'])\'', re.S)
    pending = None
    while True:
        m = token.search(text, pos)
        if not m:
            break
        between = text[pos:m.start()]
        if pending is not None and between.strip():
            out.append(pending)
            pending = None
        tok = m.group(0)
        if tok.startswith("//") or tok.startswith("/*") or tok.startswith("'"):
            pos = m.end()
            continue
        if tok.startswith("R"):
            end = text.index(")" + m.group(1) + '"', m.end())
            value = text[m.end():end]
            pos = end + len(m.group(1)) + 2
        else:
            i = m.end()
            value = ""
            while text[i] != '"':
                if text[i] == "\\":
                    c = text[i + 1]
                    if c == "x":
                        h = re.match(r"[0-9a-fA-F]+", text[i + 2:]).group(0)
                        value += chr(int(h, 16) & 0xFF)
                        i += 2 + len(h)
                        continue
                    value += ESCAPES.get(c, c)
                    i += 2
                    continue
                value += text[i]
                i += 1
            pos = i + 1
        pending = value if pending is None else pending + value
    if pending is not None:
        out.append(pending)
    return out


def from_tests(pattern, keep):
    seen = []
    for path in sorted(glob.glob(os.path.join(ROOT, pattern))):
        for value in literals(path):
            if keep(value) and value not in seen:
                seen.append(value)
    return seen


def write(target, seeds):
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    for old in glob.glob(os.path.join(folder, "seed-*")):
        os.remove(old)
    unique = []
    for s in seeds:
        if isinstance(s, str):
            s = s.encode("latin-1", errors="replace") if all(ord(c) < 256 for c in s) else s.encode()
        if s not in unique:
            unique.append(s)
    for i, s in enumerate(unique):
        with open(os.path.join(folder, "seed-%03d" % i), "wb") as f:
            f.write(s)
    print("%-18s %4d seeds" % (target, len(unique)))


def protoc_encode(message, text):
    proto_dir = os.path.join(ROOT, "proto")
    files = ["delegate/v1/task.proto", "delegate/v1/session.proto",
             "delegate/v1/runtime.proto"]
    return subprocess.run(
        ["protoc", "-I", proto_dir, "-I", "/usr/include",
         "--encode=delegate.v1." + message] + files,
        input=text.encode(), capture_output=True, check=True).stdout


def looks_json(s):
    return s.lstrip().startswith(("{", "["))


def main():
    parser = argparse.ArgumentParser()
    default_aws = os.path.join(os.path.dirname(ROOT), "shared", "testdata", "aws")
    if not os.path.isdir(default_aws):
        default_aws = "/work/shared/testdata/aws"
    parser.add_argument("--aws-testdata", default=default_aws)
    args = parser.parse_args()

    # --- stage files
    stages = [open(p, encoding="utf-8").read() for p in sorted(
        glob.glob(os.path.join(ROOT, "examples", "*.yaml")) +
        glob.glob(os.path.join(ROOT, "examples", "*", "stage.yaml")) +
        glob.glob(os.path.join(ROOT, "bindings", "c", "*", "*.yaml")))]
    stages += from_tests("tests/config/*.cc",
                         lambda s: "steps" in s or "platform" in s)
    write("stage_file", stages)

    # --- env files and step output files
    envs = from_tests("tests/util/*.cc", lambda s: "=" in s and "\n" in s)
    envs += from_tests("tests/config/config_test.cc",
                       lambda s: "=" in s and "\n" in s)
    envs += from_tests("tests/executor/host/*.cc",
                       lambda s: "HARNESS_OUTPUT_FILE" in s or "=" in s and "\n" in s)
    envs += ["HARNESS_URL=https://app.harness.io\n# comment\nexport A='b c'\n"
             "B=\"quoted \\\" value\"\r\n\xef\xbb\xbfC=1\n",
             "NOT A LINE\n", "=value\n", "export =x\n"]
    write("env_file", envs)

    # --- Harness: runner events and registration
    events = from_tests("tests/manager/harness/*.cc",
                        lambda s: looks_json(s) and ("delegateRunnerEvents" in s or "resource" in s))
    events += ['{"delegateRunnerEvents":[{"accountId":"a","taskId":"t1",'
               '"runnerType":"RUNNER_TYPE_COMMON","taskType":"local_init"}]}', ""]
    write("runner_events", events)

    # --- Harness: task payloads, each under every mode
    payloads = from_tests("tests/manager/harness/*.cc", looks_json)
    seeds = []
    for p in payloads:
        for mode in range(5):
            seeds.append(Input().byte(mode).rest(p).bytes())
    for p in payloads[:20]:
        seeds.append(Input().byte(5).byte(1).string("sec").string("value-1").rest(p).bytes())
    write("harness_payload", seeds)

    # --- HTTP requests
    requests = from_tests("tests/http/*.cc",
                          lambda s: re.match(r"^(GET|POST|PUT|HEAD|DELETE|OPTIONS|PATCH|\r?\n)", s) is not None)
    seeds = []
    for r in requests:
        for which in range(3):
            seeds.append(Input().byte(which).range(1, 300, 7 + len(r) % 200).rest(r).bytes())
    write("http_request", seeds)

    # --- Docker's multiplexed stream
    def frame(t, payload):
        return bytes([t, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload
    streams = [frame(1, b"hello\n") + frame(2, b"oops\n"),
               frame(1, b"x" * 300) + frame(0, b""),
               frame(2, b"partial"), frame(1, b"ab")[:10], frame(3, b"tty?"), b""]
    write("docker_stream", [Input().range(1, 64, 1 + i * 9).rest(s).bytes()
                            for i, s in enumerate(streams)])

    # --- Docker Engine answers
    tar = bytearray(512)
    tar[0:8] = b"out.env\0"
    tar[124:136] = b"%011o\0" % 12
    tar[156] = ord("0")
    docker = [
        (0, 409, '{"message":"Conflict. The container name \\"/x\\" is already in use"}'),
        (0, 500, "plain text error"), (0, 404, ""),
        (1, 200, '{"ApiVersion":"1.43","Version":"24.0.7","MinAPIVersion":"1.12"}'),
        (2, 200, '{"status":"Pulling fs layer","progressDetail":{},"id":"a1"}\n'
                 '{"status":"Downloading","progress":"[==>   ] 1MB/5MB","id":"a1"}\n'
                 '{"errorDetail":{"message":"manifest unknown"},"error":"manifest unknown"}\n'),
        (3, 200, '{"Error":null,"StatusCode":3}'),
        (3, 200, '{"Error":{"Message":"container not running"},"StatusCode":0}'),
        (4, 200, '{"Id":"c1","State":{"Status":"exited","Running":false,"OOMKilled":true,'
                 '"ExitCode":137,"Error":""}}'),
        (5, 200, '{"ID":"e1","Running":false,"ExitCode":2,"Pid":0}'),
        (6, 201, '{"Id":"4fa6e0f0c678","Warnings":[]}'),
        (7, 200, '[{"Id":"a","Names":["/x"]},{"Id":"b"}]'),
        (7, 201, '{"Volumes":[{"Name":"v1"},{"Name":"v2"}],"Warnings":null}'),
        (7, 201, '{"Volumes":null}'),
        (8, 200, bytes(tar) + b"KEY=value\nX=1"),
    ]
    write("docker_answers", [Input().byte(m).range(100, 599, st).range(0, 4096, 64).rest(b).bytes()
                             for m, st, b in docker])

    # --- AWS answers
    aws = []
    ecs_examples = os.path.join(args.aws_testdata, "ecs-model", "examples-1.json")
    if os.path.exists(ecs_examples):
        for op, cases in json.load(open(ecs_examples))["examples"].items():
            for case in cases:
                if "output" in case:
                    mode = 1 if op == "DescribeTasks" else 0
                    aws.append((mode, 200, json.dumps(case["output"])))
    aws += from_tests("tests/aws/*.cc", lambda s: looks_json(s) and (
        "__type" in s or "tasks" in s or "AccessKeyId" in s or "TaskARN" in s or
        "rejectedLogEventsInfo" in s or "nextSequenceToken" in s))
    seeds = []
    for item in aws:
        if isinstance(item, tuple):
            mode, st, body = item
            seeds.append(Input().byte(mode).range(100, 599, st).rest(body).bytes())
        else:
            for mode in range(5):
                seeds.append(Input().byte(mode).range(100, 599, 400 if "__type" in item else 200)
                             .rest(item).bytes())
    for arn in ["arn:aws:ecs:us-east-1:123456789012:task/cluster/abc",
                "arn:aws-cn:logs:cn-north-1:1:log-group:/x:*", "arn:aws:ecs"]:
        seeds.append(Input().byte(5).range(100, 599, 200).rest(arn).bytes())
    for t in ["2016-02-25T06:03:31Z", "2024-01-01T00:00:00.123+02:00", "2024-13-01T00:00:00Z"]:
        seeds.append(Input().byte(6).range(100, 599, 200).rest(t).bytes())
    write("aws_json", seeds)

    # --- SigV4: the test suite's requests
    seeds = []
    for req in sorted(glob.glob(os.path.join(args.aws_testdata, "sigv4", "*", "*.req"))):
        body = open(req, "rb").read()
        for flags in [(True, True, True, False), (False, False, True, True)]:
            i = Input()
            for f in flags:
                i.bool(f)
            seeds.append(i.rest(body).bytes())
    write("sigv4", seeds)

    # --- JWE: as is, encrypted claims, minted tokens
    claims = ['{"sub":"acct","iss":"issuer","aud":["audience"],"exp":1700001200,'
              '"iat":1700000000,"jti":"5e0b2e2a-1111-4222-8333-944445555666"}',
              '{"sub":1}', "[]", "not json"]
    seeds = [Input().byte(0).rest(
        "eyJhbGciOiJkaXIiLCJlbmMiOiJBMTI4R0NNIn0..AAAAAAAAAAAAAAAA.YWJj.AAAAAAAAAAAAAAAAAAAAAA").bytes()]
    for c in claims:
        seeds.append(Input().byte(1).string('{"alg":"dir","enc":"A128GCM"}').bool(True).byte(7).rest(c).bytes())
    seeds.append(Input().byte(1).string('{"alg":"RSA","enc":"A128GCM"}').bool(False).byte(1).rest(claims[0]).bytes())
    seeds.append(Input().byte(2).string("kmpySmUISimoRrJL6NL73w").range(0, 4102444800, 1700000000).bytes())
    write("jwe", seeds)

    # --- the masker
    masker_texts = from_tests("tests/logs/masker_test.cc", lambda s: 3 <= len(s) <= 400)
    seeds = []
    for n, text in enumerate(masker_texts[:40]):
        i = Input().byte(1).string("hunter2-secret" if n % 2 else text[:12])
        i.byte(2)
        for k in range(2):
            i.range(0, 1 << 16, 5 * k + n).byte(0).byte(k + n).byte(n % 3)
        i.range(1, 97, 1 + n % 96)
        seeds.append(i.rest(text).bytes())
    write("masker", seeds)

    # --- the CloudWatch batcher
    seeds = []
    for n, (limit, repeat) in enumerate([(256, 1), (4, 1), (300, 12000), (10, 2)]):
        i = Input().range(0, 300, limit)
        if repeat > 1:
            i.range(1, 8, 8).range(1, 12000, repeat)
        else:
            i.range(1, 8, 1)
        for k in range(3):
            i.range(0, 1 << 24, 1000 * k + n).bool(k == 2).bool(k != 1).bool(k == 0)
            i.string(["line one", "\xff\xfe not utf-8", "", "caf\xc3\xa9 " * 40][(k + n) % 4].encode("latin-1"))
        seeds.append(i.bytes())
    write("cloudwatch_batch", seeds)

    # --- gRPC: Stage, SubmitStageRequest, DelegateBatch
    stage_text = '''name: "build" platform: "host" env { key: "A" value: "1" }
      steps { id: "compile" commands: "make" timeout { seconds: 60 } }
      steps { id: "test" commands: "make test" continue_on_error: true
              security_context { run_as_user: 1000 read_only_root_filesystem: true } }
      volumes { name: "cache" empty_dir { } }'''
    try:
        stage = protoc_encode("Stage", stage_text)
        submit = protoc_encode("SubmitStageRequest",
                               'task_id: "t-1" priority: PRIORITY_HIGH stage { %s }' % stage_text)
        delegate_batch = protoc_encode("DelegateBatch", '''
          messages { step_result { result { id: "compile" status: STEP_STATUS_SUCCESS exit_code: 0 } } }
          messages { log { chunk { task_id: "t-1" step_id: "compile" offset: 0 lines { text: "hi" } } } }
          messages { stage_result { result { task_id: "t-1" status: STEP_STATUS_FAILURE error: "x" } } }''')
        manager_batch = protoc_encode("ManagerBatch", '''
          messages { hello_ack { protocol_version: 1 session_id: "s" ping_interval { seconds: 10 } } }
          messages { dispatch { stage_id: "s1" lease_id: "l1" fencing_token: 1 attempt: 1
                                lease_duration { seconds: 30 } stage { %s } } }
          messages { lease_renewed { stage_id: "s1" lease_id: "l1" fencing_token: 1 lease_duration { seconds: 30 } } }
          messages { log_ack { stage_id: "s1" step_id: "test" fencing_token: 1 offset: 1 } }
          messages { cancel { stage_id: "s1" reason: "stop" } }
          messages { ping { nonce: 7 } }''' % stage_text)
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit("protoc --encode failed: %s" % getattr(e, "stderr", e))
    write("grpc_stage", [Input().byte(0).rest(stage).bytes(),
                         Input().byte(1).rest(submit).bytes(),
                         Input().byte(2).rest(delegate_batch).bytes()])
    seeds = []
    for actions in [[], [(0, 0), (1, 0), (3, 0), (2, 0), (4, 0)], [(5, 40), (5, 40), (1, 1)]]:
        i = Input().byte(len(actions))
        for a, b in actions:
            i.byte(a).byte(b)
        seeds.append(i.rest(manager_batch).bytes())
    write("grpc_session", seeds)


if __name__ == "__main__":
    main()

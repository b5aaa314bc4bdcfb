#!/usr/bin/env bash
# image.delegate: the delegate's container image, as scripts/build-delegate-image.sh
# builds it, against the delegate of this build:
#   - `delegate version` in the image prints this build's version, and the
#     commit the image is labelled with (org.opencontainers.image.revision);
#   - it runs as uid 10001, ENTRYPOINT /usr/local/bin/delegate, CMD server,
#     EXPOSE 3000;
#   - `delegate server --manager none` in it, with the ops port published on
#     127.0.0.1, answers 200 on /health and /ready; the health check of the
#     ECS task definitions (deploy/ecs/) passes inside it; SIGTERM (docker
#     stop) drains it and it exits 0.
#
#   delegate_image_test.sh DELEGATE_BINARY SOURCE_DIR [IMAGE]
#
# Exits 77 (skipped) when no Docker Engine answers or the image is missing,
# unless DELEGATE_REQUIRE_DOCKER is set: then that is a failure.
set -euo pipefail

binary=${1:?usage: delegate_image_test.sh DELEGATE_BINARY SOURCE_DIR [IMAGE]}
source_dir=${2:?usage: delegate_image_test.sh DELEGATE_BINARY SOURCE_DIR [IMAGE]}
image=${3:-libdelegate/delegate:latest}

failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }
unavailable() {
  if [ -n "${DELEGATE_REQUIRE_DOCKER:-}" ]; then
    echo "FAIL: $* (DELEGATE_REQUIRE_DOCKER is set, so this fails instead of skipping)" >&2
    exit 1
  fi
  echo "SKIP: $*"
  exit 77
}

command -v docker >/dev/null || unavailable "no docker command"
docker info >/dev/null 2>&1 ||
  unavailable "no Docker Engine answers; ./scripts/docker-test-setup.sh starts one"
docker image inspect "$image" >/dev/null 2>&1 ||
  unavailable "no image $image: run scripts/build-delegate-image.sh"

# ------------------------------------------------------------ version
want=$("$binary" version)
got=$(docker run --rm "$image" version)
want_version=$(sed -E 's/^delegate ([^ ]+) .*/\1/' <<<"$want")
got_version=$(sed -E 's/^delegate ([^ ]+) .*/\1/' <<<"$got")
got_commit=$(sed -nE 's/.*\(commit ([^)]+)\)$/\1/p' <<<"$got")
label_commit=$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.revision"}}' "$image")
if [ "$got_version" = "$want_version" ]; then
  pass "version: '$got'"
else
  fail "version: the image prints '$got', this build's delegate '$want': rebuild the image (scripts/build-delegate-image.sh)"
fi
if [ -n "$got_commit" ] && [ "$got_commit" = "$label_commit" ]; then
  pass "commit $got_commit, as the image's revision label says"
else
  fail "the image's delegate says commit '$got_commit', its revision label '$label_commit'"
fi
if [ "$got" != "$want" ]; then
  echo "note: the image was built from commit $got_commit, this build says '$want'; scripts/build-delegate-image.sh makes a current one"
fi

# ------------------------------------------------------------ configuration
user=$(docker image inspect -f '{{.Config.User}}' "$image")
uid=$(docker run --rm --entrypoint /usr/bin/id "$image" -u)
[ "${user%%:*}" = 10001 ] && [ "$uid" = 10001 ] && pass "runs as uid 10001" ||
  fail "user: image config '$user', id -u in the container '$uid'; expected 10001"
entrypoint=$(docker image inspect -f '{{json .Config.Entrypoint}} {{json .Config.Cmd}}' "$image")
[ "$entrypoint" = '["/usr/local/bin/delegate"] ["server"]' ] && pass "entrypoint and command $entrypoint" ||
  fail "entrypoint and command: $entrypoint"
ports=$(docker image inspect -f '{{json .Config.ExposedPorts}}' "$image")
[ "$ports" = '{"3000/tcp":{}}' ] && pass "exposes $ports" || fail "exposed ports: $ports"

# ------------------------------------------------------------ server
name=delegate-image-test-$$
cleanup() { docker rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
# --manager none needs something to serve: RuntimeService on a socket inside.
docker run -d --name "$name" -p 127.0.0.1::3000 "$image" \
  server --manager none --runtime-listen unix:/tmp/runtime.sock >/dev/null
port=""
for _ in $(seq 1 50); do
  port=$(docker port "$name" 3000/tcp 2>/dev/null | sed -nE 's/^127\.0\.0\.1:([0-9]+)$/\1/p' | head -1)
  [ -n "$port" ] && break
  sleep 0.1
done
status=000
if [ -n "$port" ]; then
  for _ in $(seq 1 100); do
    status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/health" || true)
    [ "$status" = 200 ] && break
    sleep 0.2
  done
fi
if [ "$status" = 200 ]; then
  pass "/health: 200 on 127.0.0.1:$port"
  ready=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/ready" || true)
  [ "$ready" = 200 ] && pass "/ready: 200" || fail "/ready: $ready"
else
  fail "/health: expected 200, got $status (port '${port}'); the container's log:"
  docker logs "$name" 2>&1 | tail -20 >&2
fi

# The healthCheck of the task definitions, run as ECS runs it (CMD form).
for file in "$source_dir"/deploy/ecs/*task-definition*.json; do
  [ -e "$file" ] || continue
  mapfile -t check < <(/usr/bin/python3 - "$file" <<'PY'
import json, sys
for c in json.load(open(sys.argv[1]))["containerDefinitions"]:
    cmd = (c.get("healthCheck") or {}).get("command") or []
    if cmd[:1] == ["CMD"]:
        print("\n".join(cmd[1:]))
        break
PY
  )
  [ ${#check[@]} -gt 0 ] || continue
  if docker exec "$name" "${check[@]}" >/dev/null 2>&1; then
    pass "the health check of $(basename "$file") passes in the container"
  else
    fail "the health check of $(basename "$file") fails in the container: ${check[*]}"
  fi
done

docker stop -t 20 "$name" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] && pass "SIGTERM: drained, exit 0" || {
  fail "SIGTERM: exit $code; the container's log:"
  docker logs "$name" 2>&1 | tail -20 >&2
}

if [ "$failures" -gt 0 ]; then
  echo "image.delegate: $failures check(s) failed ($image)" >&2
  exit 1
fi
echo "image.delegate: all checks passed ($image)"

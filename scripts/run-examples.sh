#!/usr/bin/env bash
# The main job: the sample host stage, then the sample container stage when a
# Docker Engine answers (and how to start one when it does not).
set -euo pipefail
cd "$(dirname "$0")/.."
delegate=./build/apps/delegate/delegate
"$delegate" exec examples/hello.yaml
echo
if curl -sf --max-time 3 --unix-socket /var/run/docker.sock http://localhost/_ping >/dev/null 2>&1 ||
   { [ -n "${DOCKER_HOST:-}" ] && docker version >/dev/null 2>&1; }; then
  if ! docker image inspect delegate-test/busybox:latest >/dev/null 2>&1; then
    ./scripts/docker-test-setup.sh
  fi
  "$delegate" exec examples/hello-docker.yaml
else
  cat <<MSG
No Docker Engine answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}, so the
container stage (examples/hello-docker.yaml) was not run. To run it:
  ./scripts/docker-test-setup.sh      # starts dockerd and builds the test image
  ./build/apps/delegate/delegate exec examples/hello-docker.yaml
MSG
fi
echo
./scripts/harness-demo.sh
./scripts/grpc-demo.sh

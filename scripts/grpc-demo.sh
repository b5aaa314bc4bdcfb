#!/usr/bin/env bash
# Stages pushed over DelegateSession on this machine: the reference manager
# with a gRPC port, two `delegate server --manager grpc://...` connected to
# it, the sample stage (examples/hello.yaml) three times through --stage, the
# results printed as they finish, then SIGTERM (drain, close the session).
# Uses ./build.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-./build}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
"$build/apps/reference-manager/reference-manager" --grpc-listen 127.0.0.1:0 \
  --stage examples/hello.yaml --stage examples/hello.yaml --stage examples/hello.yaml \
  > "$dir/manager.out" 2>&1 &
for _ in $(seq 100); do grep -q grpc-listening "$dir/manager.out" && break; sleep 0.05; done
address=$(awk '/^grpc-listening/ {print $2}' "$dir/manager.out")
echo "reference manager at grpc://$address"

pids=()
for name in push-a push-b; do
  HARNESS_NAME=$name MAX_STAGES=2 HTTPS_BIND=127.0.0.1:0 HARNESS_WORKDIR="$dir/$name" \
    "$build/apps/delegate/delegate" server --manager "grpc://$address" > "$dir/$name.log" 2>&1 &
  pids+=($!)
done
finished=0
for _ in $(seq 300); do
  finished=$(grep -c '^stage ' "$dir/manager.out" || true)
  [ "$finished" -ge 3 ] && break
  sleep 0.1
done
echo "results, as the manager printed them:"
grep -v '^{' "$dir/manager.out" | grep -v '^grpc-listening' | sed 's/^/  /'
kill -TERM "${pids[@]}"
wait "${pids[@]}"
for name in push-a push-b; do
  echo "$name log (one JSON event per line):"
  sed 's/^/  /' "$dir/$name.log"
done
[ "$finished" -ge 3 ] && ! grep '^stage ' "$dir/manager.out" | grep -qv SUCCESS

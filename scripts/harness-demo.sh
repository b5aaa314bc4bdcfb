#!/usr/bin/env bash
# A stage through the Harness protocol on this machine: the reference manager
# on loopback, `delegate server` connected to it, the stage in
# examples/harness-stage.json submitted, its result printed, then SIGTERM
# (drain, unregister). Uses ./build.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-./build}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
. scripts/reference-manager.sh
start_reference_manager "$build" demo-account "$dir"
echo "reference manager at $url"

HARNESS_ACCOUNT_ID=demo-account HARNESS_TOKEN=$(cat "$dir/token") HARNESS_URL=$url \
HARNESS_NAME=demo-delegate POLL_INTERVAL_MILLISECS=200 HTTPS_BIND=127.0.0.1:0 \
HARNESS_WORKDIR="$dir" "$build/apps/delegate/delegate" server > "$dir/delegate.log" 2>&1 &
delegate_pid=$!
for _ in $(seq 100); do grep -q '"msg":"connected"' "$dir/delegate.log" && break; sleep 0.05; done

curl -sf -X POST --data-binary @examples/harness-stage.json "$url/admin/stages" > /dev/null
status=""
for _ in $(seq 300); do
  stage=$(curl -sf "$url/admin/stages/hello-harness")
  status=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["status"])' "$stage")
  [ "$status" = SUCCESS ] || [ "$status" = FAILURE ] && break
  sleep 0.1
done
python3 - "$stage" "$(curl -sf "$url/admin/logs?key=hello-harness/step-0")" <<'PY'
import json, sys
stage, logs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"stage {stage['id']}: {stage['status']} on delegate {stage['delegate_id']}")
for t in stage["tasks"]:
    data = t["data"] or {}
    extra = f" outputs={data['output_vars']}" if data.get("output_vars") else ""
    print(f"  {t['type']:<14} {t['code']:<6} {data.get('command_execution_status', '')}{extra}")
print("log service, step 0:")
for line in logs:
    print("  | " + line.rstrip("\n"))
PY
kill -TERM "$delegate_pid"
wait "$delegate_pid"
echo "delegate log (one JSON event per line):"
grep -v '"msg":"output"' "$dir/delegate.log" | sed 's/^/  /'
[ "$status" = SUCCESS ]

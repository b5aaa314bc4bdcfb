#!/usr/bin/env bash
# The idle footprint of `delegate server`: starts the reference manager on
# loopback and a delegate connected to it over the Harness protocol, waits
# until the delegate is registered and has sat idle (nothing running) for
# SETTLE seconds, then reads its resident memory and thread count from
# /proc/PID/status. Prints one line per reading; run it after a Release or
# RelWithDebInfo build.
#
#   bench/idle_footprint.sh [--build DIR] [--settle SECONDS] [--readings N]
#
# Figures and the command that made them: bench/README.md ("Idle footprint").
set -euo pipefail
cd "$(dirname "$0")/.."
build=./build
settle=10
readings=3
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --settle) settle="$2"; shift 2 ;;
    --readings) readings="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "idle_footprint.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for bin in "$build/apps/delegate/delegate" "$build/apps/reference-manager/reference-manager"; do
  [ -x "$bin" ] || { echo "idle_footprint.sh: $bin is missing: build first" >&2; exit 2; }
done
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
. scripts/reference-manager.sh
start_reference_manager "$build" bench-account "$dir" || exit 1

HARNESS_ACCOUNT_ID=bench-account HARNESS_TOKEN_FILE="$dir/token" HARNESS_URL=$url \
HARNESS_NAME=idle-delegate HTTPS_BIND=127.0.0.1:0 HARNESS_WORKDIR="$dir" \
  "$build/apps/delegate/delegate" server > "$dir/delegate.log" 2>&1 &
pid=$!
for _ in $(seq 200); do grep -q '"msg":"connected"' "$dir/delegate.log" && break; sleep 0.05; done
grep -q '"msg":"connected"' "$dir/delegate.log" || {
  echo "idle_footprint.sh: the delegate did not connect; its log:" >&2
  cat "$dir/delegate.log" >&2
  exit 1
}
for i in $(seq "$readings"); do
  sleep "$settle"
  kill -0 "$pid" 2>/dev/null || { echo "idle_footprint.sh: the delegate exited" >&2; exit 1; }
  awk -v n="$i" '
    /^VmRSS:/ {rss = $2} /^VmHWM:/ {hwm = $2} /^Threads:/ {threads = $2}
    END {printf "reading %d: RSS %.1f MB (peak %.1f MB), %d threads\n", n, rss / 1024, hwm / 1024, threads}
  ' "/proc/$pid/status"
done

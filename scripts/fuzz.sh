#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang-14 under ASan and
# UBSan, and runs each over its corpus for a while. Any crash, leak, UBSan
# report or timeout fails the run; its input is kept under
# BUILD/fuzz-run/NAME/artifacts/ (add it to tests/fuzz/corpus/NAME/ with the
# fix). Prints executions per target as a Markdown table.
#
#   scripts/fuzz.sh [--seconds N] [--jobs J] [--build DIR] [--max-len B]
#                   [--merge] [TARGET...]
#
#   --seconds N  how long each target runs (default 600: the README figures)
#   --jobs J     targets run at once (default 2)
#   --build DIR  the clang build (default build-fuzz)
#   --max-len B  longest input libFuzzer makes (default 65536, so that the
#                long limits are reached; 4096 gives 1.7x the executions)
#   --merge      afterwards, add the inputs that found new coverage to the
#                checked-in corpus (libFuzzer -merge=1)
# CI runs `scripts/fuzz.sh --seconds 15`.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=600
jobs=2
build=build-fuzz
merge=0
max_len=65536
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --build) build="$2"; shift 2 ;;
    --merge) merge=1; shift ;;
    --max-len) max_len="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if [ ${#targets[@]} -eq 0 ]; then
  for d in tests/fuzz/corpus/*/; do targets+=("$(basename "$d")"); done
fi
for t in "${targets[@]}"; do
  if [ ! -f "tests/fuzz/${t}_fuzz.cc" ]; then
    echo "fuzz.sh: no target '$t' (tests/fuzz/${t}_fuzz.cc)" >&2
    exit 2
  fi
done

cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
  -DDELEGATE_FUZZ=ON -DDELEGATE_BUILD_TESTS=OFF -DDELEGATE_BUILD_APPS=OFF \
  -DDELEGATE_BUILD_BENCH=OFF -DDELEGATE_BUILD_C=OFF -DDELEGATE_BUILD_PYTHON=OFF >/dev/null
cmake --build "$build" -j"$jobs" --target "${targets[@]/#/fuzz_}"

export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$PWD/tests/fuzz/ubsan.supp"
export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp"
run_dir="$build/fuzz-run"

run_one() {
  local t="$1" dir="$run_dir/$1"
  rm -rf "$dir" && mkdir -p "$dir/new" "$dir/artifacts"
  local rc=0
  "$build/tests/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=25 \
    -rss_limit_mb=2560 -max_len="$max_len" -print_final_stats=1 \
    -artifact_prefix="$dir/artifacts/" "$dir/new" "tests/fuzz/corpus/$t" \
    >"$dir/log" 2>&1 || rc=$?
  echo "$rc" >"$dir/rc"
}
export -f run_one
export build run_dir seconds max_len
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one {}'

failed=0
echo
echo "| target | seconds | executions | per second | corpus | result |"
echo "|---|---:|---:|---:|---:|---|"
for t in "${targets[@]}"; do
  dir="$run_dir/$t"
  rc=$(cat "$dir/rc")
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
  corpus=$(ls "tests/fuzz/corpus/$t" "$dir/new" | grep -vc ':$\|^$' || true)
  result=ok
  if [ "$rc" -ne 0 ] || ls "$dir/artifacts" | grep -q .; then
    result="FAILED (rc $rc; $dir/log, $dir/artifacts/)"
    failed=1
  fi
  printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "$seconds" "${execs:-?}" \
    "$(( ${execs:-0} / seconds ))" "$corpus" "$result"
done
if [ "$merge" -eq 1 ] && [ "$failed" -eq 0 ]; then
  for t in "${targets[@]}"; do
    "$build/tests/fuzz/fuzz_$t" -merge=1 -max_len=65536 "tests/fuzz/corpus/$t" \
      "$run_dir/$t/new" >"$run_dir/$t/merge.log" 2>&1
  done
  echo "merged new inputs into tests/fuzz/corpus/"
fi
exit "$failed"

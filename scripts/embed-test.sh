#!/usr/bin/env bash
# Builds examples/embed against libdelegate every way a program takes it in,
# and runs it each time:
#   1. an installed static libdelegate, found with only CMAKE_PREFIX_PATH;
#   2. the same prefix moved elsewhere (relocatable);
#   3. an installed shared libdelegate (libdelegate.so.MAJOR), and moved;
#   4. add_subdirectory of this source tree;
#   5. pkg-config (`pkg-config --cflags --libs libdelegate`), static and
#      shared;
# the C API's example (bindings/c/example) built with a plain `cc` against
# the moved static prefix's libdelegate_c.so;
# and checks that find_package(libdelegate 2.0) is refused.
# usage: scripts/embed-test.sh [WORKDIR]   (default: a temporary directory)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
mkdir -p "$work"
jobs=${JOBS:-2}
stage=$root/examples/embed/stage.yaml
host_stage=$root/examples/hello.yaml

say() { printf '\n== %s\n' "$*"; }
fail() { echo "embed-test: FAIL: $*" >&2; exit 1; }

# Runs the example on the dry-run stage and on the host sample stage.
check() {
  local program=$1 what=$2 out
  out=$("$program" "$stage") || fail "$what: the dry-run stage failed: $out"
  grep -q 'would run: make -j2' <<<"$out" || fail "$what: no dry-run line in: $out"
  grep -q '"VERSION": *"(dry run)"' <<<"$out" || fail "$what: no output in: $out"
  out=$(HARNESS_WORKDIR="$work/workdir" "$program" "$host_stage") ||
    fail "$what: the host stage failed: $out"
  grep -q '"status": *"SUCCESS"' <<<"$out" || fail "$what: host stage: $out"
  echo "embed-test: $what: ok"
}

install_libdelegate() {  # KIND (static|shared) PREFIX
  local kind=$1 prefix=$2 shared=OFF c=ON
  [ "$kind" = shared ] && shared=ON c=OFF  # libdelegate_c.so: once is enough
  cmake -S "$root" -B "$work/build-$kind" -DBUILD_SHARED_LIBS=$shared \
    -DDELEGATE_BUILD_TESTS=OFF -DDELEGATE_BUILD_BENCH=OFF \
    -DDELEGATE_BUILD_APPS=OFF -DDELEGATE_BUILD_PYTHON=OFF -DDELEGATE_BUILD_C=$c \
    -DCMAKE_INSTALL_PREFIX="$prefix" >/dev/null
  cmake --build "$work/build-$kind" -j"$jobs" >/dev/null
  cmake --install "$work/build-$kind" >/dev/null
}

build_example() {  # BUILDDIR CMAKE-ARGS...
  local dir=$1
  shift
  rm -rf "$dir"
  cmake -S "$root/examples/embed" -B "$dir" "$@" >/dev/null
  cmake --build "$dir" -j"$jobs" >/dev/null
}

for kind in static shared; do
  say "$kind: install, find_package with CMAKE_PREFIX_PATH"
  prefix=$work/prefix-$kind
  rm -rf "$prefix" "$work/moved-$kind"
  install_libdelegate "$kind" "$prefix"
  build_example "$work/embed-$kind" -DCMAKE_PREFIX_PATH="$prefix"
  check "$work/embed-$kind/embed" "find_package ($kind)"
  if [ "$kind" = shared ]; then
    ldd "$work/embed-$kind/embed" | grep -q "libdelegate.so.0 => $prefix" ||
      fail "the shared example does not load $prefix's libdelegate.so.0"
    soname=$(objdump -p "$prefix/lib/libdelegate.so" | awk '/SONAME/ {print $2}')
    [ "$soname" = libdelegate.so.0 ] || fail "SONAME is '$soname', not libdelegate.so.0"
  else
    ! ldd "$work/embed-$kind/embed" | grep -q libdelegate ||
      fail "the static example loads a libdelegate shared library"
  fi

  say "$kind: the prefix moved"
  mv "$prefix" "$work/moved-$kind"
  build_example "$work/embed-moved-$kind" -DCMAKE_PREFIX_PATH="$work/moved-$kind"
  check "$work/embed-moved-$kind/embed" "relocated prefix ($kind)"

  if [ "$kind" = static ]; then
    say "C API: cc against the moved prefix's libdelegate_c.so"
    moved=$work/moved-$kind
    cc -std=c99 -Wall -Werror "$root/bindings/c/example/run_stage.c" \
      -I"$moved/include" -L"$moved/lib" -ldelegate_c -Wl,-rpath,"$moved/lib" \
      -o "$work/run-stage-c"
    out=$("$work/run-stage-c" "$root/bindings/c/example/stage.yaml") ||
      fail "C API example: $out"
    grep -q 'would run: make -j2' <<<"$out" || fail "C API example: $out"
    grep -q '"status": *"SUCCESS"' <<<"$out" || fail "C API example: $out"
    echo "embed-test: C API (cc, moved prefix): ok"
  fi

  say "$kind: pkg-config"
  export PKG_CONFIG_PATH="$work/moved-$kind/lib/pkgconfig"
  pkg-config --exists libdelegate || fail "pkg-config does not find libdelegate"
  [ "$(pkg-config --modversion libdelegate)" = "$(sed -nE 's/^project\(libdelegate VERSION ([0-9.]+).*/\1/p' "$root/CMakeLists.txt")" ] ||
    fail "pkg-config's version differs from the project's"
  # shellcheck disable=SC2046
  g++ -std=c++20 -O1 "$root/examples/embed/main.cc" -o "$work/embed-pc-$kind" \
    $(pkg-config --cflags --libs libdelegate) \
    -Wl,-rpath,"$work/moved-$kind/lib"
  check "$work/embed-pc-$kind" "pkg-config ($kind)"
  unset PKG_CONFIG_PATH
done

say "add_subdirectory"
build_example "$work/embed-subdir" -DLIBDELEGATE_SOURCE_DIR="$root"
check "$work/embed-subdir/embed" "add_subdirectory"
[ ! -e "$work/embed-subdir/libdelegate/apps/delegate/delegate" ] ||
  fail "add_subdirectory built the delegate binary too"
[ ! -e "$work/embed-subdir/libdelegate/tests" ] ||
  fail "add_subdirectory configured the tests too"

say "find_package(libdelegate 2.0) is refused"
mkdir -p "$work/want-2"
cat >"$work/want-2/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.25)
project(want_two LANGUAGES CXX)
find_package(libdelegate 2.0 REQUIRED)
CMAKE
if out=$(cmake -S "$work/want-2" -B "$work/want-2/build" \
           -DCMAKE_PREFIX_PATH="$work/moved-static" 2>&1); then
  fail "find_package(libdelegate 2.0) was accepted"
fi
grep -q 'version: 0\.1\.0' <<<"$out" || fail "the refusal does not name the version: $out"
echo "embed-test: find_package(libdelegate 2.0): refused, as it should be"

echo
echo "embed-test: all ways pass"

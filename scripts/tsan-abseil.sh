#!/usr/bin/env bash
# Builds Debian's abseil, the same version and patches as the installed
# libabsl-dev, as shared libraries instrumented with ThreadSanitizer, and
# prints the folder that holds them.
#
#   scripts/tsan-abseil.sh            prints e.g. ~/.cache/libdelegate/absl-tsan-VERSION/lib
#
# Why: the library and gRPC lock with absl::Mutex, which waits on its own
# futex code. Debian's libabsl_*.so are not instrumented, so TSan would not
# see those locks and would report every access they guard as a race. The
# DELEGATE_TSAN build compiles against Debian's headers and links Debian's
# .so files; its tests run with LD_LIBRARY_PATH at this build, which has the
# same sonames, so the instrumented absl::Mutex (and its TSan annotations) is
# what gets loaded, by our code and by gRPC alike.
#
# The build is kept in ${DELEGATE_TSAN_ABSEIL_DIR:-$HOME/.cache/libdelegate/absl-tsan-VERSION}
# and reused while it is complete for that version. The source comes from
# the Debian archive that apt is configured with (its signed index), so
# Debian's patches apply and absl/base/options.h matches the installed one.
set -euo pipefail

version=$(dpkg-query -W -f='${Version}' libabsl-dev 2>/dev/null) || {
  echo "tsan-abseil: libabsl-dev is not installed (scripts/install-deps.sh)" >&2
  exit 1
}
dir=${DELEGATE_TSAN_ABSEIL_DIR:-$HOME/.cache/libdelegate/absl-tsan-$version}
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
system_libdir=/usr/lib/$multiarch
cc=${CC_TSAN:-clang-14}
cxx=${CXX_TSAN:-clang++-14}

# The build is usable when every installed libabsl soname has an
# instrumented twin (a missing one would be loaded from Debian's,
# uninstrumented) and its options.h is the installed one (the same ABI).
check() {
  local ok=0 so
  if [ ! -f "$dir/lib/.complete" ]; then
    return 1
  fi
  if ! cmp -s "$dir/include/absl/base/options.h" /usr/include/absl/base/options.h; then
    echo "tsan-abseil: $dir/include/absl/base/options.h differs from /usr/include/absl/base/options.h" >&2
    ok=1
  fi
  for so in "$system_libdir"/libabsl_*.so.[0-9]*; do
    case "$so" in *.so.*.*) continue ;; esac  # the soname links, not the files
    if [ ! -e "$dir/lib/$(basename "$so")" ]; then
      echo "tsan-abseil: $dir/lib has no $(basename "$so")" >&2
      ok=1
    fi
  done
  return $ok
}

if check 2>/dev/null; then
  echo "$dir/lib"
  exit 0
fi

for tool in "$cc" "$cxx" cmake dpkg-source apt-get; do
  command -v "$tool" >/dev/null || {
    echo "tsan-abseil: $tool not found (scripts/install-deps.sh)" >&2
    exit 1
  }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/absl-tsan.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Debian's source package through apt, with a private state folder: the
# machine's own apt lists and configuration stay as they are. The deb-src
# entries are the machine's deb entries (one-line and deb822 forms).
mkdir -p "$work/apt/parts" "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/src"
if [ -f /etc/apt/sources.list ]; then
  sed -nE 's/^[[:space:]]*deb[[:space:]]/deb-src /p' /etc/apt/sources.list > "$work/apt/parts/system.list"
fi
for f in /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] || continue
  sed -nE 's/^[[:space:]]*deb[[:space:]]/deb-src /p' "$f" > "$work/apt/parts/$(basename "$f")"
done
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  sed -E 's/^Types:.*/Types: deb-src/' "$f" > "$work/apt/parts/$(basename "$f")"
done
apt_opts=(
  -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/apt/parts"
  -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache"
  -o "APT::Sandbox::User=$(id -un)" -q
)
echo "tsan-abseil: fetching abseil $version (Debian source)" >&2
apt-get "${apt_opts[@]}" update >&2
(cd "$work/src" && apt-get "${apt_opts[@]}" source --download-only "abseil=$version" >&2)
dpkg-source -x "$work/src"/abseil_*.dsc "$work/src/abseil" >&2

# As debian/rules builds its shared variant (C++17, shared, the patched
# sonames), with clang and -fsanitize=thread; no tests.
echo "tsan-abseil: building abseil $version with -fsanitize=thread into $dir" >&2
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  export CCACHE_BASEDIR="$work/src/abseil" CCACHE_NOHASHDIR=1
fi
rm -rf "$dir"
cmake -S "$work/src/abseil" -B "$work/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" "${launcher[@]}" \
  -DCMAKE_CXX_STANDARD=17 -DABSL_PROPAGATE_CXX_STD=ON -DBUILD_SHARED_LIBS=ON \
  -DBUILD_TESTING=OFF -DABSL_BUILD_TESTING=OFF \
  -DCMAKE_C_FLAGS="-fsanitize=thread -fno-omit-frame-pointer" \
  -DCMAKE_CXX_FLAGS="-fsanitize=thread -fno-omit-frame-pointer" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=thread" \
  -DCMAKE_INSTALL_PREFIX="$dir" -DCMAKE_INSTALL_LIBDIR=lib >&2
nice -n 19 cmake --build "$work/build" -j"${DELEGATE_TSAN_ABSEIL_JOBS:-2}" >&2
cmake --install "$work/build" >&2
touch "$dir/lib/.complete"

if ! check; then
  echo "tsan-abseil: the build in $dir does not match the installed libabsl-dev $version" >&2
  exit 1
fi
echo "$dir/lib"

#!/usr/bin/env bash
# Builds the delegate's container image, libdelegate/delegate:VERSION and
# :latest, from this checkout, offline (no image registry is reachable):
#   1. the two base images, each made from Debian bookworm packages with
#      mmdebstrap into a tarball that is `docker import`ed, and kept by a tag
#      that hashes their recipe, so a second run skips this step:
#        libdelegate/builder-base:bookworm-HASH  compiler, CMake, -dev packages
#        libdelegate/runtime-base:bookworm-HASH  essential set, CA certificates,
#                                                the binary's shared libraries
#   2. `docker build --network none -f deploy/docker/Dockerfile .`: compiles
#      the delegate in the first and copies the stripped binary into the second
#      (the build stage stays as libdelegate/delegate-build:latest, the cache
#      of the next run; what earlier runs left is removed).
# Prints the image's tags and size. Needs a Docker Engine, and the Debian
# archive for step 1 (it installs mmdebstrap with apt-get when missing).
#
#   scripts/build-delegate-image.sh [--rebuild-bases]
#
# --rebuild-bases makes the base images again (to take Debian's latest
# security updates); DELEGATE_IMAGE_JOBS sets the compile's parallelism
# (default: the number of cores).
set -euo pipefail
cd "$(dirname "$0")/.."

repo=libdelegate/delegate
suite=bookworm
rebuild_bases=false
for arg in "$@"; do
  case "$arg" in
    --rebuild-bases) rebuild_bases=true ;;
    -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-delegate-image: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

say() { echo "build-delegate-image: $*"; }
die() { echo "build-delegate-image: $*" >&2; exit 1; }

docker info >/dev/null 2>&1 ||
  die "no Docker Engine answers (DOCKER_HOST or /var/run/docker.sock); ./scripts/docker-test-setup.sh starts one"

version=$(sed -nE 's/^project\(libdelegate VERSION ([0-9][0-9.]*).*/\1/p' CMakeLists.txt)
[ -n "$version" ] || die "no 'project(libdelegate VERSION x.y.z' line in CMakeLists.txt"
# The same commit CMake embeds in a build of this checkout.
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

# What the build needs (scripts/install-deps.sh's build packages, without the
# test ones) and what the binary links at run time. A library the binary
# needs and the runtime list lacks fails the build (the Dockerfile runs it).
builder_packages=(
  g++ make cmake pkg-config
  libabsl-dev rapidjson-dev libyaml-dev libcurl4-openssl-dev libssl-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
)
runtime_packages=(
  ca-certificates
  libabsl20220623 libcurl4 libgrpc++1.51 libgrpc29 libprotobuf32 libssl3
  libstdc++6 libyaml-0-2
)
# No documentation, manual pages, translations or iconv modules in either
# image (copyright files stay); merged /usr without the usrmerge package (and
# the Perl it would bring).
common_options=(
  --variant=essential
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --aptopt='Acquire::Retries "3"'
  --dpkgopt=force-unsafe-io
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/lib/x86_64-linux-gnu/gconv/*'
)
recipe_hash() { printf '%s\n' "$suite" "${common_options[@]}" "$@" | sha256sum | cut -c1-12; }
builder_base=libdelegate/builder-base:$suite-$(recipe_hash "${builder_packages[@]}")
runtime_base=libdelegate/runtime-base:$suite-$(recipe_hash "${runtime_packages[@]}")

# The chroots and tarballs go to memory when there is room (unpacking and
# removing a few hundred MB of small files is much slower on disk).
tmp=/tmp
if [ -d /dev/shm ] && [ -w /dev/shm ] &&
  [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt 3000000 ]; then
  tmp=/dev/shm
fi
work=$(mktemp -d "$tmp/build-delegate-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

# make_base TAG PACKAGES...: mmdebstrap into a tarball, then import it.
make_base() {
  local tag=$1 name=${1//[:\/]/_}
  shift
  local include
  include=$(IFS=,; echo "$*")
  if ! TMPDIR=$work mmdebstrap "${common_options[@]}" --include="$include" "$suite" "$work/$name.tar" \
    >"$work/$name.log" 2>&1; then
    tail -30 "$work/$name.log" >&2
    echo "build-delegate-image: mmdebstrap for $tag failed (the Debian archive must be reachable)" >&2
    return 1
  fi
  docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' \
    -m "Debian $suite: $*" "$work/$name.tar" "$tag" >/dev/null
  rm -f "$work/$name.tar"
}

started=$(date +%s)
missing=()
for tag in "$builder_base" "$runtime_base"; do
  if $rebuild_bases || ! docker image inspect "$tag" >/dev/null 2>&1; then missing+=("$tag"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v mmdebstrap >/dev/null; then
    say "installing mmdebstrap"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -q --no-install-recommends mmdebstrap >/dev/null 2>&1 ||
      { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q --no-install-recommends mmdebstrap >/dev/null; } ||
      die "cannot install mmdebstrap with apt-get"
  fi
  # Both at once: most of the time is spent waiting on downloads and dpkg.
  pids=()
  for tag in "${missing[@]}"; do
    say "making $tag from Debian $suite packages"
    if [ "$tag" = "$builder_base" ]; then
      make_base "$tag" "${builder_packages[@]}" &
    else
      make_base "$tag" "${runtime_packages[@]}" &
    fi
    pids+=($!)
  done
  failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  [ "$failed" -eq 0 ] || die "a base image could not be made"
  say "base images ready in $(($(date +%s) - started)) s"
else
  say "base images cached: $builder_base, $runtime_base"
fi

build_started=$(date +%s)
say "building $repo:$version (commit $commit)"
# The engine's own legacy builder takes the local base images as they are;
# --network none: the build cannot fetch anything. The build stage is tagged
# too (libdelegate/delegate-build:latest), so that it stays the cache of the
# next run and what earlier runs left (labelled io.libdelegate.build) can be
# removed without touching any other image.
build_args=(
  --network none -f deploy/docker/Dockerfile
  --build-arg BUILDER_BASE="$builder_base"
  --build-arg RUNTIME_BASE="$runtime_base"
  --build-arg JOBS="${DELEGATE_IMAGE_JOBS:-$(nproc)}"
  --build-arg DELEGATE_VERSION="$version"
  --build-arg DELEGATE_GIT_COMMIT="$commit"
)
if ! { DOCKER_BUILDKIT=0 docker build "${build_args[@]}" --target build \
  -t libdelegate/delegate-build:latest . &&
  DOCKER_BUILDKIT=0 docker build "${build_args[@]}" \
    -t "$repo:$version" -t "$repo:latest" .; } >"$work/build.log" 2>&1; then
  tail -40 "$work/build.log" >&2
  die "docker build failed"
fi
docker image prune -f --filter label=io.libdelegate.build >/dev/null || true
size=$(docker image inspect -f '{{.Size}}' "$repo:$version")
say "built $repo:$version and $repo:latest: $((size / 1000000)) MB, $(docker run --rm "$repo:$version" version) in $(($(date +%s) - build_started)) s (total $(($(date +%s) - started)) s)"

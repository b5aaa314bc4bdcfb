#!/usr/bin/env bash
# Installs what libdelegate needs to build and test, from Debian 12 packages.
set -euo pipefail
packages=(
  cmake g++ make pkg-config git ca-certificates ccache
  # The thread-safety and ThreadSanitizer build, in CI; dpkg-dev unpacks
  # Debian's abseil source for its instrumented build (scripts/tsan-abseil.sh).
  # The fuzz targets (tests/fuzz, scripts/fuzz.sh): libFuzzer and clang's
  # sanitizer runtimes.
  clang-14 dpkg-dev libfuzzer-14-dev libclang-rt-14-dev
  libabsl-dev rapidjson-dev libyaml-dev
  libgtest-dev libgmock-dev libbenchmark-dev libcurl4-openssl-dev curl libssl-dev
  # The gRPC contracts (proto/): C++ code generation and runtime, and Python
  # for the contract tests.
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  python3-grpcio python3-protobuf
  # The Docker tests: an engine, the test image's rootfs, a loopback registry.
  docker.io iptables busybox-static docker-registry apache2-utils
  # The delegate's image (scripts/build-delegate-image.sh): its base images.
  mmdebstrap
  # The Python module (bindings/python): pybind11 and the headers of
  # Debian's python3, and pytest for its tests.
  python3-pybind11 python3-dev python3-pytest
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"

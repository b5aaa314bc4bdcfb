#!/usr/bin/env bash
# layers.core_only: the program built from delegate::core alone runs a host
# stage, and neither its dynamic dependencies nor its symbols bring gRPC,
# protobuf, curl or OpenSSL.
set -euo pipefail
program=$1
out=$("$program")
echo "$out"
grep -q '| hello from the core' <<<"$out" || { echo "FAIL: the step's line is missing" >&2; exit 1; }
grep -q '"status": *"SUCCESS"' <<<"$out" || { echo "FAIL: the stage did not succeed" >&2; exit 1; }
grep -q '"VERSION": *"1.2"' <<<"$out" || { echo "FAIL: the output variable is missing" >&2; exit 1; }
heavy='grpc|protobuf|curl|libssl|libcrypto'
if ldd "$program" | grep -Ei "$heavy"; then
  echo "FAIL: $program needs the libraries above; delegate::core must not" >&2
  exit 1
fi
if nm -C "$program" | grep -Ei ' (grpc::|google::protobuf::|curl_|SSL_|EVP_)' | head -5 | grep .; then
  echo "FAIL: $program holds the symbols above; delegate::core must not" >&2
  exit 1
fi
echo "core-only program: runs, and links no gRPC, protobuf, curl or OpenSSL"

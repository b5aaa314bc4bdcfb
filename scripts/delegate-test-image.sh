#!/usr/bin/env bash
# Makes a small image of a built delegate for the tests, offline: as the
# real image, not root (user 10001), the binary at /usr/local/bin/delegate
# (the entry point), the
# static delegate-step beside it, and the shared libraries `ldd` names, at
# their paths. Prints the tag, delegate-test/delegate:HASH (HASH: of both
# programs), and builds it only when the engine lacks it; the images of
# earlier builds go then.
#   scripts/delegate-test-image.sh DELEGATE_BINARY DELEGATE_STEP_BINARY
set -euo pipefail
binary=$1
agent=$2
hash=$(cat "$binary" "$agent" | sha256sum | cut -c1-16)
tag=delegate-test/delegate:$hash
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi
for old in $(docker images delegate-test/delegate --format '{{.Repository}}:{{.Tag}}'); do
  docker rmi "$old" >/dev/null 2>&1 || true
done
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/etc" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"
cp "$binary" "$root/usr/local/bin/delegate"
cp "$agent" "$root/usr/local/bin/delegate-step"
for lib in $(ldd "$binary" | grep -oE '/[^ ]+'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/:/usr/sbin/nologin\n' >"$root/etc/passwd"
tar -C "$root" -c . | docker import \
  -c 'ENTRYPOINT ["/usr/local/bin/delegate"]' -c 'ENV PATH=/usr/local/bin' \
  -c 'USER 10001' \
  - "$tag" >/dev/null
echo "$tag"

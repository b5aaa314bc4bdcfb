#!/usr/bin/env bash
# Prepares this machine for the Docker tests, offline: starts a Docker Engine
# when none answers, builds the test images (one from Debian's busybox-static,
# with no libc; one with only dash and its glibc, for a second kind), and
# starts a loopback registry (Debian's docker-registry) with htpasswd auth that
# holds a copy of it. Idempotent. Prints what it did.
set -euo pipefail

sock=/var/run/docker.sock
image=delegate-test/busybox:latest
registry=127.0.0.1:5000
registry_user=delegate
registry_password=${DELEGATE_TEST_REGISTRY_PASSWORD:-correct-horse-battery}
state=${DELEGATE_TEST_STATE:-/tmp/delegate-test-docker}
mkdir -p "$state"

engine_up() { curl -sf --max-time 5 --unix-socket "$sock" http://localhost/_ping >/dev/null 2>&1; }

if ! engine_up; then
  echo "docker-test-setup: starting dockerd (log: $state/dockerd.log)"
  nohup dockerd >"$state/dockerd.log" 2>&1 &
  for _ in $(seq 1 120); do engine_up && break; sleep 0.5; done
  engine_up || { echo "docker-test-setup: dockerd did not start; see $state/dockerd.log" >&2; tail -20 "$state/dockerd.log" >&2; exit 1; }
fi
echo "docker-test-setup: Docker Engine $(curl -s --unix-socket "$sock" http://localhost/version | sed -E 's/.*"ApiVersion":"([^"]+)".*/API \1/')"

if ! docker image inspect "$image" >/dev/null 2>&1; then
  root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root" "$root/proc" "$root/sys" "$root/dev"
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' - "$image" >/dev/null
  rm -rf "$root"
  echo "docker-test-setup: built $image from busybox-static"
fi

# A second kind of step image: glibc's dynamic loader and libc, dash as
# /bin/sh, nothing else (no busybox, no coreutils).
glibc_image=delegate-test/dash-glibc:latest
if ! docker image inspect "$glibc_image" >/dev/null 2>&1; then
  root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/proc" "$root/sys" "$root/dev"
  chmod 1777 "$root/tmp"
  cp /bin/dash "$root/bin/sh"
  for lib in $(ldd /bin/dash | grep -oE '/[^ ]+'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  printf 'root:x:0:0:root:/:/bin/sh\n' >"$root/etc/passwd"
  tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' - "$glibc_image" >/dev/null
  rm -rf "$root"
  echo "docker-test-setup: built $glibc_image from dash and its glibc"
fi

registry_up() { curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://$registry/v2/" 2>/dev/null | grep -q 401; }
if ! registry_up; then
  htpasswd -Bbn "$registry_user" "$registry_password" >"$state/htpasswd"
  cat >"$state/registry.yml" <<YAML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $state/registry}, delete: {enabled: true}}
http: {addr: $registry}
auth: {htpasswd: {realm: delegate-test, path: $state/htpasswd}}
YAML
  nohup docker-registry serve "$state/registry.yml" >"$state/registry.log" 2>&1 &
  for _ in $(seq 1 60); do registry_up && break; sleep 0.25; done
  registry_up || { echo "docker-test-setup: the registry did not start; see $state/registry.log" >&2; exit 1; }
  echo "docker-test-setup: registry on $registry (user $registry_user)"
fi
config=$state/docker-config
mkdir -p "$config"
echo "$registry_password" | docker --config "$config" login -u "$registry_user" --password-stdin "$registry" >/dev/null
docker tag "$image" "$registry/private/busybox:latest"
docker --config "$config" push -q "$registry/private/busybox:latest" >/dev/null
docker rmi "$registry/private/busybox:latest" >/dev/null
echo "docker-test-setup: pushed $registry/private/busybox:latest"

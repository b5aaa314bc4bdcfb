# Sourced, not run: start_reference_manager BUILD ACCOUNT DIR starts the
# reference manager of BUILD on a free loopback port, for account ACCOUNT,
# with a fresh token in DIR/token, and sets `url` to where it listens. Its
# output is DIR/manager.out; the caller's EXIT trap stops it (kill $(jobs -p)).
start_reference_manager() {
  local build=$1 account=$2 dir=$3
  head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/token"
  "$build/apps/reference-manager/reference-manager" --account "$account" \
    --token-file "$dir/token" --listen 127.0.0.1:0 > "$dir/manager.out" &
  for _ in $(seq 200); do grep -q listening "$dir/manager.out" && break; sleep 0.05; done
  url=$(awk '/listening/ {print $2}' "$dir/manager.out")
  if [ -z "$url" ]; then
    echo "the reference manager did not start; its output: $dir/manager.out" >&2
    cat "$dir/manager.out" >&2
    return 1
  fi
}

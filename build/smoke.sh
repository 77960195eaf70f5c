#!/usr/bin/env bash
# Smoke-test the frozen binary the way a site runs it: from an empty directory outside the
# checkout, with a bare environment (no venv, no PYTHONPATH), a fresh data dir and the starter
# bundle. serve -> /ready -> keys create -> one chat completion -> one embedding -> SIGTERM
# -> exit code 0; then install-service into a staging root and run the installed copy.
#
#   build/smoke.sh [BINARY]     (default dist/appliance; dist/appliance-onedir/appliance works)
#
# Needs curl. APPLIANCE_STARTER_BUNDLE overrides where the starter bundle is.
set -euo pipefail

BIN=$(realpath "${1:-$(dirname "$0")/../dist/appliance}")
STARTER=${APPLIANCE_STARTER_BUNDLE:-${XDG_CACHE_HOME:-$HOME/.cache}/foundry-appliance/bundles/starter}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-180}
[[ -x $BIN ]] || { echo "smoke: no binary at $BIN (run make dist)" >&2; exit 1; }
[[ -f $STARTER/bundle.json ]] || { echo "smoke: no starter bundle at $STARTER (make bundle)" >&2; exit 1; }
command -v curl >/dev/null || { echo "smoke: needs curl (apt-get install curl)" >&2; exit 1; }

work=$(mktemp -d)
cd "$work"
server_pid=""
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true  # the server stops its engines itself
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# the bare environment a target host gives: no Python anywhere on the path
bare=(env -i PATH=/usr/bin:/bin HOME="$work" LANG=C.UTF-8 APPLIANCE_STARTER_BUNDLE="$STARTER")
run() { "${bare[@]}" "$BIN" "$@"; }

free_port() {
  local port
  for _ in $(seq 50); do
    port=$(( 20000 + RANDOM % 40000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
  return 1
}

fail() {
  echo "smoke: FAILED: $*" >&2
  [[ -f serve.log ]] && { echo "--- serve.log (tail)" >&2; tail -40 serve.log >&2; }
  exit 1
}

now() { date +%s.%N; }
port=$(free_port)
base="http://127.0.0.1:$port"
echo "smoke: $BIN in $work, port $port"
run --version
run doctor --data-dir "$work/data" --listen "127.0.0.1:$port" || fail "doctor reported a failure"

started=$(now)
# not through a shell function: $! must be the server itself (env execs it), so that
# SIGTERM reaches the appliance and not a subshell
"${bare[@]}" "$BIN" serve --data-dir "$work/data" --listen "127.0.0.1:$port" >serve.log 2>&1 &
server_pid=$!
deadline=$(( $(date +%s) + READY_TIMEOUT_S ))
until curl -sf "$base/ready" >/dev/null; do
  kill -0 "$server_pid" 2>/dev/null || fail "serve exited before /ready"
  (( $(date +%s) < deadline )) || fail "not ready after ${READY_TIMEOUT_S}s: $(curl -s "$base/ready")"
  sleep 0.2
done
ready_s=$(awk "BEGIN {printf \"%.1f\", $(now) - $started}")
echo "smoke: /ready after ${ready_s}s (first start, starter bundle imported)"

key=$(run keys create --name smoke --json --data-dir "$work/data" \
  | sed -n 's/.*"key": *"\([^"]*\)".*/\1/p')
[[ -n $key ]] || fail "keys create printed no key"

chat=$(curl -sf "$base/v1/chat/completions" -H "Authorization: Bearer $key" \
  -H "Content-Type: application/json" \
  -d '{"model": "smollm2-135m-instruct", "max_tokens": 8,
       "messages": [{"role": "user", "content": "Say hello."}]}') || fail "chat completion"
grep -q '"choices"' <<<"$chat" || fail "chat completion without choices: $chat"
echo "smoke: chat ok: $(head -c 200 <<<"$chat")"

emb=$(curl -sf "$base/v1/embeddings" -H "Authorization: Bearer $key" \
  -H "Content-Type: application/json" \
  -d '{"model": "all-minilm-l6-v2", "input": ["a cat", "a kitten"]}') || fail "embedding"
grep -q '"embedding"' <<<"$emb" || fail "embedding response without vectors"
echo "smoke: embeddings ok ($(grep -o '"embedding"' <<<"$emb" | wc -l) vectors)"

kill -TERM "$server_pid"
set +e
wait "$server_pid"
rc=$?
set -e
server_pid=""
[[ $rc == 0 ]] || fail "serve exited with $rc after SIGTERM"
grep -q "stopped cleanly" serve.log || fail "no clean-stop line in the log"
# the binary installs itself (rendered under a staging root; no systemd needed for that)
run install-service --prefix "$work/root" --data-dir /var/lib/foundry-smoke >/dev/null \
  || fail "install-service"
grep -q "^ProtectSystem=strict" "$work/root/etc/systemd/system/foundry-appliance.service" \
  || fail "install-service wrote no hardened unit"
env -i PATH=/usr/bin:/bin "$work/root/usr/local/bin/foundry-appliance" --version >/dev/null \
  || fail "the installed copy does not run"
echo "smoke: ok (ready ${ready_s}s, clean exit after SIGTERM, install-service rendered)"

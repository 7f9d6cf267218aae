#!/usr/bin/env bash
# Benchmarks handing `shoal up` over to a new process under load: failed
# requests, refused connections and the longest gap between two answers
# across HANDOVERS handovers, plus how long each one took.
#
# Starts `shoal up` with kubia (3 replicas) on its own ports and data
# directory, puts it under CLIENTS GET loops (bench/steady.js: half keep
# their connection alive, half open one per request), and every PAUSE
# seconds starts a new `shoal up` on the same data directory and ports,
# which takes over from the running one; each handover is timed from the
# new process's start to the old one's exit. The replicas' pids are checked
# to be the same at the end.
#
# Prints a Markdown table to stdout; progress and diagnostics go to stderr.
# See bench/README.md.
#
# Then, for comparison, RESTARTS plain restarts the same way (SIGTERM, then
# a new shoal up, timed until all replicas are ready again).
#
# Knobs (environment): HANDOVERS (default 10), RESTARTS (default 3),
# CLIENTS (default 4), PAUSE (seconds between handovers, default 2),
# SHOAL_BIN (a given binary, no build).
set -euo pipefail
export LC_ALL=C

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HANDOVERS=${HANDOVERS:-10}
RESTARTS=${RESTARTS:-3}
CLIENTS=${CLIENTS:-4}
PAUSE=${PAUSE:-2}
require_positive_ints HANDOVERS RESTARTS CLIENTS PAUSE
HELLO_WASM=$ROOT/samples/target/wasm32-wasip2/release/hello.wasm

TMP="" SHOAL_PID="" LOAD_PID=""
stop_processes() {
  [[ -n $LOAD_PID ]] && stop_pid "$LOAD_PID" 5 steady.js
  stop_pid "$SHOAL_PID" 30 shoal
}
TMP=$(mktemp -d /tmp/shoal-handover.XXXXXX)
trap cleanup EXIT INT TERM

command -v node >/dev/null || die "node is needed for the load (bench/steady.js)"
command -v python3 >/dev/null || die "python3 is needed to read shoal's JSON output"
find_shoal shoal
[[ -f $HELLO_WASM ]] || die "$HELLO_WASM was not built"

GATEWAY=$(free_port) ADMIN=$(free_port)
cat >"$TMP/kubia.yaml" <<YAML
apiVersion: shoal.dev/v1
kind: Service
metadata:
  name: kubia
spec:
  module: $HELLO_WASM
  replicas: 3
  resources: {memory: 64Mi, cpu: 500m, instanceMemory: 16Mi}
  timeout: 10s
YAML

# start_shoal N [ARGS...]: `shoal up` number N on the data directory, its
# output in $TMP/shoal-N.log; sets SHOAL_PID.
start_shoal() {
  local n=$1
  shift
  "$SHOAL" up --data-dir "$TMP/data" --listen "127.0.0.1:$GATEWAY" --admin-listen "127.0.0.1:$ADMIN" "$@" \
    >"$TMP/shoal-$n.log" 2>&1 &
  SHOAL_PID=$!
}

# wait_line FILE TEXT TIMEOUT: until FILE has a line containing TEXT.
wait_line() {
  local start=$SECONDS
  until grep -qF -- "$2" "$1" 2>/dev/null; do
    ((SECONDS - start < $3)) || die "no '$2' in $1 within $3 s; see $TMP"
    sleep 0.02
  done
}

pids() {
  "$SHOAL" get replicas -o json --server "http://127.0.0.1:$ADMIN" --token "$(cat "$TMP/data/token")" |
    python3 -c 'import json, sys; print(" ".join(sorted(str(r["pid"]) for r in json.load(sys.stdin) if r["ready"])))'
}

start_shoal 0 -f "$TMP/kubia.yaml"
wait_line "$TMP/shoal-0.log" "service/kubia Ready: 3/3" 60
BEFORE=$(pids)
log "kubia ready, replicas $BEFORE; load: $CLIENTS clients"
IDLE=$(cpu_idle_percent)

# phase MODE COUNT: COUNT times under load, MODE `handover` (a new shoal up
# takes over) or `restart` (SIGTERM, then a new shoal up); prints its table
# row and sets PHASE_NOTE.
N=0
phase() {
  local mode=$1 count=$2 i old began
  local -a took=()
  node "$ROOT/bench/steady.js" "http://127.0.0.1:$GATEWAY/" >"$TMP/load-$mode.json" 2>"$TMP/load-$mode.err" &
  LOAD_PID=$!
  sleep "$PAUSE"
  for ((i = 1; i <= count; i++)); do
    old=$SHOAL_PID
    N=$((N + 1))
    began=$(date +%s%N)
    if [[ $mode == restart ]]; then
      stop_pid "$old" 30 shoal
      start_shoal "$N"
      wait_line "$TMP/shoal-$N.log" "service/kubia Ready: 3/3" 60
    else
      start_shoal "$N"
      wait_line "$TMP/shoal-$N.log" "took over from pid $old" 60
      while kill -0 "$old" 2>/dev/null; do sleep 0.01; done
      wait "$old" 2>/dev/null || die "shoal up $old exited with an error after handing over; see $TMP"
    fi
    took+=($((($(date +%s%N) - began) / 1000000)))
    log "$mode $i: ${took[-1]} ms"
    sleep "$PAUSE"
  done
  kill -TERM "$LOAD_PID"
  wait "$LOAD_PID" || true
  LOAD_PID=""
  local ok failed refused gap p50 p99 errors sorted median longest
  read -r ok failed refused gap p50 p99 _ errors < <(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
errors = "; ".join(f"{k}: {v}" for k, v in sorted(s["errors"].items())) or "none"
print(s["ok"], s["failed"], s["refused"], s["longestGapMs"], s["p50Ms"], s["p99Ms"], s["maxMs"], errors)' "$TMP/load-$mode.json")
  sorted=$(printf '%s\n' "${took[@]}" | sort -n)
  median=$(echo "$sorted" | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')
  longest=$(echo "$sorted" | tail -n 1)
  local what="new shoal up takes over"
  [[ $mode == restart ]] && what="SIGTERM, then a new shoal up"
  ROWS+="| $what | $count | $ok | $failed | $refused | $gap ms | $p50 ms | $p99 ms | $median ms | $longest ms |"$'\n'
  NOTES+="- $what: errors seen by the clients: $errors."$'\n'
}

ROWS="" NOTES=""
phase handover "$HANDOVERS"
AFTER=$(pids)
[[ $BEFORE == "$AFTER" ]] || log "WARNING: the replicas changed: $BEFORE before, $AFTER after"
phase restart "$RESTARTS"

echo "# shoal up replaced under load: handover vs restart ($(machine_description); shoal $(shoal_revision))"
echo
echo "| how | times | requests answered | failed | refused | longest gap between answers | p50 | p99 | median time | max time |"
echo "|---|---|---|---|---|---|---|---|---|---|"
printf '%s' "$ROWS"
echo
echo "- Load: $CLIENTS clients (bench/steady.js), half on kept-alive connections, half on one connection per request."
printf '%s' "$NOTES"
echo "- Replicas (pids) before the handovers: $BEFORE; after: $AFTER$([[ $BEFORE == "$AFTER" ]] && echo ' (the same)')."
echo "- Time: a handover from the new shoal up's start to the old one's exit; a restart from SIGTERM to all 3 replicas ready again."
busy_warning "$IDLE"

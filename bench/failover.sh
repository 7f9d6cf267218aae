#!/usr/bin/env bash
# Benchmarks Shoal's cluster mode: the time from SIGKILL of a node to all of
# a service's replicas ready again on the survivors.
#
# Runs a three-member etcd and three `shoal up --etcd` nodes on loopback
# (their own ports and data directories), applies kubia with 6 replicas
# (2 per node), then TRIALS times: SIGKILL a node (round robin, the leader
# among them), time until 6 replicas are ready on the other two, restart the
# node and wait until the cluster is back at 2/2/2.
#
# Prints a Markdown table to stdout; progress and diagnostics go to stderr.
# See bench/README.md.
#
# Knobs (environment): TRIALS (default 10), TTL (the node lease, default 3s;
# Shoal's default is 10s), REPLICAS (default 6).
set -euo pipefail
export LC_ALL=C

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TRIALS=${TRIALS:-10}
TTL=${TTL:-3s}
REPLICAS=${REPLICAS:-6}
require_positive_ints TRIALS REPLICAS
READY_TIMEOUT=120 # seconds the cluster may take to get all replicas ready
HELLO_WASM=$ROOT/samples/target/wasm32-wasip2/release/hello.wasm
SHOAL=$ROOT/target/release/shoal

TMP=""
ETCD_PIDS=() SHOAL_PIDS=()
stop_processes() {
  local pid
  for pid in "${SHOAL_PIDS[@]}"; do stop_pid "$pid" 15 shoal; done
  for pid in "${ETCD_PIDS[@]}"; do stop_pid "$pid" 5 etcd; done
}
TMP=$(mktemp -d /tmp/shoal-failover.XXXXXX)
trap cleanup EXIT INT TERM

command -v python3 >/dev/null || die "python3 is needed to read shoal's JSON output"
if ! command -v etcd >/dev/null; then
  apt_install etcd-server || die "etcd is not installed and cannot be: $APT_FAILURE"
fi
build_shoal shoal
[[ -f $HELLO_WASM ]] || die "$HELLO_WASM was not built"

# A three-member etcd.
CLUSTER="" ENDPOINTS=""
declare -a CLIENT_PORTS PEER_PORTS
for i in 0 1 2; do
  CLIENT_PORTS[i]=$(free_port)
  PEER_PORTS[i]=$(free_port)
  CLUSTER+="${CLUSTER:+,}m$i=http://127.0.0.1:${PEER_PORTS[i]}"
  ENDPOINTS+="${ENDPOINTS:+,}http://127.0.0.1:${CLIENT_PORTS[i]}"
done
for i in 0 1 2; do
  etcd --name "m$i" --data-dir "$TMP/etcd$i" \
    --listen-client-urls "http://127.0.0.1:${CLIENT_PORTS[i]}" \
    --advertise-client-urls "http://127.0.0.1:${CLIENT_PORTS[i]}" \
    --listen-peer-urls "http://127.0.0.1:${PEER_PORTS[i]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${PEER_PORTS[i]}" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token shoal-bench \
    >"$TMP/etcd$i.log" 2>&1 &
  ETCD_PIDS+=($!)
done
log "etcd at $ENDPOINTS"

declare -a GATEWAY_PORTS ADMIN_PORTS
for i in 0 1 2; do
  GATEWAY_PORTS[i]=$(free_port)
  ADMIN_PORTS[i]=$(free_port)
done

# start_node I: `shoal up` for node nI (again, after a kill: same ports,
# data directory and name).
start_node() {
  local i=$1
  "$SHOAL" up --etcd "$ENDPOINTS" --node-name "n$i" --node-lease-ttl "$TTL" \
    --listen "127.0.0.1:${GATEWAY_PORTS[i]}" --admin-listen "127.0.0.1:${ADMIN_PORTS[i]}" \
    --data-dir "$TMP/n$i" >>"$TMP/n$i.log" 2>&1 &
  SHOAL_PIDS[i]=$!
}

# cli I ARGS...: the shoal CLI against node nI.
cli() {
  local i=$1
  shift
  "$SHOAL" "$@" --server "http://127.0.0.1:${ADMIN_PORTS[i]}" --token "$(cat "$TMP/n$i/token")"
}

# ready_counts I: "<ready replicas> <ready replicas per node, as n0=2,n1=2>"
# through node nI's API.
ready_counts() {
  cli "$1" get replicas -o json 2>/dev/null | python3 -c '
import json, sys, collections
replicas = [r for r in json.load(sys.stdin) if r["ready"]]
nodes = collections.Counter(r["node"] for r in replicas)
print(len(replicas), ",".join(f"{n}={c}" for n, c in sorted(nodes.items())))' || echo "0 -"
}

leader() {
  cli "$1" get nodes -o json 2>/dev/null | python3 -c '
import json, sys
print(next((n["name"] for n in json.load(sys.stdin) if n["leader"]), "-"))' || echo "-"
}

# wait_for I WANT TIMEOUT: until node nI sees WANT as its ready_counts.
wait_for() {
  local i=$1 want=$2 timeout=$3 start=$SECONDS
  until [[ $(ready_counts "$i") == "$want" ]]; do
    ((SECONDS - start < timeout)) || die "not '$want' within ${timeout}s (now '$(ready_counts "$i")'); see $TMP"
    sleep 0.2
  done
}

for i in 0 1 2; do start_node "$i"; done
for i in 0 1 2; do
  for ((t = 0; t < 300; t++)); do
    [[ -s $TMP/n$i/token ]] && cli "$i" get nodes >/dev/null 2>&1 && break
    sleep 0.1
  done
done
cat >"$TMP/kubia.yaml" <<EOF
apiVersion: shoal.dev/v1
kind: Service
metadata:
  name: kubia
spec:
  module: $HELLO_WASM
  replicas: $REPLICAS
EOF
cli 0 apply -f "$TMP/kubia.yaml" >&2 || die "apply failed"
PER=$((REPLICAS / 3))
SPREAD="$REPLICAS n0=$PER,n1=$PER,n2=$PER"
((REPLICAS % 3 == 0)) || die "REPLICAS must be a multiple of 3"
wait_for 0 "$SPREAD" "$READY_TIMEOUT"
log "kubia ready: $SPREAD"

printf '%s, %s nproc, %s\n\n' "$(date -u +%FT%TZ)" "$(nproc)" "$(shoal_revision 2>/dev/null || git -C "$ROOT" rev-parse --short HEAD)"
echo "Node lease TTL $TTL; $REPLICAS replicas of kubia on three nodes; three-member etcd on loopback."
echo
echo "| trial | node killed | was leader | all $REPLICAS ready again after |"
echo "|---|---|---|---|"
TIMES=()
for ((trial = 1; trial <= TRIALS; trial++)); do
  victim=$(((trial - 1) % 3))
  watcher=$(((victim + 1) % 3))
  was_leader=no
  [[ $(leader "$watcher") == "n$victim" ]] && was_leader=yes
  start=$(date +%s.%N)
  kill -KILL "${SHOAL_PIDS[victim]}"
  wait "${SHOAL_PIDS[victim]}" 2>/dev/null || true
  # All replicas ready with none on the killed node.
  until counts=$(ready_counts "$watcher") && [[ ${counts%% *} == "$REPLICAS" && $counts != *"n$victim="* ]]; do
    elapsed=$(echo "$(date +%s.%N) - $start" | bc)
    (($(echo "$elapsed < $READY_TIMEOUT" | bc))) || die "trial $trial: not ready again within ${READY_TIMEOUT}s"
    sleep 0.1
  done
  took=$(echo "$(date +%s.%N) - $start" | bc)
  TIMES+=("$took")
  printf '| %d | n%d | %s | %.2f s |\n' "$trial" "$victim" "$was_leader" "$took"
  start_node "$victim"
  wait_for "$watcher" "$SPREAD" "$READY_TIMEOUT"
done
sorted=$(printf '%s\n' "${TIMES[@]}" | sort -g)
median=$(echo "$sorted" | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}')
max=$(echo "$sorted" | tail -n 1)
echo
printf 'median %.2f s, max %.2f s over %d trials (Kubernetes: ~5 min 40 s by default, ~50 s tuned; Nomad ~20–30 s)\n' \
  "$median" "$max" "$TRIALS"

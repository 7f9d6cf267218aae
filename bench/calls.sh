#!/usr/bin/env bash
# What one call from a service to a service costs: the kubia sample called
# directly through the gateway, against samples/frontend's /frontend/once,
# which answers by calling http://kubia/ once (frontend -> gateway -> kubia,
# all on the channels, no socket between processes). One `shoal up` serves
# both (kubia and frontend: 3 replicas of 500m each, as in
# samples/hello/service.yaml); same wrk settings, rounds alternating.
#
# Prints a Markdown table (requests/s, p50, p99, CPU µs per request of
# `shoal up` and its workers together) and the cost of one internal hop:
# the differences in p50 and in CPU per request. See bench/README.md.
#
# Knobs (environment): DURATION (s per round, default 8), ROUNDS (default
# 3), CONNECTIONS (default 32), WARMUP (s per server before round 1,
# default 2).
set -euo pipefail
export LC_ALL=C

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-2}
REPLICAS=3
TMP=""
SHOAL_PID=""
SHOAL_CONFINED=true

stop_processes() { stop_pid "$SHOAL_PID" 30 "shoal up"; }
trap cleanup EXIT

require_positive_ints DURATION ROUNDS CONNECTIONS WARMUP
command -v wrk >/dev/null || apt_install wrk || die "wrk is required and cannot be installed here ($APT_FAILURE)"
build_shoal "shoal and the samples"
TMP=$(mktemp -d)
WASM=$ROOT/samples/target/wasm32-wasip2/release
for sample in hello frontend; do
  [[ -f $WASM/$sample.wasm ]] || die "$WASM/$sample.wasm was not built"
done

spec() { # spec NAME MODULE EXTRA: a manifest like samples/hello/service.yaml
  printf 'apiVersion: shoal.dev/v1\nkind: Service\nmetadata:\n  name: %s\nspec:\n  module: %s\n  replicas: %d\n' \
    "$1" "$2" "$REPLICAS"
  printf '  resources:\n    memory: 64Mi\n    cpu: 500m\n    instanceMemory: 16Mi\n  timeout: 10s\n%s' "$3"
}
{
  spec kubia "$WASM/hello.wasm" ''
  echo ---
  spec frontend "$WASM/frontend.wasm" $'  routes:\n    - path: /frontend\n  allowOutbound:\n    - http://kubia\n'
} >"$TMP/services.yaml"

PORT=$(free_port)
LOG=$TMP/shoal.log
"$ROOT/target/release/shoal" up -f "$TMP/services.yaml" --listen "127.0.0.1:$PORT" \
  --admin-listen "127.0.0.1:$(free_port)" --data-dir "$TMP/data" </dev/null >"$LOG" 2>&1 &
SHOAL_PID=$!
for service in kubia frontend; do
  for ((i = 0; i < 1200; i++)); do
    grep -Eq "^shoal: service/$service Ready: $REPLICAS/$REPLICAS" "$LOG" && break
    kill -0 "$SHOAL_PID" 2>/dev/null || { cat "$LOG" >&2; die "shoal up exited (log above)"; }
    sleep 0.1
  done
  ((i < 1200)) || { cat "$LOG" >&2; die "$service was not ready within 120 s"; }
done
SHOAL_LOG=$LOG note_shoal_confinement
answer=$(curl -s "http://127.0.0.1:$PORT/frontend/once" || true)
[[ $answer == "You've hit kubia-"* ]] || die "/frontend/once answered '$answer'"

# tree_ticks: CPU clock ticks of shoal up, its live children and those reaped.
tree_ticks() {
  local pid
  # shellcheck disable=SC2046 # word splitting of the pid list is intended
  for pid in "$SHOAL_PID" $(cat /proc/"$SHOAL_PID"/task/*/children 2>/dev/null); do
    cat /proc/"$pid"/stat 2>/dev/null || true
  done | awk '{ sub(/^.*\) /, ""); t += $12 + $13 + $14 + $15 } END { print t + 0 }'
}
HZ=$(getconf CLK_TCK)

declare -A URL=([direct]="http://127.0.0.1:$PORT/" [call]="http://127.0.0.1:$PORT/frontend/once")
declare -A LABEL=([direct]="kubia, called directly" [call]="frontend -> kubia (one internal call)")
declare -A RPS P50 P99 TICKS REQS
for id in direct call; do
  wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "${URL[$id]}" >/dev/null
  TICKS[$id]=0 REQS[$id]=0
done
for ((round = 1; round <= ROUNDS; round++)); do
  for id in direct call; do
    log "round $round/$ROUNDS: ${LABEL[$id]}"
    before=$(tree_ticks)
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "${URL[$id]}" >"$TMP/$id.$round.txt"
    after=$(tree_ticks)
    read -r rps p50 p99 non2xx socket < <(parse_wrk "$TMP/$id.$round.txt") || die "cannot read wrk's output"
    ((non2xx == 0 && socket == 0)) || die "${LABEL[$id]}: $non2xx non-2xx responses, $socket socket errors"
    RPS[$id]+="$rps " P50[$id]+="$p50 " P99[$id]+="$p99 "
    TICKS[$id]=$((TICKS[$id] + after - before))
    REQS[$id]=$((REQS[$id] + $(awk '/requests in/ { print $1 }' "$TMP/$id.$round.txt")))
  done
done

median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
cpu_us() { awk -v t="${TICKS[$1]}" -v hz="$HZ" -v n="${REQS[$1]}" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }'; }

echo "| server | requests/s | p50 | p99 | CPU µs/request (shoal up + workers) |"
echo "|---|---|---|---|---|"
for id in direct call; do
  printf '| %s | %.0f | %.2f ms | %.2f ms | %s |\n' "${LABEL[$id]}" "$(median "${RPS[$id]}")" \
    "$(median "${P50[$id]}")" "$(median "${P99[$id]}")" "$(cpu_us "$id")"
done
echo
awk -v a="$(median "${P50[direct]}")" -v b="$(median "${P50[call]}")" -v ca="$(cpu_us direct)" -v cb="$(cpu_us call)" \
  'BEGIN { printf "One internal call costs %.0f µs of p50 latency and %.1f µs of CPU per request (the frontend'"'"'s own request and guest included).\n", (b - a) * 1000, cb - ca }'
echo "Medians of $ROUNDS rounds of wrk -t1 -c$CONNECTIONS -d${DURATION}s each, rounds alternating; $(nproc) CPUs; replicas $([[ $SHOAL_CONFINED == true ]] && echo "in cgroups (500m each)" || echo "unconfined")."

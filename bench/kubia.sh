#!/usr/bin/env bash
# Benchmarks the kubia sample (hello.wasm) through Shoal's gateway, with a
# fresh instance per request (the default) and with instances reused, against
# the seed's Node.js kubia (samples/hello-node/app.js, run unchanged), nginx ->
# Node.js kubia when nginx is available, `wasmtime serve` of the same
# hello.wasm when a wasmtime binary is found, and the seed's app.js compiled
# to Wasm (samples/hello-js, `shoal build`) when npm is there; same wrk
# settings, same run.
#
# Prints a Markdown table (requests/s, p50, p99, ratio to Node.js, CPU µs
# per request of each serving process) to stdout,
# then the goal, RSS and replica start-up figures; progress and diagnostics
# go to stderr. See bench/README.md.
#
# Knobs (environment): DURATION (s per round, default 8), ROUNDS (default 3),
# CONNECTIONS (default 32), WARMUP (s per server before round 1, default 2),
# WASMTIME (a wasmtime binary; else wasmtime on PATH,
# /opt/wasmtime-cli/bin/wasmtime or ~/.cargo/bin/wasmtime).
set -euo pipefail
export LC_ALL=C # predictable number formats for awk, printf and sort

# ROOT, log, die, stop_pid, apt_install, free_port and the report helpers.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-2}
WASMTIME=${WASMTIME:-}
THREADS=1
READY_TIMEOUT=120 # seconds Shoal may take to report its replicas ready
REPLICAS=3        # per Shoal configuration, as in samples/hello/service.yaml
HELLO_WASM=$ROOT/samples/target/wasm32-wasip2/release/hello.wasm
HELLO_JS_WASM=$ROOT/samples/hello-js/target/hello-js.wasm

TMP=""
NODE_PID="" NGINX_PID="" WASMTIME_PID=""
NGINX_SKIPPED=""    # why the nginx row is skipped, if it is
WASMTIME_CMD=""     # the wasmtime binary found
WASMTIME_SKIPPED="" # why the wasmtime serve row is skipped, if it is
IDLE_BEFORE=100     # CPU idle (%) just before the run
SHOAL_CONFINED=true # false if shoal said cgroups are unavailable
SHOAL_POLICY=""     # the scheduling policy shoal up ran under
SHOAL_IDS=(fresh reuse) # the Shoal configurations, one `shoal up` each (+ js)
JS_SKIPPED=""           # why the hello-js row is skipped, if it is
JS_BUILD_S=""           # how long `shoal build samples/hello-js` took
declare -A JS_START=()  # cold/warm: "seconds to ready, compile line"
# By Shoal configuration: its process, gateway port, the CPU ticks the other
# configuration's processes used during its measured rounds.
declare -A SHOAL_PID=() SHOAL_PORT=() OTHER_SHOAL_TICKS=()
# By "server id:process": CPU ticks spent during the measured rounds; by
# server id: requests completed in them (wrk's count).
declare -A CPU_TICKS=() REQUESTS=()
# By server id: RSS figures (KiB) taken right after its last round.
declare -A RSS_KIB=() WORKERS_KIB=() WORKERS=()
# By Shoal configuration: "periods throttled throttled_us" summed over its
# replicas' cgroups (cpu.stat), right after its last round.
declare -A THROTTLING=()

# ---------------------------------------------------------------- cleanup --

# stop_processes: what cleanup (lib.sh) stops on exit.
stop_processes() {
  local id
  # Shoal first and with a long grace: it drains, stops its replicas and
  # removes their cgroups on SIGTERM.
  for id in "${SHOAL_IDS[@]}"; do
    [[ -n ${SHOAL_PID[$id]:-} ]] || continue
    stop_pid "${SHOAL_PID[$id]}" 30 "shoal ($id)"
    if [[ -f $TMP/$id.log ]] && ! grep -q '^shoal: stopped' "$TMP/$id.log"; then
      log "warning: shoal ($id) did not report a clean stop; the end of its log:"
      grep -v 'Received request from' "$TMP/$id.log" | tail -n 20 >&2 || true
    fi
  done
  stop_pid "$WASMTIME_PID" 10 "wasmtime serve"
  stop_pid "$NGINX_PID" 10 nginx
  stop_pid "$NODE_PID" 10 node
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------------- set-up --

check_knobs() {
  require_positive_ints DURATION ROUNDS CONNECTIONS WARMUP
  ((CONNECTIONS >= THREADS)) || die "CONNECTIONS must be at least $THREADS"
}

check_tools() {
  local tool
  for tool in curl node cargo; do
    command -v "$tool" >/dev/null || die "$tool is required but not found"
  done
  [[ -f $ROOT/samples/hello-node/app.js ]] || die "$ROOT/samples/hello-node/app.js not found"
  if ! command -v wrk >/dev/null; then
    apt_install wrk || die "wrk is required but not installed, and cannot be installed here ($APT_FAILURE):" \
      "install it (e.g. 'apt-get install -y wrk' as root) and rerun"
  fi
  if ! command -v nginx >/dev/null; then
    if ! apt_install nginx; then
      NGINX_SKIPPED="nginx is not installed and could not be installed ($APT_FAILURE)"
      log "skipping the nginx row: $NGINX_SKIPPED"
    fi
  fi
  find_wasmtime
  command -v npm >/dev/null || {
    JS_SKIPPED="npm is not installed (shoal build needs Node.js and npm for JavaScript services)"
    log "skipping the hello-js row: $JS_SKIPPED"
  }
}

# find_wasmtime: sets WASMTIME_CMD to the first executable of $WASMTIME,
# wasmtime on PATH, /opt/wasmtime-cli/bin/wasmtime, ~/.cargo/bin/wasmtime;
# else marks the wasmtime serve row skipped.
find_wasmtime() {
  local candidate
  if [[ -n $WASMTIME && ! (-f $WASMTIME && -x $WASMTIME) ]]; then
    log "warning: WASMTIME=$WASMTIME is not an executable file; looking for wasmtime elsewhere"
  fi
  for candidate in "$WASMTIME" "$(command -v wasmtime || true)" \
    /opt/wasmtime-cli/bin/wasmtime "${HOME:-/nonexistent}/.cargo/bin/wasmtime"; do
    if [[ -n $candidate && -f $candidate && -x $candidate ]]; then
      WASMTIME_CMD=$candidate
      log "using $WASMTIME_CMD ($("$WASMTIME_CMD" --version 2>/dev/null || echo 'version unknown'))"
      return 0
    fi
  done
  WASMTIME_SKIPPED="not installed (cargo install wasmtime-cli --version 48.0.8 takes ~15 min)"
  log "skipping the wasmtime serve row: $WASMTIME_SKIPPED"
}

# wait_for_kubia NAME URL SECONDS PID: waits until URL answers 200 "You've
# hit ", checking that PID is still alive; prints the answer.
wait_for_kubia() {
  local name=$1 url=$2 seconds=$3 pid=$4 out="" body="" code="" i
  for ((i = 0; i < seconds * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { log "$name exited before answering"; return 1; }
    out=$(curl -sS --max-time 2 -w '\n%{http_code}' "$url" 2>/dev/null || true)
    code=${out##*$'\n'}
    body=${out%$'\n'*}
    body=${body%$'\n'}
    if [[ $code == 200 && $body == "You've hit "* ]]; then
      log "$name at $url answers: $body"
      return 0
    fi
    sleep 0.1
  done
  log "$name at $url did not answer 200 \"You've hit ...\" within ${seconds}s" \
    "(last answer: ${code:-none} '${body}')"
  return 1
}

# ---------------------------------------------------------------- servers --

start_node() {
  NODE_PORT=$(free_port)
  log "starting Node.js kubia on 127.0.0.1:$NODE_PORT"
  # app.js's per-request console.log goes to /dev/null.
  PORT=$NODE_PORT HOST=127.0.0.1 node -r "$ROOT/bench/listen-port.js" "$ROOT/samples/hello-node/app.js" \
    </dev/null >/dev/null 2>"$TMP/node.err" &
  NODE_PID=$!
  wait_for_kubia "Node.js kubia" "http://127.0.0.1:$NODE_PORT/" 30 "$NODE_PID" || {
    cat "$TMP/node.err" >&2
    die "Node.js kubia did not start"
  }
}

write_nginx_conf() {
  local dir=$1
  cat >"$dir/nginx.conf" <<EOF
# Generated by bench/kubia.sh: nginx as a reverse proxy to Node.js kubia.
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    upstream kubia_node {
        server 127.0.0.1:$NODE_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://kubia_node;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

# start_nginx: on failure, marks the nginx row skipped instead of aborting.
start_nginx() {
  [[ -z $NGINX_SKIPPED ]] || return 0
  local dir=$TMP/nginx
  mkdir -p "$dir"
  NGINX_PORT=$(free_port)
  write_nginx_conf "$dir"
  log "starting nginx on 127.0.0.1:$NGINX_PORT -> Node.js kubia"
  # -e: the error log before the configuration is read (else /var/log/nginx).
  nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;' \
    </dev/null >"$dir/stdout.log" 2>&1 &
  NGINX_PID=$!
  if ! wait_for_kubia "nginx -> Node.js kubia" "http://127.0.0.1:$NGINX_PORT/" 15 "$NGINX_PID"; then
    cat "$dir/stdout.log" "$dir/error.log" >&2 2>/dev/null || true
    stop_pid "$NGINX_PID" 10 nginx
    NGINX_PID=""
    NGINX_SKIPPED="nginx failed to start (its log is above)"
    log "skipping the nginx row: $NGINX_SKIPPED"
  fi
}

# start_wasmtime: `wasmtime serve` of hello.wasm (it prints nothing useful
# when ready: polled with curl). On failure, marks the row skipped.
start_wasmtime() {
  [[ -z $WASMTIME_SKIPPED ]] || return 0
  WASMTIME_PORT=$(free_port)
  log "starting wasmtime serve on 127.0.0.1:$WASMTIME_PORT"
  # The guest's per-request "Received request from" lines go to /dev/null,
  # like Node's.
  HOSTNAME=wasmtime-serve "$WASMTIME_CMD" serve -Scli --env HOSTNAME \
    --addr "127.0.0.1:$WASMTIME_PORT" "$HELLO_WASM" </dev/null >/dev/null 2>"$TMP/wasmtime.err" &
  WASMTIME_PID=$!
  if ! wait_for_kubia "wasmtime serve" "http://127.0.0.1:$WASMTIME_PORT/" 60 "$WASMTIME_PID"; then
    cat "$TMP/wasmtime.err" >&2 || true
    stop_pid "$WASMTIME_PID" 10 "wasmtime serve"
    WASMTIME_PID=""
    WASMTIME_SKIPPED="$WASMTIME_CMD serve failed to start (its log is above)"
    log "skipping the wasmtime serve row: $WASMTIME_SKIPPED"
  fi
}

# write_manifest ID INSTANCES [MODULE MEMORY INSTANCE_MEMORY]:
# samples/hello/service.yaml's settings, with hello.wasm's absolute path (or
# MODULE, and its memory settings) and the given spec.instances (none when
# INSTANCES is empty: the module's default). The service is called kubia
# whatever its module.
write_manifest() {
  local instances=""
  [[ -z $2 ]] || instances="  instances: $2"$'\n'
  cat >"$TMP/$1.yaml" <<EOF
# Generated by bench/kubia.sh: samples/hello/service.yaml plus spec.instances.
apiVersion: shoal.dev/v1
kind: Service
metadata:
  name: kubia
spec:
  module: ${3:-$HELLO_WASM}
  replicas: $REPLICAS
  routes:
    - path: /
  resources:
    memory: ${4:-64Mi}
    cpu: 500m
    instanceMemory: ${5:-16Mi}
${instances}  timeout: 10s
EOF
}

# build_js: `shoal build samples/hello-js` (the seed's app.js through the JS
# SDK); on failure, marks the hello-js row skipped.
build_js() {
  [[ -z $JS_SKIPPED ]] || return 0
  local started=$SECONDS
  log "building samples/hello-js (shoal build; the first build installs the JS SDK with npm ci)"
  if ! "$ROOT/target/release/shoal" build "$ROOT/samples/hello-js" >"$TMP/js-build.log" 2>&1; then
    cat "$TMP/js-build.log" >&2
    JS_SKIPPED="shoal build samples/hello-js failed (its output is above)"
    log "skipping the hello-js row: $JS_SKIPPED"
    return 0
  fi
  JS_BUILD_S="$((SECONDS - started)) s"
  ! grep -q 'installing the JavaScript SDK' "$TMP/js-build.log" ||
    JS_BUILD_S+=", the SDK's first npm ci included"
}

# start_js: the hello-js configuration, started twice on one data dir: first
# with an empty compiled-module cache (cold), then again (warm); records the
# time to ready and shoal's "module ready" line of each.
start_js() {
  [[ -z $JS_SKIPPED ]] || return 0
  local phase started
  SHOAL_IDS+=(js)
  # No spec.instances: the SDK marks the component, so its instances are
  # reused (as one Node process serves every request).
  write_manifest js '' "$HELLO_JS_WASM" 128Mi 32Mi
  for phase in cold warm; do
    if [[ $phase == warm ]]; then
      stop_pid "${SHOAL_PID[js]}" 30 "shoal (js, cold)"
      mv "$TMP/js.log" "$TMP/js.cold.log"
      grep -q '^shoal: stopped' "$TMP/js.cold.log" || log "warning: shoal (js, cold) did not report a clean stop"
    fi
    started=$(date +%s%N)
    if ! SOFT_START=1 start_shoal js; then
      stop_pid "${SHOAL_PID[js]}" 30 "shoal (js)"
      unset 'SHOAL_PID[js]'
      SHOAL_IDS=(fresh reuse)
      JS_SKIPPED="shoal up with hello-js failed ($phase start; its log is above)"
      log "skipping the hello-js row: $JS_SKIPPED"
      return 0
    fi
    JS_START[$phase]="$(awk -v a="$started" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }') s"
    JS_START[$phase]+=" (module $(sed -n 's/.*module ready service=kubia //p' "$TMP/js.log" | head -n 1);"
    JS_START[$phase]+=" replicas ready in $(boot_ready_ms js | paste -sd, - | sed 's/,/, /g') ms)"
  done
}

# start_shoal ID: one `shoal up` for the manifest $TMP/ID.yaml, its own
# ports, data dir and log ($TMP/ID.log); waits until its replicas are ready
# and keeps their Started lines in $TMP/ID.boot. Dies if that fails, or with
# SOFT_START=1 logs why and returns 1.
start_shoal() {
  local id=$1 shoal=$ROOT/target/release/shoal log=$TMP/$1.log i admin=() port pid
  port=$(free_port)
  # Newer shoal also serves an admin API (default 127.0.0.1:8081): keep it
  # off ports that may be in use.
  if "$shoal" up --help 2>/dev/null | grep -q -- '--admin-listen'; then
    admin=(--admin-listen "127.0.0.1:$(free_port)")
  fi
  log "starting shoal up ($id) on 127.0.0.1:$port"
  # The guests' per-request "Received request from" lines go to this log.
  : >"$log"
  "$shoal" up -f "$TMP/$id.yaml" --listen "127.0.0.1:$port" "${admin[@]}" --data-dir "$TMP/$id-data" \
    </dev/null >"$log" 2>&1 &
  pid=$!
  SHOAL_PID[$id]=$pid
  SHOAL_PORT[$id]=$port
  # "shoal: service kubia ready: 3/3 replicas" (or, in newer versions,
  # "shoal: service/kubia Ready: 3/3 replicas ready (revision ...)").
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    grep -Eq "^shoal: service[ /]kubia [Rr]eady: $REPLICAS/$REPLICAS replicas" "$log" && break
    if ! kill -0 "$pid" 2>/dev/null; then
      cat "$log" >&2
      start_failed "shoal ($id) exited before its replicas were ready (log above)"
      return 1
    fi
    sleep 0.1
  done
  if ((i >= READY_TIMEOUT * 10)); then
    cat "$log" >&2
    start_failed "shoal ($id) did not report 'service kubia ready: $REPLICAS/$REPLICAS replicas' within ${READY_TIMEOUT}s (log above)"
    return 1
  fi
  # The replicas started at boot: the Started lines before the Ready line.
  sed -n -e '/^shoal: replica\/[^ ]* Started: /p' -e '/^shoal: service[ /]kubia [Rr]eady: /q' "$log" >"$TMP/$id.boot"
  SHOAL_LOG=$log note_shoal_confinement
  # The scheduling policy its threads and workers run under (the policy
  # line of /proc/<pid>/sched: 0 normal, 3 batch), for the report.
  SHOAL_POLICY=$(awk '/^policy/ { print ($3 == 3 ? "SCHED_BATCH" : $3 == 0 ? "SCHED_OTHER" : "policy " $3) }' \
    "/proc/$pid/sched" 2>/dev/null || true)
  wait_for_kubia "Shoal gateway ($id)" "http://127.0.0.1:$port/" 10 "$pid" || {
    cat "$log" >&2
    start_failed "shoal's gateway ($id) did not answer"
    return 1
  }
}

# start_failed MESSAGE: dies, or with SOFT_START=1 only logs.
start_failed() {
  [[ ${SOFT_START:-} == 1 ]] || die "$1"
  log "$1"
}

# ------------------------------------------------------------ measurement --

# The servers measured, in round order: ids, labels and URLs.
SERVERS=()
declare -A LABEL URL

add_server() {
  SERVERS+=("$1")
  LABEL[$1]=$2
  URL[$1]=$3
}

# run_wrk SECONDS URL OUTFILE
run_wrk() {
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$1s" --latency "$2" >"$3" 2>&1 || {
    cat "$3" >&2
    die "wrk failed against $2"
  }
}

# is_shoal ID: whether ID is one of the Shoal configurations.
is_shoal() { [[ " ${SHOAL_IDS[*]} " == *" $1 "* ]]; }

# other_shoal ID: the Shoal configurations not being measured, one a line.
other_shoal() {
  local id
  for id in "${SHOAL_IDS[@]}"; do
    [[ $id == "$1" ]] || echo "$id"
  done
}

# children PID: PID's direct children.
children() { cat /proc/"$1"/task/*/children 2>/dev/null || true; }

# tree_cpu_ticks PID: the CPU time (clock ticks) of PID, its reaped children
# and its live children.
tree_cpu_ticks() {
  local pid
  # shellcheck disable=SC2046 # word splitting of the pid list is intended
  for pid in "$1" $(children "$1"); do
    cat /proc/"$pid"/stat 2>/dev/null || true
  done | awk '{ sub(/^.*\) /, ""); t += $12 + $13 + $14 + $15 } END { print t + 0 }'
}

# own_cpu_ticks PID...: the CPU time (clock ticks) of those processes
# alone, not their children.
own_cpu_ticks() {
  local pid
  for pid in "$@"; do
    cat /proc/"$pid"/stat 2>/dev/null || true
  done | awk '{ sub(/^.*\) /, ""); t += $12 + $13 } END { print t + 0 }'
}

# cpu_sample ID: "process ticks" lines, the CPU time so far of each
# process (group) that serves server ID: Node.js for node; nginx (master
# and worker) and the Node.js behind it for nginx; wasmtime; for Shoal the
# gateway (`shoal up` itself) and its workers (live children, the standby
# included, and those reaped: their time is in shoal up's cutime).
cpu_sample() {
  local id=$1 own tree
  case $id in
    node) echo "node $(own_cpu_ticks "$NODE_PID")" ;;
    nginx)
      # shellcheck disable=SC2046 # word splitting of the pid list is intended
      echo "nginx $(own_cpu_ticks "$NGINX_PID" $(children "$NGINX_PID"))"
      echo "node $(own_cpu_ticks "$NODE_PID")"
      ;;
    wasmtime) echo "wasmtime $(own_cpu_ticks "$WASMTIME_PID")" ;;
    *)
      own=$(own_cpu_ticks "${SHOAL_PID[$id]}")
      tree=$(tree_cpu_ticks "${SHOAL_PID[$id]}")
      echo "gateway $own"
      echo "workers $((tree - own))"
      ;;
  esac
}

# vmrss_kib PID: PID's VmRSS in KiB (0 if it is gone).
vmrss_kib() { awk '/^VmRSS:/ { kib = $2 } END { print kib + 0 }' /proc/"$1"/status 2>/dev/null || echo 0; }

# cpu_stat_file PID: the cpu.stat of PID's cpu cgroup (v1 or v2), if any.
cpu_stat_file() {
  local controllers path v2=""
  while IFS=: read -r _ controllers path; do
    if [[ ,$controllers, == *,cpu,* ]]; then
      echo "/sys/fs/cgroup/cpu$path/cpu.stat"
      return 0
    fi
    [[ -n $controllers ]] || v2=$path
  done <"/proc/$1/cgroup"
  [[ -z $v2 ]] || echo "/sys/fs/cgroup$v2/cpu.stat"
}

# record_usage ID: the RSS figures of server ID and, for Shoal, its
# replicas' CPU throttling, right after its last round.
record_usage() {
  local id=$1 pid kib sum=0 n=0 stats=()
  case $id in
    node) RSS_KIB[$id]=$(vmrss_kib "$NODE_PID") ;;
    wasmtime) RSS_KIB[$id]=$(vmrss_kib "$WASMTIME_PID") ;;
    *)
      is_shoal "$id" || return 0
      RSS_KIB[$id]=$(vmrss_kib "${SHOAL_PID[$id]}")
      # Its replicas' workers (the standby worker calls itself shoal-standby).
      for pid in $(children "${SHOAL_PID[$id]}"); do
        [[ $(cat /proc/"$pid"/comm 2>/dev/null || true) == shoal-worker ]] || continue
        kib=$(vmrss_kib "$pid")
        sum=$((sum + kib))
        n=$((n + 1))
        stats+=("$(cpu_stat_file "$pid" 2>/dev/null || true)")
      done
      WORKERS_KIB[$id]=$sum
      WORKERS[$id]=$n
      # cgroup v1: throttled_time (ns); v2: throttled_usec.
      THROTTLING[$id]=$({ cat "${stats[@]}" /dev/null 2>/dev/null || true; } | awk '
        $1 == "nr_periods" { p += $2 } $1 == "nr_throttled" { t += $2; seen = 1 }
        $1 == "throttled_time" { us += $2 / 1000 } $1 == "throttled_usec" { us += $2 }
        END { if (seen) printf "%d %d %.0f\n", p, t, us }')
      ;;
  esac
}

# measure ID ROUND: one wrk run, its parsed result appended to $TMP/results/ID.
# For a Shoal configuration, also adds up the CPU the other one used meanwhile.
measure() {
  local id=$1 round=$2 out="$TMP/wrk/$1.$2.txt" result other before=0 after=0
  if is_shoal "$id"; then
    for other in $(other_shoal "$id"); do
      before=$((before + $(tree_cpu_ticks "${SHOAL_PID[$other]}")))
    done
  fi
  local cpu_before process ticks
  cpu_before=$(cpu_sample "$id")
  run_wrk "$DURATION" "${URL[$id]}" "$out"
  while read -r process ticks; do
    CPU_TICKS[$id:$process]=$((${CPU_TICKS[$id:$process]:-0} + ticks - $(awk -v p="$process" '$1 == p { print $2 }' <<<"$cpu_before")))
  done < <(cpu_sample "$id")
  REQUESTS[$id]=$((${REQUESTS[$id]:-0} + $(awk '/ requests in / { print $1 }' "$out")))
  if is_shoal "$id"; then
    for other in $(other_shoal "$id"); do
      after=$((after + $(tree_cpu_ticks "${SHOAL_PID[$other]}")))
    done
    OTHER_SHOAL_TICKS[$id]=$((${OTHER_SHOAL_TICKS[$id]:-0} + after - before))
  fi
  result=$(parse_wrk "$out") || {
    cat "$out" >&2
    die "cannot parse wrk's output for ${LABEL[$id]}"
  }
  echo "$round $result" >>"$TMP/results/$id"
  log "round $round: ${LABEL[$id]}: $(awk '{printf "%.0f req/s, p50 %.2f ms, p99 %.2f ms", $2, $3, $4}' <<<"$round $result")"
}

# summarize ID: "median_rps p50 p99 non2xx socket_errors" over the rounds;
# p50/p99 are those of the median round (for an even number of rounds, the
# slower of the two middle rounds; requests/s is then their mean).
summarize() {
  sort -g -k2,2 "$TMP/results/$1" | awk '
    { rps[NR] = $2; p50[NR] = $3; p99[NR] = $4; non2xx += $5; socket += $6 }
    END {
      m = int((NR + 1) / 2)
      median = (NR % 2) ? rps[m] : (rps[m] + rps[m + 1]) / 2
      printf "%.0f %.2f %.2f %d %d\n", median, p50[m], p99[m], non2xx, socket
    }'
}

# thousands 1234567 -> 1,234,567
thousands() { sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/' -e 'ta' <<<"$1"; }

run_benchmark() {
  local id round
  mkdir -p "$TMP/wrk" "$TMP/results"
  # Everything is started but idle: anything busy now is someone else's load.
  IDLE_BEFORE=$(cpu_idle_percent)
  log "CPU idle before the run: ${IDLE_BEFORE}%"
  for id in "${SERVERS[@]}"; do
    log "warm-up: ${LABEL[$id]} (${WARMUP}s)"
    run_wrk "$WARMUP" "${URL[$id]}" "$TMP/wrk/$id.warmup.txt"
  done
  # Interleaved rounds, so that drift (thermal, noisy neighbours) hits all.
  for ((round = 1; round <= ROUNDS; round++)); do
    for id in "${SERVERS[@]}"; do
      measure "$id" "$round"
      ((round < ROUNDS)) || record_usage "$id"
    done
  done
}

# ----------------------------------------------------------------- report --

# mib KIB -> "12.3 MiB"
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

# boot_ready_ms ID...: the "ready in" figures (ms) of the replicas those
# `shoal up`s started at boot, one a line.
boot_ready_ms() {
  local id
  for id in "$@"; do
    sed -n 's/.* ready in \([0-9.]*\)ms .*/\1/p' "$TMP/$id.boot"
  done
}

# median: the median of the numbers on stdin (mean of the middle two if even).
median() {
  sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) exit 1
    m = int((NR + 1) / 2)
    printf "%.1f", (NR % 2) ? v[m] : (v[m] + v[m + 1]) / 2
  }'
}

# print_goal: the goal and whether this run met it.
print_goal() {
  local node_rps node_p99 rps p99 nginx_rps verdict
  echo "Goal: Shoal's default ≥ 1.00× Node.js in requests/s with p99 no worse (stretch: ≥ 2× nginx → Node.js);" \
    "instances reused ≥ 1.30× Node.js"
  read -r node_rps _ node_p99 _ <<<"$(summarize node)"
  read -r rps _ p99 _ <<<"$(summarize fresh)"
  verdict=$(awk -v r="$rps" -v n="$node_rps" -v p="$p99" -v np="$node_p99" 'BEGIN {
    printf "%.2f× Node.js in requests/s (%s), p99 %.2f ms vs %.2f ms (%s)", r / n,
      (r >= n) ? "met" : "not met", p, np, (p <= np) ? "met" : "not met" }')
  if [[ -z $NGINX_SKIPPED ]]; then
    read -r nginx_rps _ <<<"$(summarize nginx)"
    verdict+=$(awk -v r="$rps" -v n="$nginx_rps" 'BEGIN {
      printf ", %.2f× nginx → Node.js (%s)", r / n, (r >= 2 * n) ? "met" : "not met" }')
  else
    verdict+=", no nginx row to compare with"
  fi
  echo
  echo "This run, Shoal's default: $verdict."
  read -r rps _ <<<"$(summarize reuse)"
  echo "Instances reused: $(awk -v r="$rps" -v n="$node_rps" 'BEGIN {
    printf "%.2f× Node.js (%s)", r / n, (r >= 1.3 * n) ? "met" : "not met" }')."
}

# print_resources: RSS after each row's last round, the Shoal replicas' CPU
# throttling, replica start at boot, and the idle Shoal's CPU during the
# other's rounds.
print_resources() {
  local id hz all=() values periods throttled us line=""
  echo "- RSS (VmRSS) right after each row's last round:"
  echo "  - ${LABEL[node]}: $(mib "${RSS_KIB[node]}") (node)"
  [[ -n $WASMTIME_SKIPPED ]] || echo "  - ${LABEL[wasmtime]}: $(mib "${RSS_KIB[wasmtime]}") (wasmtime)"
  for id in "${SHOAL_IDS[@]}"; do
    echo "  - ${LABEL[$id]}: $(mib $((WORKERS_KIB[$id] / REPLICAS))) per replica" \
      "($(mib "${WORKERS_KIB[$id]}") in ${WORKERS[$id]} shoal-worker processes / $REPLICAS;" \
      "the standby not counted) + gateway (shoal up) $(mib "${RSS_KIB[$id]}")"
  done
  for id in "${SHOAL_IDS[@]}"; do
    [[ -n ${THROTTLING[$id]:-} ]] || continue
    read -r periods throttled us <<<"${THROTTLING[$id]}"
    line+="${line:+; }$id: $throttled of $periods periods throttled, $(awk -v u="$us" 'BEGIN { printf "%.2f", u / 1e6 }') s in all"
  done
  [[ -z $line ]] ||
    echo "- Shoal replicas' CPU throttling (cgroup cpu.stat summed over the replicas, since boot, read after the row's last round): $line."
  # hello.wasm's replicas only: hello-js's start is reported on its own.
  for id in fresh reuse; do
    mapfile -t values < <(boot_ready_ms "$id")
    all+=("${values[@]}")
  done
  if ((${#all[@]} == 0)); then
    echo "- Replica start at boot: no 'Started: … ready in' lines found in shoal's output."
  else
    line=""
    for id in fresh reuse; do
      line+="${line:+; }$id: $(boot_ready_ms "$id" | paste -sd, - | sed 's/,/, /g') ms"
    done
    echo "- Replica start at boot (shoal's \"ready in\" for the ${#all[@]} hello.wasm replicas the fresh and reuse shoal up started):" \
      "median $(printf '%s\n' "${all[@]}" | median) ms ($line)."
  fi
  hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
  line=""
  for id in "${SHOAL_IDS[@]}"; do
    line+="${line:+, }$(other_shoal "$id" | paste -sd+ -) $(awk -v t="${OTHER_SHOAL_TICKS[$id]:-0}" -v hz="$hz" -v s="$((ROUNDS * DURATION))" \
      'BEGIN { printf "%.0f ms (%.2f%% of one CPU)", 1000 * t / hz, 100 * t / hz / s }') while $id was"
  done
  echo "- The Shoal configurations run throughout, as separate shoal up processes started one after the other;" \
    "only the measured one is under load. CPU used by the idle ones during the measured one's ${ROUNDS}×${DURATION} s" \
    "of measured rounds: $line."
}

# cpu_per_request ID: "total (process a + process b)" in CPU µs per
# request over the measured rounds.
cpu_per_request() {
  local id=$1 key parts=() hz
  hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
  for key in "${!CPU_TICKS[@]}"; do
    [[ $key == "$id":* ]] && parts+=("${key#*:} ${CPU_TICKS[$key]}")
  done
  printf '%s\n' "${parts[@]}" | sort | awk -v n="${REQUESTS[$id]:-0}" -v hz="$hz" '
    { us = 1e6 * $2 / hz / n; total += us; detail = detail (detail == "" ? "" : " + ") sprintf("%s %.1f", $1, us) }
    END { if (n == 0) { print "n/a"; exit } ; if (NR > 1) printf "%.1f (%s)\n", total, detail; else printf "%.1f\n", total }'
}

print_report() {
  local id rps p50 p99 non2xx socket node_rps ratio per_round nginx_version wasmtime_version="" errors=()
  nginx_version=$( (nginx -v 2>&1 || true) | sed -n 's|^nginx version: nginx/||p')
  [[ -n $WASMTIME_SKIPPED ]] || wasmtime_version=$("$WASMTIME_CMD" --version 2>/dev/null || true)
  echo "kubia benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'): $(machine_description);" \
    "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency, ${WARMUP}s warm-up per server," \
    "$ROUNDS interleaved round(s), median; Node.js $(node --version)${nginx_version:+, nginx $nginx_version}${wasmtime_version:+, $wasmtime_version};" \
    "shoal $(shoal_revision); CPU ${IDLE_BEFORE}% idle just before the run"
  echo
  echo "| server | requests/s | p50 (ms) | p99 (ms) | vs Node.js | CPU µs/request |"
  echo "|---|---|---|---|---|---|"
  read -r node_rps _ <<<"$(summarize node)"
  for id in "${SERVERS[@]}"; do
    read -r rps p50 p99 non2xx socket <<<"$(summarize "$id")"
    ratio=$(awk -v a="$rps" -v b="$node_rps" 'BEGIN { printf "%.2f", a / b }')
    echo "| ${LABEL[$id]} | $(thousands "$rps") | $p50 | $p99 | ${ratio}× | $(cpu_per_request "$id") |"
    ((non2xx == 0)) || errors+=("${LABEL[$id]}: $non2xx non-2xx/3xx responses over the measured rounds")
    ((socket == 0)) || errors+=("${LABEL[$id]}: $socket socket errors over the measured rounds")
  done
  echo
  print_goal
  echo
  # Per-round figures, to judge the noise.
  for id in "${SERVERS[@]}"; do
    per_round=""
    while read -r _ rps _; do
      per_round+="${per_round:+, }$(thousands "$(printf '%.0f' "$rps")")"
    done <"$TMP/results/$id"
    echo "- ${LABEL[$id]}, requests/s per round: $per_round"
  done
  echo "- CPU µs/request: user + system time of the serving processes over the measured rounds" \
    "(/proc/<pid>/stat, in clock ticks of 1/$(getconf CLK_TCK 2>/dev/null || echo 100) s), divided by the requests wrk" \
    "completed in them; Shoal's gateway is shoal up itself, its workers are its children (the standby included)."
  [[ -z $NGINX_SKIPPED ]] || echo "- nginx → Node.js kubia row skipped: $NGINX_SKIPPED."
  [[ -z $WASMTIME_SKIPPED ]] || echo "- wasmtime serve: $WASMTIME_SKIPPED; row skipped."
  echo "- Shoal rows: samples/hello/service.yaml's settings (replicas $REPLICAS, memory 64Mi, cpu 500m," \
    "instanceMemory 16Mi, timeout 10s) plus instances: {maxRequests: 1} (fresh) or" \
    "{maxRequests: 1000, maxIdle: 10s} (reuse)."
  if ! $SHOAL_CONFINED; then
    echo "- Shoal's replicas ran unconfined (no cgroups), like Node.js, nginx and wasmtime serve."
  else
    echo "- Shoal's replicas ran in cgroups with those limits; Node.js, nginx and wasmtime serve are unconfined."
  fi
  [[ -z $SHOAL_POLICY ]] ||
    echo "- Shoal ran under $SHOAL_POLICY (shoal up --cpu-scheduling; batch is its default), the others under the" \
      "kernel's default policy."
  print_resources
  if [[ -n $JS_SKIPPED ]]; then
    echo "- hello-js row skipped: $JS_SKIPPED."
  else
    echo "- hello-js: the seed's app.js unchanged, built by shoal build samples/hello-js in ${JS_BUILD_S}" \
      "($(stat -c %s "$HELLO_JS_WASM" | awk '{ printf "%.1f MB", $1 / 1e6 }')); memory 128Mi, instanceMemory 32Mi, no spec.instances (the SDK marks the component: instances reused)."
    echo "- hello-js start, shoal up to $REPLICAS replicas ready: cold compiled-module cache ${JS_START[cold]};" \
      "warm cache (restart on the same data dir) ${JS_START[warm]}."
  fi
  if ((${#errors[@]} == 0)); then
    echo "- No non-2xx/3xx responses and no socket errors in the measured rounds."
  else
    printf -- '- WARNING: %s\n' "${errors[@]}"
  fi
  busy_warning "$IDLE_BEFORE"
  echo "- Run time until this report: ${SECONDS} s (build and start-up included)."
}

# ------------------------------------------------------------------- main --

main() {
  check_knobs
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/shoal-bench.XXXXXX")
  # nginx's worker may run as another user (nobody when started as root):
  # let it reach its temp paths.
  chmod 755 "$TMP"
  check_tools
  build_shoal "shoal and the samples"
  [[ -f $HELLO_WASM ]] || die "$HELLO_WASM was not built"

  start_node
  add_server node "Node.js kubia (app.js)" "http://127.0.0.1:$NODE_PORT/"
  start_nginx
  [[ -n $NGINX_SKIPPED ]] || add_server nginx "nginx → Node.js kubia" "http://127.0.0.1:$NGINX_PORT/"
  start_wasmtime
  [[ -n $WASMTIME_SKIPPED ]] || add_server wasmtime "wasmtime serve (hello.wasm)" "http://127.0.0.1:$WASMTIME_PORT/"
  # One shoal up per configuration, started one after the other.
  write_manifest fresh '{maxRequests: 1}'
  start_shoal fresh
  add_server fresh "Shoal → $REPLICAS Wasm replicas, fresh instance per request (default)" \
    "http://127.0.0.1:${SHOAL_PORT[fresh]}/"
  write_manifest reuse '{maxRequests: 1000, maxIdle: 10s}'
  start_shoal reuse
  add_server reuse "Shoal → $REPLICAS Wasm replicas, instances reused (maxRequests 1000)" \
    "http://127.0.0.1:${SHOAL_PORT[reuse]}/"

  build_js
  start_js
  [[ -n $JS_SKIPPED ]] || add_server js "Shoal → $REPLICAS Wasm replicas, hello-js (the seed's app.js via componentize-js)" \
    "http://127.0.0.1:${SHOAL_PORT[js]}/"

  run_benchmark
  print_report
}

main "$@"

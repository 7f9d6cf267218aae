#!/usr/bin/env bash
# Benchmarks the kubia sample through Shoal's gateway against the seed's
# Node.js kubia (samples/hello-node/app.js, run unchanged), and nginx -> Node.js
# kubia when nginx is available, with the same wrk settings in the same run.
#
# Prints a Markdown table (requests/s, p50, p99, ratio to Node.js) to stdout;
# progress and diagnostics go to stderr. See bench/README.md.
#
# Knobs (environment): DURATION (s per round, default 8), ROUNDS (default 3),
# CONNECTIONS (default 32), WARMUP (s per server before round 1, default 2).
set -euo pipefail
export LC_ALL=C # predictable number formats for awk, printf and sort

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-2}
THREADS=1
READY_TIMEOUT=120 # seconds Shoal may take to report its replicas ready

TMP=""
NODE_PID="" NGINX_PID="" SHOAL_PID=""
USED_PORTS=" "
NGINX_SKIPPED="" # why the nginx row is skipped, if it is
IDLE_BEFORE=100   # CPU idle (%) just before the run
SHOAL_CONFINED=true # false if shoal said cgroups are unavailable

log() { printf 'kubia.sh: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ---------------------------------------------------------------- cleanup --

# stop_pid PID GRACE_SECONDS NAME: SIGTERM, wait up to GRACE, then SIGKILL.
stop_pid() {
  local pid=$1 grace=$2 name=$3 i
  [[ -n $pid ]] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "warning: $name (pid $pid) still running ${grace}s after SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  # Shoal first and with a long grace: it drains, stops its replicas and
  # removes their cgroups on SIGTERM.
  stop_pid "$SHOAL_PID" 30 shoal
  if [[ -n $SHOAL_PID && -f $TMP/shoal.log ]] && ! grep -q '^shoal: stopped' "$TMP/shoal.log"; then
    log "warning: shoal did not report a clean stop; the end of its log:"
    grep -v '^Received request from' "$TMP/shoal.log" | tail -n 20 >&2 || true
  fi
  stop_pid "$NGINX_PID" 10 nginx
  stop_pid "$NODE_PID" 10 node
  [[ -n $TMP ]] && rm -rf "$TMP"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------------- set-up --

check_knobs() {
  local name
  for name in DURATION ROUNDS CONNECTIONS WARMUP; do
    [[ ${!name} =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive integer (got '${!name}')"
  done
  ((CONNECTIONS >= THREADS)) || die "CONNECTIONS must be at least $THREADS"
}

# apt_install PKG: installs a Debian package; only as root, with apt-get.
# On failure, says why in APT_FAILURE.
APT_FAILURE=""
apt_install() {
  local pkg=$1
  if [[ $(id -u) -ne 0 ]]; then
    APT_FAILURE="not running as root"
    return 1
  fi
  if ! command -v apt-get >/dev/null; then
    APT_FAILURE="there is no apt-get"
    return 1
  fi
  log "installing $pkg with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q "$pkg" >"$TMP/apt-$pkg.log" 2>&1; then
    log "apt-get install $pkg failed; running apt-get update and retrying"
    apt-get update -q >>"$TMP/apt-$pkg.log" 2>&1 || true
    if ! apt-get install -y -q "$pkg" >>"$TMP/apt-$pkg.log" 2>&1; then
      tail -n 5 "$TMP/apt-$pkg.log" >&2
      APT_FAILURE="apt-get install $pkg failed"
      return 1
    fi
  fi
  if ! command -v "$pkg" >/dev/null; then
    APT_FAILURE="apt-get installed $pkg but it is not on PATH ($PATH)"
    return 1
  fi
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
}

# free_port: prints a free loopback TCP port not handed out before.
free_port() {
  local port tries
  for ((tries = 0; tries < 100; tries++)); do
    if command -v python3 >/dev/null; then
      port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    else
      port=$((20000 + RANDOM % 30000))
      # A successful connect means something listens there.
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi
    fi
    if [[ $USED_PORTS != *" $port "* ]]; then
      USED_PORTS+="$port "
      echo "$port"
      return 0
    fi
  done
  die "cannot find a free port"
}

# wait_for_kubia NAME URL SECONDS PID: waits until URL answers "You've hit ",
# checking that PID is still alive; prints the answer.
wait_for_kubia() {
  local name=$1 url=$2 seconds=$3 pid=$4 body="" i
  for ((i = 0; i < seconds * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { log "$name exited before answering"; return 1; }
    body=$(curl -sS --max-time 2 "$url" 2>/dev/null || true)
    if [[ $body == "You've hit "* ]]; then
      log "$name at $url answers: $body"
      return 0
    fi
    sleep 0.1
  done
  log "$name at $url did not answer \"You've hit ...\" within ${seconds}s (last answer: '${body}')"
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

build_shoal() {
  log "building shoal (cargo build --release)"
  (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
  [[ -x $ROOT/target/release/shoal ]] || die "$ROOT/target/release/shoal was not built"
}

start_shoal() {
  local shoal=$ROOT/target/release/shoal i admin=()
  SHOAL_PORT=$(free_port)
  # Newer shoal also serves an admin API (default 127.0.0.1:8081): keep it
  # off ports that may be in use.
  if "$shoal" up --help 2>/dev/null | grep -q -- '--admin-listen'; then
    admin=(--admin-listen "127.0.0.1:$(free_port)")
  fi
  log "starting shoal up on 127.0.0.1:$SHOAL_PORT"
  # The guests' per-request "Received request from" lines go to this log.
  : >"$TMP/shoal.log"
  "$shoal" up --listen "127.0.0.1:$SHOAL_PORT" "${admin[@]}" --data-dir "$TMP/shoal-data" \
    </dev/null >"$TMP/shoal.log" 2>&1 &
  SHOAL_PID=$!
  # "shoal: service kubia ready: 3/3 replicas" (or, in newer versions,
  # "shoal: service/kubia Ready: 3/3 replicas ready (revision ...)").
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    grep -Eq '^shoal: service[ /]kubia [Rr]eady: 3/3 replicas' "$TMP/shoal.log" && break
    if ! kill -0 "$SHOAL_PID" 2>/dev/null; then
      cat "$TMP/shoal.log" >&2
      die "shoal exited before its replicas were ready (log above)"
    fi
    sleep 0.1
  done
  if ((i >= READY_TIMEOUT * 10)); then
    cat "$TMP/shoal.log" >&2
    die "shoal did not report 'service kubia ready: 3/3 replicas' within ${READY_TIMEOUT}s (log above)"
  fi
  if grep -q 'cgroups are unavailable' "$TMP/shoal.log"; then
    SHOAL_CONFINED=false
    log "warning: shoal runs its replicas without cgroups (no cpu/memory limits)"
  fi
  wait_for_kubia "Shoal gateway" "http://127.0.0.1:$SHOAL_PORT/" 10 "$SHOAL_PID" || {
    cat "$TMP/shoal.log" >&2
    die "shoal's gateway did not answer"
  }
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

# parse_wrk FILE: prints "requests/s p50_ms p99_ms non2xx socket_errors".
parse_wrk() {
  awk '
    function ms(v, n, unit) {
      n = v + 0; unit = v; sub(/^[0-9.]+/, "", unit)
      if (unit == "us") return n / 1000
      if (unit == "ms") return n
      if (unit == "s") return n * 1000
      if (unit == "m") return n * 60000
      if (unit == "h") return n * 3600000
      return -1
    }
    /^Requests\/sec:/ { rps = $2 }
    /Latency Distribution/ { dist = 1; next }
    dist && $1 == "50%" { p50 = ms($2) }
    dist && $1 == "99%" { p99 = ms($2); dist = 0 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ { gsub(/,/, ""); socket = $4 + $6 + $8 + $10 }
    END {
      if (rps == "" || p50 == "" || p99 == "" || p50 < 0 || p99 < 0) exit 1
      printf "%s %.3f %.3f %d %d\n", rps, p50, p99, non2xx, socket
    }' "$1"
}

# measure ID ROUND: one wrk run, its parsed result appended to $TMP/results/ID.
measure() {
  local id=$1 round=$2 out="$TMP/wrk/$1.$2.txt" result
  run_wrk "$DURATION" "${URL[$id]}" "$out"
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

# cpu_idle_percent: how idle the machine's CPUs are over one second.
cpu_idle_percent() {
  local before after
  before=$(head -n 1 /proc/stat)
  sleep 1
  after=$(head -n 1 /proc/stat)
  # cpu user nice system idle iowait irq softirq steal (guest time is in user)
  awk -v a="$before" -v b="$after" 'BEGIN {
    split(a, x); split(b, y)
    for (i = 2; i <= 9; i++) total += y[i] - x[i]
    idle = (y[5] - x[5]) + (y[6] - x[6])
    printf "%.0f", total ? 100 * idle / total : 100
  }'
}

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
    done
  done
}

# ----------------------------------------------------------------- report --

# shoal_revision: the commit, "+changes" if the work tree differs (read-only:
# no index refresh, as someone else may be using the repository).
shoal_revision() {
  local rev
  rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) || { echo unknown; return; }
  git -C "$ROOT" --no-optional-locks diff --quiet HEAD -- 2>/dev/null || rev+="+changes"
  echo "$rev"
}

print_report() {
  local id rps p50 p99 non2xx socket node_rps ratio per_round nginx_version cpu errors=()
  nginx_version=$( (nginx -v 2>&1 || true) | sed -n 's|^nginx version: nginx/||p')
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)
  echo "kubia benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'): nproc $(nproc)${cpu:+ ($cpu)}, $(uname -sr);" \
    "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency, ${WARMUP}s warm-up per server," \
    "$ROUNDS interleaved round(s), median; Node.js $(node --version)${nginx_version:+, nginx $nginx_version};" \
    "shoal $(shoal_revision); CPU ${IDLE_BEFORE}% idle just before the run"
  echo
  echo "| server | requests/s | p50 (ms) | p99 (ms) | vs Node.js |"
  echo "|---|---|---|---|---|"
  read -r node_rps _ <<<"$(summarize node)"
  for id in "${SERVERS[@]}"; do
    read -r rps p50 p99 non2xx socket <<<"$(summarize "$id")"
    ratio=$(awk -v a="$rps" -v b="$node_rps" 'BEGIN { printf "%.2f", a / b }')
    echo "| ${LABEL[$id]} | $(thousands "$rps") | $p50 | $p99 | ${ratio}× |"
    ((non2xx == 0)) || errors+=("${LABEL[$id]}: $non2xx non-2xx/3xx responses over the measured rounds")
    ((socket == 0)) || errors+=("${LABEL[$id]}: $socket socket errors over the measured rounds")
  done
  echo
  # Per-round figures, to judge the noise.
  for id in "${SERVERS[@]}"; do
    per_round=""
    while read -r _ rps _; do
      per_round+="${per_round:+, }$(thousands "$(printf '%.0f' "$rps")")"
    done <"$TMP/results/$id"
    echo "- ${LABEL[$id]}, requests/s per round: $per_round"
  done
  [[ -z $NGINX_SKIPPED ]] || echo "- nginx → Node.js kubia row skipped: $NGINX_SKIPPED."
  if ! $SHOAL_CONFINED; then
    echo "- Shoal's replicas ran unconfined (no cgroups), like Node.js and nginx."
  else
    echo "- Shoal's replicas ran in cgroups with the default kubia manifest's limits; Node.js and nginx are unconfined."
  fi
  if ((${#errors[@]} == 0)); then
    echo "- No non-2xx/3xx responses and no socket errors in the measured rounds."
  else
    printf -- '- WARNING: %s\n' "${errors[@]}"
  fi
  ((IDLE_BEFORE >= 90)) ||
    echo "- WARNING: the machine was busy before the run (CPU ${IDLE_BEFORE}% idle): other load skews these numbers."
}

# ------------------------------------------------------------------- main --

main() {
  check_knobs
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/shoal-bench.XXXXXX")
  # nginx's worker may run as another user (nobody when started as root):
  # let it reach its temp paths.
  chmod 755 "$TMP"
  check_tools
  build_shoal

  start_node
  add_server node "Node.js kubia (app.js)" "http://127.0.0.1:$NODE_PORT/"
  start_nginx
  [[ -n $NGINX_SKIPPED ]] || add_server nginx "nginx → Node.js kubia" "http://127.0.0.1:$NGINX_PORT/"
  start_shoal
  add_server shoal "Shoal gateway → 3 Wasm replicas" "http://127.0.0.1:$SHOAL_PORT/"

  run_benchmark
  print_report
}

main "$@"

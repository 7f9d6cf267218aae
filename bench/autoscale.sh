#!/usr/bin/env bash
# Benchmarks Shoal's autoscaler: how fast a service at zero answers its first
# request (and how long the new replica took to get ready, step by step), and
# how fast a service follows a load step from 1 replica to the 6 it needs.
#
# Prints Markdown tables to stdout; progress and diagnostics go to stderr.
# See bench/README.md.
#
# Knobs (environment): TRIALS (scale-from-zero trials, default 20),
# STEP_TRIALS (load-step trials, default 3), STEP_SECONDS (s of load per
# step trial, default 10), SETTLE_TIMEOUT (s to wait for a load-step
# service to return to 1 replica between trials, default 90).
set -euo pipefail
export LC_ALL=C # predictable number formats for awk, printf and sort

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TRIALS=${TRIALS:-20}
STEP_TRIALS=${STEP_TRIALS:-3}
STEP_SECONDS=${STEP_SECONDS:-10}
SETTLE_TIMEOUT=${SETTLE_TIMEOUT:-90}
READY_TIMEOUT=120   # seconds Shoal may take to start (module compilation)
ZERO_TIMEOUT=30     # seconds kubia may take to scale to zero between trials
STEP_CLIENTS=16     # concurrent closed-loop clients in the load step
STEP_SLEEP_MS=100   # each request's duration (faulty.wasm's /sleep?ms=N)
STEP_TARGET=4       # spec.autoscale.target of the step service (concurrency)
STEP_UTILIZATION=70 # its targetUtilization (the default)
# ceil(clients / (target × utilization)) = ceil(16 / 2.8) = 6
STEP_NEEDED=$(((STEP_CLIENTS * 100 + STEP_TARGET * STEP_UTILIZATION - 1) / (STEP_TARGET * STEP_UTILIZATION)))
POLL_MS=50 # admin API polling period during the load step

HELLO_WASM=$ROOT/samples/target/wasm32-wasip2/release/hello.wasm
FAULTY_WASM=$ROOT/samples/target/wasm32-wasip2/release/faulty.wasm

TMP=""
SHOAL_PID="" WRK_PID=""
LOAD_PIDS=() # curl loops, when wrk is unavailable
USED_PORTS=" "
LOAD_TOOL=wrk
LOAD_RESULT=""      # "requests/s non_2xx errors" of the last load step
STEP_INCOMPLETE=""  # why load-step trials were skipped, if they were
IDLE_BEFORE=100     # CPU idle (%) just before the measurements
SHOAL_CONFINED=true # false if shoal said cgroups are unavailable
NOTES=()            # extra lines for the report

log() { printf 'autoscale.sh: %s\n' "$*" >&2; }
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

stop_load() {
  local pid
  stop_pid "$WRK_PID" 5 wrk
  WRK_PID=""
  for pid in "${LOAD_PIDS[@]}"; do
    stop_pid "$pid" 5 "curl loop"
  done
  LOAD_PIDS=()
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_load
  # Shoal with a long grace: it drains, stops its replicas and removes their
  # cgroups on SIGTERM.
  stop_pid "$SHOAL_PID" 30 shoal
  if [[ -n $SHOAL_PID && -f $TMP/shoal.log ]] && ! grep -q '^shoal: stopped' "$TMP/shoal.log"; then
    log "warning: shoal did not report a clean stop; the end of its log:"
    grep -v 'Received request from' "$TMP/shoal.log" | tail -n 20 >&2 || true
  fi
  [[ -n $TMP ]] && rm -rf "$TMP"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------------- set-up --

check_knobs() {
  local name
  for name in TRIALS STEP_TRIALS STEP_SECONDS SETTLE_TIMEOUT; do
    [[ ${!name} =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive integer (got '${!name}')"
  done
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
  for tool in curl cargo date; do
    command -v "$tool" >/dev/null || die "$tool is required but not found"
  done
  # Nanoseconds from date(1) (GNU coreutils; busybox prints a literal N).
  [[ $(date +%s%N) =~ ^[0-9]+$ ]] || die "date +%s%N does not print nanoseconds here"
  if ! command -v wrk >/dev/null && ! apt_install wrk; then
    LOAD_TOOL=curl
    log "wrk is not installed and cannot be installed ($APT_FAILURE): the load step uses $STEP_CLIENTS curl loops"
    NOTES+=("The load step used $STEP_CLIENTS background curl loops (wrk unavailable: $APT_FAILURE); a new connection per request.")
  fi
  if command -v jq >/dev/null; then
    log "reading the admin API's JSON with jq"
  else
    log "jq not found: reading the admin API's JSON with sed"
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

build_shoal() {
  log "building shoal and the samples (cargo build --release)"
  (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
  [[ -x $ROOT/target/release/shoal ]] || die "$ROOT/target/release/shoal was not built"
  [[ -f $HELLO_WASM ]] || die "$HELLO_WASM was not built"
  [[ -f $FAULTY_WASM ]] || die "$FAULTY_WASM was not built"
}

write_manifests() {
  cat >"$TMP/kubia.yaml" <<EOF
# Generated by bench/autoscale.sh: scale to zero after 1 s idle.
apiVersion: shoal.dev/v1
kind: Service
metadata: {name: kubia}
spec:
  module: $HELLO_WASM
  routes: [{host: kubia.test}]
  autoscale: {min: 0, max: 10, target: 10, scaleToZeroGracePeriod: 1s}
EOF
  cat >"$TMP/step.yaml" <<EOF
# Generated by bench/autoscale.sh: 1 replica at rest, short windows.
apiVersion: shoal.dev/v1
kind: Service
metadata: {name: step}
spec:
  module: $FAULTY_WASM
  replicas: 1
  routes: [{host: step.test}]
  autoscale: {min: 1, max: 10, target: $STEP_TARGET, stableWindow: 10s, panicWindow: 2s}
EOF
}

start_shoal() {
  local i
  SHOAL_PORT=$(free_port)
  ADMIN_PORT=$(free_port)
  log "starting shoal up on 127.0.0.1:$SHOAL_PORT (admin API on 127.0.0.1:$ADMIN_PORT)"
  # The guests' per-request "Received request from" lines go to this log.
  : >"$TMP/shoal.log"
  "$ROOT/target/release/shoal" up -f "$TMP/kubia.yaml" -f "$TMP/step.yaml" \
    --listen "127.0.0.1:$SHOAL_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" --data-dir "$TMP/shoal-data" \
    </dev/null >"$TMP/shoal.log" 2>&1 &
  SHOAL_PID=$!
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    if grep -q '^shoal: admin API listening' "$TMP/shoal.log" && [[ -s $TMP/shoal-data/token ]] &&
      grep -q '^shoal: service/step Ready: ' "$TMP/shoal.log"; then
      break
    fi
    shoal_alive || die "shoal exited before it was up (log above)"
    sleep 0.1
  done
  if ((i >= READY_TIMEOUT * 10)); then
    cat "$TMP/shoal.log" >&2
    die "shoal did not report its admin API and 'service/step Ready' within ${READY_TIMEOUT}s (log above)"
  fi
  TOKEN=$(<"$TMP/shoal-data/token")
  if grep -q 'cgroups are unavailable' "$TMP/shoal.log"; then
    SHOAL_CONFINED=false
    log "warning: shoal runs its replicas without cgroups (no cpu/memory limits)"
  fi
  log "shoal is up (pid $SHOAL_PID)"
}

# shoal_alive: true while shoal runs; otherwise prints its log to stderr.
shoal_alive() {
  kill -0 "$SHOAL_PID" 2>/dev/null && return 0
  log "shoal exited; its log:"
  grep -v 'Received request from' "$TMP/shoal.log" >&2 || true
  return 1
}

# ---------------------------------------------------------------- helpers --

now_ns() { date +%s%N; }

# ms_since T0_NS: milliseconds since T0 with 0.1 ms, e.g. "12.3".
ms_since() {
  local d=$(($(now_ns) - $1))
  printf '%d.%d' $((d / 1000000)) $((d % 1000000 / 100000))
}

# status NAME: prints "desired ready" from GET /v1/services/NAME, or fails.
status() {
  local json
  json=$(curl -sS -f --max-time 2 -H "Authorization: Bearer $TOKEN" \
    "http://127.0.0.1:$ADMIN_PORT/v1/services/$1" 2>>"$TMP/admin.err") || return 1
  if command -v jq >/dev/null; then
    jq -r '.status | "\(.desired) \(.ready)"' <<<"$json"
  else
    # The text after the last "status": (record has "replicas" but no
    # desired/ready); status's own "desired" comes before scale.desired.
    json=${json##*\"status\":}
    local desired ready
    desired=$(grep -o '"desired":[0-9]*' <<<"$json" | head -n 1 | sed 's/.*://')
    ready=$(grep -o '"ready":[0-9]*' <<<"$json" | head -n 1 | sed 's/.*://')
    [[ -n $desired && -n $ready ]] || return 1
    echo "$desired $ready"
  fi
}

# count_events SERVICE WORD: how many "replica/SERVICE-… WORD:" lines shoal printed.
count_events() {
  grep -c "^shoal: replica/$1-[^ ]* $2:" "$TMP/shoal.log" || true
}

# sleep_until T_NS: sleeps until the date(1) time T (no-op if past).
sleep_until() {
  local left=$(($1 - $(now_ns)))
  ((left > 0)) || return 0
  sleep "$(printf '%d.%09d' $((left / 1000000000)) $((left % 1000000000)))"
}

# stats FILE COLUMN: "min p50 max" of a column of numbers (p50: the mean of
# the two middle values for an even count).
stats() {
  awk -v c="$2" '{ print $c }' "$1" | sort -g | awk '
    { v[NR] = $1 }
    END {
      if (NR == 0) { print "- - -"; exit }
      m = int((NR + 1) / 2)
      p50 = (NR % 2) ? v[m] : (v[m] + v[m + 1]) / 2
      printf "%.1f %.1f %.1f\n", v[1], p50, v[NR]
    }'
}

# cpu_idle_percent: how idle the machine's CPUs are over one second.
cpu_idle_percent() {
  local before after
  before=$(head -n 1 /proc/stat)
  sleep 1
  after=$(head -n 1 /proc/stat)
  awk -v a="$before" -v b="$after" 'BEGIN {
    split(a, x); split(b, y)
    for (i = 2; i <= 9; i++) total += y[i] - x[i]
    idle = (y[5] - x[5]) + (y[6] - x[6])
    printf "%.0f", total ? 100 * idle / total : 100
  }'
}

# ------------------------------------------------------- scale from zero --

# wait_for_zero: until kubia's status is 0 desired / 0 ready and every
# kubia worker that started has stopped.
wait_for_zero() {
  local i desired ready started stopped st
  for ((i = 0; i < ZERO_TIMEOUT * 20; i++)); do
    shoal_alive || die "shoal exited during the scale-from-zero trials"
    st=$(status kubia) || st="? ?"
    read -r desired ready <<<"$st"
    started=$(count_events kubia Started)
    stopped=$(count_events kubia Stopped)
    [[ $desired == 0 && $ready == 0 && $started == "$stopped" ]] && return 0
    sleep 0.05
  done
  die "kubia did not return to zero within ${ZERO_TIMEOUT}s (status desired/ready: $desired/$ready;" \
    "workers started $started, stopped $stopped)"
}

# from_zero_trial N: one request to kubia at zero; appends
# "first_byte ready exec cgroup runtime engine load check other standby" (ms;
# standby 1 or 0) to $TMP/zero.txt.
from_zero_trial() {
  local n=$1 before out code ttfb body line i after
  wait_for_zero
  before=$(count_events kubia Started)
  out=$(curl -s -o "$TMP/body" --max-time 10 -H 'Host: kubia.test' \
    -w '%{http_code} %{time_starttransfer}' "http://127.0.0.1:$SHOAL_PORT/") || true
  read -r code ttfb <<<"$out"
  body=$(head -c 100 "$TMP/body" 2>/dev/null || true)
  if [[ $code != 200 ]]; then
    shoal_alive || true
    die "trial $n: the request to kubia at zero answered '${code:-no answer}' (body: '$body'), not 200"
  fi
  [[ $body == "You've hit "* ]] || log "warning: trial $n: unexpected body '$body'"
  # The replica's Started line (printed when it is ready, so normally
  # already there).
  for ((i = 0; i < 50; i++)); do
    after=$(count_events kubia Started)
    ((after > before)) && break
    sleep 0.1
  done
  ((after > before)) || die "trial $n: 200 from kubia, but shoal printed no new 'replica/kubia-… Started:' line"
  ((after == before + 1)) ||
    NOTES+=("Scale-from-zero trial $n started $((after - before)) replicas for one request (the newest is reported).")
  line=$(grep "^shoal: replica/kubia-[^ ]* Started:" "$TMP/shoal.log" | tail -n 1)
  # "... ready in 3.2ms (cgroup 0.3ms, exec standby, runtime 0.1ms, engine 0.7ms,
  #  module load 1.1ms, start check 0.1ms, other 0.2ms)"; exec is "standby" when
  # a standby worker became the replica (its fork and exec were paid before).
  local nums
  nums=$(awk '{
    if (!match($0, / ready in [0-9.]+ms \(.*\)/)) exit
    s = substr($0, RSTART, RLENGTH)
    sub(/ ready in /, "", s); total = s; sub(/ms.*/, "", total)
    sub(/^[^(]*\(/, "", s); sub(/\)$/, "", s)
    n = split(s, parts, ", ")
    for (i = 1; i <= n; i++) { v = parts[i]; sub(/.* /, "", v); k = parts[i]; sub(/ [^ ]*$/, "", k); val[k] = v }
    ex = val["exec"]; standby = (ex == "standby") ? 1 : 0; if (standby) ex = "0ms"
    out = total
    split("cgroup runtime engine module_load start_check other", keys, " ")
    e = ex; sub(/ms$/, "", e)
    out = out " " e
    for (j = 1; j <= 6; j++) { k = keys[j]; gsub(/_/, " ", k); v = val[k]; sub(/ms$/, "", v); out = out " " v }
    print out " " standby
  }' <<<"$line")
  [[ -n $nums ]] || die "trial $n: cannot parse shoal's Started line: $line"
  ttfb=$(awk -v s="$ttfb" 'BEGIN { printf "%.1f", s * 1000 }')
  echo "$ttfb $nums" >>"$TMP/zero.txt"
  log "from zero $n/$TRIALS: first byte ${ttfb} ms; replica ${line#* ready in }"
}

run_from_zero() {
  local n
  : >"$TMP/zero.txt"
  log "scale from zero: $TRIALS trials (kubia scales to zero after 1 s idle)"
  for ((n = 1; n <= TRIALS; n++)); do
    from_zero_trial "$n"
  done
  # Leave kubia at zero for the load step.
  wait_for_zero
}

# -------------------------------------------------------------- load step --

# wait_for_one SECONDS: until step's status is 1 desired / 1 ready; sets
# WAITED to how long that took (s) or, when SECONDS pass first, fails with
# WAITED set to the last "desired/ready".
WAITED=""
wait_for_one() {
  local t0 deadline st desired='?' ready='?'
  t0=$(now_ns)
  deadline=$((t0 + $1 * 1000000000))
  while (($(now_ns) < deadline)); do
    shoal_alive || die "shoal exited during the load step"
    st=$(status step) || st="? ?"
    read -r desired ready <<<"$st"
    if [[ $desired == 1 && $ready == 1 ]]; then
      WAITED=$(awk -v ms="$(ms_since "$t0")" 'BEGIN { printf "%.0f", ms / 1000 }')
      return 0
    fi
    sleep 0.2
  done
  WAITED="$desired/$ready"
  return 1
}

start_load() {
  local url="http://127.0.0.1:$SHOAL_PORT/sleep?ms=$STEP_SLEEP_MS" i
  if [[ $LOAD_TOOL == wrk ]]; then
    wrk -t2 -c"$STEP_CLIENTS" -d"${STEP_SECONDS}s" -H 'Host: step.test' "$url" >"$TMP/load.txt" 2>&1 &
    WRK_PID=$!
  else
    : >"$TMP/load.txt"
    for ((i = 0; i < STEP_CLIENTS; i++)); do
      (
        end=$((SECONDS + STEP_SECONDS))
        while ((SECONDS < end)); do
          curl -s -o /dev/null --max-time 10 -H 'Host: step.test' -w '%{http_code}\n' "$url" || echo 000
        done >>"$TMP/load.$i.txt"
      ) &
      LOAD_PIDS+=($!)
    done
  fi
}

# finish_load: waits for the load to end (in this shell: the load runs in
# its children); sets LOAD_RESULT to "requests/s non_2xx errors".
finish_load() {
  local pid rc=0
  if [[ $LOAD_TOOL == wrk ]]; then
    wait "$WRK_PID" || rc=$?
    WRK_PID=""
    ((rc == 0)) || { cat "$TMP/load.txt" >&2; die "wrk failed (exit $rc)"; }
    LOAD_RESULT=$(awk '
      /^Requests\/sec:/ { rps = $2 }
      /Non-2xx or 3xx responses:/ { non2xx = $NF }
      /Socket errors:/ { gsub(/,/, ""); socket = $4 + $6 + $8 + $10 }
      END { printf "%.0f %d %d\n", rps, non2xx, socket }' "$TMP/load.txt")
  else
    for pid in "${LOAD_PIDS[@]}"; do wait "$pid" || true; done
    LOAD_PIDS=()
    LOAD_RESULT=$(cat "$TMP"/load.*.txt | awk -v s="$STEP_SECONDS" '
      { n++ } $1 == "000" { err++ } $1 != "000" && $1 !~ /^2/ { non2xx++ }
      END { printf "%.0f %d %d\n", n / s, non2xx, err }')
    rm -f "$TMP"/load.*.txt
  fi
}

# step_trial N: appends "trial desired_s ready_s max_desired max_ready
# rps non2xx errors" to $TMP/step.txt ("-" for a count never reached).
step_trial() {
  local n=$1 t0 end k=0 st desired ready t_desired=- t_ready=- max_desired=0 max_ready=0 ms
  log "load step $n/$STEP_TRIALS: $STEP_CLIENTS clients × /sleep?ms=$STEP_SLEEP_MS for ${STEP_SECONDS}s ($LOAD_TOOL)"
  t0=$(now_ns)
  start_load
  end=$((t0 + STEP_SECONDS * 1000000000))
  while :; do
    st=$(status step) || st="? ?"
    ms=$(ms_since "$t0")
    read -r desired ready <<<"$st"
    if [[ $desired =~ ^[0-9]+$ && $ready =~ ^[0-9]+$ ]]; then
      ((desired > max_desired)) && max_desired=$desired
      ((ready > max_ready)) && max_ready=$ready
      if [[ $t_desired == - ]] && ((desired >= STEP_NEEDED)); then
        t_desired=$ms
        log "  desired $desired at ${ms} ms"
      fi
      if [[ $t_ready == - ]] && ((ready >= STEP_NEEDED)); then
        t_ready=$ms
        log "  ready $ready at ${ms} ms"
      fi
    fi
    k=$((k + 1))
    (($(now_ns) < end)) || break
    sleep_until $((t0 + k * POLL_MS * 1000000))
  done
  finish_load
  log "  load done: max desired $max_desired, max ready $max_ready; requests/s, non-2xx, errors: $LOAD_RESULT"
  echo "$n $t_desired $t_ready $max_desired $max_ready $LOAD_RESULT" >>"$TMP/step.txt"
}

run_step() {
  local n
  : >"$TMP/step.txt"
  for ((n = 1; n <= STEP_TRIALS; n++)); do
    if ! wait_for_one "$SETTLE_TIMEOUT"; then
      if ((n == 1)); then
        die "service step is not at 1 desired / 1 ready replica before the load step (desired/ready: $WAITED)"
      fi
      STEP_INCOMPLETE="service step did not return to 1 replica within ${SETTLE_TIMEOUT}s after trial $((n - 1))"
      STEP_INCOMPLETE+=" (desired/ready still $WAITED); trials $n-$STEP_TRIALS skipped"
      log "warning: $STEP_INCOMPLETE"
      break
    fi
    ((n == 1)) || log "  back to 1 replica after ${WAITED}s"
    step_trial "$n"
  done
}

# ----------------------------------------------------------------- report --

shoal_revision() {
  local rev
  rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) || { echo unknown; return; }
  git -C "$ROOT" --no-optional-locks diff --quiet HEAD -- 2>/dev/null || rev+="+changes"
  echo "$rev"
}

# verdict P50 MAX GOAL: "≤ GOAL ms: p50 met, max missed" and the like.
verdict() {
  awk -v p="$1" -v m="$2" -v g="$3" 'BEGIN {
    printf "≤ %s ms: p50 %s, max %s", g, (p <= g ? "met" : "MISSED"), (m <= g ? "met" : "missed")
  }'
}

# seconds MS: "1.23" (or "not reached").
seconds() {
  if [[ $1 == - ]]; then
    echo "not reached in ${STEP_SECONDS}s"
  else
    awk -v ms="$1" 'BEGIN { printf "%.2f", ms / 1000 }'
  fi
}

# step_median COLUMN: median over the trials of a time column (ms), a trial
# that never got there counting as slowest; "-" if the median is one.
step_median() {
  awk -v c="$1" '{ print ($c == "-" ? "inf" : $c) }' "$TMP/step.txt" | sort -g | awk '
    { v[NR] = $1 }
    END {
      m = int((NR + 1) / 2)
      if (NR == 0 || v[m] == "inf" || (NR % 2 == 0 && v[m + 1] == "inf")) { print "-"; exit }
      printf "%.1f\n", (NR % 2) ? v[m] : (v[m] + v[m + 1]) / 2
    }'
}

# print_shoal_warnings: shoal's warnings and errors, verbatim (at most 10).
print_shoal_warnings() {
  local lines count
  lines=$(grep -E '^shoal: WARNING |^WARNING|^Error|^[0-9T:.-]+Z +(WARN|ERROR) ' "$TMP/shoal.log" || true)
  if [[ -z $lines ]]; then
    echo "- Shoal logged no warnings or errors."
    return
  fi
  count=$(wc -l <<<"$lines")
  echo "- Shoal logged $count warning/error line(s)$( ((count <= 10)) || echo ", the first 10"):"
  echo
  echo '```'
  head -n 10 <<<"$lines"
  echo '```'
}

print_report() {
  local cpu min p50 max col label goal n td tr maxd maxr rps non2xx errs scalings mins=()
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)
  echo "Autoscale benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'): nproc $(nproc)${cpu:+ ($cpu)}, $(uname -sr);" \
    "shoal $(shoal_revision); replicas $($SHOAL_CONFINED && echo "in cgroups" || echo "UNCONFINED (shoal: cgroups are unavailable)");" \
    "CPU ${IDLE_BEFORE}% idle just before the measurements"
  echo
  echo "### Scale from zero (kubia, hello.wasm; $TRIALS trials)"
  echo
  echo "| step | p50 (ms) | max (ms) | goal |"
  echo "|---|---|---|---|"
  # Columns of zero.txt: first byte, ready, exec, cgroup, runtime, engine,
  # load, check, other, standby; column 11 (added here): first byte minus ready.
  awk '{ printf "%s %.1f\n", $0, $1 - $2 }' "$TMP/zero.txt" >"$TMP/zero2.txt"
  local standbys
  standbys=$(awk '$10 == 1' "$TMP/zero.txt" | wc -l)
  for col in 1 2 4 3 5 6 7 8 9 11; do
    case $col in
    1) label="first byte from zero (curl time_starttransfer)" ;;
    2) label="new replica ready (total)" ;;
    3) label="· fork + exec (0 when a standby worker was used)" ;;
    4) label="· cgroup (create, or rename the standby's and set limits)" ;;
    5) label="· tokio runtime" ;;
    6) label="· wasmtime engine" ;;
    7) label="· module load (precompiled, mmap)" ;;
    8) label="· start check (one instantiation)" ;;
    9) label="· other (config, readiness pipe)" ;;
    11) label="first byte − replica ready (activator, proxy, curl)" ;;
    esac
    read -r min p50 max <<<"$(stats "$TMP/zero2.txt" "$col")"
    case $col in
    1) goal=$(verdict "$p50" "$max" 20) ;;
    2) goal=$(verdict "$p50" "$max" 10) ;;
    *) goal="" ;;
    esac
    echo "| $label | $p50 | $max | $goal |"
    mins+=("$min")
  done
  echo
  echo "- Minimums (ms): first byte ${mins[0]}, ready ${mins[1]}."
  echo "- A standby worker (forked, confined and exec'd ahead) became the replica in $standbys of $TRIALS trials."
  echo "- Each trial waited until kubia was at zero (status 0 desired, 0 ready, every worker Stopped)," \
    "then timed one request with curl (time to first byte); every request answered 200." \
    "The breakdown is from shoal's \"Started: … ready in\" line for the replica it started."
  echo
  echo "### Load step (step, faulty.wasm; 1 replica, target $STEP_TARGET, stableWindow 10s, panicWindow 2s)"
  echo
  echo "$STEP_CLIENTS closed-loop clients on /sleep?ms=$STEP_SLEEP_MS for ${STEP_SECONDS}s" \
    "($([[ $LOAD_TOOL == wrk ]] && echo "wrk -t2 -c$STEP_CLIENTS" || echo "curl loops"));" \
    "needed: ceil($STEP_CLIENTS / ($STEP_TARGET × 0.$STEP_UTILIZATION)) = $STEP_NEEDED replicas." \
    "Time from the start of the load until the admin API first showed the count (polled every ${POLL_MS} ms)."
  echo
  echo "| trial | desired ≥ $STEP_NEEDED (s) | ready ≥ $STEP_NEEDED (s) |"
  echo "|---|---|---|"
  while read -r n td tr _; do
    echo "| $n | $(seconds "$td") | $(seconds "$tr") |"
  done <"$TMP/step.txt"
  echo "| median | $(seconds "$(step_median 2)") | $(seconds "$(step_median 3)") |"
  echo
  while read -r n td tr maxd maxr rps non2xx errs; do
    echo "- Trial $n: at most $maxd desired / $maxr ready during the load; $rps requests/s," \
      "$non2xx non-2xx responses, $errs socket errors."
  done <"$TMP/step.txt"
  [[ -z $STEP_INCOMPLETE ]] || echo "- WARNING: $STEP_INCOMPLETE."
  echo "- Between trials the count returned to 1 (stableWindow and the scale-down rate limit; waited ${SETTLE_TIMEOUT}s at most)."
  scalings=$(sed -n 's/^shoal: service\/step Scaled: \([0-9]*\) → \([0-9]*\) replicas.*/\1→\2/p' "$TMP/shoal.log" |
    paste -s -d ' ' -)
  echo "- Shoal's scaling events for step, in order: ${scalings:-none}."
  print_shoal_warnings
  ((${#NOTES[@]} == 0)) || printf -- '- %s\n' "${NOTES[@]}"
  ((IDLE_BEFORE >= 90)) ||
    echo "- WARNING: the machine was busy before the run (CPU ${IDLE_BEFORE}% idle): other load skews these numbers."
}

# ------------------------------------------------------------------- main --

main() {
  local started
  started=$(now_ns)
  check_knobs
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/shoal-autoscale.XXXXXX")
  check_tools
  build_shoal
  write_manifests
  start_shoal
  IDLE_BEFORE=$(cpu_idle_percent)
  log "CPU idle before the measurements: ${IDLE_BEFORE}%"
  run_from_zero
  run_step
  print_report
  log "done in $(awk -v ms="$(ms_since "$started")" 'BEGIN { printf "%.0f", ms / 1000 }')s"
}

main "$@"

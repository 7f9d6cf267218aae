#!/usr/bin/env bash
# Benchmarks a storm of cold starts (issue 18): N copies of the kubia sample,
# each on its own host and scaled to zero, then one request to each of the N
# at the same instant. How long until each answers (first byte), whether all
# answer 200, and what `shoal up` itself weighs with the N services idle.
#
# Prints Markdown to stdout; progress and diagnostics go to stderr.
# See bench/README.md.
#
# Knobs (environment): SIZES (the Ns, default "1 50 100 300 1000"),
# TRIALS_ONE (sequential single cold starts for N=1, default 20), GRACE_WAIT
# (s to wait for every service to be back at zero, default 120),
# READY_TIMEOUT (s shoal up may take to start, default 120), SHOAL_BIN (a
# shoal binary to run instead of building target/release/shoal), KEEP (a
# directory to copy shoal's log and the storms' raw results into).
set -euo pipefail
export LC_ALL=C # predictable number formats for awk, printf and sort

# ROOT, log, die, stop_pid, apt_install, free_port and the report helpers.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZES=${SIZES:-1 50 100 300 1000}
TRIALS_ONE=${TRIALS_ONE:-20}
GRACE_WAIT=${GRACE_WAIT:-120}
READY_TIMEOUT=${READY_TIMEOUT:-120}
SHOAL_BIN=${SHOAL_BIN:-}
KEEP=${KEEP:-}
REQUEST_TIMEOUT_MS=30000 # storm.js gives up on a request after this
APPLY_CHUNK=250          # manifests per `shoal apply -f DIR` (for progress)
MAX_N=9999               # services are storm-0001 … storm-9999
# The services' autoscale block (issue 18's).
AUTOSCALE='{min: 0, max: 2, scaleToZeroGracePeriod: 2s}'

HELLO_WASM=$ROOT/samples/target/wasm32-wasip2/release/hello.wasm
STORM_JS=$ROOT/bench/storm.js

TMP=""
SHOAL="" SHOAL_PID="" SHOAL_PORT="" ADMIN_PORT="" TOKEN=""
SIZE_LIST=()        # SIZES, sorted, without duplicates
MEASURED=()         # the Ns whose storm ran
CREATED=0           # storm-0001 … storm-$CREATED exist
JSON_TOOL=jq        # or node, to read the admin API's JSON
IDLE_BEFORE=100     # CPU idle (%) just before the first storm
SHOAL_CONFINED=true # false if shoal said cgroups are unavailable
NOTES=()            # extra lines for the report

# ---------------------------------------------------------------- cleanup --

# stop_shoal: SIGTERM to shoal up (60 s grace: it stops its workers, however
# many, and removes their cgroups), then checks that none of its workers and
# none of its cgroups are left; says what is left in NOTES.
stop_shoal() {
  [[ -n $SHOAL_PID ]] || return 0
  local children pid left=() cgroups
  children=$(pgrep -P "$SHOAL_PID" 2>/dev/null || true)
  stop_pid "$SHOAL_PID" 60 shoal
  if [[ -f $TMP/shoal.log ]] && ! grep -q '^shoal: stopped' "$TMP/shoal.log"; then
    log "warning: shoal did not report a clean stop; the end of its log:"
    grep -v 'Received request from' "$TMP/shoal.log" | tail -n 20 >&2 || true
    NOTES+=("WARNING: shoal up did not print 'shoal: stopped' after SIGTERM.")
  fi
  # Its workers were its children (shoal-worker, shoal-standby); orphaned,
  # they would have been re-parented. Its cgroups are named up-PID.
  for pid in $children; do
    case $(cat "/proc/$pid/comm" 2>/dev/null) in
    shoal-worker | shoal-standby) left+=("$pid") ;;
    esac
  done
  cgroups=$(find /sys/fs/cgroup -maxdepth 4 -type d -name "up-$SHOAL_PID" 2>/dev/null | paste -s -d ' ' -)
  if ((${#left[@]} > 0)); then
    log "warning: worker processes of shoal up left after it stopped: ${left[*]}"
    NOTES+=("WARNING: ${#left[@]} worker process(es) of shoal up were still running after it stopped (pids ${left[*]}).")
  fi
  if [[ -n $cgroups ]]; then
    log "warning: cgroups of shoal up left after it stopped: $cgroups"
    NOTES+=("WARNING: shoal up's cgroups were still there after it stopped: $cgroups.")
  fi
  if ((${#left[@]} == 0)) && [[ -z $cgroups ]]; then
    log "shoal stopped; no worker process or cgroup of it is left"
    NOTES+=("After the run shoal up was stopped (SIGTERM); no worker process and no cgroup of it was left.")
  fi
  SHOAL_PID=""
}

# keep_files: copies shoal's log and the storms' results to $KEEP, if set
# (the temp dir is removed on exit).
keep_files() {
  [[ -n $KEEP && -n $TMP ]] || return 0
  mkdir -p "$KEEP" || { log "warning: cannot create KEEP=$KEEP"; return 0; }
  cp "$TMP"/shoal.log "$TMP"/row-*.txt "$KEEP"/ 2>/dev/null || true
  log "shoal's log and the storms' results (row-N.txt: status ms host body) copied to $KEEP"
}

# stop_processes: what cleanup (lib.sh) stops on exit.
stop_processes() {
  stop_shoal
  keep_files
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------------- set-up --

check_knobs() {
  local n
  require_positive_ints TRIALS_ONE GRACE_WAIT READY_TIMEOUT
  for n in $SIZES; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "SIZES must be positive integers (got '$n' in '$SIZES')"
    ((n <= MAX_N)) || die "SIZES: at most $MAX_N services (got $n)"
  done
  # shellcheck disable=SC2086 # SIZES is a list of words
  mapfile -t SIZE_LIST < <(printf '%s\n' $SIZES | sort -n -u)
  ((${#SIZE_LIST[@]} > 0)) || die "SIZES is empty"
}

check_tools() {
  local tool
  for tool in curl node pgrep date; do
    command -v "$tool" >/dev/null || die "$tool is required but not found"
  done
  # Nanoseconds from date(1) (GNU coreutils; busybox prints a literal N).
  [[ $(date +%s%N) =~ ^[0-9]+$ ]] || die "date +%s%N does not print nanoseconds here"
  [[ -f $STORM_JS ]] || die "$STORM_JS not found"
  if command -v jq >/dev/null || apt_install jq; then
    JSON_TOOL=jq
  else
    JSON_TOOL=node
    log "jq is not installed and cannot be installed ($APT_FAILURE): reading the admin API's JSON with node"
  fi
  # One open file per connection in storm.js; shoal up needs as many.
  local max=${SIZE_LIST[-1]} limit
  limit=$(ulimit -n)
  if [[ $limit != unlimited ]] && ((limit < max + 100)); then
    ulimit -n $((max + 100)) 2>/dev/null ||
      log "warning: the open-files limit is $limit; the N=$max storm needs about $((max + 100))"
  fi
}

find_storm_shoal() {
  find_shoal "shoal and the samples"
  [[ -f $HELLO_WASM ]] || die "$HELLO_WASM not found (built by cargo build --release)"
}

start_shoal() {
  local i
  SHOAL_PORT=$(free_port)
  ADMIN_PORT=$(free_port)
  log "starting shoal up on 127.0.0.1:$SHOAL_PORT (admin API on 127.0.0.1:$ADMIN_PORT)"
  # Without -f it runs the kubia sample (3 replicas), deleted below.
  "$SHOAL" up --listen "127.0.0.1:$SHOAL_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --data-dir "$TMP/data" </dev/null >"$TMP/shoal.log" 2>&1 &
  SHOAL_PID=$!
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    grep -q '^shoal: admin API listening' "$TMP/shoal.log" && [[ -s $TMP/data/token ]] && break
    shoal_alive || die "shoal exited before it was up (log above)"
    sleep 0.1
  done
  if ((i >= READY_TIMEOUT * 10)); then
    cat "$TMP/shoal.log" >&2
    die "shoal did not report its admin API within ${READY_TIMEOUT}s (log above)"
  fi
  TOKEN=$(<"$TMP/data/token")
  note_shoal_confinement
  log "shoal is up (pid $SHOAL_PID); deleting its sample service kubia"
  cli delete service kubia >&2 || die "shoal delete service kubia failed"
}

# shoal_alive: true while shoal runs; otherwise prints its log to stderr.
shoal_alive() {
  kill -0 "$SHOAL_PID" 2>/dev/null && return 0
  log "shoal exited; its log:"
  grep -v 'Received request from' "$TMP/shoal.log" | tail -n 50 >&2 || true
  return 1
}

# cli ARGS...: the shoal CLI against our shoal up.
cli() {
  SHOAL_SERVER="http://127.0.0.1:$ADMIN_PORT" SHOAL_DATA_DIR="$TMP/data" "$SHOAL" "$@"
}

# ---------------------------------------------------------------- helpers --

now_ns() { date +%s%N; }

# seconds_since T0_NS: whole seconds since T0.
seconds_since() { echo $((($(now_ns) - $1) / 1000000000)); }

# name I: the I-th service's name, storm-0001 and so on.
name() { printf 'storm-%04d' "$1"; }

# hosts N: the Host headers of the first N services, one a line.
hosts() {
  local i
  for ((i = 1; i <= $1; i++)); do echo "$(name "$i").test"; done
}

# rss_mb PID: VmRSS of a process in MB (MiB), e.g. "56.3".
rss_mb() {
  awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

# workers: how many replica workers (comm shoal-worker) shoal up runs; its
# standby worker (comm shoal-standby) is not one.
workers() {
  pgrep -P "$SHOAL_PID" -x shoal-worker 2>/dev/null | grep -c . || true
}

# zero_counts: "services at_zero" over the storm services, from
# GET /v1/services: at zero is 0 desired, 0 ready and the newest generation
# observed.
zero_counts() {
  local json
  json=$(curl -sS -f --max-time 10 -H "Authorization: Bearer $TOKEN" \
    "http://127.0.0.1:$ADMIN_PORT/v1/services" 2>>"$TMP/admin.err") || return 1
  if [[ $JSON_TOOL == jq ]]; then
    jq -r '[.[].status | select(.name | startswith("storm-"))]
      | "\(length) \(map(select(.desired == 0 and .ready == 0 and .observedGeneration == .generation)) | length)"' <<<"$json"
  else
    # shellcheck disable=SC2016 # JavaScript, not shell
    node -e '
      const s = JSON.parse(require("fs").readFileSync(0, "utf8")).map((x) => x.status).filter((x) => x.name.startsWith("storm-"));
      const zero = s.filter((x) => x.desired === 0 && x.ready === 0 && x.observedGeneration === x.generation);
      console.log(`${s.length} ${zero.length}`);' <<<"$json"
  fi
}

# wait_for_zero N [soft]: until the N storm services exist, all at zero,
# and shoal up has no replica worker left. After GRACE_WAIT seconds it dies,
# or, with "soft", sets NOT_ZERO to what it last saw and returns 1.
NOT_ZERO=""
wait_for_zero() {
  local n=$1 soft=${2:-} t0 counts="? ?" total zero busy="?" polls=0 unanswered=0
  t0=$(now_ns)
  while :; do
    shoal_alive || die "shoal exited while waiting for the services to be at zero"
    polls=$((polls + 1))
    counts=$(zero_counts) || { counts="? ?"; unanswered=$((unanswered + 1)); }
    read -r total zero <<<"$counts"
    busy=$(workers)
    [[ $total == "$n" && $zero == "$n" && $busy == 0 ]] && return 0
    if (($(seconds_since "$t0") >= GRACE_WAIT)); then
      NOT_ZERO="services at zero $zero of $n, replica workers $busy after ${GRACE_WAIT}s"
      ((unanswered == 0)) || NOT_ZERO+="; the admin API's GET /v1/services failed (10 s timeout) $unanswered of $polls times"
      [[ $soft == soft ]] || die "the $n services were not all at zero: $NOT_ZERO"
      log "warning: the $n services were not all at zero: $NOT_ZERO"
      return 1
    fi
    if ((n <= 10)); then sleep 0.1; else sleep 0.5; fi
  done
}

# create_services N: applies storm-(CREATED+1) … storm-N, APPLY_CHUNK
# manifests per `shoal apply -f DIR`.
create_services() {
  local n=$1 i dir chunk=0 t0 created
  ((n > CREATED)) || return 0
  t0=$(now_ns)
  log "creating $(name $((CREATED + 1))) … $(name "$n") ($((n - CREATED)) services)"
  for ((i = CREATED + 1; i <= n; i++)); do
    if (((i - CREATED - 1) % APPLY_CHUNK == 0)); then
      chunk=$((chunk + 1))
      dir=$TMP/manifests/$n-$chunk
      mkdir -p "$dir"
    fi
    cat >"$dir/$(name "$i").yaml" <<EOF
# Generated by bench/coldstorm.sh.
apiVersion: shoal.dev/v1
kind: Service
metadata: {name: $(name "$i")}
spec:
  module: $HELLO_WASM
  replicas: 0
  routes: [{host: $(name "$i").test}]
  autoscale: $AUTOSCALE
EOF
  done
  for dir in "$TMP/manifests/$n-"*; do
    if ! cli apply -f "$dir" >"$TMP/apply.log" 2>&1; then
      tail -n 20 "$TMP/apply.log" >&2
      die "shoal apply -f $dir failed (its output above)"
    fi
    created=$(grep -c ' created$' "$TMP/apply.log" || true)
    CREATED=$((CREATED + created))
    log "  applied ${dir##*/}: $created created (storm services now $CREATED, $(seconds_since "$t0")s)"
  done
  ((CREATED == n)) || die "after applying, $CREATED storm services were created, not $n (see $TMP/apply.log)"
}

# storm N OUT: one request to each of the first N services at one instant
# (storm.js); appends its "status ms host body" lines to OUT.
storm() {
  hosts "$1" | TIMEOUT_MS=$REQUEST_TIMEOUT_MS node "$STORM_JS" 127.0.0.1 "$SHOAL_PORT" >>"$2" 2>>"$TMP/storm.err" ||
    die "storm.js failed: $(tail -n 3 "$TMP/storm.err")"
}

# ------------------------------------------------------------------ a row --

# run_row N: creates services up to N, waits for zero, measures RSS, fires
# the storm (TRIALS_ONE sequential ones for N=1), waits for zero again.
# Fails, with a note, if the services do not get to zero before the storm.
# Writes $TMP/row-N.txt ("status ms host body" per request), $TMP/rss-N,
# $TMP/idle-N and $TMP/log-N.txt (shoal's log lines during the storm).
run_row() {
  local n=$1 out=$TMP/row-$1.txt from to t ok
  create_services "$n"
  log "N=$n: waiting until all $n services are at zero"
  if ! wait_for_zero "$n" soft; then
    NOTES+=("WARNING: N=$n skipped, and any larger N: the services were not at zero before its storm ($NOT_ZERO).")
    return 1
  fi
  MEASURED+=("$n")
  rss_mb "$SHOAL_PID" >"$TMP/rss-$n"
  cpu_idle_percent >"$TMP/idle-$n"
  log "N=$n: shoal up RSS $(<"$TMP/rss-$n") MB with $n idle services; CPU $(<"$TMP/idle-$n")% idle"
  : >"$out"
  from=$(($(wc -l <"$TMP/shoal.log") + 1))
  if ((n == 1)); then
    for ((t = 1; t <= TRIALS_ONE; t++)); do
      ((t == 1)) || wait_for_zero 1
      storm 1 "$out"
      log "N=1 trial $t/$TRIALS_ONE: $(tail -n 1 "$out" | cut -c 1-100)"
    done
  else
    log "N=$n: the storm"
    storm "$n" "$out"
  fi
  ok=$(awk '$1 == 200 && index($0, "You'\''ve hit ")' "$out" | wc -l)
  log "N=$n: $ok of $(wc -l <"$out") answered 200; waiting for zero again (${GRACE_WAIT}s at most)"
  if ! wait_for_zero "$n" soft; then
    NOTES+=("WARNING: N=$n: not back at zero after the storm ($NOT_ZERO); the row's replica counts are as of then.")
    echo no >"$TMP/settled-$n"
  fi
  to=$(wc -l <"$TMP/shoal.log")
  sed -n "${from},${to}p" "$TMP/shoal.log" >"$TMP/log-$n.txt"
}

# ----------------------------------------------------------------- report --

# percentiles FILE: "p50 p90 p99 max" (ms) of the first bytes of the 200
# answers in a row file (nearest rank); "- - - -" if none.
percentiles() {
  awk '$1 == 200 && index($0, "You'\''ve hit ") { print $2 }' "$1" | sort -g | awk '
    { v[NR] = $1 }
    function rank(p, r) { r = int(p * NR / 100); if (r < p * NR / 100) r++; if (r < 1) r = 1; return v[r] }
    END {
      if (NR == 0) { print "- - - -"; exit }
      printf "%.1f %.1f %.1f %.1f\n", rank(50), rank(90), rank(99), v[NR]
    }'
}

# other_answers FILE: "503 × 12, no answer × 3" for the requests not
# answered 200 You've hit …; "none" if there are none.
other_answers() {
  awk '
    $1 == 200 && index($0, "You'\''ve hit ") { next }
    { k = ($1 == "000") ? "no answer" : ($1 == 200 ? "200 (other body)" : $1); c[k]++ }
    END { for (k in c) printf "%s × %d\n", k, c[k] }' "$1" | sort | paste -s -d ',' - | sed 's/,/, /g;s/^$/none/'
}

# normalize: replaces per-service and per-replica details (names, numbers)
# so that like lines group together.
normalize() {
  sed -E 's/^[0-9T:.-]+Z +//; s/storm-[0-9]{4}(-[0-9a-f]{6}-[a-z0-9]{5})?/storm-…/g; s/[0-9]+(\.[0-9]+)?/#/g'
}

# why_not_200 N: the non-200 answers of row N grouped by status and body,
# with counts and their first-byte median; then shoal's warnings and errors
# during the row, grouped.
why_not_200() {
  local n=$1 file=$TMP/row-$1.txt lines
  lines=$(awk '!($1 == 200 && index($0, "You'\''ve hit "))' "$file")
  if [[ -n $lines ]]; then
    echo "- N=$n, answers other than 200 \`You've hit …\` (status and body, or the error; count; p50 of the" \
      "first byte, or of when the connection failed or storm.js gave up):"
    # "status ms host body…" → status, ms, body; for no answer, ms is when
    # it failed ("(after X ms)" at the body's end). Bodies normalized;
    # grouped by status and body.
    awk '{
      s = $1; ms = $2; $1 = ""; $2 = ""; $3 = ""; sub(/^ +/, "")
      if (s == "000" && match($0, /\(after [0-9.]+ ms\)$/)) { ms = substr($0, RSTART + 7, RLENGTH - 11); $0 = substr($0, 1, RSTART - 2) }
      print s "\t" ms "\t" $0
    }' <<<"$lines" >"$TMP/other.tsv"
    cut -f 3 "$TMP/other.tsv" | normalize >"$TMP/other-bodies"
    paste <(cut -f 1 "$TMP/other.tsv") "$TMP/other-bodies" <(cut -f 2 "$TMP/other.tsv") |
      sort -t $'\t' -k1,1 -k2,2 -k3,3g | awk -F '\t' '
        function flush() { if (c) { m = t[int((c + 1) / 2)]; printf "  - %s × %d: `%s` (%s p50 %s ms)\n", (k1 == "000" ? "no answer" : k1), c, k2, (k1 == "000" ? "failed at" : "first byte"), m } }
        { key = $1 "\t" $2 }
        key != prev { flush(); prev = key; k1 = $1; k2 = $2; c = 0; delete t }
        { t[++c] = $3 }
        END { flush() }'
  fi
  lines=$(grep -E '^shoal: (WARNING|error)|^WARNING|^Error|^[0-9T:.-]+Z +(WARN|ERROR) ' "$TMP/log-$n.txt" || true)
  if [[ -n $lines ]]; then
    echo "- N=$n, shoal's warnings and errors during the storm ($(wc -l <<<"$lines") lines; grouped, numbers and names as \`#\`/\`storm-…\`):"
    normalize <<<"$lines" | sort | uniq -c | sort -rn | head -n 10 | awk '{
      c = $1; $1 = ""; sub(/^ /, ""); if (length($0) > 300) $0 = substr($0, 1, 300) "…"; printf "  - %d × `%s`\n", c, $0 }'
  fi
}

# replica_events N: "started standby stopped received ready_p50 ready_max"
# from shoal's log of row N: replicas started (from a standby worker),
# stopped, requests the guests logged, and the replicas' "ready in" (ms).
replica_events() {
  local f=$TMP/log-$1.txt started standby stopped received ready
  started=$(grep -c '^shoal: replica/storm-[^ ]* Started:' "$f" || true)
  standby=$(grep -c '^shoal: replica/storm-[^ ]* Started:.*exec standby' "$f" || true)
  stopped=$(grep -c '^shoal: replica/storm-[^ ]* Stopped:' "$f" || true)
  received=$(grep -c '^storm-[^ ]* | Received request from' "$f" || true)
  ready=$(sed -n 's/^shoal: replica\/storm-[^ ]* Started:.* ready in \([0-9.]*\)ms.*/\1/p' "$f" | sort -g | awk '
    { v[NR] = $1 } END { if (NR) printf "%.1f %.1f", v[int((NR + 1) / 2)], v[NR]; else print "- -" }')
  echo "$started $standby $stopped $received $ready"
}

# goal LABEL MET DETAIL: a goal line.
goal() {
  echo "- $1: $([[ $2 == yes ]] && echo met || echo "**MISSED**")${3:+ ($3)}"
}

# p99_goal N LIMIT_MS: the goal line for "N=N p99 ≤ LIMIT ms".
p99_goal() {
  local n=$1 limit=$2 f=$TMP/row-$1.txt p50 p90 p99 max ok label
  label="N=$n p99 ≤ $limit ms"
  if [[ ! -f $TMP/rss-$n ]]; then
    echo "- $label: not measured ($([[ " ${SIZE_LIST[*]} " == *" $n "* ]] && echo "row skipped" || echo "N=$n is not in SIZES"))"
    return
  fi
  read -r p50 p90 p99 max <<<"$(percentiles "$f")"
  ok=$(awk '$1 == 200 && index($0, "You'\''ve hit ")' "$f" | wc -l)
  if ((ok < n)); then
    goal "$label" no "p99 ${p99} ms over the $ok answered 200; $((n - ok)) of $n not answered 200"
  else
    goal "$label" "$(awk -v p="$p99" -v l="$limit" 'BEGIN { print (p <= l) ? "yes" : "no" }')" "p99 ${p99} ms"
  fi
}

print_report() {
  local n f total ok p50 p90 p99 max rss idle all_ok=yes failed=() skipped=() started standby stopped received ready_p50 ready_max
  echo "Cold-start storm benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'): $(machine_description);" \
    "shoal $(shoal_revision)$([[ -n $SHOAL_BIN ]] && echo " (repository; binary: $SHOAL_BIN, not built here)");" \
    "replicas $($SHOAL_CONFINED && echo "in cgroups" || echo "UNCONFINED (shoal: cgroups are unavailable)");" \
    "CPU ${IDLE_BEFORE}% idle just before the first storm"
  echo
  echo "N copies of kubia (hello.wasm), each on its own host, \`autoscale: $AUTOSCALE\`, all at zero;" \
    "one request to each at the same instant (storm.js: connections opened first, then all requests written at once)." \
    "First byte from that instant, over the requests answered 200 \`You've hit …\`; N=1 is $TRIALS_ONE sequential" \
    "single cold starts, back at zero between them."
  echo
  echo "| N | answered 200 | first byte p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | shoal up RSS, N idle (MB) | other answers | CPU idle before (%) |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for n in "${SIZE_LIST[@]}"; do
    f=$TMP/row-$n.txt
    if [[ ! -f $TMP/rss-$n ]]; then
      skipped+=("$n")
      echo "| $n | skipped (see the notes) | | | | | | | |"
      continue
    fi
    total=$(wc -l <"$f")
    ok=$(awk '$1 == 200 && index($0, "You'\''ve hit ")' "$f" | wc -l)
    read -r p50 p90 p99 max <<<"$(percentiles "$f")"
    rss=$(<"$TMP/rss-$n")
    idle=$(<"$TMP/idle-$n")
    ((ok == total)) || { all_ok=no; failed+=("N=$n: $ok of $total"); }
    echo "| $n | $ok of $total$( ((n == 1)) && echo " trials") | $p50 | $p90 | $p99 | $max | $rss | $(other_answers "$f") | $idle |"
  done
  echo
  echo "Goals (issue 18), this run:"
  echo
  if [[ $all_ok == yes && ${#skipped[@]} -gt 0 ]]; then
    echo "- every request answered 200 at every N: met where measured; N=$(printf '%s, ' "${skipped[@]}" | sed 's/, $//') not measured"
  else
    goal "every request answered 200 at every N" "$all_ok" "$(printf '%s; ' "${failed[@]}" | sed 's/; $//')$(
      ((${#skipped[@]} == 0)) || printf '; N=%s not measured' "$(printf '%s, ' "${skipped[@]}" | sed 's/, $//')")"
  fi
  if [[ -f $TMP/rss-1 ]]; then
    read -r p50 _ <<<"$(percentiles "$TMP/row-1.txt")"
    ok=$(awk '$1 == 200 && index($0, "You'\''ve hit ")' "$TMP/row-1.txt" | wc -l)
    if ((ok == 0)); then
      goal "single cold start (N=1) p50 ≤ 10 ms" no "no trial answered 200"
    else
      goal "single cold start (N=1) p50 ≤ 10 ms" \
        "$(awk -v p="$p50" 'BEGIN { print (p <= 10) ? "yes" : "no" }')" "p50 ${p50} ms over $ok trials answered 200"
    fi
  else
    echo "- single cold start (N=1) p50 ≤ 10 ms: not measured ($([[ ${SIZE_LIST[0]} == 1 ]] && echo "row skipped" || echo "1 is not in SIZES"))"
  fi
  p99_goal 100 100
  p99_goal 300 300
  p99_goal 1000 1000
  if [[ -f $TMP/rss-1000 ]]; then
    rss=$(<"$TMP/rss-1000")
    goal "1,000 idle services: shoal up RSS ≤ 150 MB" \
      "$(awk -v r="$rss" 'BEGIN { print (r <= 150) ? "yes" : "no" }')" "$rss MB"
  else
    echo "- 1,000 idle services: shoal up RSS ≤ 150 MB: not measured ($([[ " ${SIZE_LIST[*]} " == *" 1000 "* ]] && echo "row skipped" || echo "1000 is not in SIZES"))"
  fi
  echo
  echo "Notes:"
  echo
  echo "- The services are created as the rows need them (storm-0001 … storm-N exist during row N), so the RSS column" \
    "is shoal up's (VmRSS, its own process only) with exactly N idle services, read once all N were at zero and" \
    "before the storm; rows after the first also carry whatever earlier storms left in its heap."
  for n in "${MEASURED[@]}"; do
    read -r started standby stopped received ready_p50 ready_max <<<"$(replica_events "$n")"
    echo "- N=$n: shoal started $started replicas ($standby from a standby worker; \"ready in\" p50 $ready_p50 ms," \
      "max $ready_max ms) and stopped $stopped; the guests logged $received requests.$([[ -f $TMP/settled-$n ]] &&
        echo " NOT all back at zero within ${GRACE_WAIT}s (see the warning below)." ||
        echo " All N back at zero (0 desired, 0 ready, no replica worker) after the row.")"
  done
  for n in "${MEASURED[@]}"; do
    why_not_200 "$n"
  done
  ((${#NOTES[@]} == 0)) || printf -- '- %s\n' "${NOTES[@]}"
  busy_warning "$IDLE_BEFORE"
}

# ------------------------------------------------------------------- main --

main() {
  local started n
  started=$(now_ns)
  check_knobs
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/shoal-coldstorm.XXXXXX")
  check_tools
  find_storm_shoal
  start_shoal
  create_services "${SIZE_LIST[0]}"
  wait_for_zero "${SIZE_LIST[0]}"
  IDLE_BEFORE=$(cpu_idle_percent)
  log "CPU idle before the first storm: ${IDLE_BEFORE}%"
  for n in "${SIZE_LIST[@]}"; do
    run_row "$n" || break
  done
  stop_shoal
  print_report
  echo
  echo "Run time: $(seconds_since "$started") s."
  log "done in $(seconds_since "$started")s"
}

main "$@"

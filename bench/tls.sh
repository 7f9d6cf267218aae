#!/usr/bin/env bash
# What HTTPS costs at Shoal's gateway. One `shoal up` (no -f: the kubia
# sample, 3 replicas) listens for plain HTTP (--listen) and for HTTPS
# (--tls-listen, with its self-signed default certificate) at once, and is
# loaded in the same run, rounds alternating:
#   - over keep-alive connections: plain HTTP/1.1 and HTTPS HTTP/1.1 with wrk,
#     and HTTP/2 over TLS with h2load when it is there (nghttp2-client);
#   - with a new connection per request: plain and HTTPS with wrk -H
#     'Connection: close' (wrk offers each connection's previous TLS session
#     again, so those are resumed handshakes), and HTTPS with full handshakes
#     (`openssl s_time -new`, CONNECTIONS processes) when openssl is there.
#
# Prints a Markdown table (requests/s, p50, p99, ratio to plain HTTP, CPU µs
# per request of `shoal up` and its workers) and what TLS costs in CPU per
# request and per new connection to stdout; progress and diagnostics go to
# stderr. See bench/README.md.
#
# Knobs (environment): DURATION (s per round, default 10), ROUNDS (default
# 3), CONNECTIONS (default 32), THREADS (client threads, default 1), WARMUP
# (s per row before round 1, default 2), READY_TIMEOUT (s shoal up may take
# to be ready, default 120), SHOAL_BIN (a shoal binary to run instead of
# building target/release/shoal).
set -euo pipefail
export LC_ALL=C # predictable number formats for awk, printf and sort

# ROOT, log, die, stop_pid, apt_install, free_port and the report helpers.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-2}
READY_TIMEOUT=${READY_TIMEOUT:-120}
SHOAL_BIN=${SHOAL_BIN:-}
REPLICAS=3 # the kubia sample's

TMP=""
SHOAL="" SHOAL_PID="" PORT="" TLS_PORT="" ADMIN_PORT="" TOKEN=""
SHOAL_CONFINED=true # false if shoal said cgroups are unavailable
IDLE_BEFORE=100     # CPU idle (%) just before the measurements
H2_SKIPPED=""       # why the HTTP/2 row is skipped, if it is
FULL_SKIPPED=""     # why the full-handshake row is skipped, if it is
RESUMES=unknown     # whether the gateway resumed an OpenSSL client's session: yes, no, unknown
RESUMED_WORD=""     # what wrk's TLS handshakes are, by RESUMES: resumed, full, possibly resumed
S_TIME_PIDS=()      # the openssl s_time processes of the current round
TLS_SESSION=""      # what an OpenSSL client negotiates (curl -v, openssl s_client)

# The rows, in round order: label, URL, load tool (wrk, wrk-close, h2load,
# s_time) and the plain row each is compared with.
ROWS=()
declare -A LABEL=() URL=() TOOL=() BASE=()
# By "row:process" (gateway, workers): CPU ticks over the measured rounds;
# by row: requests completed in them, and shoal's TLS handshake counters'
# increase over them ("ok failed timeout").
declare -A CPU_TICKS=() REQUESTS=() HANDSHAKES=()

# ---------------------------------------------------------------- cleanup --

# stop_processes: what cleanup (lib.sh) stops on exit.
stop_processes() {
  local pid
  for pid in "${S_TIME_PIDS[@]}"; do
    stop_pid "$pid" 5 "openssl s_time"
  done
  [[ -n $SHOAL_PID ]] || return 0
  # It drains, stops its replicas and removes their cgroups on SIGTERM.
  stop_pid "$SHOAL_PID" 30 "shoal up"
  if [[ -f $TMP/shoal.log ]] && ! grep -q '^shoal: stopped' "$TMP/shoal.log"; then
    log "warning: shoal up did not report a clean stop; the end of its log:"
    grep -v 'Received request from' "$TMP/shoal.log" | tail -n 20 >&2 || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------------- set-up --

check_knobs() {
  require_positive_ints DURATION ROUNDS CONNECTIONS THREADS WARMUP READY_TIMEOUT
  ((CONNECTIONS >= THREADS)) || die "CONNECTIONS must be at least THREADS ($THREADS)"
}

check_tools() {
  command -v curl >/dev/null || die "curl is required but not found"
  if ! command -v wrk >/dev/null; then
    apt_install wrk || die "wrk is required but not installed, and cannot be installed here ($APT_FAILURE):" \
      "install it (e.g. 'apt-get install -y wrk' as root) and rerun"
  fi
  # Debian's wrk is built with OpenSSL: https:// URLs work.
  if ! command -v h2load >/dev/null; then
    # apt_install checks for a command named like the package, which
    # nghttp2-client is not: look for h2load itself.
    apt_install nghttp2-client || true
    if ! command -v h2load >/dev/null; then
      H2_SKIPPED="h2load is not installed and could not be installed (package nghttp2-client: ${APT_FAILURE:-no h2load after installing it})"
      log "skipping the HTTP/2 row: $H2_SKIPPED"
    fi
  fi
  if ! command -v openssl >/dev/null && ! apt_install openssl; then
    FULL_SKIPPED="openssl is not installed and could not be installed ($APT_FAILURE)"
    log "skipping the full-handshake row: $FULL_SKIPPED"
  fi
  if [[ $(cat /proc/sys/net/ipv4/tcp_tw_reuse 2>/dev/null || echo 2) == 0 ]]; then
    log "warning: net.ipv4.tcp_tw_reuse is 0: the new-connection rows may run out of loopback ports (TIME_WAIT)"
  fi
}

# find_tls_shoal: find_shoal (lib.sh), and a shoal with HTTPS.
find_tls_shoal() {
  find_shoal shoal
  "$SHOAL" up --help 2>/dev/null | grep -q -- '--tls-listen' || die "$SHOAL has no shoal up --tls-listen"
}

# kubia_answers URL CURL_ARGS...: whether URL answers 200 "You've hit ...".
kubia_answers() {
  local url=$1 out
  shift
  out=$(curl -sS -k --max-time 2 -w '\n%{http_code}' "$@" "$url" 2>/dev/null || true)
  [[ ${out##*$'\n'} == 200 && $out == "You've hit "* ]]
}

# start_shoal: one shoal up with both listeners and the kubia sample; waits
# until its replicas are ready and both listeners answer.
start_shoal() {
  local i url
  PORT=$(free_port)
  TLS_PORT=$(free_port)
  ADMIN_PORT=$(free_port)
  log "starting shoal up: http://127.0.0.1:$PORT, https://127.0.0.1:$TLS_PORT (self-signed), admin API 127.0.0.1:$ADMIN_PORT"
  # The guests' per-request "Received request from" lines go to this log.
  "$SHOAL" up --listen "127.0.0.1:$PORT" --tls-listen "127.0.0.1:$TLS_PORT" \
    --admin-listen "127.0.0.1:$ADMIN_PORT" --data-dir "$TMP/data" </dev/null >"$TMP/shoal.log" 2>&1 &
  SHOAL_PID=$!
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    grep -Eq "^shoal: service/kubia Ready: $REPLICAS/$REPLICAS replicas" "$TMP/shoal.log" && break
    if ! kill -0 "$SHOAL_PID" 2>/dev/null; then
      grep -v 'Received request from' "$TMP/shoal.log" | tail -n 50 >&2 || true
      die "shoal up exited before its replicas were ready (log above)"
    fi
    sleep 0.1
  done
  if ((i >= READY_TIMEOUT * 10)); then
    grep -v 'Received request from' "$TMP/shoal.log" | tail -n 50 >&2 || true
    die "shoal up did not report 'service/kubia Ready: $REPLICAS/$REPLICAS replicas' within ${READY_TIMEOUT}s (log above)"
  fi
  note_shoal_confinement
  [[ -s $TMP/data/token ]] || die "shoal up wrote no API token to $TMP/data/token"
  TOKEN=$(<"$TMP/data/token")
  for url in "http://127.0.0.1:$PORT/" "https://127.0.0.1:$TLS_PORT/"; do
    for ((i = 0; i < 100; i++)); do
      kubia_answers "$url" && break
      sleep 0.1
    done
    ((i < 100)) || die "$url did not answer 200 \"You've hit ...\" within 10 s"
  done
  kubia_answers "https://127.0.0.1:$TLS_PORT/" --http1.1 || die "HTTPS with HTTP/1.1 does not answer"
  if [[ -z $H2_SKIPPED ]] && ! kubia_answers "https://127.0.0.1:$TLS_PORT/" --http2; then
    log "warning: curl --http2 got no answer over HTTPS"
  fi
  if [[ -z $FULL_SKIPPED ]]; then
    # openssl s_time -www sends this request; check its answer once.
    printf 'GET / HTTP/1.0\r\n\r\n' | openssl s_client -quiet -connect "127.0.0.1:$TLS_PORT" >"$TMP/http10.txt" 2>/dev/null || true
    if ! grep -q "^You've hit " "$TMP/http10.txt" || ! head -n 1 "$TMP/http10.txt" | grep -q ' 200 '; then
      die "GET / HTTP/1.0 over TLS (openssl s_client) did not answer 200 \"You've hit ...\""
    fi
  fi
  log "shoal up (pid $SHOAL_PID) is ready; both listeners answer"
  describe_tls
}

# describe_tls: what an OpenSSL client (as wrk is) negotiates with the
# gateway, for the report: "TLSv1.3 / TLS_AES_256_GCM_SHA384, X25519, ...".
describe_tls() {
  local details=""
  TLS_SESSION=$(curl -sk -v --http1.1 -o /dev/null "https://127.0.0.1:$TLS_PORT/" 2>&1 |
    sed -n 's/^\* SSL connection using //p' | head -n 1)
  if command -v openssl >/dev/null; then
    details=$(openssl s_client -connect "127.0.0.1:$TLS_PORT" -alpn http/1.1 </dev/null 2>/dev/null |
      sed -n -e 's/^Server Temp Key: \([^,]*\).*/key exchange \1/p' -e 's/^Peer signature type: /certificate signature /p' |
      paste -sd, - | sed 's/,/, /g')
  fi
  TLS_SESSION="${TLS_SESSION:-unknown}${details:+, $details}"
  log "TLS as an OpenSSL client negotiates it: $TLS_SESSION"
  if command -v openssl >/dev/null; then
    # Resumption: a session saved from one connection (stdin held open a
    # moment so that the TLS 1.3 ticket arrives), offered on the next.
    sleep 0.5 | openssl s_client -connect "127.0.0.1:$TLS_PORT" -sess_out "$TMP/session.pem" >/dev/null 2>&1 || true
    if [[ -s $TMP/session.pem ]]; then
      case $(openssl s_client -connect "127.0.0.1:$TLS_PORT" -sess_in "$TMP/session.pem" </dev/null 2>/dev/null |
        sed -n 's/^\(New\|Reused\),.*/\1/p' | head -n 1) in
        Reused) RESUMES=yes ;;
        New) RESUMES=no ;;
      esac
    fi
    log "the gateway resumes an OpenSSL client's TLS session: $RESUMES"
  fi
}

# ------------------------------------------------------------ measurement --

add_row() { # add_row ID TOOL URL BASE LABEL
  ROWS+=("$1")
  TOOL[$1]=$2 URL[$1]=$3 BASE[$1]=$4 LABEL[$1]=$5
}

# own_cpu_ticks PID: the CPU time (clock ticks) of PID alone.
own_cpu_ticks() {
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' /proc/"$1"/stat 2>/dev/null || echo 0
}

# tree_cpu_ticks PID: the CPU time (clock ticks) of PID, its reaped children
# and its live children (as in kubia.sh).
tree_cpu_ticks() {
  local pid
  # shellcheck disable=SC2046 # word splitting of the pid list is intended
  for pid in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null || true); do
    cat /proc/"$pid"/stat 2>/dev/null || true
  done | awk '{ sub(/^.*\) /, ""); t += $12 + $13 + $14 + $15 } END { print t + 0 }'
}

# cpu_sample: "gateway TICKS" (shoal up itself) and "workers TICKS" (its
# children, the standby included, live and reaped).
cpu_sample() {
  local own tree
  own=$(own_cpu_ticks "$SHOAL_PID")
  tree=$(tree_cpu_ticks "$SHOAL_PID")
  echo "gateway $own"
  echo "workers $((tree - own))"
}

# tls_handshakes: "ok failed timeout", shoal's shoal_tls_handshakes_total
# counters summed over the TLS versions (admin API /metrics).
tls_handshakes() {
  curl -sS -f --max-time 5 -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN_PORT/metrics" 2>/dev/null |
    awk '/^shoal_tls_handshakes_total\{/ {
        if ($1 ~ /result="ok"/) ok += $2; else if ($1 ~ /result="failed"/) failed += $2; else if ($1 ~ /result="timeout"/) timeout += $2
      } END { printf "%d %d %d\n", ok, failed, timeout }'
}

# run_load SECONDS ID OUT: the row's load tool for SECONDS, its output in OUT
# (h2load's per-request log in OUT.log).
run_load() {
  local seconds=$1 id=$2 out=$3 status=0
  case ${TOOL[$id]} in
    wrk) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${seconds}s" --latency "${URL[$id]}" >"$out" 2>&1 || status=$? ;;
    wrk-close)
      wrk -t"$THREADS" -c"$CONNECTIONS" -d"${seconds}s" --latency -H 'Connection: close' "${URL[$id]}" \
        >"$out" 2>&1 || status=$?
      ;;
    s_time)
      # Full handshakes: -new never offers a session. CONNECTIONS processes,
      # each one connection at a time, each a GET / HTTP/1.0 (the gateway
      # closes after the answer); -time counts whole seconds, so time them.
      local i pid start
      rm -f "$out".*
      S_TIME_PIDS=()
      start=$(date +%s%N)
      for ((i = 0; i < CONNECTIONS; i++)); do
        openssl s_time -connect "127.0.0.1:$TLS_PORT" -new -time "$seconds" -www / >"$out.$i" 2>&1 &
        S_TIME_PIDS+=("$!")
      done
      for pid in "${S_TIME_PIDS[@]}"; do
        wait "$pid" || status=$?
      done
      S_TIME_PIDS=()
      {
        echo "elapsed_ns $(($(date +%s%N) - start))"
        cat "$out".*
      } >"$out"
      ;;
    h2load)
      # -m1: one request at a time per connection, CONNECTIONS in flight as with wrk.
      h2load -t"$THREADS" -c"$CONNECTIONS" -m1 -D"$seconds" --log-file="$out.log" "${URL[$id]}" \
        >"$out" 2>&1 || status=$?
      ;;
  esac
  if ((status != 0)); then
    cat "$out" >&2
    die "${TOOL[$id]} failed against ${URL[$id]} (exit $status)"
  fi
}

# parse_s_time OUT: prints "connections/s - - 0 resumed connections" like
# parse_wrk (no latency: s_time measures none; resumed: connections that
# were resumed after all, which -new should never have).
parse_s_time() {
  awk '$1 == "elapsed_ns" { ns = $2 }
    /^[0-9]+ connections in [0-9.]+s;/ { n += $1 }
    /^[*rt123]+$/ { resumed += gsub(/r/, "") }
    END {
      if (ns == 0 || n == 0) exit 1
      printf "%.2f - - 0 %d %d\n", n / (ns / 1e9), resumed, n
    }' "$1"
}

# parse_h2load OUT: prints "requests/s p50_ms p99_ms non2xx errors requests"
# like parse_wrk (plus the requests done, as wrk's "requests in"), the percentiles from its
# per-request log (nearest rank, all responses).
parse_h2load() {
  local rps requests non2xx errors percentiles
  rps=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$1")
  read -r requests errors < <(awk '/^requests: / {
      for (i = 2; i < NF; i++) { n = $i + 0; w = $(i + 1); gsub(/,/, "", w)
        if (w == "done") s = n; if (w == "failed" || w == "errored" || w == "timeout") e += n }
      print s + 0, e + 0 }' "$1")
  non2xx=$(awk '/^status codes: / { for (i = 3; i < NF; i++) if ($(i + 1) ~ /^[45]xx/) n += $i } END { print n + 0 }' "$1")
  percentiles=$(awk -F'\t' '$2 > 0 { print $3 }' "$1.log" | sort -n | awk '{ v[NR] = $1 } END {
      if (NR == 0) exit 1
      p50 = int(NR * 0.50); if (p50 < NR * 0.50) p50++
      p99 = int(NR * 0.99); if (p99 < NR * 0.99) p99++
      printf "%.3f %.3f", v[p50] / 1000, v[p99] / 1000 }') || return 1
  [[ -n $rps && -n $requests ]] || return 1
  echo "$rps $percentiles $non2xx $errors $requests"
}

# measure ID ROUND: one measured round of row ID; appends "round requests/s
# p50 p99 non2xx errors requests" to $TMP/results/ID and adds up its CPU
# ticks, requests and TLS handshakes.
measure() {
  local id=$1 round=$2 out="$TMP/load/$1.$2.txt" result hs_before hs_after cpu_before process ticks
  hs_before=$(tls_handshakes)
  cpu_before=$(cpu_sample)
  run_load "$DURATION" "$id" "$out"
  while read -r process ticks; do
    CPU_TICKS[$id:$process]=$((${CPU_TICKS[$id:$process]:-0} + ticks - $(awk -v p="$process" '$1 == p { print $2 }' <<<"$cpu_before")))
  done < <(cpu_sample)
  hs_after=$(tls_handshakes)
  HANDSHAKES[$id]=$(awk -v a="$hs_before" -v b="$hs_after" -v s="${HANDSHAKES[$id]:-0 0 0}" 'BEGIN {
    split(a, x); split(b, y); split(s, z); printf "%d %d %d", z[1] + y[1] - x[1], z[2] + y[2] - x[2], z[3] + y[3] - x[3] }')
  if [[ ${TOOL[$id]} == h2load ]]; then
    result=$(parse_h2load "$out") || {
      cat "$out" >&2
      die "cannot parse h2load's output for ${LABEL[$id]}"
    }
  elif [[ ${TOOL[$id]} == s_time ]]; then
    result=$(parse_s_time "$out") || {
      cut -c1-200 "$out" >&2
      die "cannot parse openssl s_time's output for ${LABEL[$id]}"
    }
  else
    result=$(parse_wrk "$out") || {
      cat "$out" >&2
      die "cannot parse wrk's output for ${LABEL[$id]}"
    }
    result+=" $(awk '/ requests in / { print $1 }' "$out")"
  fi
  REQUESTS[$id]=$((${REQUESTS[$id]:-0} + ${result##* }))
  echo "$round $result" >>"$TMP/results/$id"
  log "round $round/$ROUNDS: ${LABEL[$id]}: $(awk '{ printf "%.0f req/s", $1; if ($2 != "-") printf ", p50 %s ms, p99 %s ms", $2, $3 }' <<<"$result")"
}

run_benchmark() {
  local id round
  mkdir -p "$TMP/load" "$TMP/results"
  # Everything is started but idle: anything busy now is someone else's load.
  IDLE_BEFORE=$(cpu_idle_percent)
  log "CPU idle before the run: ${IDLE_BEFORE}%"
  for id in "${ROWS[@]}"; do
    log "warm-up: ${LABEL[$id]} (${WARMUP}s)"
    run_load "$WARMUP" "$id" "$TMP/load/$id.warmup.txt"
  done
  # Interleaved rounds, so that drift (noisy neighbours) hits every row.
  for ((round = 1; round <= ROUNDS; round++)); do
    for id in "${ROWS[@]}"; do
      measure "$id" "$round"
    done
  done
}

# ----------------------------------------------------------------- report --

# summarize ID: "median_rps p50 p99 non2xx errors" over the rounds; p50/p99
# are those of the median round (for an even number of rounds, the slower of
# the two middle rounds; requests/s is then their mean), as in kubia.sh;
# "n/a" for a tool that measures no latency.
summarize() {
  sort -g -k2,2 "$TMP/results/$1" | awk '
    { rps[NR] = $2; p50[NR] = $3; p99[NR] = $4; non2xx += $5; errors += $6 }
    END {
      m = int((NR + 1) / 2)
      median = (NR % 2) ? rps[m] : (rps[m] + rps[m + 1]) / 2
      if (p50[m] == "-") printf "%.0f n/a n/a %d %d\n", median, non2xx, errors
      else printf "%.0f %.2f %.2f %d %d\n", median, p50[m], p99[m], non2xx, errors
    }'
}

# cpu_us ID [PROCESS]: CPU µs per request of row ID over the measured
# rounds: gateway + workers, or one of them.
cpu_us() {
  local hz
  hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
  awk -v g="${CPU_TICKS[$1:gateway]:-0}" -v w="${CPU_TICKS[$1:workers]:-0}" -v n="${REQUESTS[$1]:-0}" -v hz="$hz" -v p="${2:-}" 'BEGIN {
    t = (p == "gateway") ? g : (p == "workers") ? w : g + w
    if (n == 0) print "n/a"; else printf "%.1f", 1e6 * t / hz / n }'
}

# thousands 1234567 -> 1,234,567
thousands() { sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/' -e 'ta' <<<"$1"; }

# difference A B: A - B with one decimal.
difference() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a - b }'; }

print_report() {
  local id rps p50 p99 non2xx errors base_rps ratio per_round ok failed timeout h2_cost cps line errors_seen=()
  echo "TLS benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'): $(machine_description);" \
    "shoal $(shoal_revision)$([[ -n $SHOAL_BIN ]] && echo " (repository; binary: $SHOAL_BIN, not built here)");" \
    "one shoal up, kubia sample ($REPLICAS replicas), plain and HTTPS listeners;" \
    "-t$THREADS -c$CONNECTIONS -d${DURATION}s per round, ${WARMUP}s warm-up per row, $ROUNDS interleaved round(s), median;" \
    "$(wrk -v 2>&1 | awk 'NR == 1 { print "wrk " $2 }')$([[ -n $H2_SKIPPED ]] || h2load --version 2>/dev/null | awk 'NR == 1 { print ", " $0 }')$([[ -n $FULL_SKIPPED ]] || openssl version 2>/dev/null | awk '{ print ", " $1 " " $2 }');" \
    "TLS (self-signed default certificate): $TLS_SESSION; CPU ${IDLE_BEFORE}% idle just before the run"
  echo
  echo "| row | requests/s | p50 (ms) | p99 (ms) | vs plain HTTP | CPU µs/request (gateway + workers) |"
  echo "|---|---|---|---|---|---|"
  for id in "${ROWS[@]}"; do
    read -r rps p50 p99 non2xx errors <<<"$(summarize "$id")"
    read -r base_rps _ <<<"$(summarize "${BASE[$id]}")"
    ratio=$(awk -v a="$rps" -v b="$base_rps" 'BEGIN { printf "%.2f", b ? a / b : 0 }')
    echo "| ${LABEL[$id]} | $(thousands "$rps") | $p50 | $p99 | ${ratio}× |" \
      "$(cpu_us "$id") ($(cpu_us "$id" gateway) + $(cpu_us "$id" workers)) |"
    ((non2xx == 0)) || errors_seen+=("${LABEL[$id]}: $non2xx non-2xx/3xx responses over the measured rounds")
    if ((errors > 0)) && [[ ${TOOL[$id]} == s_time ]]; then
      errors_seen+=("${LABEL[$id]}: $errors connections resumed a session after all (s_time -new)")
    elif ((errors > 0)); then
      errors_seen+=("${LABEL[$id]}: $errors socket (wrk) or failed (h2load) errors over the measured rounds")
    fi
  done
  echo
  h2_cost=""
  [[ -n $H2_SKIPPED ]] || h2_cost="; HTTP/2 over TLS: $(difference "$(cpu_us h2)" "$(cpu_us plain)") µs more than plain HTTP/1.1"
  echo "TLS costs about $(difference "$(cpu_us tls)" "$(cpu_us plain)") µs of CPU per request (keep-alive):" \
    "HTTPS HTTP/1.1 $(cpu_us tls) µs minus plain HTTP/1.1 $(cpu_us plain) µs, shoal up and its workers together" \
    "(gateway alone: $(difference "$(cpu_us tls gateway)" "$(cpu_us plain gateway)") µs)$h2_cost."
  read -r cps _ <<<"$(summarize plain-new)"
  line="A new connection per request: plain $(thousands "$cps") connections/s at $(cpu_us plain-new) µs of CPU each"
  for id in tls-new tls-full; do
    [[ -n ${TOOL[$id]:-} ]] || continue
    read -r cps _ <<<"$(summarize "$id")"
    line+="; $([[ $id == tls-new ]] && echo "TLS, $RESUMED_WORD handshake" || echo "TLS, full handshake")"
    line+=" $(thousands "$cps")/s at $(cpu_us "$id") µs each, about $(difference "$(cpu_us "$id")" "$(cpu_us plain-new)") µs"
    line+=" more than a plain connection (gateway alone: $(difference "$(cpu_us "$id" gateway)" "$(cpu_us plain-new gateway)") µs)"
  done
  echo "$line; the request's own TLS cost above included."
  echo
  for id in "${ROWS[@]}"; do
    per_round=""
    while read -r _ rps _; do
      per_round+="${per_round:+, }$(thousands "$(printf '%.0f' "$rps")")"
    done <"$TMP/results/$id"
    echo "- ${LABEL[$id]}, requests/s per round: $per_round"
  done
  echo "- TLS handshakes shoal counted over the measured rounds (shoal_tls_handshakes_total, admin API" \
    "/metrics; a failed one is mostly a connection the client dropped mid-handshake when its run ended):"
  for id in "${ROWS[@]}"; do
    [[ ${URL[$id]} == https:* ]] || continue
    read -r ok failed timeout <<<"${HANDSHAKES[$id]}"
    echo "  - ${LABEL[$id]}: $(thousands "$ok") ($failed failed, $timeout timed out)" \
      "for $(thousands "${REQUESTS[$id]}") requests"
  done
  echo "- CPU µs/request: user + system time of shoal up (the gateway, TLS included) and of its children (the" \
    "replicas' workers and the standby; live and reaped) over the measured rounds (/proc/<pid>/stat, in clock" \
    "ticks of 1/$(getconf CLK_TCK 2>/dev/null || echo 100) s), divided by the requests the client completed in them." \
    "The clients' own CPU (their TLS included) is not counted, but they share the machine's CPUs," \
    "so on few cores the requests/s ratios also carry the client's TLS cost."
  echo "- New-connection rows: each request opens a connection; their \"vs plain HTTP\" compares with the plain" \
    "new-connection row. wrk -H 'Connection: close': wrk keeps each connection's TLS session and offers it on the" \
    "next one (TLS 1.3 PSK); the gateway resumes an OpenSSL client's session: $RESUMES (openssl s_client -sess_in)," \
    "so those handshakes are $RESUMED_WORD. wrk starts its latency clock when it writes the request, after the" \
    "connection and handshake are up, so the handshake shows in requests/s and CPU, not in p50/p99."
  if [[ -n $FULL_SKIPPED ]]; then
    echo "- Full-handshake row skipped: $FULL_SKIPPED."
  else
    echo "- Full handshakes: $CONNECTIONS openssl s_time -new processes (no session offered: shoal counts every" \
      "handshake, s_time marks none resumed), each one connection at a time with one GET / HTTP/1.0 (answered 200," \
      "then closed); connections/s over the wall time of the round; s_time measures no latency."
  fi
  if [[ -n $H2_SKIPPED ]]; then
    echo "- HTTP/2 over TLS row skipped: $H2_SKIPPED."
  else
    echo "- HTTP/2 row: h2load -m1 (one stream at a time per connection, as many requests in flight as wrk);" \
      "p50/p99 from its per-request log (nearest rank)."
  fi
  if $SHOAL_CONFINED; then
    echo "- Shoal's replicas ran in cgroups (the kubia sample's limits: cpu 500m each)."
  else
    echo "- Shoal's replicas ran unconfined (no cgroups)."
  fi
  if ((${#errors_seen[@]} == 0)); then
    echo "- No non-2xx/3xx responses and no socket errors in the measured rounds."
  else
    printf -- '- WARNING: %s\n' "${errors_seen[@]}"
  fi
  busy_warning "$IDLE_BEFORE"
  echo "- Run time until this report: ${SECONDS} s."
}

# ------------------------------------------------------------------- main --

main() {
  check_knobs
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/shoal-bench.XXXXXX")
  check_tools
  find_tls_shoal
  start_shoal

  add_row plain wrk "http://127.0.0.1:$PORT/" plain "plain HTTP/1.1, keep-alive (wrk)"
  add_row tls wrk "https://127.0.0.1:$TLS_PORT/" plain "HTTPS, HTTP/1.1, keep-alive (wrk)"
  [[ -n $H2_SKIPPED ]] ||
    add_row h2 h2load "https://127.0.0.1:$TLS_PORT/" plain "HTTPS, HTTP/2, keep-alive (h2load)"
  add_row plain-new wrk-close "http://127.0.0.1:$PORT/" plain-new "plain HTTP/1.1, new connection per request (wrk)"
  case $RESUMES in
    yes) RESUMED_WORD=resumed ;;
    no) RESUMED_WORD=full ;;
    *) RESUMED_WORD="possibly resumed" ;;
  esac
  add_row tls-new wrk-close "https://127.0.0.1:$TLS_PORT/" plain-new \
    "HTTPS, HTTP/1.1, new TLS connection per request, $RESUMED_WORD handshake (wrk)"
  [[ -n $FULL_SKIPPED ]] ||
    add_row tls-full s_time "https://127.0.0.1:$TLS_PORT/" plain-new \
      "HTTPS, HTTP/1.0, new TLS connection per request, full handshake (openssl s_time)"

  run_benchmark
  print_report
}

main "$@"

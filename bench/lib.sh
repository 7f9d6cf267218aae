# shellcheck shell=bash
# Shared by bench/kubia.sh, bench/autoscale.sh, bench/calls.sh,
# bench/handover.sh and
# bench/coldstorm.sh, which source it after `set -euo pipefail` and
# `export LC_ALL=C`; not meant to be run.
#
# Defines ROOT (the repository), log/die (prefixed with the sourcing script's
# name), stop_pid, cleanup (the EXIT trap), require_positive_ints,
# apt_install, free_port, build_shoal, note_shoal_confinement,
# cpu_idle_percent, machine_description, shoal_revision, busy_warning and
# parse_wrk.
# They use the sourcing script's TMP (its temp dir), SHOAL_CONFINED and
# stop_processes (what to stop on exit).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_NAME=${BASH_SOURCE[1]:-$0}
BENCH_NAME=${BENCH_NAME##*/}
USED_PORTS=" " # ports free_port has handed out
APT_FAILURE="" # why apt_install failed, if it did

log() { printf '%s: %s\n' "$BENCH_NAME" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

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

# cleanup: the EXIT trap the scripts set: calls their stop_processes, removes
# $TMP and exits with the status the script exited with.
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_processes
  [[ -n $TMP ]] && rm -rf "$TMP"
  exit "$status"
}

# require_positive_ints NAME...: dies unless each variable NAME holds a
# positive integer (the scripts' knobs).
require_positive_ints() {
  local name
  for name in "$@"; do
    [[ ${!name} =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive integer (got '${!name}')"
  done
}

# apt_install PKG: installs a Debian package; only as root, with apt-get.
# On failure, says why in APT_FAILURE. Logs to $TMP/apt-PKG.log.
# shellcheck disable=SC2034 # APT_FAILURE is for the sourcing script
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

# build_shoal WHAT: cargo build --release (WHAT names what that builds, for
# the log); dies unless it built target/release/shoal.
build_shoal() {
  log "building $1 (cargo build --release)"
  (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
  [[ -x $ROOT/target/release/shoal ]] || die "$ROOT/target/release/shoal was not built"
}

# find_shoal WHAT: sets SHOAL to $SHOAL_BIN when given (checked, made
# absolute), else builds WHAT with build_shoal and uses target/release/shoal.
# shellcheck disable=SC2034 # SHOAL is the sourcing script's
find_shoal() {
  if [[ -n ${SHOAL_BIN:-} ]]; then
    [[ -f $SHOAL_BIN && -x $SHOAL_BIN ]] || die "SHOAL_BIN=$SHOAL_BIN is not an executable file"
    SHOAL=$(cd "$(dirname "$SHOAL_BIN")" && pwd)/$(basename "$SHOAL_BIN")
    log "using $SHOAL (SHOAL_BIN; no build)"
  else
    build_shoal "$1"
    SHOAL=$ROOT/target/release/shoal
  fi
}

# note_shoal_confinement: sets SHOAL_CONFINED=false (with a warning) if
# shoal's log, $SHOAL_LOG (default $TMP/shoal.log), says cgroups are
# unavailable.
# shellcheck disable=SC2034 # SHOAL_CONFINED is the sourcing script's
note_shoal_confinement() {
  if grep -q 'cgroups are unavailable' "${SHOAL_LOG:-$TMP/shoal.log}"; then
    SHOAL_CONFINED=false
    log "warning: shoal runs its replicas without cgroups (no cpu/memory limits)"
  fi
}

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

# machine_description: "nproc 4 (CPU model), Linux 6.1.0" for the report.
machine_description() {
  local cpu
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)
  echo "nproc $(nproc)${cpu:+ ($cpu)}, $(uname -sr)"
}

# shoal_revision: the commit, "+changes" if the work tree differs (read-only:
# no index refresh, as someone else may be using the repository).
shoal_revision() {
  local rev
  rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) || { echo unknown; return; }
  git -C "$ROOT" --no-optional-locks diff --quiet HEAD -- 2>/dev/null || rev+="+changes"
  echo "$rev"
}

# busy_warning IDLE: the report's warning line when the CPUs were less than
# 90% idle before the measurements (IDLE, from cpu_idle_percent).
busy_warning() {
  (($1 >= 90)) ||
    echo "- WARNING: the machine was busy before the run (CPU $1% idle): other load skews these numbers."
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

# shellcheck shell=bash
# A private PostgreSQL 15 cluster for running, testing and benchmarking eventsd.
#
#   pg_start   start (or reuse) the cluster, create the databases, export the DSNs
#   pg_stop    stop the cluster (its data stays)
#   pg_status  print whether it runs, where, and on which port
#
# Layout: var/pg/{data,socket,log} under the repository. When the repository lies where the
# postgres user cannot reach (e.g. under /root with mode 700) and we are root, the cluster
# lives in /tmp/eventsd-pg-<hash of the repository path> and var/pg is a symlink to it.
#
# Environment:
#   EVENTSD_POSTGRES_DSN  if already set, pg_start does nothing and that server is used
#   EVENTSD_TEST_PG_DSN   exported by pg_start (database eventsd_test) unless already set
#   EVENTSD_PG_PORT       TCP port on 127.0.0.1 (default 55432); a cluster already running
#                         on another port is used there, not moved
#   EVENTSD_PG_BIN        PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#
# The functions return non-zero on failure and change no shell options.

# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

EVENTSD_PG_BIN=${EVENTSD_PG_BIN:-/usr/lib/postgresql/15/bin}

_pg_log()  { printf '==> pg: %s\n' "$*" >&2; }
_pg_fail() { printf 'error: pg: %s\n' "$*" >&2; return 1; }

# Runs a command as the cluster's owner (postgres when we are root, else ourselves), from /
# so that an unreadable working directory does not upset initdb or pg_ctl, and without the
# lock's descriptor 9, which a postmaster would otherwise hold for its whole life.
_pg_as() {
  if [[ ${EUID} -eq 0 ]]; then
    (cd / && runuser -u postgres -- "$@") 9>&-
  else
    (cd / && "$@") 9>&-
  fi
}

# Sets _pg_port, _pg_link (var/pg) and, when it can be resolved, _pg_base, _pg_data, _pg_sock
# and _pg_logfile. Creates nothing.
_pg_paths() {
  _pg_port=${EVENTSD_PG_PORT:-55432}
  _pg_link=$EVENTSD_ROOT/var/pg
  _pg_base=
  if [[ -L $_pg_link ]]; then
    _pg_base=$(readlink "$_pg_link")
  elif [[ -d $_pg_link ]]; then
    _pg_base=$(cd "$_pg_link" && pwd -P)
  fi
  _pg_data=${_pg_base:+$_pg_base/data}
  _pg_sock=${_pg_base:+$_pg_base/socket}
  _pg_logfile=${_pg_base:+$_pg_base/log/postgres.log}
}

# Creates (or checks) a postgres-owned mode-700 directory in /tmp for this repository.
_pg_tmp_base() {
  local dir
  dir=/tmp/eventsd-pg-$(printf '%s' "$EVENTSD_ROOT" | sha256sum | cut -c1-16)
  if [[ -L $dir || ( -e $dir && ! -d $dir ) ]]; then
    _pg_fail "$dir exists and is not a directory"; return 1
  fi
  if [[ ! -d $dir ]]; then
    mkdir -m 700 "$dir" && chown postgres:postgres "$dir" || return 1
  elif [[ $(stat -c %U "$dir") != postgres ]]; then
    _pg_fail "$dir is not owned by postgres; remove it"; return 1
  fi
  printf '%s\n' "$dir"
}

# Makes var/pg (directory or symlink) usable by the cluster owner; sets the paths.
_pg_prepare_base() {
  mkdir -p "$EVENTSD_ROOT/var" || return 1
  local link=$EVENTSD_ROOT/var/pg tmp
  if [[ ${EUID} -ne 0 ]]; then
    [[ -L $link ]] && mkdir -p "$(readlink "$link")"
    mkdir -p "$link" || return 1
  elif [[ -L $link ]]; then
    tmp=$(readlink "$link")
    if [[ ! -d $tmp ]]; then   # /tmp was cleaned: start afresh in the same place
      [[ $(_pg_tmp_base) == "$tmp" ]] || { _pg_fail "$link points to missing $tmp; remove the link"; return 1; }
    fi
  else
    if [[ ! -e $link ]]; then
      mkdir -m 700 "$link" && chown postgres:postgres "$link" || return 1
    fi
    if ! runuser -u postgres -- test -w "$link" 2>/dev/null; then
      # postgres cannot reach into the repository: keep the cluster in /tmp instead.
      rmdir "$link" 2>/dev/null \
        || { _pg_fail "user postgres cannot write to $link, which holds a cluster (the read model): give postgres access to it and to every directory above it (ls -ld $EVENTSD_ROOT/var $link), or, to start afresh, remove it"; return 1; }
      tmp=$(_pg_tmp_base) || return 1
      ln -s "$tmp" "$link" || return 1
      _pg_log "repository not reachable by user postgres; cluster kept in $tmp (var/pg links there)"
    fi
  fi
  _pg_paths
  local d
  for d in "$_pg_sock" "$_pg_base/log"; do
    if [[ ! -d $d ]]; then
      _pg_as mkdir -m 700 "$d" || return 1
    fi
  done
}

# Writes the settings that pg_start owns; re-written at every start so that a changed port
# takes effect.
_pg_write_conf() {
  local sock=$_pg_sock
  if (( ${#sock} + ${#_pg_port} + 10 > 107 )); then
    _pg_log "socket path too long, listening on TCP only"
    sock=
  fi
  _pg_as tee "$_pg_data/eventsd.conf" >/dev/null <<CONF || return 1
# Written by scripts/lib/pg.sh at every pg_start; edits here are lost.
listen_addresses = '127.0.0.1'
port = $_pg_port
unix_socket_directories = '$sock'
max_connections = 200
shared_buffers = 256MB
fsync = on
synchronous_commit = on
full_page_writes = on
max_wal_size = 2GB
checkpoint_timeout = 15min
log_destination = 'stderr'
log_line_prefix = '%m [%p] %q%u@%d '
log_min_duration_statement = -1
CONF
}

_pg_initdb() {
  if [[ -d $_pg_data && ! -f $_pg_data/PG_VERSION ]]; then
    _pg_log "removing half-initialised $_pg_data"
    rm -rf -- "$_pg_data" || return 1
  fi
  _pg_log "initdb $_pg_data"
  _pg_as "$EVENTSD_PG_BIN/initdb" -D "$_pg_data" -U postgres -E UTF8 --no-locale \
    --auth=trust >"$_pg_base/log/initdb.log" 2>&1 \
    || { cat "$_pg_base/log/initdb.log" >&2; _pg_fail "initdb failed"; return 1; }
  _pg_as tee "$_pg_data/pg_hba.conf" >/dev/null <<'HBA' || return 1
# Written by scripts/lib/pg.sh: a private cluster for tests, trusted on this host only.
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   127.0.0.1/32   trust
HBA
  printf "\ninclude_if_exists = 'eventsd.conf'\n" \
    | _pg_as tee -a "$_pg_data/postgresql.conf" >/dev/null || return 1
}

# Port recorded by a running postmaster (line 4 of postmaster.pid), empty if none.
_pg_running_port() {
  sed -n 4p "$_pg_data/postmaster.pid" 2>/dev/null
}

_pg_is_running() {
  [[ -f $_pg_data/PG_VERSION ]] && _pg_as "$EVENTSD_PG_BIN/pg_ctl" status -D "$_pg_data" >/dev/null 2>&1
}

_pg_wait_ready() {
  local i
  for ((i = 0; i < 60; i++)); do
    "$EVENTSD_PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$_pg_port" -d postgres -U postgres && return 0
    sleep 0.5
  done
  _pg_fail "server on 127.0.0.1:$_pg_port not ready after 30s; see $_pg_logfile"
}

_pg_ensure_db() {
  local db=$1 psql=("$EVENTSD_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$_pg_port" -U postgres -d postgres)
  if [[ -z $("${psql[@]}" -tAc "select 1 from pg_database where datname = '$db'") ]]; then
    _pg_log "creating database $db"
    "${psql[@]}" -c "create database \"$db\"" || return 1
  fi
}

# The work of pg_start, done while holding var/pg.lock.
_pg_start_locked() {
  _pg_prepare_base || return 1
  [[ -f $_pg_data/PG_VERSION ]] || _pg_initdb || return 1

  if _pg_is_running; then
    # Another port asked for: the cluster stays where it runs (a server may be using it).
    local running_port
    running_port=$(_pg_running_port)
    if [[ -n $running_port && $running_port != "$_pg_port" ]]; then
      _pg_log "already running on port $running_port, not $_pg_port: using it there; scripts/pg stop, then start again, to move it"
      _pg_port=$running_port
    fi
  fi
  _pg_write_conf || return 1
  if ! _pg_is_running; then
    local rc=0
    "$EVENTSD_PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$_pg_port" -t 2 || rc=$?
    if (( rc == 0 || rc == 1 )); then
      _pg_fail "another server already listens on 127.0.0.1:$_pg_port; set EVENTSD_PG_PORT"
      return 1
    fi
    _pg_log "starting PostgreSQL on 127.0.0.1:$_pg_port (data $_pg_data)"
    _pg_as "$EVENTSD_PG_BIN/pg_ctl" start -D "$_pg_data" -l "$_pg_logfile" -w -t 60 -s \
      || { tail -n 20 "$_pg_logfile" >&2; _pg_fail "pg_ctl start failed"; return 1; }
  else
    _pg_log "reusing running PostgreSQL on 127.0.0.1:$_pg_port"
  fi
  _pg_wait_ready || return 1
  _pg_ensure_db eventsd && _pg_ensure_db eventsd_test
}

# Runs "$@" while holding an exclusive lock on var/pg.lock, in a subshell.
_pg_locked() {
  mkdir -p "$EVENTSD_ROOT/var" || return 1
  (
    exec 9>"$EVENTSD_ROOT/var/pg.lock" || exit 1
    flock -w 120 9 || { _pg_fail "timed out waiting for $EVENTSD_ROOT/var/pg.lock"; exit 1; }
    "$@"
  )
}

# Starts (or reuses) the private cluster, creates databases eventsd and eventsd_test and
# exports EVENTSD_POSTGRES_DSN and EVENTSD_TEST_PG_DSN. Does nothing when
# EVENTSD_POSTGRES_DSN is already set. Safe to call again and from concurrent scripts.
pg_start() {
  if [[ -n ${EVENTSD_POSTGRES_DSN:-} && ${EVENTSD_POSTGRES_DSN} != "${_pg_own_dsn:-}" ]]; then
    _pg_log "using EVENTSD_POSTGRES_DSN from the environment; no private cluster"
    [[ -n ${EVENTSD_TEST_PG_DSN:-} ]] \
      || _pg_log "EVENTSD_TEST_PG_DSN is not set; tests that need PostgreSQL will lack a database"
    return 0
  fi
  [[ -x $EVENTSD_PG_BIN/pg_ctl ]] || { _pg_fail "no $EVENTSD_PG_BIN/pg_ctl (install postgresql-15)"; return 1; }
  _pg_locked _pg_start_locked || return 1
  _pg_paths
  local port
  port=$(_pg_running_port || true)  # where it runs, which may not be EVENTSD_PG_PORT (above)
  port=${port:-$_pg_port}
  export EVENTSD_POSTGRES_DSN="host=127.0.0.1 port=$port dbname=eventsd user=postgres"
  if [[ -n ${EVENTSD_TEST_PG_DSN:-} && ${EVENTSD_TEST_PG_DSN} != "${_pg_own_test_dsn:-}" ]]; then
    _pg_log "tests use EVENTSD_TEST_PG_DSN from the environment"
  else
    export EVENTSD_TEST_PG_DSN="host=127.0.0.1 port=$port dbname=eventsd_test user=postgres"
    _pg_own_test_dsn=$EVENTSD_TEST_PG_DSN
  fi
  _pg_own_dsn=$EVENTSD_POSTGRES_DSN  # a later pg_start in this shell still manages the cluster
}

_pg_stop_locked() {
  _pg_paths
  if [[ -z $_pg_base ]] || ! _pg_is_running; then
    _pg_log "not running"
    return 0
  fi
  _pg_log "stopping PostgreSQL ($_pg_data)"
  _pg_as "$EVENTSD_PG_BIN/pg_ctl" stop -D "$_pg_data" -m fast -w -t 60 -s
}

# Stops the private cluster if it runs; its data stays for the next pg_start.
pg_stop() {
  _pg_locked _pg_stop_locked
}

# Prints the state of the private cluster; returns 0 when it runs.
pg_status() {
  _pg_paths
  if [[ -n $_pg_base ]] && _pg_is_running; then
    printf 'running: port %s, data %s, log %s\n' "$(_pg_running_port)" "$_pg_data" "$_pg_logfile"
  else
    printf 'not running (%s)\n' "${_pg_data:-no var/pg yet}"
    return 1
  fi
}

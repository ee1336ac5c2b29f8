# shellcheck shell=bash
# Helpers of scripts/bench: processes it starts (and always stops), wrk, pgbench and
# db_bench runs parsed into one result record each, percentiles, the machine description.
# Source it after common.sh; it changes no shell options.
#
# Results: bench_result NAME ... stores, bench_get NAME FIELD reads. Fields: rps, p50, p99
# (milliseconds), errors, requests, note.

declare -gA BENCH_R=()
declare -ga BENCH_PIDS=()
declare -ga BENCH_COMMANDS=()

BENCH_THREADS=${BENCH_THREADS:-2}
BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-64}
BENCH_DURATION=${BENCH_DURATION:-10}
BENCH_WARMUP=${BENCH_WARMUP:-3}
BENCH_PG_CLIENTS=${BENCH_PG_CLIENTS:-16}

# -- processes -------------------------------------------------------------------------

# Stops every process bench_spawn started (TERM, then KILL after 10 s). For trap EXIT.
bench_stop_all() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do
    bench_stop "$pid"
  done
  BENCH_PIDS=()
}

# bench_stop PID: TERM, wait up to 10 s, then KILL. Only for pids of bench_spawn.
bench_stop() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    warn "process $pid did not stop on TERM; killing it"
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null || true
  local keep=() p
  for p in "${BENCH_PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  BENCH_PIDS=("${keep[@]}")
}

# bench_spawn LOGFILE CMD...: starts CMD in the background with its output in LOGFILE,
# waits until it prints "listening on http://HOST:PORT" and sets BENCH_PID and BENCH_PORT.
bench_spawn() {
  local logfile=$1 i
  shift
  : >"$logfile"
  "$@" >"$logfile" 2>&1 &
  BENCH_PID=$!
  BENCH_PIDS+=("$BENCH_PID")
  BENCH_PORT=
  for ((i = 0; i < 600; i++)); do
    BENCH_PORT=$(sed -n 's#.*listening on http://[^ ]*:\([0-9][0-9]*\).*#\1#p' "$logfile" | awk 'NR == 1')
    [[ -n $BENCH_PORT ]] && return 0
    kill -0 "$BENCH_PID" 2>/dev/null || { cat "$logfile" >&2; die "$1 exited at start"; }
    sleep 0.1
  done
  cat "$logfile" >&2
  die "$1 did not listen within 60 s"
}

# bench_wait_ready URL: waits (up to 60 s) for URL to answer 200.
bench_wait_ready() {
  local i
  for ((i = 0; i < 600; i++)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$1") == 200 ]] && return 0
    sleep 0.1
  done
  die "$1 not ready within 60 s"
}

# bench_wait_rocksdb_idle PID: waits (up to 10 min) until RocksDB's background threads of
# PID (flushes and compactions, e.g. of a freshly seeded store) have used no CPU for 2 s;
# prints the seconds waited.
bench_wait_rocksdb_idle() {
  local pid=$1 last=-1 now quiet=0 t0=$SECONDS
  while (( SECONDS - t0 < 600 )); do
    now=$(bench_thread_ticks "$pid" | awk '$1 ~ /^rocksdb:/ { s += $2 } END { print s + 0 }')
    if [[ $now == "$last" ]]; then
      (( ++quiet >= 2 )) && break
    else
      quiet=0
    fi
    last=$now
    sleep 1
  done
  printf '%s\n' "$((SECONDS - t0))"
}

# bench_metric BASE_URL NAME: the value of one unlabelled Prometheus sample of /metrics.
bench_metric() {
  curl -s "$1/metrics" | awk -v n="$2" '$1 == n && !seen { print $2; seen = 1 }'
}

# bench_wait_projection BASE_URL: waits (up to 120 s) until the read model has caught up.
bench_wait_projection() {
  local i lag
  for ((i = 0; i < 1200; i++)); do
    lag=$(bench_metric "$1" eventsd_projection_lag_events)
    [[ $lag == 0 ]] && return 0
    sleep 0.1
  done
  warn "projection still lags by ${lag:-?} events after 120 s"
}

# -- results ---------------------------------------------------------------------------

# bench_result NAME rps p50_ms p99_ms errors requests [note]
bench_result() {
  BENCH_R[$1.rps]=$2
  BENCH_R[$1.p50]=$3
  BENCH_R[$1.p99]=$4
  BENCH_R[$1.errors]=$5
  BENCH_R[$1.requests]=$6
  BENCH_R[$1.note]=${7:-}
}

bench_get() { printf '%s' "${BENCH_R[$1.$2]:-}"; }

# bench_ratio A B: A/B with two decimals, or "–" when either is missing or B is 0.
bench_ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "–"; else printf "%.2f\n", a / b }'
}

# bench_percentiles FILE: prints "p50 p99" of the numbers in FILE (one a line).
bench_percentiles() {
  sort -n "$1" | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "– –"; exit }
    i50 = int(0.50 * NR + 0.999999); if (i50 < 1) i50 = 1
    i99 = int(0.99 * NR + 0.999999); if (i99 > NR) i99 = NR
    print v[i50], v[i99] }'
}

# -- load generators -------------------------------------------------------------------

# bench_wrk NAME URL SCRIPT [IDS_FILE]: warm-up, then the measured run; stores NAME.
# With BENCH_METRICS_URL set (an eventsd base URL), also the write detail of the run; with
# BENCH_CPU_PID set, NAME.cpu_us and NAME.ctxsw (CPU microseconds and context switches of
# that process per request) and, with BENCH_PG_DSN, NAME.pg_cpu_us (of the PostgreSQL
# backends connected to that database, the server's projection and readers). Always:
# NAME.wrk_us (wrk's CPU per request), NAME.others (cores kept busy by every other process
# of the machine during the run: builds and tests of others disturb the figures) and
# NAME.load (1-minute load average at the end).
bench_wrk() {
  local name=$1 url=$2 script=$3 ids=${4:-} out=$BENCH_DIR/wrk-$1.txt
  local args=(-t"$BENCH_THREADS" -c"$BENCH_CONNECTIONS" -s "$script" "$url")
  if [[ -n $ids ]]; then args+=(-- "$ids" "$BENCH_THREADS"); fi
  log "wrk $name: ${BENCH_WARMUP}s warm-up, ${BENCH_DURATION}s measured"
  if (( BENCH_WARMUP > 0 )); then
    wrk -d"${BENCH_WARMUP}s" "${args[@]}" >"$BENCH_DIR/wrk-$name.warmup.txt" 2>&1 \
      || { cat "$BENCH_DIR/wrk-$name.warmup.txt" >&2; die "wrk warm-up of $name failed"; }
  fi
  BENCH_COMMANDS+=("wrk -d${BENCH_DURATION}s ${args[*]}")
  if [[ -n ${BENCH_METRICS_URL:-} ]]; then
    bench_metrics_snapshot "$BENCH_METRICS_URL" "$BENCH_DIR/metrics-$name.before"
  fi
  local cpu0='' cpu1='' busy0 busy1
  if [[ -n ${BENCH_CPU_PID:-} ]]; then
    BENCH_PG_PIDS=
    if [[ -n ${BENCH_PG_DSN:-} ]]; then
      BENCH_PG_PIDS=$("$EVENTSD_PG_BIN/psql" -X -At -d "$BENCH_PG_DSN" -c \
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()" \
        | tr '\n' ' ')
    fi
    cpu0=$(bench_cpu_sample)
    bench_thread_ticks >"$out.threads0"
  fi
  busy0=$(bench_busy_ticks)
  local TIMEFORMAT='%3U %3S'
  { time wrk -d"${BENCH_DURATION}s" "${args[@]}" >"$out" 2>&1; } 2>"$out.cpu" \
    || { cat "$out" >&2; die "wrk $name failed"; }
  busy1=$(bench_busy_ticks)
  if [[ -n ${BENCH_CPU_PID:-} ]]; then
    cpu1=$(bench_cpu_sample)
    bench_thread_ticks >"$out.threads1"
  fi
  BENCH_R[$name.load]=$(cut -d' ' -f1 /proc/loadavg)
  if [[ -n ${BENCH_METRICS_URL:-} ]]; then
    bench_metrics_snapshot "$BENCH_METRICS_URL" "$BENCH_DIR/metrics-$name.after"
    bench_write_detail "$name" "$BENCH_DIR/metrics-$name.before" "$BENCH_DIR/metrics-$name.after"
  fi
  local line
  line=$(grep '^BENCH ' "$out" | tail -n 1)
  [[ -n $line ]] || { cat "$out" >&2; die "no BENCH line in $out"; }
  local rps p50 p99 non2xx sock requests
  rps=$(sed -n 's/.* rps=\([^ ]*\).*/\1/p' <<<"$line")
  p50=$(sed -n 's/.* p50_ms=\([^ ]*\).*/\1/p' <<<"$line")
  p99=$(sed -n 's/.* p99_ms=\([^ ]*\).*/\1/p' <<<"$line")
  non2xx=$(sed -n 's/.* non2xx=\([^ ]*\).*/\1/p' <<<"$line")
  sock=$(sed -n 's/.* socket_errors=\([^ ]*\).*/\1/p' <<<"$line")
  requests=$(sed -n 's/.*requests=\([^ ]*\).*/\1/p' <<<"$line")
  bench_result "$name" "$rps" "$p50" "$p99" "$((non2xx + sock))" "$requests" \
    "non-2xx $non2xx, socket $sock"
  if [[ -n ${BENCH_CPU_PID:-} ]]; then
    # The server's CPU per request by thread name, e.g. "caf.actor 19.4, rocksdb:low 3.6".
    BENCH_R[$name.threads]=$(join "$out.threads0" "$out.threads1" \
      | awk -v n="${requests:-1}" -v hz="$(getconf CLK_TCK)" '
          { us = ($3 - $2) / hz * 1e6 / (n > 0 ? n : 1); if (us >= 0.05) { printf "%s%s %.1f", sep, $1, us; sep = ", " } }')
  fi
  # Per request: server, its PostgreSQL backends, wrk; then what the rest of the machine
  # (other processes than these) kept busy, in cores, over the run.
  local wrk_cpu secs
  wrk_cpu=$(awk '{ print $1 + $2 }' "$out.cpu")
  secs=$(sed -n 's/.* duration_s=\([^ ]*\).*/\1/p' <<<"$line")
  read -r BENCH_R[$name.cpu_us] BENCH_R[$name.pg_cpu_us] BENCH_R[$name.ctxsw] \
    BENCH_R[$name.wrk_us] BENCH_R[$name.others] < <(
    awk -v a="${cpu0:-0 0 0}" -v b="${cpu1:-0 0 0}" -v n="$requests" -v hz="$(getconf CLK_TCK)" \
        -v w="$wrk_cpu" -v b0="$busy0" -v b1="$busy1" -v t="$secs" -v has="${cpu0:+1}" 'BEGIN {
      split(a, x, " "); split(b, y, " ")
      if (n == 0) n = 1
      if (t == 0) t = 1
      srv = (y[1] - x[1]) / hz; pg = (y[2] - x[2]) / hz
      others = ((b1 - b0) / hz - srv - pg - w) / t
      if (others < 0) others = 0
      if (has) printf "%.0f %.0f %.2f ", srv * 1e6 / n, pg * 1e6 / n, (y[3] - x[3]) / n
      else printf "– – – "
      printf "%.0f %.2f\n", w * 1e6 / n, others }')
  log "  $name: $rps req/s, p50 $p50 ms, p99 $p99 ms, errors $((non2xx + sock))"
}

# bench_pgbench NAME DSN SCRIPT [pgbench args...]: one pgbench run with per-transaction
# logs, whose latencies give p50 and p99; stores NAME (rps = tps).
bench_pgbench() {
  local name=$1 dsn=$2 script=$3 out=$BENCH_DIR/pgbench-$1.txt
  shift 3
  local prefix=$BENCH_DIR/pgbench-$name-log
  rm -f "$prefix".*
  local args=(-n -M prepared -c "$BENCH_PG_CLIENTS" -j "$BENCH_THREADS" -T "$BENCH_DURATION" "$@"
              -f "$script")
  log "pgbench $name: ${BENCH_PG_CLIENTS} clients, ${BENCH_DURATION}s"
  BENCH_COMMANDS+=("pgbench ${args[*]} \"\$DSN\"")
  "$EVENTSD_PG_BIN/pgbench" "${args[@]}" -l --log-prefix="$prefix" "$dsn" >"$out" 2>&1 \
    || { cat "$out" >&2; die "pgbench $name failed"; }
  BENCH_R[$name.load]=$(cut -d' ' -f1 /proc/loadavg)
  local tps failed aborted p
  tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$out")
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out")
  aborted=$(sed -n 's/.*number of clients aborted: \([0-9]*\).*/\1/p' "$out")
  cat "$prefix".* | awk '{ printf "%.3f\n", $3 / 1000 }' >"$BENCH_DIR/pgbench-$name.lat"
  rm -f "$prefix".*
  read -r -a p < <(bench_percentiles "$BENCH_DIR/pgbench-$name.lat")
  local txns
  txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
  bench_result "$name" "$(printf '%.1f' "${tps:-0}")" "${p[0]}" "${p[1]}" \
    "$(( ${failed:-0} + ${aborted:-0} ))" "${txns:-0}" "failed ${failed:-0}, clients aborted ${aborted:-0}"
  log "  $name: ${tps:-?} tps, p50 ${p[0]} ms, p99 ${p[1]} ms"
}

# bench_db_bench NAME DB_DIR [db_bench args...]: one db_bench run (fillrandom, synced);
# rps is db_bench's ops/sec (keys/s), p50 and p99 its per-write-call percentiles.
bench_db_bench() {
  local name=$1 db=$2 out=$BENCH_DIR/db_bench-$1.txt
  shift 2
  rm -rf "$db"
  local args=(--benchmarks=fillrandom --sync=1 --threads=64 --duration="$BENCH_DURATION"
              --num=10000000 --key_size=16 --value_size=200 --histogram=1 "$@")
  log "db_bench $name"
  BENCH_COMMANDS+=("db_bench ${args[*]} --db=DIR")
  db_bench "${args[@]}" --db="$db" >"$out" 2>"$out.stderr" \
    || { tail -n 20 "$out" "$out.stderr" >&2; die "db_bench $name failed"; }
  BENCH_R[$name.load]=$(cut -d' ' -f1 /proc/loadavg)
  rm -rf "$db"
  local ops p50 p99 count
  ops=$(sed -n 's/^fillrandom *: *[0-9.]* micros\/op \([0-9]*\) ops\/sec.*/\1/p' "$out" | awk 'NR == 1')
  count=$(sed -n 's/^fillrandom *:.* \([0-9]*\) operations;.*/\1/p' "$out" | awk 'NR == 1')
  p50=$(sed -n 's/^Percentiles: P50: \([0-9.]*\) .*/\1/p' "$out" | awk 'NR == 1')
  p99=$(sed -n 's/^Percentiles: .* P99: \([0-9.]*\) .*/\1/p' "$out" | awk 'NR == 1')
  p50=$(awk -v x="${p50:-0}" 'BEGIN { printf "%.3f", x / 1000 }')
  p99=$(awk -v x="${p99:-0}" 'BEGIN { printf "%.3f", x / 1000 }')
  bench_result "$name" "${ops:-0}" "$p50" "$p99" 0 "${count:-0}" "keys/s; latency per write call"
  log "  $name: ${ops:-?} keys/s, p50 $p50 ms, p99 $p99 ms"
}

# -- the machine -----------------------------------------------------------------------

# bench_machine DIR: a Markdown list describing this machine and the disk under DIR.
bench_machine() {
  local dir=$1 cpu mem dev fstype disk virt
  cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | awk 'NR == 1')
  virt=$(lscpu 2>/dev/null | sed -n 's/^Hypervisor vendor: *//p' | awk 'NR == 1')
  mem=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
  read -r dev fstype < <(df -T "$dir" | awk 'NR == 2 { print $1, $2 }')
  disk=$(lsblk -dno NAME,SIZE,ROTA,MODEL "$dev" 2>/dev/null | awk '{ $3 = ($3 == 1 ? "rotational" : "non-rotational"); print }')
  printf -- '- CPU: %s × %s%s\n' "$(nproc)" "${cpu:-unknown}" "${virt:+ (virtual machine, $virt)}"
  printf -- '- RAM: %s\n' "$mem"
  printf -- '- disk: %s, %s (%s)\n' "$dev" "$fstype" "${disk:-no lsblk details}"
  printf -- '- kernel: %s\n' "$(uname -sr)"
  printf -- '- tools: %s; PostgreSQL %s; RocksDB %s (db_bench); %s\n' \
    "$(wrk -v 2>&1 | awk 'NR == 1 { print $1, $2 }')" \
    "$("$EVENTSD_PG_BIN/postgres" --version | awk '{ print $3 }')" \
    "$(dpkg-query -W -f='${Version}' rocksdb-tools 2>/dev/null)" \
    "$(c++ --version | awk 'NR == 1')"
}

# -- Markdown --------------------------------------------------------------------------

# bench_replace_block FILE NAME CONTENT_FILE: replaces the lines between
# "<!-- BEGIN bench:NAME -->" and "<!-- END bench:NAME -->" of FILE with CONTENT_FILE,
# appending the block when FILE lacks it.
bench_replace_block() {
  local file=$1 name=$2 content=$3 begin end tmp
  begin="<!-- BEGIN bench:$name -->"
  end="<!-- END bench:$name -->"
  tmp=$(mktemp)
  if [[ -f $file ]] && grep -qxF "$begin" "$file" && grep -qxF "$end" "$file"; then
    awk -v b="$begin" -v e="$end" -v c="$content" '
      $0 == b { print; while ((getline line < c) > 0) print line; skip = 1; next }
      $0 == e { skip = 0 }
      !skip { print }' "$file" >"$tmp"
  else
    { [[ -f $file ]] && cat "$file"; printf '\n%s\n' "$begin"; cat "$content"; printf '%s\n' "$end"; } >"$tmp"
  fi
  cat "$tmp" >"$file"
  rm -f "$tmp"
}

# -- CPU around a measured run --------------------------------------------------------------

# bench_cpu_ticks PID...: user+system clock ticks of the processes (0 for gone ones).
bench_cpu_ticks() {
  local pid t=0 v
  for pid in "$@"; do
    v=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null) || v=0
    t=$((t + ${v:-0}))
  done
  printf '%s\n' "$t"
}

# bench_thread_ticks [PID]: "name ticks" per thread name of PID (default BENCH_CPU_PID),
# sorted by name (threads of one name summed): which of the server's threads kept busy.
bench_thread_ticks() {
  local t
  for t in /proc/"${1:-$BENCH_CPU_PID}"/task/*; do
    printf '%s %s\n' "$(tr ' ' _ <"$t/comm" 2>/dev/null)" "$(awk '{ print $14 + $15 }' "$t/stat" 2>/dev/null)"
  done | awk 'NF == 2 { s[$1] += $2 } END { for (k in s) print k, s[k] }' | sort
}

# bench_busy_ticks: clock ticks all CPUs of the machine spent busy (not idle, not iowait).
bench_busy_ticks() {
  awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}

# bench_cpu_sample: "server_ticks pg_backend_ticks context_switches" for BENCH_CPU_PID (the
# server under test, all its threads) and BENCH_PG_PIDS (PostgreSQL backends serving it).
bench_cpu_sample() {
  local ctx
  ctx=$(cat /proc/"$BENCH_CPU_PID"/task/*/status 2>/dev/null \
        | awk '/^(non)?voluntary_ctxt_switches:/ { s += $2 } END { print s + 0 }')
  # shellcheck disable=SC2086
  printf '%s %s %s\n' "$(bench_cpu_ticks "$BENCH_CPU_PID")" "$(bench_cpu_ticks ${BENCH_PG_PIDS:-})" "$ctx"
}

# -- eventsd's own counters around a measured run ---------------------------------------

# bench_metrics_snapshot BASE_URL FILE: saves the unlabelled samples of /metrics (FILE.raw: all).
bench_metrics_snapshot() {
  curl -s "$1/metrics" >"$2.raw"
  awk '!/^#/ && $1 !~ /[{]/ { print $1, $2 }' "$2.raw" >"$2"
}

# bench_write_detail NAME BEFORE AFTER: from two snapshots, stores NAME.batch (events per
# fsync batch), NAME.fsync_ms (mean duration of one append+fsync), NAME.activations and
# NAME.lag (projection lag in events at the end of the run).
bench_write_detail() {
  local name=$1 line
  line=$(awk 'NR == FNR { a[$1] = $2; next } { b[$1] = $2 } END {
      ev = b["eventsd_events_appended_total"] - a["eventsd_events_appended_total"]
      fb = b["eventsd_fsync_batches_total"] - a["eventsd_fsync_batches_total"]
      fs = b["eventsd_fsync_duration_seconds_sum"] - a["eventsd_fsync_duration_seconds_sum"]
      ac = b["eventsd_aggregate_activations_total"] - a["eventsd_aggregate_activations_total"]
      printf "%.1f %.3f %d %d %d\n", (fb > 0 ? ev / fb : 0), (fb > 0 ? 1000 * fs / fb : 0), ac, b["eventsd_projection_lag_events"], fb
    }' "$2" "$3")
  read -r BENCH_R[$name.batch] BENCH_R[$name.fsync_ms] BENCH_R[$name.activations] \
    BENCH_R[$name.lag] BENCH_R[$name.fsyncs] <<<"$line"
}

# -- projection lag under a paced write load --------------------------------------------

# bench_visible_quantiles BEFORE AFTER: from two raw /metrics snapshots, the events applied
# in between and the bucket bounds (seconds) under which 50 %, 99 % and all of their
# append → visible times fell, and their mean: "count p50 p99 max mean".
bench_visible_quantiles() {
  awk 'function le(line) { sub(/.*le="/, "", line); sub(/".*/, "", line); return line }
    /^eventsd_projection_visible_seconds_bucket/ {
      b = le($1)
      if (NR == FNR) { a[b] = $2 } else { d[b] = $2 - a[b]; order[++n] = b }
    }
    /^eventsd_projection_visible_seconds_sum/ { if (NR == FNR) s0 = $2; else s1 = $2 }
    END {
      total = d["+Inf"]
      if (total <= 0) { print "0 – – – –"; exit }
      p50 = p99 = mx = ""
      for (i = 1; i <= n; i++) {
        c = d[order[i]]
        if (p50 == "" && c >= 0.50 * total) p50 = order[i]
        if (p99 == "" && c >= 0.99 * total) p99 = order[i]
        if (mx == "" && c >= total) mx = order[i]
      }
      printf "%d %s %s %s %.4f\n", total, p50, p99, mx, (s1 - s0) / total
    }' "$1" "$2"
}

# bench_lag NAME URL TARGET_RPS: POST /todo paced at TARGET_RPS (tests/load/post_paced.lua,
# its delay calibrated by a short run), and eventsd's append → visible-in-PostgreSQL time of
# the events of the measured run. Stores NAME.{target,rps,p99_http,errors,count,p50,p99,max,mean}.
bench_lag() {
  local name=$1 url=$2 target=$3 out=$BENCH_DIR/wrk-$1.txt line rps
  local args=(-t"$BENCH_THREADS" -c"$BENCH_CONNECTIONS" -s tests/load/post_paced.lua "$url" --)
  # Per connection, one request every cycle = connections × 1000 / target ms, of which the
  # answer takes about what the calibration run shows.
  local cycle delay
  cycle=$(awk -v c="$BENCH_CONNECTIONS" -v t="$target" 'BEGIN { printf "%.3f", c * 1000 / t }')
  delay=$cycle
  wrk -d3s "${args[@]}" "$delay" >"$out.calibration" 2>&1 || die "wrk calibration of $name failed"
  rps=$(sed -n 's/^BENCH .* rps=\([^ ]*\).*/\1/p' "$out.calibration")
  delay=$(awk -v c="$BENCH_CONNECTIONS" -v r="$rps" -v cy="$cycle" -v d="$delay" 'BEGIN {
    latency = c * 1000 / r - d; x = cy - latency; if (x < 0) x = 0; printf "%.3f", x }')
  bench_wait_projection "$url"
  log "wrk $name: POST /todo paced at $(printf "%.0f" "$target") req/s (delay $delay ms), ${BENCH_DURATION}s"
  BENCH_COMMANDS+=("wrk -d${BENCH_DURATION}s ${args[*]} $delay")
  curl -s "$url/metrics" >"$BENCH_DIR/metrics-$name.before.raw"
  wrk -d"${BENCH_DURATION}s" "${args[@]}" "$delay" >"$out" 2>&1 || { cat "$out" >&2; die "wrk $name failed"; }
  bench_wait_projection "$url"
  curl -s "$url/metrics" >"$BENCH_DIR/metrics-$name.after.raw"
  line=$(grep '^BENCH ' "$out" | tail -n 1)
  BENCH_R[$name.target]=$target
  BENCH_R[$name.rps]=$(sed -n 's/.* rps=\([^ ]*\).*/\1/p' <<<"$line")
  BENCH_R[$name.p99_http]=$(sed -n 's/.* p99_ms=\([^ ]*\).*/\1/p' <<<"$line")
  BENCH_R[$name.errors]=$(awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "non2xx" || kv[1] == "socket_errors") e += kv[2] } } END { print e + 0 }' <<<"$line")
  read -r BENCH_R[$name.count] BENCH_R[$name.p50] BENCH_R[$name.p99] BENCH_R[$name.max] \
    BENCH_R[$name.mean] < <(bench_visible_quantiles "$BENCH_DIR/metrics-$name.before.raw" \
                                                   "$BENCH_DIR/metrics-$name.after.raw")
  log "  $name: $(bench_get "$name" rps) req/s; append → visible p50 ≤ $(bench_get "$name" p50) s, p99 ≤ $(bench_get "$name" p99) s, mean $(bench_get "$name" mean) s over $(bench_get "$name" count) events"
}

#!/usr/bin/env bash
# Compares Comity's durable write throughput with PostgreSQL's on this machine.
#
# PostgreSQL: a throwaway cluster (temp dir, free port, default durable commit:
# fsync=on, synchronous_commit=on), an append-only table
# (id bigserial primary key, payload bytea), and pgbench with 64 clients each
# inserting 256 random-ish bytes per transaction.
# Comity: `comity bench --json` (64 clients, one kv.put per request, each
# waiting for the durable acknowledgement) against a one-node network
# started with `target/release/comity up --nodes 1` in the work dir and
# stopped afterwards, or, with COMITY_DATA, the one-node network already
# running there.
#
# The two run in ROUNDS alternating rounds (PostgreSQL, Comity signing
# inline, Comity presigned), each against the same server, so that a noisy
# neighbour slows both alike; the report gives each round and the medians,
# and the ratio of the medians.
#
# Usage: bench/compare-postgres.sh [SECONDS] [CLIENTS] [ROUNDS]
# Env:   COMITY_BIN   comity binary (default target/release/comity, built if missing)
#        COMITY_DATA  data dir of a running one-node network to use (default: a
#                     fresh one-node network in the work dir)
#        BENCH_TMP    where the work dir goes (default target/; never tmpfs,
#                     where fsync does nothing)
#        KEEP=1       keep the temp dir (logs, JSON) after the run
set -euo pipefail

SECS="${1:-10}"
CLIENTS="${2:-64}"
ROUNDS="${3:-3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMITY="${COMITY_BIN:-$ROOT/target/release/comity}"
DATA="${COMITY_DATA:-}"

mkdir -p "${BENCH_TMP:-$ROOT/target}"
WORK="$(mktemp -d -p "${BENCH_TMP:-$ROOT/target}" comity-vs-pg.XXXXXX)"
PG_STARTED=""
RUN_AS=()
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"


cleanup() {
    local rc=$?
    set +e
    if [[ -n "$PG_STARTED" ]]; then
        "${RUN_AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m fast -w stop >/dev/null 2>&1
    fi
    stop_comity
    if [[ "${KEEP:-0}" == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- PostgreSQL
find_pgbin() {
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
    if [[ -n "$d" && -x "$d/initdb" && -x "$d/pgbench" ]]; then
        echo "$d"
    elif command -v initdb >/dev/null && command -v pgbench >/dev/null; then
        dirname "$(command -v initdb)"
    fi
}

PGBIN="$(find_pgbin)"
need=()
[[ -n "$PGBIN" ]] || need+=(postgresql)
command -v curl >/dev/null || need+=(curl)
if [[ ${#need[@]} -gt 0 ]]; then
    log "installing ${need[*]} (apt-get)"
    SUDO=()
    [[ "$(id -u)" != 0 ]] && SUDO=(sudo)
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
    PGBIN="$(find_pgbin)"
    [[ -n "$PGBIN" ]] || { echo "PostgreSQL binaries not found after install" >&2; exit 1; }
fi

# initdb and postgres refuse to run as root: use the postgres system user.
mkdir -p "$WORK/pg"
if [[ "$(id -u)" == 0 ]]; then
    PGUSER_OS=postgres
    if ! id "$PGUSER_OS" >/dev/null 2>&1; then
        PGUSER_OS=comity-pg
        id "$PGUSER_OS" >/dev/null 2>&1 ||
            useradd --system --no-create-home --shell /usr/sbin/nologin "$PGUSER_OS"
    fi
    chmod 755 "$WORK"
    chown "$PGUSER_OS" "$WORK/pg"
    if command -v runuser >/dev/null; then
        RUN_AS=(runuser -u "$PGUSER_OS" --)
    else
        RUN_AS=(sudo -u "$PGUSER_OS")
    fi
fi
[[ ${#RUN_AS[@]} -eq 0 ]] && RUN_AS=(env)

PGPORT="$(free_port)"
log "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PGPORT ($WORK/pg)"
"${RUN_AS[@]}" "$PGBIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust -E UTF8 >"$WORK/initdb.log" 2>&1 ||
    { cat "$WORK/initdb.log" >&2; exit 1; }
"${RUN_AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/server.log" -w -t 60 \
    -o "-p $PGPORT -c listen_addresses=127.0.0.1 -k $WORK/pg -c max_connections=$((CLIENTS + 20)) -c fsync=on -c synchronous_commit=on" \
    start >/dev/null
PG_STARTED=1

PSQL=("$PGBIN/psql" -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -v ON_ERROR_STOP=1)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE bench"
"${PSQL[@]}" -d bench -c "CREATE TABLE ledger (id bigserial PRIMARY KEY, payload bytea NOT NULL)"
FSYNC="$("${PSQL[@]}" -d bench -At -c 'SHOW fsync')"
SYNC="$("${PSQL[@]}" -d bench -At -c 'SHOW synchronous_commit')"
[[ "$FSYNC" == on && "$SYNC" == on ]] || { echo "PostgreSQL is not in durable mode (fsync=$FSYNC synchronous_commit=$SYNC)" >&2; exit 1; }

# 16 MD5s of random numbers: 256 random-ish bytes per row, one row per transaction.
cat >"$WORK/insert.sql" <<'SQL'
INSERT INTO ledger (payload) SELECT decode(string_agg(md5(random()::text), ''), 'hex') FROM generate_series(1, 16);
SQL

# ---------------------------------------------------------------- Comity
# The core ledger's comparison: one node, as PostgreSQL is one server.
if [[ -n "$DATA" ]]; then
    healthy "$DATA" || { echo "COMITY_DATA=$DATA: no network answers" >&2; exit 1; }
    [[ "$(node_count "$DATA")" == 1 ]] || { echo "COMITY_DATA=$DATA: not a one-node network" >&2; exit 1; }
    log "using the running network of $DATA"
else
    DATA="$WORK/comity-data"
    start_comity "$DATA" 1
fi

# ---------------------------------------------------------------- Rounds
PG=() PG_LATS=() INLINE=() PRESIGNED=() LINES=()
for r in $(seq 1 "$ROUNDS"); do
    log "round $r of $ROUNDS: pgbench, $CLIENTS clients, $SECS s, one 256-byte INSERT per transaction"
    "$PGBIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$SECS" -f "$WORK/insert.sql" \
        -h 127.0.0.1 -p "$PGPORT" -U postgres bench >"$WORK/pgbench-$r.txt" 2>&1 ||
        { cat "$WORK/pgbench-$r.txt" >&2; exit 1; }
    PG_TPS="$(awk '/^tps = /{print $3; exit}' "$WORK/pgbench-$r.txt")"
    [[ -n "$PG_TPS" ]] || { cat "$WORK/pgbench-$r.txt" >&2; echo "could not read pgbench's tps" >&2; exit 1; }
    PG+=("$PG_TPS")
    PG_LATS+=("$(awk '/^latency average/{print $4; exit}' "$WORK/pgbench-$r.txt")")
    # Clients sign each transaction just before sending it, on this same machine...
    comity_bench "comity-inline-$r"
    INLINE+=("$C_TPS")
    LINES+=("$(printf '  round %d: PostgreSQL %6.0f   Comity inline %6.0f (p50 %.2f ms, p99 %.2f ms, receipt p99 %s ms, %s errors)' \
        "$r" "$PG_TPS" "$C_TPS" "$C_P50" "$C_P99" "${C_RP99:-?}" "${C_ERR:-?}")")
    # ...and, as clients on their own machines would, with signing done before the run.
    comity_bench "comity-presigned-$r" --presign
    PRESIGNED+=("$C_TPS")
    LINES+=("$(printf '           %22s presigned %6.0f (p50 %.2f ms, p99 %.2f ms, receipt p99 %s ms, %s errors)' \
        "" "$C_TPS" "$C_P50" "$C_P99" "${C_RP99:-?}" "${C_ERR:-?}")")
done
PG_ROWS="$("${PSQL[@]}" -d bench -At -c 'SELECT count(*) FROM ledger')"
"${RUN_AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m fast -w stop >/dev/null
PG_STARTED=""

# ---------------------------------------------------------------- Report
PG_M="$(median "${PG[@]}")" I_M="$(median "${INLINE[@]}")" C_M="$(median "${PRESIGNED[@]}")"
echo
echo "Durable appends, $CLIENTS concurrent clients, $ROUNDS rounds of $SECS s each, 256-byte payloads, on $(nproc) cores (tx/s)"
printf '%s\n' "${LINES[@]}"
printf '  %-50s %8.0f tx/s   (avg latency %s ms, %s rows in all)\n' \
    "median PostgreSQL (fsync, synchronous_commit=on)" "$PG_M" "$(median "${PG_LATS[@]}")" "$PG_ROWS"
printf '  %-50s %8.0f tx/s\n' \
    "median Comity (signed kv.put, signing inline)" "$I_M" \
    "median Comity (signed kv.put, presigned)" "$C_M"
awk -v i="$I_M" -v c="$C_M" -v p="$PG_M" 'BEGIN { if (p > 0) printf "  Comity / PostgreSQL (medians) = %.2f (signing inline), %.2f (presigned)\n", i / p, c / p }'

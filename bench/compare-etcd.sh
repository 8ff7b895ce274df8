#!/usr/bin/env bash
# Compares a three-node Comity network with a three-node etcd cluster on this
# machine, taking turns, under the same client rules: 64 concurrent
# clients, each sending one 256-byte write and waiting for its durable,
# majority-replicated acknowledgement before the next.
#
# etcd: Debian's etcd-server (installed if missing), three members on
# loopback with their own data directories (default durability: fsync of the
# WAL on every member), driven through its gRPC API by bench/etcd-load (the
# etcd-client crate; protobuf-compiler is installed to build it).
# Comity: `comity up --nodes 3` in a temp data dir, then `comity bench --json`
# (signed kv.put, many identities, keys spread, receipts sampled and verified).
#
# Both stay up while the loads run in ROUNDS alternating rounds (etcd,
# Comity signing inline, Comity presigned), so that a noisy neighbour slows
# both alike; the report gives each round, the medians and the ratio of the
# medians.
#
# Usage: bench/compare-etcd.sh [SECONDS] [CLIENTS] [ROUNDS]
# Env:   COMITY_BIN   comity binary (default target/release/comity, built if missing)
#        KEEP=1       keep the temp dir (logs, JSON) after the run
set -euo pipefail

SECS="${1:-15}"
CLIENTS="${2:-64}"
ROUNDS="${3:-3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMITY="${COMITY_BIN:-$ROOT/target/release/comity}"
LOADER="$ROOT/target/etcd-load/release/etcd-load"
mkdir -p "${BENCH_TMP:-$ROOT/target}"
WORK="$(mktemp -d -p "${BENCH_TMP:-$ROOT/target}" comity-vs-etcd.XXXXXX)"
ETCD_PIDS=()
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

cleanup() {
    local rc=$?
    set +e
    for p in "${ETCD_PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${ETCD_PIDS[@]}"; do wait "$p" 2>/dev/null; done
    stop_comity
    if [[ "${KEEP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v curl >/dev/null || need+=(curl)
if [[ ${#need[@]} -gt 0 ]]; then
    log "installing ${need[*]} (apt-get)"
    SUDO=()
    [[ "$(id -u)" != 0 ]] && SUDO=(sudo)
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Built every time (a no-op when up to date), so a changed loader is never stale.
log "building the etcd load generator (bench/etcd-load)"
(cd "$ROOT/bench/etcd-load" && CARGO_TARGET_DIR="$ROOT/target/etcd-load" cargo build --release -q)

# ---------------------------------------------------------------- etcd
CLUSTER=""
ENDPOINTS=""
declare -a CPORTS PPORTS
for i in 0 1 2; do
    CPORTS[i]="$(free_port)"
    PPORTS[i]="$(free_port)"
    CLUSTER+="${CLUSTER:+,}e$i=http://127.0.0.1:${PPORTS[i]}"
    ENDPOINTS+="${ENDPOINTS:+,}http://127.0.0.1:${CPORTS[i]}"
done
log "etcd $(etcd --version | awk '/etcd Version/{print $3}'): three members ($ENDPOINTS)"
for i in 0 1 2; do
    etcd --name "e$i" --data-dir "$WORK/etcd$i" \
        --listen-client-urls "http://127.0.0.1:${CPORTS[i]}" \
        --advertise-client-urls "http://127.0.0.1:${CPORTS[i]}" \
        --listen-peer-urls "http://127.0.0.1:${PPORTS[i]}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${PPORTS[i]}" \
        --initial-cluster "$CLUSTER" --initial-cluster-state new \
        --initial-cluster-token comity-bench --logger zap --log-level warn \
        >"$WORK/etcd$i.log" 2>&1 &
    ETCD_PIDS+=($!)
done
for _ in $(seq 1 120); do
    ok=0
    for i in 0 1 2; do
        curl -sf --max-time 1 "http://127.0.0.1:${CPORTS[i]}/health" | grep -q '"health":"true"' && ok=$((ok + 1))
    done
    [[ $ok == 3 ]] && break
    sleep 0.5
done
[[ $ok == 3 ]] || { tail -n 20 "$WORK"/etcd*.log >&2; echo "etcd did not become healthy" >&2; exit 1; }

# ---------------------------------------------------------------- Comity
DATA="$WORK/comity-data"
start_comity "$DATA" 3

# ---------------------------------------------------------------- Rounds
ETCD=() INLINE=() PRESIGNED=() LINES=()
for r in $(seq 1 "$ROUNDS"); do
    log "round $r of $ROUNDS: etcd-load, $CLIENTS clients, $SECS s, one 256-byte put per request"
    "$LOADER" "$ENDPOINTS" "$CLIENTS" "$SECS" 256 >"$WORK/etcd-$r.json"
    E_TPS="$(sed -n 's/.*"throughput": *\([0-9.]*\).*/\1/p' "$WORK/etcd-$r.json")"
    E_P50="$(sed -n 's/.*"p50_ms": *\([0-9.]*\).*/\1/p' "$WORK/etcd-$r.json")"
    E_P99="$(sed -n 's/.*"p99_ms": *\([0-9.]*\).*/\1/p' "$WORK/etcd-$r.json")"
    E_ERR="$(sed -n 's/.*"errors": *\([0-9]*\).*/\1/p' "$WORK/etcd-$r.json")"
    [[ -n "$E_TPS" ]] || { cat "$WORK/etcd-$r.json" >&2; echo "could not read etcd-load's throughput" >&2; exit 1; }
    ETCD+=("$E_TPS")
    LINES+=("$(printf '  round %d: etcd %6.0f (p50 %.2f ms, p99 %.2f ms, %s errors)' \
        "$r" "$E_TPS" "$E_P50" "$E_P99" "${E_ERR:-?}")")
    # Clients sign each transaction just before sending it, on this same machine...
    comity_bench "comity-inline-$r"
    INLINE+=("$C_TPS")
    LINES+=("$(printf '           Comity inline    %6.0f (p50 %.2f ms, p99 %.2f ms, receipt p99 %s ms, %s errors)' \
        "$C_TPS" "$C_P50" "$C_P99" "${C_RP99:-?}" "${C_ERR:-?}")")
    # ...and, as clients on their own machines would, with signing done before the run.
    comity_bench "comity-presigned-$r" --presign
    PRESIGNED+=("$C_TPS")
    LINES+=("$(printf '           Comity presigned %6.0f (p50 %.2f ms, p99 %.2f ms, receipt p99 %s ms, %s errors)' \
        "$C_TPS" "$C_P50" "$C_P99" "${C_RP99:-?}" "${C_ERR:-?}")")
done
stop_comity
for p in "${ETCD_PIDS[@]}"; do kill "$p"; done
for p in "${ETCD_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
ETCD_PIDS=()

# ---------------------------------------------------------------- Report
E_M="$(median "${ETCD[@]}")" I_M="$(median "${INLINE[@]}")" C_M="$(median "${PRESIGNED[@]}")"
echo
echo "Three-node clusters, $CLIENTS concurrent clients, $ROUNDS rounds of $SECS s each, 256-byte values, durable on a majority, on $(nproc) cores (writes/s)"
printf '%s\n' "${LINES[@]}"
printf '  %-50s %8.0f writes/s\n' \
    "median etcd (gRPC put)" "$E_M" \
    "median Comity (signed kv.put, signing inline)" "$I_M" \
    "median Comity (signed kv.put, presigned)" "$C_M"
awk -v i="$I_M" -v c="$C_M" -v e="$E_M" 'BEGIN { if (e > 0) printf "  Comity / etcd (medians) = %.2f (signing inline), %.2f (presigned)\n", i / e, c / e }'

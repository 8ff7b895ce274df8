#!/usr/bin/env bash
# Notary at scale: registers DOCS documents through the API (signed
# notary.register transactions from 64 clients, `comity bench --workload
# notary-register`) on a one-node network, then measures lookups by digest
# and by party (median and p99 over SAMPLES requests each, with curl over
# HTTPS), the node's resident memory (sampled during the run and after),
# restarts the node (time until healthy with a final checkpoint again),
# and checks the whole ledger with `comity ledger verify` (full replay).
#
# Usage: bench/notary-scale.sh [DOCS] [SAMPLES]      (defaults 1000000, 200)
# Env:   COMITY_BIN (default target/release/comity, built if missing), KEEP=1
set -euo pipefail

DOCS="${1:-1000000}"
SAMPLES="${2:-200}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMITY="${COMITY_BIN:-$ROOT/target/release/comity}"
WORK="$(mktemp -d -t comity-notary-scale.XXXXXX)"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

cleanup() {
    local rc=$?
    set +e
    [[ -n "${SAMPLER:-}" ]] && kill "$SAMPLER" 2>/dev/null
    stop_comity
    if [[ "${KEEP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

DATA="$WORK/comity-data"
start_comity "$DATA" 1
NODE_PID="$(pgrep -f "node0/node.toml" | head -n1 || true)"
[[ -n "$NODE_PID" ]] || NODE_PID="$COMITY_PID"  # one node runs inside `up`
URL="$(sed -n 's/.*"url": *"\([^"]*\)".*/\1/p' "$DATA/client.json" | head -n1)"
CURL=(curl -sf --cacert "$DATA/ca.pem" --cert "$DATA/keys/member0.cert.pem" --key "$DATA/keys/member0.key.pem")

# Resident memory of the node, every 5 s, into rss.txt (KiB).
( while kill -0 "$NODE_PID" 2>/dev/null; do
      ps -o rss= -p "$NODE_PID" >>"$WORK/rss.txt" || true
      sleep 5
  done ) &
SAMPLER=$!

registered=0
round=0
t0=$(date +%s)
while (( registered < DOCS )); do
    round=$((round + 1))
    "$COMITY" --data "$DATA" bench --workload notary-register --clients 64 \
        --duration-secs "${ROUND_SECS:-60}" --receipt-sample 20 --json >"$WORK/round$round.json" 2>"$WORK/round$round.log" ||
        { cat "$WORK/round$round.log" >&2; exit 1; }
    n="$(json_num "$WORK/round$round.json" committed)"
    tps="$(json_num "$WORK/round$round.json" tps)"
    registered=$((registered + n))
    log "round $round: $n registered ($tps/s); $registered in all; node RSS $(tail -n1 "$WORK/rss.txt") KiB"
done
elapsed=$(( $(date +%s) - t0 ))

# A party (one of the bench's identities: each is party to many documents), and digests to look up.
PARTY="$("${CURL[@]}" "$URL/v1/gov/users" | tr ',{' '\n\n' | sed -n 's/.*"id": *"\([0-9a-f]\{64\}\)".*/\1/p' | tail -n1)"
"${CURL[@]}" "$URL/v1/notary/documents?party=$PARTY&limit=$SAMPLES" >"$WORK/listing.json"
grep -o '"digest": *"[0-9a-f]\{64\}"' "$WORK/listing.json" | sed 's/.*"\([0-9a-f]\{64\}\)"/\1/' | head -n "$SAMPLES" >"$WORK/digests.txt"
[[ -s "$WORK/digests.txt" ]] || { cat "$WORK/listing.json" >&2; echo "no documents listed for party $PARTY" >&2; exit 1; }

stats() { # stats FILE: median and p99 of the seconds in FILE, in ms
    sort -n "$1" | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; p=a[int(NR*0.99) > 0 ? int(NR*0.99) : 1]; printf "median %.2f ms, p99 %.2f ms (%d requests)", m*1000, p*1000, NR}'
}
: >"$WORK/by-digest.txt"
while read -r d; do
    "${CURL[@]}" -o /dev/null -w '%{time_total}\n' "$URL/v1/notary/digests/$d" >>"$WORK/by-digest.txt"
done <"$WORK/digests.txt"
: >"$WORK/by-party.txt"
for _ in $(seq 1 "$SAMPLES"); do
    "${CURL[@]}" -o /dev/null -w '%{time_total}\n' "$URL/v1/notary/documents?party=$PARTY&limit=20" >>"$WORK/by-party.txt"
done
RSS_MAX="$(sort -n "$WORK/rss.txt" | tail -n1)"
RSS_END="$(ps -o rss= -p "$NODE_PID" | tr -d ' ')"
LEN="$("${CURL[@]}" "$URL/v1/ledger/size" | sed -n 's/.*"size": *\([0-9]*\).*/\1/p')"

# Restart: the time from starting the stopped network until it is healthy
# and a checkpoint is final again, and a lookup still answers afterwards.
stop_comity
restart_t0=$(date +%s.%N)
start_comity "$DATA" 1
restart_s=$(awk -v a="$restart_t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
"${CURL[@]}" -o /dev/null "$URL/v1/notary/digests/$(head -n1 "$WORK/digests.txt")" ||
    { echo "lookup after restart failed" >&2; exit 1; }
stop_comity

log "comity ledger verify (full replay of $LEN entries)"
tv0=$(date +%s)
"$COMITY" --data "$DATA" ledger verify --dir "$DATA/node0/data/ledger/ledger" >"$WORK/verify.txt" 2>&1 ||
    { cat "$WORK/verify.txt" >&2; echo "ledger verify failed" >&2; exit 1; }
tv=$(( $(date +%s) - tv0 ))

echo
echo "Notary at scale: $registered documents registered through the API in $elapsed s ($LEN ledger entries), on $(nproc) cores"
echo "  lookup by digest:  $(stats "$WORK/by-digest.txt")"
echo "  listing by party:  $(stats "$WORK/by-party.txt")"
echo "  node RSS:          max $((RSS_MAX / 1024)) MiB during the run, $((RSS_END / 1024)) MiB at the end"
echo "  restart:           healthy with a final checkpoint $restart_s s after start"
echo "  ledger verify:     OK in $tv s ($(grep -m1 -i 'entries' "$WORK/verify.txt" || true))"

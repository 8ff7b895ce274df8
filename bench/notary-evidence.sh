#!/usr/bin/env bash
# Offline verification time of a large evidence bundle: on a one-node
# network, registers a document with two parties, has both sign it, passes
# custody back and forth until it has EVENTS events, exports its evidence
# bundle, then times `comity doc verify-evidence` (no network access) RUNS
# times and prints the median and the slowest, process start included.
#
# Usage: bench/notary-evidence.sh [EVENTS] [RUNS]     (defaults 100, 20)
# Env:   COMITY_BIN (default target/release/comity, built if missing), KEEP=1
set -euo pipefail

EVENTS="${1:-100}"
RUNS="${2:-20}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMITY="${COMITY_BIN:-$ROOT/target/release/comity}"
WORK="$(mktemp -d -t comity-evidence.XXXXXX)"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

cleanup() {
    local rc=$?
    set +e
    stop_comity
    if [[ "${KEEP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

DATA="$WORK/comity-data"
start_comity "$DATA" 1
C=("$COMITY" --data "$DATA")
K="$DATA/keys"
as() { # as NAME: flags to act as identity NAME
    echo --key "$K/$1.key.pem" --cert "$K/$1.cert.pem"
}
head -c 4096 /dev/urandom >"$WORK/contract.pdf"
out="$("${C[@]}" doc register "$WORK/contract.pdf" --title "Supply contract" \
    --party user0=buyer --party member0=seller --retention 0s 2>&1)"
DOC="$(sed -n 's/^document \([0-9a-f]\{64\}\)$/\1/p' <<<"$out" | head -n1)"
[[ -n "$DOC" ]] || { echo "$out" >&2; exit 1; }
# shellcheck disable=SC2046
"${C[@]}" doc sign "$DOC" $(as user0) >/dev/null
# shellcheck disable=SC2046
"${C[@]}" doc sign "$DOC" $(as member0) >/dev/null
events=3
holder=user0
other=member0
log "building a document with $EVENTS events (custody back and forth)"
while (( events + 2 <= EVENTS )); do
    # shellcheck disable=SC2046
    "${C[@]}" doc custody offer "$DOC" --to "$other" $(as "$holder") >/dev/null
    # shellcheck disable=SC2046
    "${C[@]}" doc custody accept "$DOC" $(as "$other") >/dev/null
    events=$((events + 2))
    t="$holder"; holder="$other"; other="$t"
done
if (( events < EVENTS )); then
    # shellcheck disable=SC2046
    "${C[@]}" doc custody offer "$DOC" --to "$other" $(as "$holder") >/dev/null
    events=$((events + 1))
fi
sleep 1  # let a checkpoint cover the last event
"${C[@]}" doc evidence "$DOC" -o "$WORK/bundle" >/dev/null
"${C[@]}" doc verify-evidence "$WORK/bundle" --file "$WORK/contract.pdf" >"$WORK/story.txt"
: >"$WORK/times.txt"
for _ in $(seq 1 "$RUNS"); do
    s=$(date +%s%N)
    "${C[@]}" doc verify-evidence "$WORK/bundle" --file "$WORK/contract.pdf" >/dev/null
    echo $(( ($(date +%s%N) - s) / 1000 )) >>"$WORK/times.txt"
done
echo
echo "Evidence bundle of a document with $events events ($(wc -c <"$WORK/bundle") bytes), verified offline $RUNS times:"
sort -n "$WORK/times.txt" | awk '{a[NR]=$1} END {printf "  median %.1f ms, slowest %.1f ms (whole process: start, read, verify, print)\n", a[int((NR+1)/2)]/1000, a[NR]/1000}'
echo "  last lines of the story:"
tail -n 3 "$WORK/story.txt" | sed 's/^/    /'

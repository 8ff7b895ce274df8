# Shared by the comparison scripts: logging, free ports, reading JSON
# numbers, and a local Comity network started for the run. Source it after
# setting ROOT, WORK and COMITY.

log() { printf '[compare] %s\n' "$*" >&2; }

# The work dir holds the databases measured: on tmpfs fsync does nothing,
# and "durable" would measure memory.
if [[ "$(stat -f -c %T "$WORK")" == tmpfs ]]; then
    echo "$WORK is on tmpfs, where fsync does nothing: set BENCH_TMP to a directory on disk" >&2
    rmdir "$WORK"
    exit 1
fi

free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "no free port found" >&2
    return 1
}

json_num() { # json_num FILE KEY: first numeric value of "KEY" in FILE
    sed -n "s/^ *\"$2\": *\([-0-9.eE+]*\),\{0,1\}\$/\1/p" "$1" | head -n1
}

health() { # health DATA_DIR: the network's /v1/health JSON; fails if none answers
    local url ca
    [[ -f "$1/client.json" ]] || return 1
    url="$(sed -n 's/.*"url": *"\([^"]*\)".*/\1/p' "$1/client.json" | head -n1)"
    ca="$(sed -n 's/.*"ca": *"\([^"]*\)".*/\1/p' "$1/client.json" | head -n1)"
    [[ -n "$url" ]] || return 1
    [[ -f "$ca" ]] || ca="$1/ca.pem"
    curl -sf --max-time 2 --cacert "$ca" "$url/v1/health" 2>/dev/null
}

healthy() { health "$1" >/dev/null; } # healthy DATA_DIR

node_count() { health "$1" | grep -o '"voter"' | wc -l; } # node_count DATA_DIR: nodes in its Raft group

COMITY_PID=""

# start_comity DATA NODES: starts `comity up` (NODES nodes) in DATA; waits until healthy.
start_comity() {
    local data="$1" nodes="$2" port
    if [[ ! -x "$COMITY" ]]; then
        log "building $COMITY (cargo build --release -p comity-cli)"
        (cd "$ROOT" && cargo build --release -p comity-cli)
    fi
    port="$(free_port)"
    log "starting a local network: $COMITY --data $data up --nodes $nodes --port $port"
    "$COMITY" --data "$data" up --nodes "$nodes" --port "$port" >"$WORK/comity-up.log" 2>&1 &
    COMITY_PID=$!
    for _ in $(seq 1 120); do
        healthy "$data" && grep -q "Comity is running" "$WORK/comity-up.log" && return 0
        kill -0 "$COMITY_PID" 2>/dev/null || { cat "$WORK/comity-up.log" >&2; echo "comity up exited" >&2; exit 1; }
        sleep 0.5
    done
    cat "$WORK/comity-up.log" >&2
    echo "the network did not become ready in 60 s" >&2
    exit 1
}

stop_comity() {
    [[ -n "$COMITY_PID" ]] || return 0
    kill "$COMITY_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$COMITY_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$COMITY_PID" 2>/dev/null || true
    wait "$COMITY_PID" 2>/dev/null || true
    COMITY_PID=""
}

median() { # median N...: the median of the numbers given
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) exit 1
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# comity_bench NAME [FLAGS]: one timed `comity bench` run against $DATA with
# $CLIENTS clients for $SECS s, its JSON kept as $WORK/NAME.json; sets C_TPS,
# C_P50, C_P99, C_ERR and C_RP99 (receipt p99).
comity_bench() {
    local name="$1"
    shift
    log "comity bench ($name): $CLIENTS clients, $SECS s"
    "$COMITY" --data "$DATA" bench --json --clients "$CLIENTS" --duration-secs "$SECS" "$@" \
        >"$WORK/$name.json" 2>"$WORK/$name.log" ||
        { cat "$WORK/$name.log" "$WORK/$name.json" >&2; exit 1; }
    C_TPS="$(json_num "$WORK/$name.json" tps)"
    C_P50="$(json_num "$WORK/$name.json" p50)"
    C_P99="$(json_num "$WORK/$name.json" p99)"
    C_ERR="$(json_num "$WORK/$name.json" errors)"
    C_RP99="$(sed -n '/"receipt_latency_ms"/,/}/s/^ *"p99": *\([0-9.]*\).*/\1/p' "$WORK/$name.json" | head -n1)"
    [[ -n "$C_TPS" ]] || { cat "$WORK/$name.json" >&2; echo "could not read comity's tps" >&2; exit 1; }
}

#!/usr/bin/env bash
# End-to-end throughput benchmark: `fusillade run` on an N-line file against
# `fusillade mock-upstream` at zero latency, next to wrk against the same mock at the same
# concurrency (the HTTP ceiling). Prints a Markdown table row for BENCHMARKS.md.
#
#   bench/run.sh [LINES] [TOTAL_CONCURRENCY]      (defaults: 100000 256)
#   DATABASE=postgres://... bench/run.sh           (PostgreSQL instead of SQLite)
#   FUSILLADE_BIN=/path/to/fusillade bench/run.sh  (that binary instead of a fresh release build)
#
# The CPU column is CPU milliseconds per 1,000 requests of the fusillade process (and, on
# PostgreSQL, of the database's backends, from bench/pgcpu.py): it holds steady when other work
# shares the cores, where requests/s does not.
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=${1:-100000}
CONC=${2:-256}
MODELS=4
PORT=${PORT:-18080}
if [ -z "${FUSILLADE_BIN:-}" ]; then
  cargo build --release -q -p fusillade-cli
fi
# FUSILLADE_BIN=path compares another build (an A/B run) against the same mock and wrk.
BIN=${FUSILLADE_BIN:-$PWD/target/release/fusillade}
WORK=$(mktemp -d)
trap 'kill $MOCK 2>/dev/null || true; rm -rf "$WORK"' EXIT

python3 bench/gen.py "$LINES" "$MODELS" > "$WORK/in.jsonl"
"$BIN" mock-upstream --listen "127.0.0.1:$PORT" 2>/dev/null &
MOCK=$!
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done

WRK=$(wrk -t1 -c"$CONC" -d10s -s bench/post.lua "http://127.0.0.1:$PORT/v1/chat/completions" \
  | awk '/Requests\/sec/ {print $2}')
curl -sf -X POST "http://127.0.0.1:$PORT/stats/reset" >/dev/null

DB_ARGS=()
XACT_BEFORE=0
if [ -n "${DATABASE:-}" ]; then
  DB_ARGS=(--database "$DATABASE")
  # Commits as PostgreSQL counts them, for the whole database (ingest included).
  xact() { psql "$DATABASE" -Atc "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"; }
  XACT_BEFORE=$(xact)
fi
if [ -n "${DATABASE:-}" ]; then
  python3 bench/pgcpu.py "$DATABASE" > "$WORK/pgcpu" &
  PGCPU=$!
fi
/usr/bin/time -v "$BIN" run "$WORK/in.jsonl" --upstream "http://127.0.0.1:$PORT" \
  --concurrency $((CONC / MODELS)) "${DB_ARGS[@]}" 2> "$WORK/run.log" >/dev/null
RATE=$(grep -oE '[0-9]+ requests/s\)' "$WORK/run.log" | grep -oE '^[0-9]+')
WALL=$(grep 'Elapsed (wall clock)' "$WORK/run.log" | awk '{print $NF}')
RUN_CPU_MS=$(awk -F': ' '/User time|System time/ {s += $2} END {printf "%d", s * 1000}' "$WORK/run.log")
CPU="$(( RUN_CPU_MS * 1000 / LINES ))"
if [ -n "${DATABASE:-}" ]; then
  kill -TERM $PGCPU && wait $PGCPU
  CPU="$CPU + pg $(( $(cat "$WORK/pgcpu") * 1000 / LINES ))"
fi
RSS_MB=$(( $(grep 'Maximum resident' "$WORK/run.log" | awk '{print $NF}') / 1024 ))
COMMITS=$(grep -oE '[0-9.]+ commits per request' "$WORK/run.log" | awk '{print $1}')
if [ -n "${DATABASE:-}" ]; then
  sleep 1 # pg_stat_database is updated asynchronously
  COMMITS="$COMMITS (pg: $(python3 -c "print(f'{($(xact) - $XACT_BEFORE) / $LINES:.4f}')"))"
fi
SERVED=$(curl -sf "http://127.0.0.1:$PORT/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests_total"])')
RATIO=$(python3 -c "print(f'{$RATE/$WRK:.2f}')")
BACKEND=sqlite; [ -n "${DATABASE:-}" ] && BACKEND=postgres
echo "| $BACKEND | $LINES | $CONC | $RATE | $WRK | $RATIO | $COMMITS | $CPU | $RSS_MB | $WALL | $SERVED |"

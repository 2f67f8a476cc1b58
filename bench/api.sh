#!/usr/bin/env bash
# Batch API benchmark: `fusillade serve` (SQLite, in-process mock upstream) measured over HTTP:
#   - upload of a 50,000-line file (time until the File object comes back),
#   - ingest rate of a large upload (LARGE lines, limits raised in a config file),
#   - output download rate of a LARGE-request batch once it completed,
#   - the server's resident memory (sampled every 100 ms) before and during each phase.
#
#   bench/api.sh [LARGE]                      (default 1000000; SQLite)
#   DATABASE=postgres://... bench/api.sh      (PostgreSQL; the database should be empty)
#   DOWNLOADS=5 bench/api.sh                  (the download repeated, one figure each)
#   PERF=/tmp/dl.perf bench/api.sh            (perf profile of the server over the downloads)
#   FUSILLADE_BIN=/path/to/fusillade bench/api.sh   (that binary, no build)
set -euo pipefail
cd "$(dirname "$0")/.."
LARGE=${1:-1000000}
PORT=${PORT:-18400}
TARGET=${CARGO_TARGET_DIR:-target}
# FUSILLADE_BIN=path measures that binary (an A/B run) instead of a fresh release build.
if [ -z "${FUSILLADE_BIN:-}" ]; then
  cargo build --release -q -p fusillade-cli
fi
BIN=${FUSILLADE_BIN:-$TARGET/release/fusillade}
WORK=$(mktemp -d)
SERVER=
SAMPLER=
trap 'kill $SAMPLER $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT

python3 bench/gen.py 50000 4 > "$WORK/small.jsonl"
python3 bench/gen.py "$LARGE" 4 > "$WORK/large.jsonl"
cat > "$WORK/config.toml" <<TOML
concurrency = 256
[server]
max_upload_bytes = 4294967296
max_requests_per_file = 10000000
TOML

API=http://127.0.0.1:$PORT
# Starts the server and an RSS sampler writing "<phase> <kB>" lines, the phase being whatever
# $WORK/phase holds at the time.
start_server() {
  "$BIN" serve --listen "127.0.0.1:$PORT" --database "${DATABASE:-$WORK/api.db}" --upstream mock \
    --config "$WORK/config.toml" 2>> "$WORK/serve.log" &
  SERVER=$!
  for _ in $(seq 1 100); do curl -sf "$API/readyz" >/dev/null && break; sleep 0.1; done
  ( while kill -0 $SERVER 2>/dev/null; do
      echo "$(cat "$WORK/phase") $(awk '/VmRSS/ {print $2}' /proc/$SERVER/status)"
      sleep 0.1
    done ) >> "$WORK/rss" &
  SAMPLER=$!
  sleep 0.5
}
echo idle > "$WORK/phase"
start_server
peak() { awk -v p="$1" '$1 == p && $2 > m {m = $2} END {printf "%.0f", m / 1024}' "$WORK/rss"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

upload() { # file -> prints "seconds file_id"
  curl -sf -o "$WORK/file.json" -w '%{time_total}' -F purpose=batch -F "file=@$1" "$API/v1/files"
  echo " $(json "['id']" < "$WORK/file.json")"
}

echo upload-small > "$WORK/phase"
read -r SMALL_S _ < <(upload "$WORK/small.jsonl")
echo upload-large > "$WORK/phase"
read -r LARGE_S LARGE_ID < <(upload "$WORK/large.jsonl")

echo run > "$WORK/phase"
BATCH=$(curl -sf "$API/v1/batches" -H 'content-type: application/json' \
  -d "{\"input_file_id\":\"$LARGE_ID\",\"endpoint\":\"/v1/chat/completions\",\"completion_window\":\"24h\"}" \
  | json "['id']")
RUN_START=$(date +%s.%N)
while :; do
  STATUS=$(curl -sf "$API/v1/batches/$BATCH" | json "['status']")
  [ "$STATUS" = completed ] && break
  sleep 0.5
done
RUN_S=$(python3 -c "import time; print(round(time.time() - $RUN_START, 1))")
OUTPUT=$(curl -sf "$API/v1/batches/$BATCH" | json "['output_file_id']")

# A fresh process for the download, so its memory is not the run's left-overs.
kill -TERM $SERVER; wait $SERVER || true
echo idle2 > "$WORK/phase"
start_server
echo download > "$WORK/phase"
# PERF=file records the server's CPU profile (perf, cpu-clock) over the downloads.
if [ -n "${PERF:-}" ]; then
  perf record -e cpu-clock -F 999 -g -o "$PERF" -p $SERVER 2>/dev/null &
  PERF_PID=$!
  sleep 0.5
fi
DOWNLOADS_S=()
for _ in $(seq 1 "${DOWNLOADS:-1}"); do
  DOWNLOADS_S+=("$(curl -sf -o "$WORK/output.jsonl" -w '%{time_total}' "$API/v1/files/$OUTPUT/content")")
done
if [ -n "${PERF:-}" ]; then kill -INT $PERF_PID; wait $PERF_PID || true; fi
echo done > "$WORK/phase"
sleep 0.3
LINES_OUT=$(wc -l < "$WORK/output.jsonl")

rate() { python3 -c "print(f'{$1 / $2:,.0f}')"; }
echo "upload 50,000 lines:        ${SMALL_S} s (RSS peak $(peak upload-small) MB; idle $(peak idle) MB)"
echo "ingest $LARGE lines:  ${LARGE_S} s = $(rate "$LARGE" "$LARGE_S") lines/s (RSS peak $(peak upload-large) MB)"
echo "run $LARGE requests:  ${RUN_S} s (RSS peak $(peak run) MB)"
for DOWNLOAD_S in "${DOWNLOADS_S[@]}"; do
  echo "download $LINES_OUT lines: ${DOWNLOAD_S} s = $(rate "$LINES_OUT" "$DOWNLOAD_S") lines/s"
done
echo "download RSS peak $(peak download) MB; idle after restart $(peak idle2) MB"

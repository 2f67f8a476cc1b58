#!/usr/bin/env bash
# Fuzzes with cargo-fuzz (libFuzzer) for a bounded time. Needs a nightly toolchain; installs
# cargo-fuzz from crates.io if missing. Targets:
#   parser  the JSONL input parser, seeded with the bad-input corpus. Without nightly, the stable
#           smoke test covers the same ground: cargo test -p fusillade --test fuzz_smoke
#   upload  the server's multipart upload (POST /v1/files through the router into SQLite, no
#           network), seeded with a few multipart bodies written here.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET]      (default 60 parser)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
target="${2:-parser}"
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: cargo-fuzz needs a nightly toolchain (rustup toolchain install nightly)." >&2
  echo "fuzz: the stable fallback: cargo test -p fusillade --test fuzz_smoke" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

# Multipart seeds for the upload target, all with the boundary X the target sends.
seed_upload() {
  local corpus=$1 line='{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}'
  local purpose=$'--X\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
  local file=$'--X\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n\r\n'
  printf '%s%s%s\n\r\n--X--\r\n' "$purpose" "$file" "$line" >"$corpus/valid"
  printf '%s%s%s\n%s\n\r\n--X--\r\n' "$purpose" "$file" "$line" "${line/\"a\"/\"b\"}" >"$corpus/two_lines"
  printf '%s%s\r\n--X--\r\n' "$file" "$line" >"$corpus/no_purpose"
  local expiry=$'--X\r\nContent-Disposition: form-data; name="expires_after[anchor]"\r\n\r\ncreated_at\r\n--X\r\nContent-Disposition: form-data; name="expires_after[seconds]"\r\n\r\n3600\r\n'
  printf '%s%s%s%s\n\r\n--X--\r\n' "$purpose" "$expiry" "$file" "$line" >"$corpus/expiry"
}

corpus="fuzz/corpus/$target"
mkdir -p "$corpus"
case "$target" in
  parser) cp crates/fusillade/tests/bad_input/*.jsonl "$corpus"/ ;;
  upload) seed_upload "$corpus" ;;
  *) echo "fuzz: unknown target $target (parser or upload)" >&2; exit 2 ;;
esac
echo "fuzz: running the $target target for ${seconds}s"
cargo +nightly fuzz run "$target" "$corpus" -- -max_total_time="$seconds" -max_len=8192

#!/usr/bin/env bash
# Fuzzes the JSONL input parser with cargo-fuzz (libFuzzer) for a bounded time, seeded with the
# bad-input corpus. Needs a nightly toolchain; installs cargo-fuzz from crates.io if missing.
# Without nightly, the stable smoke test covers the same ground in the normal test suite:
#   cargo test -p fusillade --test fuzz_smoke
#
# Usage: scripts/fuzz.sh [SECONDS]      (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: cargo-fuzz needs a nightly toolchain (rustup toolchain install nightly)." >&2
  echo "fuzz: the stable fallback: cargo test -p fusillade --test fuzz_smoke" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

corpus=fuzz/corpus/parser
mkdir -p "$corpus"
cp crates/fusillade/tests/bad_input/*.jsonl "$corpus"/
echo "fuzz: running the parser target for ${seconds}s"
cargo +nightly fuzz run parser "$corpus" -- -max_total_time="$seconds" -max_len=8192

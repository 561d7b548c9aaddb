#!/usr/bin/env bash
# Build the release binary when it is missing or stale, then run it with the given arguments.
#   ./run.sh quickstart      the main job on the embedded default, then serve
#   ./run.sh test            the whole test suite
#   ./run.sh bench           every performance figure, references beside them, as one JSON document
#   ./run.sh <command> ...   any understudy command (./run.sh --help)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/understudy/target}"

if [[ "${1:-}" == "test" ]]; then
  shift
  # Every test runs here: one that needs Chromium, llama.cpp, a Python package or SmolLM2 fails
  # when it is missing instead of skipping (a plain `cargo test` skips and names it).
  export UNDERSTUDY_REQUIRE_EXTERNAL=1
  # One optimised profile for the binary and the tests: nothing is built twice.
  exec cargo test --release --locked "$@"
fi

# cargo decides staleness itself; a no-op build takes well under a second.
cargo build --release --locked --quiet --bin understudy
if [[ "${1:-}" == "bench" && $# -eq 1 ]]; then
  exec python3 bench/all.py --binary "$CARGO_TARGET_DIR/release/understudy" --markdown
fi
exec "$CARGO_TARGET_DIR/release/understudy" "$@"

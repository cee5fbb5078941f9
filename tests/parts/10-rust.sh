#!/usr/bin/env bash
# Rust: formatting, clippy with warnings as errors, unit and integration tests
# (real sockpassd processes, real client processes, real sockets).
set -euo pipefail
. "$(dirname "$0")/../lib/env.sh"
cd "$ROOT"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --quiet
cargo test --workspace --quiet 2>&1 | grep -v '^$'
test "${PIPESTATUS[0]}" -eq 0

#!/usr/bin/env bash
# Rust: formatting, clippy with warnings as errors, unit and integration tests
# (real sockpassd processes, real client processes, real sockets).
set -euo pipefail
. "$(dirname "$0")/../lib/env.sh"
cd "$ROOT"
cargo fmt --all --check
# One-way rule: the client crate (linked by C and Python) never depends on the
# broker crate; nor do the FFI crate and the Python extension.
for p in sockpass sockpass-ffi; do
  if cargo tree -p "$p" -e normal --prefix none | grep -q '^sockpass-broker '; then
    echo "$p depends on sockpass-broker: the client side must not reach broker code"; exit 1
  fi
done
if cargo tree --manifest-path python/Cargo.toml -e normal --prefix none | grep -q '^sockpass-broker '; then
  echo "python/ depends on sockpass-broker"; exit 1
fi
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --quiet
cargo test --workspace --quiet 2>&1 | grep -v '^$'
test "${PIPESTATUS[0]}" -eq 0

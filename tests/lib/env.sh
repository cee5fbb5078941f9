# Sourced by tests/run and by each part: paths and tools every part uses.
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
export ROOT
export PATH="$ROOT/.venv/bin:$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export CARGO_TERM_COLOR=never
# Tests that need root skip with a message when not root.
is_root() { [ "$(id -u)" = 0 ]; }

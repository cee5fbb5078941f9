#!/usr/bin/env bash
# Python: the extension crate's fmt and clippy, `pip install ./python` into
# .venv (as the README says), stubtest and mypy on the stubs, and the pytest
# suite against real sockpassd brokers with warnings as errors.
set -euo pipefail
. "$(dirname "$0")/../lib/env.sh"
cd "$ROOT"

manifest=python/Cargo.toml
# python/ is outside the Rust workspace, so its version is checked here.
project=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
ext=$(sed -n '/^\[package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$manifest")
[ -n "$project" ] && [ "$project" = "$ext" ] || { echo "python/Cargo.toml version $ext != project version $project" >&2; exit 1; }
cargo fmt --check --manifest-path "$manifest"
# Own target dir: python/ has its own Cargo.lock, so it must not churn the workspace's.
export CARGO_TARGET_DIR_PY="$CARGO_TARGET_DIR/python"
CARGO_TARGET_DIR="$CARGO_TARGET_DIR_PY" cargo clippy --quiet --manifest-path "$manifest" --all-targets -- -D warnings

cargo build --quiet -p sockpassd
export SOCKPASSD_BIN="$CARGO_TARGET_DIR/debug/sockpassd"

# Maturin comes from .venv (tests/requirements.txt), so no build isolation and
# no download; pip rebuilds and reinstalls a local directory every time.
CARGO_TARGET_DIR="$CARGO_TARGET_DIR_PY" python -m pip install --quiet --disable-pip-version-check \
  --no-build-isolation --no-deps ./python

mypy_cache=$(mktemp -d)
fresh=$(mktemp -d)
trap 'rm -rf "$mypy_cache" "$fresh"' EXIT

# The README's own command as a newcomer runs it: a fresh venv, pip's build
# isolation fetching maturin from PyPI. (Same target dir, so no recompiling.)
python -m venv "$fresh/venv"
CARGO_TARGET_DIR="$CARGO_TARGET_DIR_PY" "$fresh/venv/bin/pip" install --quiet \
  --disable-pip-version-check ./python
(cd "$fresh" && "$fresh/venv/bin/python" -c 'import sockpass; assert sockpass.SHARE_SAMENAME is sockpass.SHARE_SAMEAPP') \
  || { echo "30-python: pip install ./python in a fresh venv gave no working sockpass" >&2; exit 1; }
echo "30-python: pip install ./python works in a fresh venv"

export MYPY_CACHE_DIR="$mypy_cache"
# From a directory without a sockpass/ in it, so the installed package is checked.
(cd tests && python -m mypy.stubtest sockpass)
python -m mypy --strict --no-error-summary tests/python

[ "$(python -c 'import sockpass; print(sockpass.__version__)')" = "$project" ]
python -m pytest -W error -q tests/python

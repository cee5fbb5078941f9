#!/usr/bin/env bash
# Install what the test suite needs, once: Debian packages, a pinned cbindgen,
# and a Python venv at .venv with the pinned tools. Idempotent and quiet when
# everything is already there.
set -euo pipefail
cd "$(dirname "$0")/../.."

APT_PACKAGES=(pkg-config gcc g++ valgrind iproute2 util-linux procps
  s6 libs6-dev skalibs-dev libsystemd-dev systemd python3-venv gnuplot-nox
  unbound gunicorn nginx-light busybox-static)
CBINDGEN_VERSION=0.29.4

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing Debian packages (${missing[*]}); install them as root" >&2
  else
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # The servers installed for the tests (unbound, nginx) must not start as
    # root on their default ports: without a policy-rc.d, hold one while
    # installing so their services are not started.
    policy=/usr/sbin/policy-rc.d held=
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && held=1
    fi
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
      { [ -z "$held" ] || rm -f "$policy"; exit 1; }
    [ -z "$held" ] || rm -f "$policy"
  fi
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is required (the Rust toolchain)" >&2; exit 1
fi
if [ "$(cbindgen --version 2>/dev/null)" != "cbindgen $CBINDGEN_VERSION" ]; then
  echo "setup: installing cbindgen $CBINDGEN_VERSION"
  cargo install --quiet --locked cbindgen --version "$CBINDGEN_VERSION"
fi

req=tests/requirements.txt
stamp=.venv/.requirements-installed
if [ ! -x .venv/bin/python ] || ! cmp -s "$req" "$stamp"; then
  echo "setup: preparing .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi

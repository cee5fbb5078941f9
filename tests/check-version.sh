#!/usr/bin/env bash
# The project version is defined once (Cargo.toml [workspace.package]);
# meson.build and include/sockpass.h must agree with it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
meson=$(sed -n "s/^  version: '\(.*\)',/\1/p" meson.build)
h() { sed -n "s/^#define SOCKPASS_VERSION_$1 \([0-9]*\)$/\1/p" include/sockpass.h; }
header="$(h MAJOR).$(h MINOR).$(h PATCH)"
echo "version: Cargo.toml $cargo, meson.build $meson, sockpass.h $header"
[ -n "$cargo" ] && [ "$cargo" = "$meson" ] && [ "$cargo" = "$header" ]

#!/usr/bin/env bash
# The C face: the committed header is what cbindgen makes; versions agree;
# the exported symbols are exactly the committed list; meson builds the
# library, the examples and the error-code test and runs them against a
# real sockpassd; an installed prefix serves pkg-config; a meson project
# takes sockpass as a subproject; all of it again under ASan+UBSan and
# valgrind with zero errors and zero leaks.
set -euo pipefail
. "$(dirname "$0")/../lib/env.sh"
cd "$ROOT"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
opts=(-Dcargo_target_dir="$CARGO_TARGET_DIR")
step() { echo "--- c: $*"; }

step "header is what cbindgen generates"
cbindgen --quiet --config rust/sockpass-ffi/cbindgen.toml --crate sockpass-ffi \
  --output "$work/sockpass.h" rust/sockpass-ffi
diff -u include/sockpass.h "$work/sockpass.h" || { echo "include/sockpass.h is stale: regenerate it (see rust/sockpass-ffi/cbindgen.toml)"; exit 1; }

step "versions agree"
bash tests/check-version.sh

step "header compiles as C99 and C++"
echo '#include <sockpass.h>' > "$work/h.c"
gcc -std=c99 -Wall -Wextra -Wpedantic -Werror -Iinclude -fsyntax-only "$work/h.c"
g++ -std=c++11 -Wall -Wextra -Wpedantic -Werror -Iinclude -fsyntax-only -x c++ "$work/h.c"

step "meson build and tests"
meson setup --prefix "$work/prefix" "$work/build" "${opts[@]}" >/dev/null
meson compile -C "$work/build" >/dev/null
meson test -C "$work/build" --print-errorlogs

step "exported symbols are exactly include/sockpass.symbols"
nm -D --defined-only "$work/build/libsockpass.so" | awk '$3 ~ /^sockpass_/ {print $3}' | sort > "$work/symbols"
diff -u include/sockpass.symbols "$work/symbols" || { echo "the exported symbols changed: a removed or renamed symbol breaks the ABI"; exit 1; }
extra=$(nm -D --defined-only "$work/build/libsockpass.so" | awk '$3 !~ /^sockpass_/ && $3 != "SOCKPASS_0" {print $3}')
[ -z "$extra" ] || { echo "symbols outside sockpass_*: $extra"; exit 1; }
readelf -d "$work/build/libsockpass.so" | grep -q 'SONAME.*\[libsockpass.so.0\]'

step "libsockpass.so holds no broker code"
# The broker lives in the sockpass-broker crate, which the C library must not
# link: its mangled names carry the crate name, and the old in-core modules
# (sockpass::broker, handoff, policy, fdstore, unixsock) must not come back.
broker=$(nm "$work/build/libsockpass.so" | grep -E 'sockpass_broker|8sockpass(6broker|7handoff|6policy|7fdstore|8unixsock)' | head -5 || true)
[ -z "$broker" ] || { echo "libsockpass.so holds broker symbols:"; echo "$broker"; exit 1; }

step "install to a prefix, build an example with pkg-config"
meson install -C "$work/build" --quiet
pc=$(dirname "$(find "$work/prefix" -name sockpass.pc)")
export PKG_CONFIG_PATH="$pc"
libdir=$(pkg-config --variable=libdir sockpass)
# shellcheck disable=SC2046
gcc -std=c99 -Wall -Wextra -Wpedantic -Werror c-examples/udp-echo.c -o "$work/udp-echo-pc" $(pkg-config --cflags --libs sockpass)
LD_LIBRARY_PATH="$libdir" python3 tests/c/run-example.py "$work/prefix/bin/sockpassd" udp-echo "$work/udp-echo-pc"
# shellcheck disable=SC2046
gcc -std=c99 -Wall -Wextra -Wpedantic -Werror c-examples/udp-echo.c -o "$work/udp-echo-static" $(pkg-config --static --cflags sockpass) "$libdir/libsockpass.a" $(pkg-config --static --libs-only-l sockpass | sed 's/-lsockpass//')
python3 tests/c/run-example.py "$work/prefix/bin/sockpassd" udp-echo "$work/udp-echo-static"
unset PKG_CONFIG_PATH

step "a meson project with sockpass as a subproject"
ln -sfn ../../.. tests/meson-consumer/subprojects/sockpass
meson setup "$work/consumer" tests/meson-consumer -Dsockpass:cargo_target_dir="$CARGO_TARGET_DIR" >/dev/null
meson compile -C "$work/consumer" >/dev/null
python3 tests/c/run-example.py "$work/build/sockpassd" plain "$work/consumer/consumer"

step "AddressSanitizer + UBSan (leaks included)"
meson setup "$work/asan" "${opts[@]}" -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
meson compile -C "$work/asan" >/dev/null
ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  meson test -C "$work/asan" --print-errorlogs

step "the meson consumer under AddressSanitizer + UBSan"
meson setup "$work/consumer-asan" tests/meson-consumer -Dsockpass:cargo_target_dir="$CARGO_TARGET_DIR" \
  -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
meson compile -C "$work/consumer-asan" >/dev/null
# Check that the sanitizers really are in (an unsanitized build would pass vacuously).
nm "$work/consumer-asan/consumer" > "$work/consumer-asan.nm"
grep -q __asan_init "$work/consumer-asan.nm" || { echo "consumer built without ASan"; exit 1; }
grep -q __ubsan_handle "$work/consumer-asan.nm" || { echo "consumer built without UBSan"; exit 1; }
ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  python3 tests/c/run-example.py "$work/build/sockpassd" plain "$work/consumer-asan/consumer"

step "valgrind (errors and definite/indirect leaks fail)"
vg=(valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect
    --show-leak-kinds=definite,indirect)
python3 tests/c/run-example.py "$work/build/sockpassd" udp-echo "$work/build/c-examples/udp-echo" "${vg[@]}"
python3 tests/c/run-example.py "$work/build/sockpassd" tcp-shared "$work/build/c-examples/tcp-shared" "${vg[@]}"
python3 tests/c/run-example.py "$work/build/sockpassd" plain "$work/build/c-examples/activated-server" "${vg[@]}"
python3 tests/c/run-example.py "$work/build/sockpassd" plain "$work/build/tests/c/bad_input" "${vg[@]}"
python3 tests/c/run-example.py "$work/build/sockpassd" plain "$work/build/tests/c/server_notify" "${vg[@]}"
python3 tests/c/run-example.py "$work/build/sockpassd" plain "$work/build/tests/c/spawn" "${vg[@]}"
python3 tests/c/run-example.py "$work/build/sockpassd" plain "$work/build/tests/c/threads" "${vg[@]}"
python3 tests/c/run-example.py "$work/build/sockpassd" plain "$work/build/tests/c/handover" "${vg[@]}"
python3 tests/c/run-example.py "$work/build/sockpassd" plain "$work/build/tests/c/batch" "${vg[@]}"
python3 tests/c/run-example.py "$work/build/sockpassd" limit2 "$work/build/tests/c/limits" "${vg[@]}"
# valgrind has no pidfd_open: the test then skips only its wait_child checks (run above under ASan).
SOCKPASS_TEST_NO_PIDFD=1 python3 tests/c/run-example.py "$work/build/sockpassd" plain "$work/build/tests/c/readiness" "${vg[@]}"
python3 tests/c/run-example.py "$work/build/sockpassd" plain "$work/consumer/consumer" "${vg[@]}"
echo "c: all passed"

#!/usr/bin/env bash
# The C face: the committed header is what cbindgen makes; versions agree;
# the exported symbols are exactly the committed list; meson builds the
# library, the examples and the error-code test and runs them against a
# real sockpassd; an installed prefix serves pkg-config; a meson project
# takes sockpass as a subproject; all of it again under ASan+UBSan and
# valgrind with zero errors and zero leaks; `meson install` installs exactly
# tests/install-files.txt; the systemd units verify and are hardened; release
# and plain builds (as distributions make) compile.
set -euo pipefail
. "$(dirname "$0")/../lib/env.sh"
cd "$ROOT"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
# Warnings are errors here (not by default, for packagers); the Rust part in
# cargo's debug profile shares the rust part's build (the default is release).
opts=(-Dcargo_target_dir="$CARGO_TARGET_DIR" -Dcargo_profile=debug -Dwerror=true)
sub_opts=(-Dsockpass:cargo_target_dir="$CARGO_TARGET_DIR" -Dsockpass:cargo_profile=debug)
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
LD_LIBRARY_PATH="$libdir" python3 tests/c/run-example.py "$work/prefix/sbin/sockpassd" udp-echo "$work/udp-echo-pc"
# shellcheck disable=SC2046
gcc -std=c99 -Wall -Wextra -Wpedantic -Werror c-examples/udp-echo.c -o "$work/udp-echo-static" $(pkg-config --static --cflags sockpass) "$libdir/libsockpass.a" $(pkg-config --static --libs-only-l sockpass | sed 's/-lsockpass//')
python3 tests/c/run-example.py "$work/prefix/sbin/sockpassd" udp-echo "$work/udp-echo-static"
unset PKG_CONFIG_PATH

step "meson install ships exactly tests/install-files.txt"
DESTDIR="$work/stage" meson install -C "$work/build" --quiet >/dev/null
libdir_rel=${libdir#"$work/prefix/"}
(cd "$work/stage$work/prefix" && find . \( -type f -o -type l \) | sed 's|^\./||' | sed "s|^$libdir_rel/|LIBDIR/|" | LC_ALL=C sort) > "$work/installed"
grep -v '^#' tests/install-files.txt | LC_ALL=C sort > "$work/expected"
if ! "$work/build/sockpass" __generate man "$work/gen-probe" >/dev/null 2>&1; then
  echo "note: this sockpass has no '__generate' command: man pages and completions not expected"
  grep -Ev '^share/(man|bash-completion|zsh|fish)/' "$work/expected" > "$work/expected.nogen"
  mv "$work/expected.nogen" "$work/expected"
fi
diff -u "$work/expected" "$work/installed" || { echo "meson install changed: update tests/install-files.txt if that was meant"; exit 1; }
grep -q "^ExecStart=$work/prefix/sbin/sockpassd " "$work/prefix/lib/systemd/system/sockpassd.service"
grep -q "^ExecReload=$work/prefix/bin/sockpass upgrade " "$work/prefix/lib/systemd/system/sockpassd.service"

step "systemd units: systemd-analyze verify, and security exposure 4.0 or lower"
units=("$work/prefix/lib/systemd/system/sockpassd.service" "$work/prefix/lib/systemd/system/sockpassd.socket")
if command -v systemd-analyze >/dev/null; then
  # The man pages named by Documentation= are checked when installed.
  if [ -e "$work/prefix/share/man/man8/sockpassd.8" ]; then man_check=(); else man_check=(--man=no); fi
  out=$(MANPATH="$work/prefix/share/man" systemd-analyze verify "${man_check[@]}" "${units[@]}" 2>&1) \
    || { echo "$out"; echo "systemd-analyze verify failed"; exit 1; }
  [ -z "$out" ] || { echo "$out"; echo "systemd-analyze verify is not clean"; exit 1; }
  sec=$(systemd-analyze security --offline=yes "${units[0]}" 2>&1) || { echo "$sec"; exit 1; }
  level=$(sed -n 's/.*Overall exposure level for sockpassd.service: \([0-9.]*\).*/\1/p' <<<"$sec")
  echo "exposure level: $level"
  awk -v l="$level" 'BEGIN { exit !(l != "" && l <= 4.0) }' || { echo "$sec"; echo "exposure $level is above 4.0"; exit 1; }
else
  echo "skipped: systemd-analyze is not installed (apt-get install systemd)"
fi

step "a meson project with sockpass as a subproject"
ln -sfn ../../.. tests/meson-consumer/subprojects/sockpass
meson setup "$work/consumer" tests/meson-consumer "${sub_opts[@]}" >/dev/null
meson compile -C "$work/consumer" >/dev/null
python3 tests/c/run-example.py "$work/build/sockpassd" plain "$work/consumer/consumer"

step "release and plain builds (as distributions make them) compile without warnings"
for bt in release plain; do
  meson setup "$work/$bt" --buildtype=$bt "${opts[@]}" >/dev/null
  meson compile -C "$work/$bt" >/dev/null
done

step "AddressSanitizer + UBSan (leaks included)"
meson setup "$work/asan" "${opts[@]}" -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
meson compile -C "$work/asan" >/dev/null
ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  meson test -C "$work/asan" --print-errorlogs

step "the meson consumer under AddressSanitizer + UBSan"
meson setup "$work/consumer-asan" tests/meson-consumer "${sub_opts[@]}" \
  -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
meson compile -C "$work/consumer-asan" >/dev/null
# Check that the sanitizers really are in (an unsanitized build would pass vacuously).
nm "$work/consumer-asan/consumer" > "$work/consumer-asan.nm"
grep -q __asan_init "$work/consumer-asan.nm" || { echo "consumer built without ASan"; exit 1; }
grep -q __ubsan_handle "$work/consumer-asan.nm" || { echo "consumer built without UBSan"; exit 1; }
ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  python3 tests/c/run-example.py "$work/build/sockpassd" plain "$work/consumer-asan/consumer"

step "valgrind (errors and definite/indirect leaks fail)"
# A forked child stays under valgrind and is checked at its own exit (fork's
# children too); tests/c/valgrind.supp says what it suppresses and why.
vg=(valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect
    --show-leak-kinds=definite,indirect --suppressions="$ROOT/tests/c/valgrind.supp")
b=$work/build
runs=("udp-echo $b/c-examples/udp-echo" "tcp-shared $b/c-examples/tcp-shared"
  "plain $b/c-examples/activated-server" "plain $b/tests/c/bad_input" "plain $b/tests/c/server_notify"
  "plain $b/tests/c/spawn" "plain $b/tests/c/threads" "plain $b/tests/c/handover" "plain $b/tests/c/batch" "limit2 $b/tests/c/limits"
  "plain $b/tests/c/readiness" "plain $b/tests/c/supervise" "plain $b/tests/c/fork" "plain $work/consumer/consumer")
# Not catch_bind: valgrind has no seccomp() (ENOSYS), so --catch-bind refuses to start at all.
# valgrind is single-threaded: $(nproc) at a time, each with its own log,
# shown in order. valgrind has no pidfd_open: readiness then skips only its
# wait_child checks, and it keeps the kernel's RLIMIT_NOFILE: fork skips only
# its EMFILE check (both run above, also under ASan).
vg_failed=0
for ((i = 0; i < ${#runs[@]}; i += $(nproc))); do
  pids=()
  for ((k = i; k < i + $(nproc) && k < ${#runs[@]}; k++)); do
    read -r mode prog <<<"${runs[k]}"
    SOCKPASS_TEST_NO_PIDFD=1 python3 tests/c/run-example.py "$b/sockpassd" "$mode" "$prog" "${vg[@]}" \
      >"$work/vg-$k.log" 2>&1 &
    pids+=($!)
  done
  for ((k = i; k < i + ${#pids[@]}; k++)); do
    wait "${pids[k - i]}" || { echo "valgrind: ${runs[k]} failed:"; vg_failed=1; }
    grep -v '^--[0-9]*-- ' "$work/vg-$k.log" || true
  done
done
[ $vg_failed = 0 ] || exit 1
echo "c: all passed"

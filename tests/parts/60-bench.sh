#!/usr/bin/env bash
# The benchmarks cannot rot: benches/run --quick runs every benchmark (into a
# temp dir, never over docs/BENCHMARKS.md) and each must produce numbers.
# No speed is asserted here.
set -euo pipefail
. "$(dirname "$0")/../lib/env.sh"
cd "$ROOT"
if ! is_root; then echo "60-bench: skipped: needs root (installs peers, raises RLIMIT_NOFILE)"; exit 77; fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
# On a VM with the haltpoll cpuidle driver, benches/run also measures with
# idle vCPUs polling, and must put the machine's setting back after
haltpoll=/sys/module/haltpoll/parameters/guest_halt_poll_ns
haltpoll_was=
[ -w "$haltpoll" ] && [ "$(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null)" = haltpoll ] &&
  haltpoll_was=$(cat "$haltpoll")
timeout 300 benches/run --quick --out "$work/BENCHMARKS.md" --plots "$work/plots" --results "$work/results.txt" \
  >"$work/log" 2>&1 || { cat "$work/log"; echo "60-bench: benches/run --quick failed"; exit 1; }
fail=0
expect() { # expect MODE NAME KEY
  grep -Eq "^$1 $2 (.* )?$3=[0-9.]+( |\$)" "$work/results.txt" || { echo "60-bench: no number for $1 $2 ($3)"; fail=1; }
}
for m in pinned unpinned; do
  for b in B1_floor B1e_floor_epoll B2_cached_kept B2r_release B2rp_release_many B2b_broker_raw_client \
    B2c_client_min_broker s6_retrieve_kept B3_connect_request_close B3f_connect_floor B3b_broker_raw_client \
    s6_connect_retrieve_end B4_uncached B4r_release_uncached inproc_socket_bind B6_cached_10 B6_cached_1000 \
    B6_cached_10000 B6u_uncached_10 B6u_uncached_1000 B6u_uncached_10000 B6g_cached_after_10000_gone B9_python_kept \
    B10_cached_64 B10_uncached_64 B10s_cached_64_singles B10f_floor_64 B10i_inproc_64; do
    expect $m $b median_ns
  done
  for k in 1 8 64 1000; do expect $m B5_sp_c$k ops_per_s; expect $m B5_floor_c$k ops_per_s; done
  for k in 64 1000; do expect $m B5_sp50_c$k ops_per_s; done
  # the io_uring floor, unless bench said io_uring does not work here
  # (kernel.io_uring_disabled, seccomp): then it must have said why
  if ! grep -q '^bench: io_uring: .* not measured$' "$work/log"; then
    expect $m B1u_floor_uring median_ns
    for k in 1 8 64 1000; do expect $m B5_uring_c$k ops_per_s; done
  fi
  for k in 1 8 64; do expect $m B5_s6_c$k ops_per_s; done
done
for r in rsssock_idle rsssock_loaded rssconn_idle rssconn_loaded; do expect rss $r kb; done
for n in 1 64 1000; do
  # the sockpass side needs sockpass::spawn (its example is committed with it)
  [ -f rust/sockpassd/examples/spawn_fds.rs ] && expect unpinned B8_sockpass_$n median_ns
  expect unpinned B8_systemd_$n median_ns
done
# B11 (nginx behind --catch-bind against nginx as root) needs nginx, which
# tests/lib/setup.sh installs: only its absence excuses missing numbers
if grep -q '^benches/run: B11: nginx is not installed' "$work/log"; then
  echo "60-bench: B11 not measured: nginx is not installed"
else
  for k in root catch; do expect unpinned B11_start_$k median_ns; expect unpinned B11_rps_$k ops_per_s; done
  expect unpinned B11_start_uncaught median_ns
  for k in plain catch; do expect unpinned B11s_syscall_$k median_ns; done
  for k in root catch; do expect unpinned B11b_bind_$k median_ns; done
  grep -q '^| requests a second | [0-9]' "$work/BENCHMARKS.md" || { echo "60-bench: report has no B11 table"; fail=1; }
fi
if [ "$(nproc)" -ge 2 ]; then
  for w in same cross; do
    for b in X_floor X_floor_spin X_s6 X_B2 X_B2_spin; do expect xcpu ${b}_$w median_ns; done
  done
fi
if [ -n "$haltpoll_was" ]; then
  for b in B1e_floor_epoll B2_cached_kept s6_retrieve_kept B3_connect_request_close; do expect unpinned_hp $b median_ns; done
  for k in 64 1000; do expect unpinned_hp B5_sp_c$k ops_per_s; expect unpinned_hp B5_floor_c$k ops_per_s; done
  if [ "$(nproc)" -ge 2 ]; then
    for b in X_floor X_floor_spin X_s6 X_B2 X_B2_spin; do expect xcpu ${b}_crosshp median_ns; done
  fi
  now=$(cat "$haltpoll")
  [ "$now" = "$haltpoll_was" ] || { echo "60-bench: guest_halt_poll_ns is $now after benches/run, was $haltpoll_was"; fail=1; }
  grep -q '^## Unpinned, idle vCPUs polling' "$work/BENCHMARKS.md" || { echo "60-bench: report has no halt-polling table"; fail=1; }
else
  echo "60-bench: no haltpoll cpuidle driver (or not writable): the halt-polling runs are not made"
fi
for f in "$work/plots/latency-vs-cached.png" "$work/plots/latency-vs-clients.png"; do
  [ -s "$f" ] || { echo "60-bench: plot $f missing"; fail=1; }
done
grep -q '^| B2 ' "$work/BENCHMARKS.md" || { echo "60-bench: report has no bar table"; fail=1; }
[ $fail = 0 ] && echo "60-bench: every benchmark produced numbers"
exit $fail

"""Turn benches/run's results file into docs/BENCHMARKS.md and PNG plots.

usage: report.py [--section b11] RESULTS OUT.md PLOTDIR
With --section b11 (benches/run --only b11), only B11's section of an
existing OUT.md is replaced (added if missing), and the notes at its end
are refreshed from benches/notes.md; the other sections are kept.
Result lines: "MODE NAME key=value ..." (MODE pinned/unpinned/rss) and
"meta KEY VALUE...". benches/notes.md, if present, is appended (the
analysis, written by hand, of what the numbers mean and what was fixed)."""

import os
import shutil
import subprocess
import sys


def parse(path):
    res, meta, failed = {}, {}, []
    with open(path) as f:
        for line in f:
            w = line.split()
            if not w:
                continue
            if w[0] == "meta":
                meta[w[1]] = " ".join(w[2:])
            elif len(w) == 3 and w[2] == "failed":
                failed.append(w[1])
            else:
                kv = dict(x.split("=", 1) for x in w[2:] if "=" in x)
                res.setdefault((w[0], w[1]), []).append({k: float(v) for k, v in kv.items()})
    # Several rounds of one benchmark: the median of each figure across them
    # (the machine is shared; one slow round should not decide a ratio).
    agg = {}
    for key, rounds in res.items():
        agg[key] = {k: sorted(r[k] for r in rounds)[len(rounds) // 2] for k in rounds[0]}
        agg[key]["rounds"] = len(rounds)
    return agg, res, meta, failed


class Figure(float):
    """A median across rounds that remembers the rounds' own figures."""

    def __new__(cls, value, rounds):
        f = super().__new__(cls, value)
        f.rounds = rounds
        return f


B11_TITLE = "## nginx behind `sockpass run --catch-bind` (B11)"
NOTES_TITLE = "## What the numbers mean"


def median_ratio(by_round, mode, num, den, key):
    """The median across rounds of num/den within each round."""
    a, b = by_round.get((mode, num)), by_round.get((mode, den))
    if not a or not b or len(a) != len(b):
        return None
    vals = sorted(x[key] / y[key] for x, y in zip(a, b) if y[key])
    return vals[len(vals) // 2] if vals else None


def b11_section(res, by_round, meta):
    """B11: nginx started as root against nginx as nobody behind
    --catch-bind: start to first answer, requests a second."""
    L = [B11_TITLE, ""]
    names = ("B11_start_root", "B11_start_catch", "B11_rps_root", "B11_rps_catch")
    r = {n: res.get(("unpinned", n)) for n in names}
    if not any(r.values()):
        L += ["Not measured (nginx not installed, or `sockpass run` without `--catch-bind`).", ""]
        return L
    L.append(
        "nginx (a master and 2 workers, `daemon off`) on the same privileged port of 127.0.0.1: started as root, "
        "binding the port itself (`user nobody nogroup`: its workers as nobody), against started as nobody by "
        "`setpriv ... sockpass run --catch-bind -- nginx`, its `bind()` caught and the socket made by a root broker "
        "whose policy grants nobody the port. Start: from `fork` to the first `200` answer to `GET /` "
        "(`benches/c/firstanswer.c`, connecting every 0.2 ms until one is answered). Requests a second: "
        "`benches/c/httpload.c`, keep-alive connections each on a thread of its own, `GET /` of a 17-byte file, "
        "after nginx's first answer. B11b: `benches/c/binds.c`, a TCP socket with `SO_REUSEADDR` bound to the "
        "port and closed, again and again, the `bind()` timed: by root in-process, and as nobody under "
        "`sockpass run --catch-bind`, where each is caught, the supervisor's earlier reference to the same address "
        "released, and the broker asked for the socket. B11s: `benches/c/syscalls.c`, `getppid()` by `syscall(2)` in blocks of 10,000, "
        "run plain and under `sockpass run --catch-bind` (as root), whose seccomp filter every syscall of the program "
        "passes. The kinds take turns in each round, each first in every other round; a figure is the median across "
        "rounds (of each round's median for the start), a ratio the median of the rounds' ratios."
    )
    L.append("")
    L.append(f"- {meta.get('b11', '?')}")
    L.append(f"- date: {meta.get('date')}; commit {meta.get('commit')}; {meta.get('cpu')}, {meta.get('nproc')} CPUs, {meta.get('kernel')}")
    if meta.get("quick") == "1":
        L.append("- quick mode: small samples, numbers are rough")
    L.append(
        "- a shared machine: the load average above is the run's; the notes below (B11) give the spread of "
        "several runs"
    )
    L.append("")
    L.append("| | nginx as root, binding itself | nginx as nobody, `--catch-bind` | --catch-bind / root |")
    L.append("|---|---|---|---|")

    def ms(x):
        return "n/a" if not x else f"{x['median_ns'] / 1e6:.1f} ms (p99 {x['p99_ns'] / 1e6:.1f})"

    def rps(x):
        return "n/a" if not x else f"{x['ops_per_s']:.0f}"

    def fr(x):
        return "n/a" if x is None else f"{x:.2f}×" if x < 10 else f"{x:.0f}×"

    sr = median_ratio(by_round, "unpinned", "B11_start_catch", "B11_start_root", "median_ns")
    rr = median_ratio(by_round, "unpinned", "B11_rps_catch", "B11_rps_root", "ops_per_s")
    L.append(f"| start to first answer, median | {ms(r['B11_start_root'])} | {ms(r['B11_start_catch'])} | {fr(sr)} |")
    L.append(f"| requests a second | {rps(r['B11_rps_root'])} | {rps(r['B11_rps_catch'])} | {fr(rr)} |")
    def t(v):
        return f"{v:.0f} ns" if v < 10000 else f"{v / 1000:.1f} µs"

    def ns(x):
        return "n/a" if not x else f"{t(x['median_ns'])} (p99 {t(x['p99_ns'])})"

    br, bc = res.get(("unpinned", "B11b_bind_root")), res.get(("unpinned", "B11b_bind_catch"))
    if br or bc:
        rb = median_ratio(by_round, "unpinned", "B11b_bind_catch", "B11b_bind_root", "median_ns")
        L.append(f"| B11b: one `bind()` to the port, by root itself / caught, as nobody | {ns(br)} | {ns(bc)} | {fr(rb)} |")
    sp, sc = res.get(("unpinned", "B11s_syscall_plain")), res.get(("unpinned", "B11s_syscall_catch"))
    if sp or sc:
        sr2 = median_ratio(by_round, "unpinned", "B11s_syscall_catch", "B11s_syscall_plain", "median_ns")
        L.append(f"| B11s: `getppid()`, a call (blocks of 10,000): plain / under the filter | {ns(sp)} | {ns(sc)} | {fr(sr2)} |")
    L.append("")
    u = res.get(("unpinned", "B11_start_uncaught"))
    if u and r["B11_start_root"] and r["B11_start_catch"]:
        root, catch = r["B11_start_root"]["median_ns"], r["B11_start_catch"]["median_ns"]
        un = u["median_ns"]
        if not root <= un <= catch:
            L.append(
                f"The reference start (the same `sockpass run --catch-bind -- nginx` on an unprivileged port, its bind "
                f"not caught: {un / 1e6:.1f} ms) does not fall between the two in this run: the machine's noise is "
                "larger than the parts of the difference."
            )
            L.append("")
            return L
        L.append(
            f"Where the start's {(catch - root) / 1e6:.1f} ms go: the same `setpriv ... sockpass run --catch-bind -- nginx` "
            f"with nginx on an unprivileged port, whose bind is not caught, answered first after {un / 1e6:.1f} ms: "
            f"{(un - root) / 1e6:.1f} ms are `setpriv`, `sockpass run`'s start (connecting to the broker, checking that "
            f"seccomp user notification works, the filter) and its fork, {(catch - un) / 1e6:.1f} ms the caught bind "
            "(the supervisor reading the program's address and socket, the broker's round trip, installing the socket)."
        )
        L.append("")
    return L


def replace_section(text, title, lines):
    """`text` with the section headed `title` (to the next `## `) replaced by
    `lines`, or `lines` inserted before the plots or the notes, or at the end."""
    parts = text.split("\n## ")
    head, secs = parts[0], ["## " + p for p in parts[1:]]
    new = "\n".join(lines).rstrip("\n") + "\n"
    for i, sec in enumerate(secs):
        if sec.startswith(title):
            secs[i] = new
            break
    else:
        at = next((i for i, sec in enumerate(secs) if sec.startswith(("## Plots", NOTES_TITLE))), len(secs))
        secs.insert(at, new)
    return "\n".join([head.rstrip("\n") + "\n"] + [sec.rstrip("\n") + "\n" for sec in secs])


def notes_text():
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes.md")
    if not os.path.exists(notes):
        return None
    with open(notes) as f:
        return f.read().rstrip()


def section_only(results, out):
    res, by_round, meta, _ = parse(results)
    with open(out) as f:
        text = f.read()
    text = replace_section(text, B11_TITLE, b11_section(res, by_round, meta))
    notes = notes_text()
    if notes is not None:
        if NOTES_TITLE in text:
            text = text[: text.index(NOTES_TITLE)] + notes + "\n\n"
        else:
            text = text.rstrip("\n") + "\n\n" + notes + "\n"
    with open(out, "w") as f:
        f.write(text)


def main():
    if sys.argv[1] == "--section":
        if sys.argv[2] != "b11":
            sys.exit("report.py: --section takes b11")
        return section_only(sys.argv[3], sys.argv[4])
    results, out, plots = sys.argv[1:4]
    res, by_round, meta, failed = parse(results)
    L = []
    quick = meta.get("quick") == "1"

    def med(mode, name):
        r = res.get((mode, name))
        return r["median_ns"] if r else None

    def us(x):
        return "n/a" if x is None else f"{x / 1000:.1f}"

    def ratio(a, b):
        return None if a is None or b is None or b == 0 else a / b

    def per_round(mode, names, f, key="median_ns"):
        """f over each round's figures of `names`, the median across rounds.
        The two sides of a ratio ran interleaved within a round, so a round
        that ran slow for both cancels out; a ratio of the medians across
        rounds can pair a slow round's figure with a quick round's."""
        rounds = [by_round.get((mode, n)) for n in names]
        if not all(rounds) or len({len(r) for r in rounds}) != 1:
            return None
        vals = [f(*(r[i][key] for r in rounds)) for i in range(len(rounds[0]))]
        vals = sorted(v for v in vals if v is not None)
        return Figure(vals[len(vals) // 2], vals) if vals else None

    def rr(mode, num, den, key="median_ns"):
        return per_round(mode, (num, den), ratio, key)

    def fr(x):
        return "n/a" if x is None else f"{x:.2f}×"

    def fr_rounds(x):
        # A bar's figure with the range of its rounds, which says whether
        # the median stands for every round.
        r = getattr(x, "rounds", None)
        if x is None or not r or len(r) < 2:
            return fr(x)
        return f"{x:.2f}× ({min(r):.2f}-{max(r):.2f})"

    L.append("# Benchmarks")
    L.append("")
    L.append("Generated by `benches/run`" + (" --quick (quick mode: small samples, numbers are rough)" if quick else "") + ".")
    L.append(
        "Do not edit by hand: rerun it. Times are medians and 99th percentiles in µs; "
        f"Each latency and throughput benchmark ran {meta.get('rounds', '1')} round(s), "
        "interleaved; a figure shown is the median across rounds, and a ratio is the median "
        "across rounds of the ratio within each round (the two sides ran in the same round); "
        "a bar's ratio is followed by the range of its rounds' ratios, and a bar met by the median "
        "but not by every round says so."
    )
    L.append("")
    L.append(f"- date: {meta.get('date')}")
    L.append(f"- machine: {meta.get('cpu')}, {meta.get('nproc')} CPUs, {meta.get('kernel')}")
    L.append(f"- commit: {meta.get('commit')}; peers: s6 {meta.get('s6')}, systemd {meta.get('systemd')}")
    L.append(
        "- pinned: broker (or s6-fdholderd, or the floor's server) and client both on CPU 0 "
        "(`taskset`); unpinned: the scheduler's choice."
    )
    L.append("")

    # ---- bars
    L.append("## Bars")
    L.append("")
    L.append("| id | bar | pinned | unpinned | met? |")
    L.append("|---|---|---|---|---|")

    def bar(bid, text, f, limit, ge=False):
        vals = {m: f(m) for m in ("pinned", "unpinned")}
        passes = lambda v: v >= limit if ge else v <= limit
        ok = [v is not None and passes(v) for v in vals.values()]
        known = [v is not None for v in vals.values()]
        met = "not measured" if not any(known) else ("met" if all(o or not k for o, k in zip(ok, known)) and any(ok) else ("not met" if not any(ok) else "met unpinned only" if ok[1] else "met pinned only"))
        # Met by the median of the rounds, but not by each of them.
        if any(o and not all(passes(r) for r in getattr(v, "rounds", [v])) for o, v in zip(ok, vals.values())):
            met += ", not in every round"
        L.append(f"| {bid} | {text} | {fr_rounds(vals['pinned'])} | {fr_rounds(vals['unpinned'])} | **{met}** |")

    def split(m, broker, client):
        # Two differences (minuend, subtrahend), µs, each within a round (both
        # sides interleaved), the median across rounds, as for the ratios.
        diff = lambda x, e: (x - e) / 1000
        b, c = (per_round(m, pair, diff) for pair in (broker, client))
        if None in (b, c):
            return "n/a"
        return f"{b:.1f} + {c:.1f}"

    def split2(m):
        return split(m, ("B2b_broker_raw_client", "B1e_floor_epoll"), ("B2c_client_min_broker", "B1e_floor_epoll"))

    def split3(m):
        return split(m, ("B3b_broker_raw_client", "B3f_connect_floor"), ("B3_connect_request_close", "B3b_broker_raw_client"))

    bar("B2", "B2 / B1 ≤ 1.25", lambda m: rr(m, "B2_cached_kept", "B1_floor"), 1.25)
    # Issue 25 item 3 (replaces "B2 ≤ 0.65 × s6", retired): the single
    # request at the floor of a broker with one loop.
    bar("B2", "B2 / B1e ≤ 1.15", lambda m: rr(m, "B2_cached_kept", "B1e_floor_epoll"), 1.15)
    L.append(f"| (B2 / s6) | B2 / s6 retrieve (kept), for reference | {fr(rr('pinned', 'B2_cached_kept', 's6_retrieve_kept'))} | {fr(rr('unpinned', 'B2_cached_kept', 's6_retrieve_kept'))} | |")

    def floors2(m):
        # The one-loop floors against s6, for reference: a broker's server
        # waiting in epoll_wait (B1e) or in io_uring_enter (B1u).
        e, u = (rr(m, f, "s6_retrieve_kept") for f in ("B1e_floor_epoll", "B1u_floor_uring"))
        return f"{fr(e)}, {fr(u)}"

    L.append(f"| (B1e, B1u) | the floors of a broker with one loop / s6 retrieve (kept), for reference: epoll (B1e), io_uring (B1u) | {floors2('pinned')} | {floors2('unpinned')} | |")
    L.append(f"| (B2b, B2c) | where B2 − B1e goes: the broker's part (B2b − B1e) and the client's (B2c − B1e), µs | {split2('pinned')} | {split2('unpinned')} | |")
    bar("B3", "B3 / s6 connect+retrieve+end ≤ 0.5", lambda m: rr(m, "B3_connect_request_close", "s6_connect_retrieve_end"), 0.5)
    L.append(f"| (B3f) | the floor B3f / s6 connect+retrieve+end, for reference | {fr(rr('pinned', 'B3f_connect_floor', 's6_connect_retrieve_end'))} | {fr(rr('unpinned', 'B3f_connect_floor', 's6_connect_retrieve_end'))} | |")

    L.append(f"| (B3b) | where B3 − B3f goes: the broker's part (B3b − B3f) and the C API's (B3 − B3b), µs | {split3('pinned')} | {split3('unpinned')} | |")

    def b4(m):
        return per_round(m, ("B4_uncached", "inproc_socket_bind", "B1_floor"), lambda u, a, b: ratio(u, a + b))

    bar("B4", "B4 / (socket+setsockopt+bind + B1) ≤ 1.3", b4, 1.3)

    def tp(m, kind, k):
        r = res.get((m, f"B5_{kind}_c{k}"))
        return r["ops_per_s"] if r else None

    def b5(m, kind):
        return rr(m, f"B5_{kind}_c64", "B5_s6_c64", "ops_per_s")

    # Issue 25 item 2 (replaces "B5 ≥ 2 × s6 at 64 clients", retired: beyond
    # the one-loop floor itself): at least 0.9 of the epoll floor B5f.
    for k in (64, 1000):
        bar("B5", f"B5 / B5f at {k} clients ≥ 0.9", lambda m, k=k: rr(m, f"B5_sp_c{k}", f"B5_floor_c{k}", "ops_per_s"), 0.9, ge=True)
    for k in (64, 1000):
        L.append(f"| (B5, spin) | B5 with the clients' reply spin on (50 µs, paced) / B5f at {k} clients, for reference | "
                 f"{fr(rr('pinned', f'B5_sp50_c{k}', f'B5_floor_c{k}', 'ops_per_s'))} | {fr(rr('unpinned', f'B5_sp50_c{k}', f'B5_floor_c{k}', 'ops_per_s'))} | |")
    L.append(f"| (B5 / s6) | B5 throughput / s6 at 64 clients, for reference | {fr(b5('pinned', 'sp'))} | {fr(b5('unpinned', 'sp'))} | |")
    L.append(f"| (B5f, B5u) | the floors / s6 at 64 clients, for reference: epoll (B5f), io_uring (B5u) | {fr(b5('pinned', 'floor'))}, {fr(b5('pinned', 'uring'))} | {fr(b5('unpinned', 'floor'))}, {fr(b5('unpinned', 'uring'))} | |")
    bar("B6", "B6 at 10,000 cached / at 10 ≤ 1.1", lambda m: rr(m, "B6_cached_10000", "B6_cached_10"), 1.1)
    bar("B10", "B10 64 cached in one batch / B1 ≤ 4", lambda m: rr(m, "B10_cached_64", "B1_floor"), 4.0)

    # "64 × the in-process create" is B10i: the 64 sockets made in a row
    # and held, as a daemon making them itself would, in the batch's loop
    # (a single create in a loop of its own, B4's comparison, runs with
    # caches a batch does not have; shown for reference).
    def b10u(m):
        return per_round(m, ("B10_uncached_64", "B10i_inproc_64", "B1_floor"), lambda u, a, b: ratio(u, a + 4 * b))

    bar("B10", "B10 64 uncached in one batch / (B10i: 64 × socket+setsockopt+bind in a row + 4 × B1) ≤ 1", b10u, 1.0)
    L.append(f"| (B10i) | 64 in-process creates in a row (B10i) / 64 × the single one (B4's comparison), for reference | "
             f"{fr(per_round('pinned', ('B10i_inproc_64', 'inproc_socket_bind'), lambda a, b: ratio(a, 64 * b)))} | "
             f"{fr(per_round('unpinned', ('B10i_inproc_64', 'inproc_socket_bind'), lambda a, b: ratio(a, 64 * b)))} | |")
    L.append(f"| (B10f) | the floor: 64 fds in one SCM_RIGHTS message, received and closed / B1, for reference | {fr(rr('pinned', 'B10f_floor_64', 'B1_floor'))} | {fr(rr('unpinned', 'B10f_floor_64', 'B1_floor'))} | |")
    # The bar above is below its own floor (B10f is 4.1-4.8 × B1 in the runs here):
    # the bar proposed instead, measured against the 64-fd floor.
    bar("B10", "(proposed) B10 64 cached in one batch / B10f ≤ 2", lambda m: rr(m, "B10_cached_64", "B10f_floor_64"), 2.0)

    # The uncached bar is below that floor too (B10 uncached cannot take
    # less than the 64 binds plus B10f): proposed against it likewise.
    def b10up(m):
        return per_round(m, ("B10_uncached_64", "B10i_inproc_64", "B10f_floor_64"), lambda u, a, f: ratio(u, a + 2 * f))

    bar("B10", "(proposed) B10 64 uncached in one batch / (B10i + 2 × B10f) ≤ 1", b10up, 1.0)
    L.append(f"| (B10s) | 64 cached by single requests / B1, for reference | {fr(rr('pinned', 'B10s_cached_64_singles', 'B1_floor'))} | {fr(rr('unpinned', 'B10s_cached_64_singles', 'B1_floor'))} | |")
    bar("B9", "B9 Python / B2 ≤ 1.5", lambda m: rr(m, "B9_python_kept", "B2_cached_kept"), 1.5)

    def rss(name):
        r = res.get(("rss", name))
        return r if r else None

    idle = rss("rsssock_idle")
    ls, lc, ic = rss("rsssock_loaded"), rss("rssconn_loaded"), rss("rssconn_idle")
    b7 = []
    if idle:
        b7.append(("idle RSS", f"{idle['kb'] / 1024:.2f} MiB", "≤ 4 MiB", idle["kb"] <= 4096))
    if idle and ls and ls.get("sockets"):
        per = (ls["kb"] - idle["kb"]) * 1024 / ls["sockets"]
        b7.append((f"per cached socket ({int(ls['sockets'])} sockets)", f"{per:.0f} B", "≤ 1 KiB", per <= 1024))
    if ic and lc and lc.get("conns"):
        per = (lc["kb"] - ic["kb"]) * 1024 / lc["conns"]
        b7.append((f"per idle connection ({int(lc['conns'])} connections)", f"{per:.0f} B", "≤ 8 KiB", per <= 8192))
    for what, val, lim, ok in b7:
        L.append(f"| B7 | {what} {lim} | {val} | | **{'met' if ok else 'not met'}** |")
    for n in (1, 64, 1000):
        a, b = med("unpinned", f"B8_sockpass_{n}"), med("unpinned", f"B8_systemd_{n}")
        r = ratio(a, b)
        met = "met" if r is not None and r <= 1.0 else ("not met" if r is not None else "not measured")
        L.append(f"| B8 | spawn {n} fd(s) / systemd-socket-activate ≤ 1.0 | | {fr(r)} | **{met}** |")
    L.append("")

    # ---- latency tables
    names = [
        ("B1_floor", "B1 floor: 1-byte request, 1 fd by SCM_RIGHTS, close"),
        ("B1e_floor_epoll", "B1e floor, the server waiting in epoll_wait first"),
        ("B1u_floor_uring", "B1u floor, an io_uring server: one io_uring_enter a request (reply, next receive, wait)"),
        ("B2_cached_kept", "B2 cached request, kept connection, close fd"),
        ("B2r_release", "B2r release by token"),
        ("B2rp_release_many", "B2rp release by token, 500 pipelined (release_many), per release"),
        ("B2b_broker_raw_client", "B2b sockpassd alone: B2's request from a raw C client"),
        ("B2c_client_min_broker", "B2c the C API alone: B2 against a minimal C broker"),
        ("s6_retrieve_kept", "s6 retrieve, kept connection"),
        ("B3_connect_request_close", "B3 connect + request + close"),
        ("s6_connect_retrieve_end", "s6 connect + retrieve + end"),
        ("B3f_connect_floor", "B3f floor: connect, accept + SO_PEERCRED, 1 fd, close"),
        ("B3b_broker_raw_client", "B3b sockpassd alone: B3's request from a raw C client"),
        ("B4_uncached", "B4 uncached request (create, bind, hand over)"),
        ("B4r_release_uncached", "B4r release of B4's socket (closed, its port free at the reply)"),
        ("inproc_socket_bind", "socket()+setsockopt()+bind() in-process"),
    ]
    for c in (10, 1000, 10000):
        names.append((f"B6_cached_{c}", f"B6 cached request with {c} cached sockets"))
    for c in (10, 1000, 10000):
        names.append((f"B6u_uncached_{c}", f"B6u uncached request with {c} cached sockets"))
    names.append(("B6g_cached_after_10000_gone", "B6g cached request after 10,000 cached sockets came and went"))
    names.append(("B9_python_kept", "B9 Python request_socket (as B2)"))
    names.append(("B10_cached_64", "B10 64 cached sockets in one batch request, close fds"))
    names.append(("B10_uncached_64", "B10 64 uncached sockets (port 0) in one batch request, close fds"))
    names.append(("B10f_floor_64", "B10f floor: 1-byte request, 64 fds in one SCM_RIGHTS message, close them"))
    names.append(("B10s_cached_64_singles", "B10s the 64 cached sockets by 64 single requests"))
    names.append(("B10i_inproc_64", "B10i 64 × socket()+setsockopt()+bind() in-process, in a row, held (closed untimed)"))
    L.append("## Latency (µs)")
    L.append("")
    L.append("| benchmark | pinned median | pinned p99 | unpinned median | unpinned p99 | n |")
    L.append("|---|---|---|---|---|---|")
    for key, text in names:
        p, u = res.get(("pinned", key)), res.get(("unpinned", key))
        if not p and not u:
            L.append(f"| {text} | not measured | | | | |")
            continue
        g = lambda r, k: us(r[k]) if r else "n/a"  # noqa: E731
        n = int((p or u)["n"])
        L.append(f"| {text} | {g(p, 'median_ns')} | {g(p, 'p99_ns')} | {g(u, 'median_ns')} | {g(u, 'p99_ns')} | {n} |")
    L.append("")
    # ---- same CPU and across CPUs
    xs = [("X_floor", "floor (B1e's: 1-byte request, 1 fd, the server in epoll_wait)"),
          ("X_floor_spin", "the floor, the client polling up to 50 µs before blocking"),
          ("X_s6", "s6 retrieve, kept connection"),
          ("X_B2", "sockpass B2 (cached request, kept connection)"),
          ("X_B2_spin", "sockpass B2, `SOCKPASS_SPIN_US=50` (paced: only while round trips are quick)")]
    if any(res.get(("xcpu", f"{k}_same")) for k, _ in xs):
        L.append("## Same CPU and across CPUs (µs)")
        L.append("")
        L.append("Each server (the floor's, s6-fdholderd, sockpassd) on CPU 0; the client on CPU 0 (same) or CPU 1 (across), "
                 f"{meta.get('rounds', '1')} round(s), medians across rounds. A spin polls the socket (`recvmsg` with "
                 "`MSG_DONTWAIT`, `sched_yield` between tries) for up to 50 µs before the blocking receive.")
        L.append("")
        hp = any(res.get(("xcpu", f"{k}_crosshp")) for k, _ in xs)
        head = "| | same CPU median | p99 | across CPUs median | p99 | across / same |"
        rule = "|---|---|---|---|---|---|"
        if hp:
            head += " across CPUs, idle vCPUs polling 200 µs: median | p99 |"
            rule += "---|---|"
        L.append(head)
        L.append(rule)
        for k, text in xs:
            a, b = res.get(("xcpu", f"{k}_same")), res.get(("xcpu", f"{k}_cross"))
            g = lambda r, f: us(r[f]) if r else "n/a"  # noqa: E731
            row = f"| {text} | {g(a, 'median_ns')} | {g(a, 'p99_ns')} | {g(b, 'median_ns')} | {g(b, 'p99_ns')} | {fr(rr('xcpu', k + '_cross', k + '_same'))} |"
            if hp:
                c = res.get(("xcpu", f"{k}_crosshp"))
                row += f" {g(c, 'median_ns')} | {g(c, 'p99_ns')} |"
            L.append(row)
        L.append("")
        if hp:
            L.append(
                "The last two columns: the same across CPUs while an idle vCPU polls for up to 200 µs before it halts "
                "(`/sys/module/haltpoll/parameters/guest_halt_poll_ns`, the kernel's default; this machine runs with "
                f"{meta.get('haltpoll', '?')} ns), set for these runs only and put back after.")
            L.append("")
    # ---- unpinned with the guest's halt polling on (issue 25 item 4)
    if any(k[0] == "unpinned_hp" for k in res):
        L.append("## Unpinned, idle vCPUs polling before they halt")
        L.append("")
        L.append(
            "The bars that placement decides, unpinned as above, and unpinned once more in each round while an idle vCPU "
            "polls for up to 200 µs before it halts (the haltpoll cpuidle driver's `guest_halt_poll_ns` at the kernel's "
            f"default; this machine boots with {meta.get('haltpoll', '?')} ns, so every wake-up of an idle vCPU exits to the "
            "host). Ratios as in the bars: the median across rounds of each round's ratio, with the rounds' range.")
        L.append("")
        L.append("| | unpinned | unpinned, idle vCPUs polling 200 µs |")
        L.append("|---|---|---|")
        hprows = [
            ("B2 / B1e (bar ≤ 1.15)", lambda m: rr(m, "B2_cached_kept", "B1e_floor_epoll")),
            ("B2 / B1 (bar ≤ 1.25)", lambda m: rr(m, "B2_cached_kept", "B1_floor")),
            ("B2 / s6 retrieve (kept)", lambda m: rr(m, "B2_cached_kept", "s6_retrieve_kept")),
            ("B3 / s6 connect+retrieve+end (bar ≤ 0.5)", lambda m: rr(m, "B3_connect_request_close", "s6_connect_retrieve_end")),
            ("B4 / (socket+setsockopt+bind + B1) (bar ≤ 1.3)", b4),
            ("B5 / B5f at 64 clients (bar ≥ 0.9)", lambda m: rr(m, "B5_sp_c64", "B5_floor_c64", "ops_per_s")),
            ("B5 / B5f at 1000 clients (bar ≥ 0.9)", lambda m: rr(m, "B5_sp_c1000", "B5_floor_c1000", "ops_per_s")),
        ]
        for text, f in hprows:
            L.append(f"| {text} | {fr_rounds(f('unpinned'))} | {fr_rounds(f('unpinned_hp'))} |")
        for name, text in (("B1e_floor_epoll", "B1e, µs"), ("B2_cached_kept", "B2, µs"), ("s6_retrieve_kept", "s6 retrieve (kept), µs"),
                           ("B3_connect_request_close", "B3, µs"), ("s6_connect_retrieve_end", "s6 connect+retrieve+end, µs")):
            L.append(f"| {text} | {us(med('unpinned', name))} | {us(med('unpinned_hp', name))} |")
        L.append("")
    L.append("## Throughput (B5): requests per second, each client a process on its own kept connection")
    L.append("")
    sl = meta.get("b5slices", "1 ?").split()
    L.append(
        f"Each kind ran in {sl[0]} slice(s) of {sl[1]} s a round, the kinds in turn; a figure is the median of "
        "all slices, a ratio the median of the ratios of slices taken one after the other."
    )
    L.append("")
    L.append(
        "B5f, the floor: the B3f server (one epoll loop answering each 1-byte request with one fd) and the same client processes; "
        "B5u, the same with B1u's io_uring server (one io_uring_enter submits a turn's replies and receives)."
    )
    L.append("")
    L.append("| clients | sockpass pinned | s6 pinned | ratio | floor B5f pinned | floor B5u pinned | sockpass unpinned | s6 unpinned | ratio | floor B5f unpinned | floor B5u unpinned |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    ks = sorted({int(r["clients"]) for (m, k), r in res.items() if k.startswith("B5_")})
    for k in ks:
        row = [str(k)]
        for m in ("pinned", "unpinned"):
            a, b, f, u = tp(m, "sp", k), tp(m, "s6", k), tp(m, "floor", k), tp(m, "uring", k)
            row += [f"{a:.0f}" if a else "n/a", f"{b:.0f}" if b else "n/a (s6: ≤ 256 connections)" if k > 256 else "n/a", fr(rr(m, f"B5_sp_c{k}", f"B5_s6_c{k}", "ops_per_s"))]
            row += [f"{x:.0f}" if x else "n/a" for x in (f, u)]
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append("## Spawn with fds (B8): whole process, `/bin/true`, unpinned (µs)")
    L.append("")
    L.append(f"sockpass side: `{meta.get('b8', '?')}`, with the same listening sockets as systemd-socket-activate's `-l`.")
    L.append("")
    L.append("| fds | sockpass median | p99 | systemd-socket-activate median | p99 | ratio |")
    L.append("|---|---|---|---|---|---|")
    for n in (1, 64, 1000):
        a, b = res.get(("unpinned", f"B8_sockpass_{n}")), res.get(("unpinned", f"B8_systemd_{n}"))
        sa = (us(b["median_ns"]), us(b["p99_ns"])) if b else ("failed" if f"B8_systemd_{n}" in failed else "n/a", "")
        sp = (us(a["median_ns"]), us(a["p99_ns"])) if a else ("n/a", "")
        L.append(f"| {n} | {sp[0]} | {sp[1]} | {sa[0]} | {sa[1]} | {fr(ratio(a and a['median_ns'], b and b['median_ns']))} |")
    L.append("")
    L.append("## Broker memory (B7): VmRSS of a fresh broker")
    L.append("")
    for name in ("rsssock_idle", "rsssock_loaded", "rssconn_idle", "rssconn_loaded"):
        r = rss(name)
        if r:
            extra = ", ".join(f"{k}={int(v)}" for k, v in r.items() if k not in ("kb", "rounds"))
            L.append(f"- {name}: {int(r['kb'])} kB {('(' + extra + ')') if extra else ''}")
    L.append("")
    L += b11_section(res, by_round, meta)

    # ---- plots
    if shutil.which("gnuplot"):
        os.makedirs(plots, exist_ok=True)
        dat = os.path.join(plots, ".b6.dat")
        with open(dat, "w") as f:
            for c in (10, 1000, 10000):
                vals = [med(m, f"{b}_{c}") for m in ("pinned", "unpinned") for b in ("B6_cached", "B6u_uncached")]
                f.write(f"{c} " + " ".join("NaN" if v is None else f"{v / 1000:.2f}" for v in vals) + "\n")
        dat5 = os.path.join(plots, ".b5.dat")
        with open(dat5, "w") as f:
            for k in ks:
                vals = []
                for m in ("pinned", "unpinned"):
                    for kind in ("sp", "s6", "floor", "uring"):
                        t = tp(m, kind, k)
                        vals.append("NaN" if not t else f"{k / t * 1e6:.2f}")
                f.write(f"{k} " + " ".join(vals) + "\n")
        p6 = os.path.join(plots, "latency-vs-cached.png")
        p5 = os.path.join(plots, "latency-vs-clients.png")
        script = f"""
set terminal pngcairo noenhanced size 800,500
set logscale x
set grid
set key top left
set output '{p6}'
set title 'sockpass request latency vs cached sockets (median)'
set xlabel 'cached sockets in the broker'
set ylabel 'µs'
plot '{dat}' u 1:2 w lp t 'cached request, pinned', '' u 1:3 w lp t 'uncached request, pinned', \\
     '' u 1:4 w lp t 'cached request, unpinned', '' u 1:5 w lp t 'uncached request, unpinned'
set output '{p5}'
set logscale y
set title 'time per request under load (clients / throughput)'
set xlabel 'concurrent client processes'
plot '{dat5}' u 1:2 w lp t 'sockpass, pinned', '' u 1:3 w lp t 's6-fdholder, pinned', \\
     '' u 1:4 w lp dt 2 t 'floor B5f (epoll), pinned', '' u 1:5 w lp dt 3 t 'floor B5u (io_uring), pinned', \\
     '' u 1:6 w lp t 'sockpass, unpinned', '' u 1:7 w lp t 's6-fdholder, unpinned', \\
     '' u 1:8 w lp dt 2 t 'floor B5f (epoll), unpinned', '' u 1:9 w lp dt 3 t 'floor B5u (io_uring), unpinned'
"""
        r = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
        if r.returncode:
            sys.stderr.write(r.stderr)
            sys.exit(1)
        os.unlink(dat)
        os.unlink(dat5)
        rel = os.path.relpath(plots, os.path.dirname(os.path.abspath(out)))
        L.append("## Plots")
        L.append("")
        L.append(f"![latency vs cached sockets]({rel}/latency-vs-cached.png)")
        L.append("")
        L.append(f"![time per request vs clients]({rel}/latency-vs-clients.png)")
        L.append("")
    notes = notes_text()
    if notes is not None:
        L.append(notes)
        L.append("")
    with open(out, "w") as f:
        f.write("\n".join(L) + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Count the pages and cache lines one request touches, from a valgrind
lackey trace (--trace-mem=yes) of benches/pages/loop.c, cut into requests
at the stores to its marker. Prints the median per request, and the pages
most requests touch with the functions that touch them (addr2line).

usage: count.py TRACE MARKER BINARY [BASE]   (BASE: where valgrind loaded
the executable, 0x108000 for a PIE on amd64)"""
import collections
import statistics
import subprocess
import sys


def main():
    trace, marker, binary = sys.argv[1], int(sys.argv[2], 16), sys.argv[3]
    base = int(sys.argv[4], 16) if len(sys.argv) > 4 else 0x108000
    reqs = []  # per request: {(kind, page): set of lines}, code address per page
    cur = None
    last_ip = 0
    with open(trace) as f:
        for line in f:
            k = line[:2].strip()
            if k not in ("I", "L", "S", "M"):
                continue
            a = int(line[3:].split(",")[0], 16)
            if k in ("S", "M") and a == marker:
                cur = collections.defaultdict(set)
                reqs.append((cur, collections.defaultdict(set)))
                continue
            if cur is None:
                continue
            kind = "code" if k == "I" else "data"
            if k == "I":
                last_ip = a
            cur[(kind, a >> 12)].add(a >> 6)
            reqs[-1][1][(kind, a >> 12)].add(last_ip)
    # The first fifth warms up; the last request may be cut short.
    reqs = reqs[len(reqs) // 5 : -1]
    if not reqs:
        sys.exit("count.py: no requests in the trace (wrong marker?)")
    for kind in ("code", "data"):
        pages = statistics.median(sum(1 for (k, _) in r if k == kind) for r, _ in reqs)
        lines = statistics.median(
            sum(len(v) for (k, _), v in r.items() if k == kind) for r, _ in reqs
        )
        print(f"{kind}: {pages:g} pages, {lines:g} lines a request")
    seen = collections.Counter(p for r, _ in reqs for p in r)
    ips = collections.defaultdict(set)
    for _, w in reqs[-50:]:
        for p, v in w.items():
            ips[p] |= v
    print("pages touched by most requests (those of the executable named):")
    for (kind, page), n in sorted(seen.items(), key=lambda x: (x[0][0], x[0][1])):
        if n * 2 < len(reqs):
            continue
        names = ""
        own = sorted(i for i in ips[(kind, page)] if base <= i < 0x4000000)
        if own:
            out = subprocess.run(
                ["addr2line", "-f", "-C", "-e", binary] + [hex(i - base) for i in own],
                capture_output=True,
                text=True,
            ).stdout.split("\n")[0::2]
            uniq = list(dict.fromkeys(o.split("::h")[0][:60] for o in out if o))
            names = ", ".join(uniq[:4])
        print(f"  {kind} {page << 12:#x}: {names or '(outside the executable)'}")


if __name__ == "__main__":
    main()

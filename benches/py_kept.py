"""B9: Python request_socket over a kept connection (the same operation as
B2): request a cached socket, close the fd; references released in batches,
untimed. Prints: RESULT B9_python_kept median_ns=.. p99_ns=.. n=.."""

import os
import sys
import time

import sockpass


def main() -> None:
    path, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    c = sockpass.Client(path)
    keep, _ = c.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY, "bench")
    os.close(keep)
    samples = []
    clock = time.perf_counter_ns
    while len(samples) < n:
        tokens = []
        for _ in range(min(1000, n - len(samples))):
            t0 = clock()
            fd, tok = c.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY, "bench")
            os.close(fd)
            samples.append(clock() - t0)
            tokens.append(tok)
        for tok in tokens:
            c.release(tok)
    samples.sort()
    p99 = min(len(samples) - 1, len(samples) * 99 // 100)
    print(f"RESULT B9_python_kept median_ns={samples[len(samples) // 2]} p99_ns={samples[p99]} n={len(samples)}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Run a C program against a real sockpassd and drive it.

    run-example.py BROKER KIND PROGRAM [WRAPPER...]

Starts BROKER on a socket in a temp dir (SOCKPASS_SOCKET points there), runs
PROGRAM (under WRAPPER, e.g. valgrind, if given), talks to it as KIND says
(udp-echo, tcp-shared, or plain: just its exit status), and stops the broker.
Exits 0 only if the program exited 0 and the conversation was right.
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

TIMEOUT = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, what):
    end = time.monotonic() + TIMEOUT
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    sys.exit(f"run-example: timed out waiting for {what}")


def main():
    broker, kind, prog, wrapper = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    # meson passes paths relative to the build directory.
    broker, prog = os.path.abspath(broker), os.path.abspath(prog)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "sockpassd.sock")
        env = dict(os.environ, SOCKPASS_SOCKET=path)
        # "limit2": a broker that serves at most two connections.
        extra = ["--max-connections", "2"] if kind == "limit2" else []
        b = subprocess.Popen([broker, "--socket", path, "-q"] + extra, env=env)
        try:
            wait_for(lambda: os.path.exists(path), "the broker's socket")
            return drive(kind, wrapper + [prog], env)
        finally:
            b.send_signal(signal.SIGTERM)
            try:
                b.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                b.kill()
                b.wait()


def drive(kind, cmd, env):
    if kind in ("plain", "limit2"):
        return subprocess.run(cmd, env=env, timeout=TIMEOUT * 5).returncode
    port = free_port() if kind == "tcp-shared" else 0
    p = subprocess.Popen(cmd + ["127.0.0.1", str(port)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline().split()
        if len(line) != 2 or line[0] != "ready":
            print(f"run-example: expected 'ready PORT', got {line!r}")
            return 1
        port = int(line[1])
        if kind == "udp-echo":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(TIMEOUT)
                s.sendto(b"hello sockpass", ("127.0.0.1", port))
                data, _ = s.recvfrom(100)
                ok = data == b"hello sockpass"
        else:
            names = set()
            for _ in range(2):
                with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
                    names.add(s.recv(100))
            ok = names == {b"parent", b"child"}
            if not ok:
                print(f"run-example: answers were {names!r}")
        rc = p.wait(TIMEOUT * 5)
        return rc if ok else 1
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


if __name__ == "__main__":
    sys.exit(main())

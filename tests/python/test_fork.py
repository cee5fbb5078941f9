"""The Python client across fork() and multiprocessing, with timeouts, one
connection per broker, reset(), the default application name and
listen_fds(), against real brokers. Forking bodies run in a child
interpreter of their own (a script file), so this process's clients are
never involved."""

from __future__ import annotations

import errno
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from conftest import TIMEOUT, Broker, free_port, read_marked_line, wait_for

import sockpass


def run_script(tmp: pathlib.Path, name: str, code: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    script = tmp / f"{name}.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        env={**os.environ, **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def refs_on(b: Broker, port: int) -> tuple[int, list[int], list[str]]:
    """(references, holder pids, holder apps) of the socket on `port`."""
    for s in b.status():
        if s.port == port:
            return s.refs, [h.pid for h in s.holders], [h.app for h in s.holders]
    return 0, [], []


def settled(b: Broker, port: int, want: int) -> tuple[int, list[int], list[str]]:
    """refs_on(), once the count is `want` (a dead process's connection is
    noticed by the broker a moment later)."""

    def check() -> tuple[int, list[int], list[str]] | None:
        r = refs_on(b, port)
        return r if r[0] == want else None

    return wait_for(f"{want} references on port {port}", check)


def reap(child: subprocess.Popen[str]) -> None:
    child.kill()
    child.wait()
    for f in (child.stdin, child.stdout):
        if f is not None:
            f.close()


def finish(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("go\n")
    child.stdin.flush()
    assert child.wait(TIMEOUT) == 0


WORKERS = """
import errno, os, socket, sys, sockpass
port = int(sys.argv[1])
fd0, t0 = sockpass.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY)
c = sockpass.Client()
s = c.socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY)

def worker():
    for _ in range(100):
        fd, tok = sockpass.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY)
        with socket.socket(fileno=fd) as x:
            assert x.type == socket.SOCK_DGRAM and x.getsockname()[1] == port, x
        assert sockpass.release_socket(tok) >= 1
    # The inherited explicit client is the parent's: refused, releasing nothing.
    assert c.closed
    try:
        c.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY)
        raise AssertionError("an inherited client served a request")
    except sockpass.BrokerUnavailableError as e:
        assert e.os_errno == errno.ECHILD, e.os_errno
    s.close()          # only this process's fd
    with c:            # closes the child's copy, releases nothing
        pass
    # Two of the child's own, which end with it.
    sockpass.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY)
    c2 = sockpass.Client()
    c2.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY)

pids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            worker()
            code = 0
        except BaseException as e:
            print("worker:", repr(e), file=sys.stderr)
        finally:
            os._exit(code)
    pids.append(pid)
bad = [p for p in pids if os.waitpid(p, 0)[1] != 0]
print("@@ workers", "ok" if not bad else f"failed {bad}", flush=True)
sys.stdin.readline()
assert sockpass.release_socket(t0) == 1
s.close()
print("@@ released", flush=True)
"""


def test_preforked_workers_leave_the_parents_references_exact(broker: Broker, tmp_path: pathlib.Path) -> None:
    port = free_port()
    child = run_script(tmp_path, "workers", WORKERS, {"SOCKPASS_SOCKET": broker.path}, str(port))
    try:
        assert read_marked_line(child) == "workers ok"
        # Only the parent's two: the workers' leases ended with them, and
        # nothing they did (BrokerSocket.close, `with client`) released one.
        _, pids, apps = settled(broker, port, 2)
        assert pids == [child.pid, child.pid]
        # Named after the script, not the interpreter.
        assert apps == ["workers", "workers"]
        finish(child)
    finally:
        reap(child)
    settled(broker, port, 0)


POOL = """
import multiprocessing, os, socket, sys, sockpass
port = int(sys.argv[1])

def work(i):
    fd, tok = sockpass.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY)
    with socket.socket(fileno=fd) as x:
        ok = x.getsockname()[1] == port
    sockpass.release_socket(tok)
    # One kept: it ends with the worker.
    sockpass.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY)
    return ok

if __name__ == "__main__":
    method = sys.argv[2]
    fd, tok = sockpass.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY)
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(4) as pool:
        oks = pool.map(work, range(16))
    pool.join()
    print("@@ pool", "ok" if all(oks) else "failed", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_pools(broker: Broker, tmp_path: pathlib.Path, method: str) -> None:
    port = free_port()
    child = run_script(tmp_path, "pool", POOL, {"SOCKPASS_SOCKET": broker.path}, str(port), method)
    try:
        assert read_marked_line(child, timeout=120) == "pool ok"
        _, pids, apps = settled(broker, port, 1)
        assert pids == [child.pid] and apps == ["pool"]
        finish(child)
    finally:
        reap(child)


BUSY = """
import os, signal, socket, sys, threading, sockpass
port = int(sys.argv[1])
c = sockpass.Client()
# Held throughout: the socket never closes while threads race for it (a
# thread releases before it closes its fd, so a socket made anew meanwhile
# would find the port still bound).
anchor = sockpass.Client()
held = anchor.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY)
stop = False

def busy(explicit):
    while not stop:
        if explicit:
            fd, tok = c.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY)
            c.release(tok)
        else:
            fd, tok = sockpass.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY)
            sockpass.release_socket(tok)
        os.close(fd)

threads = [threading.Thread(target=busy, args=(e,)) for e in (False, True)]
for t in threads:
    t.start()
bad = 0
for _ in range(20):
    pid = os.fork()
    if pid == 0:
        signal.alarm(30)  # a hang dies instead of waiting forever
        code = 1
        try:
            fd, tok = sockpass.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY)
            assert socket.socket(fileno=fd).getsockname()[1] == port
            assert c.closed
            c.reconnect()
            fd, tok = c.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY)
            code = 0
        except BaseException as e:
            print("child:", repr(e), file=sys.stderr)
        finally:
            os._exit(code)
    bad += os.waitpid(pid, 0)[1] != 0
stop = True
for t in threads:
    t.join()
print("@@ forks", "ok" if not bad else f"{bad} failed", flush=True)
"""


def test_fork_while_other_threads_are_in_calls(broker: Broker, tmp_path: pathlib.Path) -> None:
    port = free_port()
    child = run_script(tmp_path, "busy", BUSY, {"SOCKPASS_SOCKET": broker.path}, str(port))
    try:
        assert read_marked_line(child, timeout=120) == "forks ok"
        assert child.wait(TIMEOUT) == 0
    finally:
        reap(child)
    settled(broker, port, 0)


@pytest.fixture
def mute_socket(tmp_path: pathlib.Path) -> Iterator[str]:
    """A unix seqpacket socket that accepts and never answers."""
    path = str(tmp_path / "mute.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.bind(path)
        s.listen(16)
        yield path


def test_timeouts_raise_timeouterror_and_close_the_connection(mute_socket: str) -> None:
    c = sockpass.Client(mute_socket, timeout=0.2)
    assert c.gettimeout() == pytest.approx(0.2)
    with pytest.raises(TimeoutError):
        c.request_socket("127.0.0.1", 0, "udp")
    assert c.closed  # the reply may still come: the connection is gone
    with pytest.raises(sockpass.BrokerUnavailableError) as e:
        c.hello()
    assert e.value.os_errno == errno.ENOTCONN
    c.reconnect()
    assert not c.closed
    c.settimeout(0.1)
    with pytest.raises(TimeoutError):
        c.hello()
    c.close()
    # The module functions, per call and by the module default.
    with pytest.raises(TimeoutError):
        sockpass.request_socket("127.0.0.1", 0, "udp", socket_path=mute_socket, timeout=0.2)
    sockpass.setdefaulttimeout(0.2)
    try:
        assert sockpass.getdefaulttimeout() == pytest.approx(0.2)
        with pytest.raises(TimeoutError):
            sockpass.status(socket_path=mute_socket)
    finally:
        sockpass.setdefaulttimeout(None)
    with pytest.raises(ValueError):
        sockpass.setdefaulttimeout(-1)


def test_broker_unavailable_says_why(tmp_path: pathlib.Path) -> None:
    with pytest.raises(sockpass.BrokerUnavailableError) as e:
        sockpass.Client(str(tmp_path / "nobody.sock"))
    assert e.value.errno == 2004 and e.value.os_errno == errno.ENOENT
    with pytest.raises(OSError) as e2:
        sockpass.Client("/tmp/" + "a" * 200)
    assert e2.value.errno == errno.ENAMETOOLONG


ONE_CONNECTION = """
import os, sys, sockpass
port = int(sys.argv[1])
# The same broker named three ways: one connection (one lease).
fd1, t1 = sockpass.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY, socket_path="./sockpassd.sock")
fd2, t2 = sockpass.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY, socket_path=os.path.abspath("sockpassd.sock"))
fd3, t3 = sockpass.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY, app_name="other")
conns = {h.conn_id for s in sockpass.status() for h in s.holders if s.port == port}
print("@@ connections", len(conns), flush=True)
# Released through whichever connection holds it, by token or by fd.
assert sockpass.release_socket(t1) == 2
assert sockpass.release_socket(fd2) == 1
print("@@ reset", sockpass.reset(), flush=True)
# After reset the next call connects anew.
print("@@ after", sum(s.refs for s in sockpass.status()), flush=True)
"""


def test_one_connection_per_broker_and_reset(broker: Broker, tmp_path: pathlib.Path) -> None:
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, "-c", ONE_CONNECTION, str(port)],
        env={**os.environ, "SOCKPASS_SOCKET": broker.path},
        cwd=broker.dir,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert read_marked_line(child) == "connections 1"
        assert read_marked_line(child) == "reset 1"
        assert read_marked_line(child) == "after 0"
        assert child.wait(TIMEOUT) == 0
    finally:
        reap(child)


LISTEN = """
import os, socket, sys, sockpass
got = sockpass.listen_fds()
print("@@", [(f.fd, f.name, int(f.socket.type) if f.socket else None) for f in got], flush=True)
print("@@", [k for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES") if k in os.environ], flush=True)
print("@@", os.get_inheritable(3), flush=True)
"""


def test_listen_fds(tmp_path: pathlib.Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, open(os.devnull) as f:
        u.bind(("127.0.0.1", 0))
        # fd 3 a UDP socket, fd 4 not a socket; LISTEN_PID is the program's
        # own.
        os.set_inheritable(u.fileno(), True)
        os.set_inheritable(f.fileno(), True)
        # The wrapper puts them at 3 and 4 and execs with its own pid.
        wrap = (
            f"import os, sys; os.dup2({u.fileno()}, 3); os.dup2({f.fileno()}, 4); "
            "os.environ['LISTEN_PID'] = str(os.getpid()); "
            "os.execv(sys.executable, [sys.executable, '-c', sys.argv[1]])"
        )
        env = {**os.environ, "LISTEN_FDS": "2", "LISTEN_FDNAMES": "dns:conf"}
        child = subprocess.Popen(
            [sys.executable, "-c", wrap, LISTEN],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            pass_fds=(u.fileno(), f.fileno()),
        )
        try:
            assert read_marked_line(child) == f"[(3, 'dns', {int(socket.SOCK_DGRAM)}), (4, 'conf', None)]"
            assert read_marked_line(child) == "[]"
            assert read_marked_line(child) == "False"
            assert child.wait(TIMEOUT) == 0
        finally:
            reap(child)
        # For another pid: nothing.
        env["LISTEN_PID"] = "1"
        out = subprocess.run(
            [sys.executable, "-c", "import sockpass; print(sockpass.listen_fds())"],
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert out.stdout.strip() == "[]"


def test_default_app_name_is_the_module_run_with_dash_m(broker: Broker, tmp_path: pathlib.Path) -> None:
    pkg = tmp_path / "svcpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "worker.py").write_text(
        textwrap.dedent(
            """
            import sys, sockpass
            fd, tok = sockpass.request_socket("127.0.0.1", int(sys.argv[1]), "udp", sockpass.SHARE_SAMEAPP)
            print("@@", sockpass.default_app_name(), flush=True)
            sys.stdin.readline()
            """
        )
    )
    port = free_port()
    env = {**os.environ, "SOCKPASS_SOCKET": broker.path, "PYTHONPATH": f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen(
        [sys.executable, "-m", "svcpkg.worker", str(port)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert read_marked_line(child) == "svcpkg.worker"
        assert refs_on(broker, port)[2] == ["svcpkg.worker"]
        finish(child)
    finally:
        reap(child)

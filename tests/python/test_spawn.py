"""sockpass.spawn with real processes: broker sockets passed by socket
activation, empty and inherit slots, start indexes 0 (inetd style) and 10,
environment set/unset over the inherited one, paused children, exec
failures, bad input."""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

import sockpass
from conftest import TIMEOUT, Broker, wait_for

from sockpass import INHERIT

# Reports what it got, one line each, as socket activation describes it;
# written to argv[1] only at the end, so no file takes an empty slot's number.
ACTIVATED = textwrap.dedent(
    """
    import os, socket, sys
    n = int(os.environ["LISTEN_FDS"])
    out = [f"{n} {os.environ['LISTEN_FDNAMES']} {os.environ['LISTEN_PID'] == str(os.getpid())}"]
    for fd in range(3, 3 + n):
        try:
            s = socket.socket(fileno=fd)
            out.append(f"{fd} {s.type.name} {s.getsockname()[1]} {os.get_inheritable(fd)}")
            s.detach()
        except OSError as e:
            out.append(f"{fd} closed {e.errno}")
    with open(sys.argv[1], "w") as f:
        f.write("\\n".join(out))
    """
)


def children() -> set[int]:
    """This process's child processes (zombies included), from /proc."""
    out: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            out |= {int(p) for p in f.read().split()}
    return out


def test_activation_report(broker: Broker, tmp_path: pathlib.Path, no_fd_leak: None) -> None:
    out = os.path.join(tmp_path, "out")
    with broker.client() as c:
        with c.socket("127.0.0.1", 0, "udp") as udp, c.socket("127.0.0.1", 0, "tcp") as tcp:
            child = sockpass.spawn(
                [sys.executable, "-c", ACTIVATED, out], fds=[(udp, "dns"), (None, "gap"), (tcp, "web")]
            )
            assert child.pid > 0 and child.ns_pid == child.pid and not child.paused
            assert child.wait(TIMEOUT) == 0 and child.returncode == 0
            lines = pathlib.Path(out).read_text().splitlines()
            assert lines == [
                "3 dns:gap:web True",
                f"3 SOCK_DGRAM {udp.getsockname()[1]} True",
                f"4 closed {errno.EBADF}",
                f"5 SOCK_STREAM {tcp.getsockname()[1]} True",
            ]
            # The caller's own sockets are untouched (the plan used copies).
            assert udp.fileno() >= 0 and tcp.fileno() >= 0


def test_paused_then_resumed(tmp_path: pathlib.Path, no_fd_leak: None) -> None:
    mark = os.path.join(tmp_path, "ran")
    child = sockpass.spawn(["/bin/sh", "-c", f"touch {mark}; exit 7"], paused=True)
    assert child.paused
    assert not os.path.exists(mark)  # stopped before exec
    child.resume()
    assert not child.paused
    assert child.wait(TIMEOUT) == 7 and os.path.exists(mark)


def test_wait_timeout_and_kill(no_fd_leak: None) -> None:
    child = sockpass.spawn(["/bin/sleep", "300"])
    assert child.wait(timeout=0.05) is None
    child.kill()
    assert child.wait(TIMEOUT) == -signal.SIGTERM
    child.kill()  # after wait: a no-op


def test_exec_failure_leaves_nothing(tmp_path: pathlib.Path, no_fd_leak: None) -> None:
    before = children()
    with pytest.raises(sockpass.ChildFailedError) as ei:
        sockpass.spawn([os.path.join(tmp_path, "no-such-program")])
    assert ei.value.errno == 2008 and "exec" in str(ei.value)
    assert ei.value.child_errno == errno.ENOENT  # the failed step's own errno
    assert children() == before  # no child left, not even a zombie


def test_exec_failure_when_resumed(tmp_path: pathlib.Path, no_fd_leak: None) -> None:
    child = sockpass.spawn([os.path.join(tmp_path, "nothing")], paused=True)
    with pytest.raises(OSError) as ei:
        child.resume()
    assert ei.value.errno == 2008 and "exec" in str(ei.value)


def test_bad_input(no_fd_leak: None) -> None:
    before = children()
    closed = os.open("/dev/null", os.O_RDONLY)
    os.close(closed)
    cases: list[tuple[dict[str, object], type[BaseException], str]] = [
        ({"argv": []}, ValueError, "argv is empty"),
        ({"argv": ["/bin/true", "a\0b"]}, ValueError, "NUL"),
        ({"argv": ["/bin/true"], "fds": [(0, "a:b")]}, ValueError, "fd name"),
        ({"argv": ["/bin/true"], "fds": [closed]}, OSError, "not usable"),
        ({"argv": ["/bin/true"], "fds": [-5]}, ValueError, "invalid file descriptor"),
        ({"argv": ["/bin/true"], "fds": ["3"]}, AttributeError, "fileno"),
        ({"argv": ["/bin/true"], "join_pid": os.getpid(), "namespaces": "bogus"}, ValueError, "unknown namespace"),
        ({"argv": ["/bin/true"], "join_pid": -1}, ValueError, "invalid target pid"),
        ({"argv": ["/bin/true"], "namespaces": "net"}, ValueError, "needs join_pid"),
        ({"argv": ["/bin/true"], "fds": [(INHERIT, "x")]}, ValueError, "INHERIT slot"),
        ({"argv": ["/bin/true"], "setenv": {"A=B": "1"}}, ValueError, "environment variable name"),
        ({"argv": [5]}, TypeError, "expected str, bytes or os.PathLike"),
        ({"argv": ["/bin/true"], "env": {"A": 5}}, TypeError, "env"),
        ({"argv": ["/bin/true"], "start": "3"}, TypeError, "start"),
    ]
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            sockpass.spawn(**kw)  # type: ignore[arg-type]
    assert children() == before  # and no process was left behind


def test_env_replaced() -> None:
    # In a fresh process, so the child's stdout is one we capture.
    p = subprocess.run(
        [sys.executable, "-c", "import sockpass,sys; c=sockpass.spawn(['/usr/bin/env'], env={'ONLY':'this'}); sys.exit(c.wait())"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert p.returncode == 0 and p.stdout == "ONLY=this\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="joining another process's namespaces needs root")
def test_join_another_processes_network_namespace(tmp_path: pathlib.Path) -> None:
    with subprocess.Popen(["unshare", "--net", "sleep", "300"]) as target:
        try:
            ours = os.readlink("/proc/self/ns/net")
            theirs = wait_for(
                "unshare to enter its namespace",
                lambda: (n := os.readlink(f"/proc/{target.pid}/ns/net")) != ours and n,
            )
            out = tmp_path / "ns"
            child = sockpass.spawn(
                ["/bin/sh", "-c", f"readlink /proc/self/ns/net > {out}"], join_pid=target.pid, namespaces="net"
            )
            assert child.wait(TIMEOUT) == 0
            assert out.read_text().strip() == theirs
        finally:
            target.kill()


# Lists the planned range from LISTEN_FDS_FIRST_FD (3 if unset): each fd's
# target (or "closed") and whether it is inheritable (no CLOEXEC).
RANGE = textwrap.dedent(
    """
    import os, sys
    first = int(os.environ.get("LISTEN_FDS_FIRST_FD", "3"))
    n = int(os.environ["LISTEN_FDS"])
    out = [f"{first} {n} {os.environ['LISTEN_FDNAMES']}"]
    for fd in range(first, first + n):
        try:
            out.append(f"{fd} {os.readlink(f'/proc/self/fd/{fd}')} {os.get_inheritable(fd)}")
        except OSError:
            out.append(f"{fd} closed")
    with open(sys.argv[1], "w") as f:
        f.write("\\n".join(out))
    """
)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_start_10(tmp_path: pathlib.Path, no_fd_leak: None) -> None:
    out = tmp_path / "out"
    a, b = socket.socketpair()
    with a, b:
        child = sockpass.spawn([sys.executable, "-S", "-c", RANGE, str(out)], fds=[(a, "sock"), (None, "gap")], start=10)
        assert child.wait(TIMEOUT) == 0
        assert out.read_text().splitlines() == [
            "10 2 sock:gap",
            f"10 {os.readlink(f'/proc/self/fd/{a.fileno()}')} True",
            "11 closed",
        ]


def test_inherit_slots(tmp_path: pathlib.Path, no_fd_leak: None) -> None:
    out = tmp_path / "out"
    a, b = socket.socketpair()
    r, w = os.pipe()
    # Three numbers this process does not use (pytest holds some low ones).
    k = next(k for k in range(20, 1000) if not any(is_open(n) for n in (k, k + 1, k + 2)))
    try:
        # A CLOEXEC pipe end of ours at k; nothing of ours at k + 1.
        os.dup2(r, k, inheritable=False)
        try:
            child = sockpass.spawn(
                [sys.executable, "-S", "-c", RANGE, str(out)], fds=[INHERIT, INHERIT, (a, "sock")], start=k
            )
            assert child.wait(TIMEOUT) == 0
        finally:
            os.close(k)
        assert out.read_text().splitlines() == [
            f"{k} 3 unknown:unknown:sock",
            # The inherited pipe arrives at its own number without CLOEXEC.
            f"{k} {os.readlink(f'/proc/self/fd/{r}')} True",
            f"{k + 1} closed",
            f"{k + 2} {os.readlink(f'/proc/self/fd/{a.fileno()}')} True",
        ]
        assert repr(INHERIT) == "sockpass.INHERIT"
    finally:
        a.close()
        b.close()
        os.close(r)
        os.close(w)


def test_start_0_inetd_style(no_fd_leak: None) -> None:
    # The socket is the child's stdin (fd 0); it answers on it.
    a, b = socket.socketpair()
    with a, b:
        child = sockpass.spawn(
            ["/bin/sh", "-c", 'read l; echo "$l $LISTEN_FDS $LISTEN_FDS_FIRST_FD $LISTEN_FDNAMES" >&0'],
            fds=[(b, "conn")],
            start=0,
        )
        b.close()
        a.settimeout(TIMEOUT)
        a.sendall(b"hello\n")
        got = b""
        while not got.endswith(b"\n"):
            chunk = a.recv(100)
            assert chunk, got
            got += chunk
        assert got == b"hello 1 0 conn\n"
        assert child.wait(TIMEOUT) == 0


def test_setenv_and_unset_over_the_environment(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, no_fd_leak: None
) -> None:
    # /usr/bin/env's stdout is the file, placed at fd 1 (start=1, no
    # LISTEN_* variables).
    def env_of(**kw: object) -> list[str]:
        out = tmp_path / "env"
        with open(out, "w") as f:
            child = sockpass.spawn(["/usr/bin/env"], fds=[f], start=1, listen_env=False, **kw)  # type: ignore[arg-type]
            assert child.wait(TIMEOUT) == 0
        return out.read_text().splitlines()

    monkeypatch.setenv("SOCKPASS_T_KEEP", "k")
    monkeypatch.setenv("SOCKPASS_T_GONE", "g")
    got = env_of(setenv={"SOCKPASS_T_GONE": None, "SOCKPASS_T_NEW": "n", "SOCKPASS_T_NEVER": None})
    assert "SOCKPASS_T_KEEP=k" in got and "SOCKPASS_T_NEW=n" in got
    assert not any(v.startswith(("SOCKPASS_T_GONE=", "SOCKPASS_T_NEVER=")) for v in got)
    assert f"PATH={os.environ['PATH']}" in got  # the rest is inherited
    # Over a replaced environment.
    assert env_of(env={"X": "1", "Z": "3"}, setenv={"X": None, "Y": "2"}) == ["Z=3", "Y=2"]

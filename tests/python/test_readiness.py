"""Readiness over real child processes: pipe, sd_notify, s6 fd:N; children
that die first, timeouts, and bad input."""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from conftest import TIMEOUT, open_fds
from sockpass import BadRequestError
from sockpass.readiness import Readiness, notify_ready, report_ready_fd, send_notify

# The child does some work, says it is ready the way it is told, then waits
# for stdin to close so the parent can look at it while it runs.
CHILD = textwrap.dedent(
    """
    import os, sys, sockpass.readiness as r
    how = sys.argv[1]
    if how == "pipe":
        os.close(int(sys.argv[2]))
    elif how == "fd":
        r.report_ready_fd(int(sys.argv[2]))
    elif how == "notify":
        assert r.notify_ready()
    elif how == "exit":
        sys.exit(3)
    sys.stdin.read()
    """
)


def _child(how: str, fd: int | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-c", CHILD, how] + ([str(fd)] if fd is not None else [])
    return subprocess.Popen(
        args, stdin=subprocess.PIPE, pass_fds=[fd] if fd is not None else [], env={**os.environ, **(env or {})}
    )


def _finish(p: subprocess.Popen[bytes]) -> int:
    assert p.stdin is not None
    p.stdin.close()
    return p.wait(TIMEOUT)


class _made:
    """Readiness.create as a context manager that also closes a child fd left over."""

    def __init__(self, method: str) -> None:
        self.r, self.fd = Readiness.create(method)

    def __enter__(self) -> tuple[Readiness, int | None]:
        return self.r, self.fd

    def __exit__(self, *a: object) -> None:
        self.r.close()


@pytest.mark.parametrize("method,how", [("pipe", "pipe"), ("fd:5", "fd"), ("notify", "notify")])
def test_child_reports_ready(method: str, how: str, no_fd_leak: None) -> None:
    with _made(method) as (r, child_fd):
        assert r.method == method and not r.ready and not r.check()
        env = {"NOTIFY_SOCKET": r.notify_socket} if r.notify_socket else {}
        if method == "notify":
            assert child_fd is None and r.notify_socket
        p = _child(how, child_fd, env)
        if child_fd is not None:
            os.close(child_fd)  # the child has its copy
        try:
            r.wait_child(p.pid, timeout=TIMEOUT)
            assert r.ready and r.check()
        finally:
            assert _finish(p) == 0


def test_notify_socket_dir_removed_on_close() -> None:
    r, fd = Readiness.create("notify")
    assert fd is None and r.notify_socket is not None
    path = pathlib.Path(r.notify_socket)
    assert path.exists() and oct(path.parent.stat().st_mode & 0o777) == "0o700"
    r.close()
    assert not path.parent.exists()


def test_child_exits_before_ready(no_fd_leak: None) -> None:
    r, fd = Readiness.create("pipe")
    assert fd is not None
    with r:
        # The child gets no copy of the write end, and exits 3.
        p = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
        with pytest.raises(OSError) as ei:
            r.wait_child(p.pid, timeout=TIMEOUT)
        assert ei.value.errno == 2008 and "exited with status 3" in str(ei.value)
        assert p.wait(TIMEOUT) == 3
        os.close(fd)


def test_timeout_then_ready(no_fd_leak: None) -> None:
    r, fd = Readiness.create("fd:3")
    assert fd is not None
    with r:
        with pytest.raises(TimeoutError) as ei:
            r.wait(timeout=0.05)
        assert ei.value.errno == errno.ETIMEDOUT and not r.ready
        os.write(fd, b"\n")
        r.wait(timeout=TIMEOUT)
        assert r.ready
        os.close(fd)


def test_blocking_wait_in_thread_lets_python_run(no_fd_leak: None) -> None:
    import threading

    r, fd = Readiness.create("pipe")
    assert fd is not None
    with r:
        t = threading.Thread(target=r.wait, kwargs={"timeout": TIMEOUT})
        t.start()
        os.close(fd)  # runs only if the waiting thread released the GIL
        t.join(TIMEOUT)
        assert not t.is_alive() and r.ready


def test_bad_input(tmp_path: pathlib.Path, no_fd_leak: None) -> None:
    for bad in ("bogus", "fd:", "fd:-1", "fd:x", ""):
        with pytest.raises(BadRequestError, match="readiness method"):
            Readiness.create(bad)
    with pytest.raises(TypeError):
        Readiness.create(5)  # type: ignore[arg-type]
    r, fd = Readiness.create("pipe")
    assert fd is not None
    with r:
        with pytest.raises(ValueError, match="timeout"):
            r.wait(timeout=-1)
        with pytest.raises(ValueError):
            r.wait(timeout=float("nan"))
        with pytest.raises(TypeError, match="timeout must be a number"):
            r.wait(timeout="1")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            r.wait_child("1")  # type: ignore[arg-type]
    os.close(fd)
    with pytest.raises(ValueError, match="closed sockpass readiness"):
        r.check()
    r.close()  # twice: a no-op
    # report_ready_fd takes an fd that must be open.
    closed = os.open("/dev/null", os.O_RDONLY)
    os.close(closed)
    with pytest.raises(OSError, match=f"fd {closed} is not open"):
        report_ready_fd(closed)
    # sd_notify to nowhere: the OS error, by errno.
    with pytest.raises(FileNotFoundError):
        send_notify(str(tmp_path / "none"), b"READY=1")
    with pytest.raises(TypeError):
        send_notify(str(tmp_path / "none"), "READY=1")  # type: ignore[arg-type]


def test_notify_ready_without_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    before = open_fds()
    assert notify_ready() is False
    assert open_fds() == before


def test_send_notify_then_check() -> None:
    with Readiness.create("notify")[0] as r:
        assert r.notify_socket is not None
        send_notify(r.notify_socket, b"STATUS=starting\n")
        assert not r.check()
        send_notify(r.notify_socket, b"READY=1\n")
        r.wait(timeout=TIMEOUT)
        assert r.ready

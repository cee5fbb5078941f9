"""sockpass.Supervisor with real processes: a Python server takes a TCP
listener at fd 3, says READY=1 on NOTIFY_SOCKET and answers each connection
with its pid and the inode of its fd 3. A restart gives a new pid on the
same socket with the old instance reaped; a new instance that exits 3 at
start raises ChildFailedError with its status while the old one serves on;
one never ready raises TimeoutError after ready_timeout, stopped by
SIGTERM; without a readiness method the grace period stands in; terminate
and wait give the current instance's return code; no fd is left behind."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import sys
import textwrap

import pytest

import sockpass

SERVER = textwrap.dedent(
    """
    import os, socket, sys
    mode = open(sys.argv[1]).read().strip()
    if mode == "exit3":
        sys.exit(3)
    l = socket.socket(fileno=3)
    if mode != "hang" and os.environ.get("NOTIFY_SOCKET"):
        n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        n.connect(os.environ["NOTIFY_SOCKET"])
        n.send(b"READY=1")
        n.close()
    while True:
        c, _ = l.accept()
        c.sendall(("%d %d" % (os.getpid(), os.fstat(3).st_ino)).encode())
        c.close()
    """
)


def ask(port: int) -> tuple[int, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        data = b""
        while chunk := c.recv(64):
            data += chunk
    pid, ino = data.split()
    return int(pid), int(ino)


def gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


@pytest.fixture
def listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s


def test_restart_keeps_the_socket(tmp_path: pathlib.Path, listener: socket.socket, no_fd_leak: None) -> None:
    mode = tmp_path / "mode"
    mode.write_text("ok")
    port = listener.getsockname()[1]
    ino = os.fstat(listener.fileno()).st_ino
    with listener:
        sup = sockpass.Supervisor(
            [sys.executable, "-S", "-c", SERVER, str(mode)],
            fds=[(listener, "web")],
            ready="notify",
            ready_timeout=5.0,  # the never-ready instance waits this long
        )
    with sup:
        sup.wait_ready(30)
        first = sup.pid
        assert first is not None
        assert ask(port) == (first, ino)

        second = sup.restart()
        assert second != first and sup.pid == second
        assert ask(port) == (second, ino)
        assert gone(first)

        mode.write_text("exit3")
        with pytest.raises(sockpass.ChildFailedError) as e:
            sup.restart()
        status = e.value.status  # type: ignore[attr-defined]
        assert os.waitstatus_to_exitcode(status) == 3
        assert "exited with status 3" in str(e.value)
        assert ask(port) == (second, ino)

        mode.write_text("hang")
        with pytest.raises(TimeoutError) as t:
            sup.restart()
        assert os.waitstatus_to_exitcode(t.value.status) == -signal.SIGTERM  # type: ignore[attr-defined]
        assert ask(port) == (second, ino)

        assert sup.wait(0) is None
        sup.terminate()
        assert sup.wait(30) == -signal.SIGTERM
        assert sup.pid is None
        with pytest.raises(sockpass.BadRequestError):
            sup.restart()
    assert gone(second)


def test_grace_without_readiness(tmp_path: pathlib.Path, listener: socket.socket, no_fd_leak: None) -> None:
    mode = tmp_path / "mode"
    mode.write_text("ok")
    port = listener.getsockname()[1]
    with listener:
        sup = sockpass.Supervisor(
            [sys.executable, "-S", "-c", SERVER, str(mode)], fds=[listener], grace=5, drain_timeout=5
        )
    with sup:
        first, ino = ask(port)
        assert first == sup.pid
        mode.write_text("exit3")
        with pytest.raises(sockpass.ChildFailedError):
            sup.restart()
        mode.write_text("ok")
        second = sup.restart()
        assert ask(port) == (second, ino)
        sup.send_signal(signal.SIGKILL)
        assert sup.wait(30) == -signal.SIGKILL


def test_bad_input() -> None:
    with pytest.raises(sockpass.BadRequestError):
        sockpass.Supervisor(["true"], ready="bogus")
    with pytest.raises(sockpass.BadRequestError):
        sockpass.Supervisor(["true"], grace=-1)
    with pytest.raises(sockpass.ChildFailedError):
        sockpass.Supervisor(["/nonexistent/program"])

"""Server sockets handed over by a manager: eager and lazy, path and
abstract names, peer credentials, and bad input."""

from __future__ import annotations

import errno
import os
import pathlib
import socket
import sys
import threading

import pytest

import sockpass
from conftest import TIMEOUT, open_fds
from sockpass import BadRequestError
from sockpass.notify import Creds, LazyServer, ServerSocket, bind_in_namespace, notifier_pair


def _talk(server: ServerSocket, addr: str | bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as cli:
        cli.settimeout(TIMEOUT)
        cli.connect(addr)
        conn, creds = server.accept()
        with conn:
            assert creds == Creds(os.getpid(), os.getuid(), os.getgid())
            assert not conn.get_inheritable()
            cli.sendall(b"hello")
            assert conn.recv(16) == b"hello"


def test_eager_path(tmp_path: pathlib.Path, no_fd_leak: None) -> None:
    path = str(tmp_path / "bus.sock")
    sock = bind_in_namespace(path, mode=0o600)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    with ServerSocket(sock) as server:
        assert sock.fileno() == -1  # the ServerSocket took the fd over
        assert server.ready and server.notifier_fileno() is None
        assert server.path == os.fsencode(path)
        assert server.dbus_address.startswith("unix:path=")
        _talk(server, path)


def test_eager_abstract(no_fd_leak: None) -> None:
    name = f"\0sockpass-test-{os.getpid()}-{os.urandom(4).hex()}"
    with ServerSocket(bind_in_namespace(name)) as server:
        assert server.path == os.fsencode(name)
        assert server.dbus_address.startswith("unix:abstract=sockpass-test-")
        _talk(server, name)


def test_lazy_bind_later(tmp_path: pathlib.Path, no_fd_leak: None) -> None:
    path = str(tmp_path / "lazy.sock")
    lazy = LazyServer()
    fd, notifier = lazy.take_daemon_socket(), lazy.take_daemon_notifier()
    assert fd is not None and notifier is not None
    assert lazy.take_daemon_socket() is None  # once
    with ServerSocket(fd, notifier) as server:
        assert not server.ready and server.path == b"" and server.notifier_fileno() is not None
        assert not server.check()
        with pytest.raises(OSError) as ei:
            server.accept()  # not before readiness: an error, never a hang
        assert ei.value.errno == 2007
        # The manager binds from another thread while the daemon waits.
        t = threading.Thread(target=lazy.bind_and_notify, args=(path,))
        t.start()
        server.wait(timeout=TIMEOUT)
        t.join(TIMEOUT)
        assert server.ready and server.path == os.fsencode(path)
        _talk(server, path)
    with pytest.raises(ValueError, match="closed"):
        lazy.bind_and_notify(path)  # once


def test_lazy_given_up(no_fd_leak: None) -> None:
    lazy = LazyServer()
    fd, notifier = lazy.take_daemon_socket(), lazy.take_daemon_notifier()
    assert fd is not None and notifier is not None
    with ServerSocket(fd, notifier) as server:
        lazy.close()  # the manager gives up: the notifier fires on a socket that never listens
        with pytest.raises(OSError) as ei:
            server.wait(timeout=TIMEOUT)
        assert ei.value.errno == 2007 and not server.ready


def test_wait_timeout(no_fd_leak: None) -> None:
    r, w = notifier_pair()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with ServerSocket(s, r) as server:
        with pytest.raises(TimeoutError):
            server.wait(timeout=0.05)
        assert not server.ready
    os.close(w)


@pytest.mark.skipif(os.geteuid() != 0, reason="joining a namespace (setns) needs root")
def test_bind_in_another_processes_namespace(tmp_path: pathlib.Path, no_fd_leak: None) -> None:
    import subprocess

    # A process in a fresh network namespace; the abstract name lives there only.
    with subprocess.Popen(["unshare", "--net", "sleep", "300"]) as p:
        try:
            name = f"\0sockpass-ns-{os.urandom(4).hex()}"

            def in_new_ns() -> bool:
                return os.readlink(f"/proc/{p.pid}/ns/net") != os.readlink("/proc/self/ns/net")

            from conftest import wait_for

            wait_for("unshare to enter its namespace", in_new_ns)
            with ServerSocket(bind_in_namespace(name, target_pid=p.pid)) as server:
                assert server.ready
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as cli:
                    with pytest.raises(ConnectionRefusedError):
                        cli.connect(name)  # not in our namespace
        finally:
            p.kill()


def test_bad_server_sockets(tmp_path: pathlib.Path) -> None:
    before = open_fds()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(BadRequestError, match="SOCK_DGRAM socket, not SOCK_STREAM"):
        ServerSocket(udp)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(BadRequestError, match="not a unix-domain socket"):
        ServerSocket(tcp)
    unbound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(BadRequestError, match="not listening"):
        ServerSocket(unbound)
    a, b = socket.socketpair()
    with pytest.raises(BadRequestError, match="connected to a peer") as connected:
        ServerSocket(a)
    assert connected.value.errno == errno.EISCONN
    b.close()
    f = os.open("/dev/null", os.O_RDONLY)
    with pytest.raises(BadRequestError, match="not a socket") as not_sock:
        ServerSocket(f)
    # Each kind of bad input has its own errno, as in C.
    assert not_sock.value.errno == errno.ENOTSOCK
    closed = os.open("/dev/null", os.O_RDONLY)
    os.close(closed)
    with pytest.raises(BadRequestError, match="not open"):
        ServerSocket(closed)
    with pytest.raises(TypeError):
        ServerSocket("3")  # type: ignore[arg-type]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(BadRequestError) as ei:
        ServerSocket(s, os.open("/dev/null", os.O_RDONLY))  # a notifier must be a pipe
    assert ei.value.errno == errno.EINVAL
    # Refused fds were taken over and closed: nothing is left open.
    assert open_fds() == before


def test_bad_bind_input(tmp_path: pathlib.Path, no_fd_leak: None) -> None:
    with pytest.raises(OSError):
        bind_in_namespace(str(tmp_path / "no-such-dir" / "x.sock"))
    with pytest.raises(OSError):
        bind_in_namespace("x" * 200)
    with pytest.raises(TypeError):
        bind_in_namespace(5)  # type: ignore[arg-type]
    for kw in ({"mode": -1}, {"mode": 2**40}, {"backlog": 2**40}, {"owner": (-1, 0)}):
        with pytest.raises(BadRequestError, match="out of range"):
            bind_in_namespace(str(tmp_path / "m.sock"), **kw)
    assert not (tmp_path / "m.sock").exists()


def test_closed_server_socket(tmp_path: pathlib.Path, no_fd_leak: None) -> None:
    server = ServerSocket(bind_in_namespace(str(tmp_path / "c.sock")))
    fd = server.detach()
    with pytest.raises(ValueError, match="closed sockpass server socket"):
        server.accept()
    server.close()
    os.close(fd)


def test_seqpacket_server(tmp_path: pathlib.Path, no_fd_leak: None) -> None:
    path = str(tmp_path / "seq.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(path)
    s.listen()
    with pytest.raises(BadRequestError, match="SOCK_SEQPACKET socket, not SOCK_STREAM"):
        ServerSocket(s)  # taken over and closed
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    os.unlink(path)
    s.bind(path)
    s.listen()
    with ServerSocket(s, type=socket.SOCK_SEQPACKET) as server:
        assert server.path == os.fsencode(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as cli:
            cli.settimeout(TIMEOUT)
            cli.connect(path)
            conn, creds = server.accept()
            with conn:
                assert creds.pid == os.getpid()
                cli.send(b"one")
                cli.send(b"two")
                assert (conn.recv(16), conn.recv(16)) == (b"one", b"two")  # message boundaries kept


def test_from_activation(tmp_path: pathlib.Path, no_fd_leak: None) -> None:
    # Not activated (no LISTEN_PID for this process): None, nothing taken.
    assert "LISTEN_PID" not in os.environ
    assert ServerSocket.from_activation() is None
    # Activated by sockpass.spawn: the child gets the listening socket on
    # fd 3 with LISTEN_FDS=1 and LISTEN_PID its own pid.
    path = str(tmp_path / "act.sock")
    child = (
        "import os, sockpass.notify as n\n"
        "s = n.ServerSocket.from_activation()\n"
        "assert s is not None and 'LISTEN_PID' not in os.environ\n"
        f"assert s.path == {os.fsencode(path)!r}\n"
        "c, cr = s.accept()\n"
        "c.sendall(b'activated')\n"
        "c.close()\n"
        "assert n.ServerSocket.from_activation() is None\n"
    )
    with bind_in_namespace(path) as listener:
        proc = sockpass.spawn([sys.executable, "-c", child], fds=[listener])
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as cli:
            cli.settimeout(TIMEOUT)
            cli.connect(path)
            assert cli.recv(16) == b"activated"
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, 9)
            proc.wait()

"""The connection is the lease: a killed process loses its references, a
vanished broker is reported, not hidden."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import textwrap

import pytest

import sockpass
from conftest import TIMEOUT, Broker, free_port, open_fds, read_marked_line, run_python, wait_for

CHILD = textwrap.dedent(
    """
    import os, sys, sockpass
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    fds = [sockpass.request_socket("127.0.0.1", 0, p, sockpass.SHARE_NONE, "victim")[0]
           for p in ("udp", "tcp", "udp")]
    fds.append(sockpass.request_socket("127.0.0.1", int(os.environ["SHARED_PORT"]), "udp",
                                       sockpass.SHARE_ANY, "shared")[0])
    print("@@ ready", flush=True)
    sys.stdin.read()  # hold the sockets until killed
    """
)


@pytest.mark.parametrize("how", ["default-client", "socket_path"])
def test_sigkill_releases_child_sockets(broker: Broker, how: str) -> None:
    shared_port = free_port()
    with broker.client() as survivor:
        # Someone else shares one of the child's sockets and must keep it.
        s_fd, _ = survivor.request_socket("127.0.0.1", shared_port, "udp", sockpass.SHARE_ANY, "shared")
        code = CHILD
        if how == "socket_path":
            code = code.replace('"victim")', '"victim", socket_path=os.environ["BROKER"])').replace(
                '"shared")', '"shared", socket_path=os.environ["BROKER"])'
            )
            env = {"SOCKPASS_SOCKET": "/nonexistent/sockpassd.sock", "BROKER": broker.path}
        else:
            env = {"SOCKPASS_SOCKET": broker.path}
        env["SHARED_PORT"] = str(shared_port)
        with run_python(code, env) as child:
            assert read_marked_line(child) == "ready"
            mine = [s for s in broker.status() if any(h.pid == child.pid for h in s.holders)]
            assert len(mine) == 4
            assert broker.refs() == 5
            child.send_signal(signal.SIGKILL)
            assert child.wait(TIMEOUT) == -signal.SIGKILL
        # The broker notices the closed connection on its own; wait for it, bounded.
        wait_for(
            "the broker to drop the killed child's references",
            lambda: not any(h.pid == child.pid for s in broker.status() for h in s.holders),
        )
        [row] = broker.status()
        assert (row.port, row.refs, [h.pid for h in row.holders]) == (shared_port, 1, [os.getpid()])
        os.close(s_fd)


def test_broker_not_running_explicit_client(tmp_path: pathlib.Path, no_fd_leak: None) -> None:
    path = os.path.join(tmp_path, "nothing-here.sock")
    with pytest.raises(sockpass.BrokerUnavailableError) as ei:
        sockpass.Client(path)
    e = ei.value
    assert isinstance(e, ConnectionError) and isinstance(e, OSError)
    assert e.errno == 2004 and e.strerror is not None and path in e.strerror


def test_broker_not_running_socket_path(tmp_path: pathlib.Path, no_fd_leak: None) -> None:
    path = os.path.join(tmp_path, "nothing-here.sock")
    for _ in range(3):
        with pytest.raises(sockpass.BrokerUnavailableError) as ei:
            sockpass.request_socket("127.0.0.1", 0, "udp", socket_path=path)
        assert ei.value.errno == 2004
    with pytest.raises(sockpass.BrokerUnavailableError):
        sockpass.release_socket("00" * 24, socket_path=path)


def test_broker_not_running_default_client(tmp_path: pathlib.Path) -> None:
    # The default client lives for the process, so ask a fresh process.
    code = textwrap.dedent(
        """
        import os, sockpass
        before = sorted(os.listdir("/proc/self/fd"))
        for f in (lambda: sockpass.request_socket("127.0.0.1", 0, "udp"),
                  lambda: sockpass.release_socket(3),
                  lambda: sockpass.status()):
            try:
                f()
                print("@@ no error")
            except sockpass.BrokerUnavailableError as e:
                print("@@", e.errno, bool(e.strerror))
        print("@@", sorted(os.listdir("/proc/self/fd")) == before)
        """
    )
    with run_python(code, {"SOCKPASS_SOCKET": os.path.join(tmp_path, "none.sock")}) as child:
        lines = [read_marked_line(child) for _ in range(4)]
        assert child.wait(TIMEOUT) == 0
    assert lines == ["2004 True"] * 3 + ["True"]


def test_default_client_reconnects_after_broker_restart(tmp_path: pathlib.Path) -> None:
    code = textwrap.dedent(
        """
        import os, sys, sockpass
        fd, tok = sockpass.request_socket("127.0.0.1", 0, "udp")
        print("@@ got", flush=True)
        sys.stdin.readline()  # the broker is restarted meanwhile
        # The first call succeeds: its send failed on the old connection,
        # before any broker got it, so it is retried once on a new one (a
        # new lease).
        fd2, tok2 = sockpass.request_socket("127.0.0.1", 0, "udp")
        print("@@ again", sockpass.release_socket(tok2), flush=True)
        try:
            sockpass.release_socket(tok)
            print("@@ released?!", flush=True)
        except sockpass.TokenError as e:
            print("@@ gone with the old broker", e.errno, flush=True)
        os.close(fd); os.close(fd2)
        """
    )
    d = pathlib.Path(tmp_path)
    b = Broker(d)
    try:
        with run_python(code, {"SOCKPASS_SOCKET": b.path}) as child:
            assert read_marked_line(child) == "got"
            b.stop()
            b = Broker(d)  # same path, new broker: the old lease is gone
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
            assert read_marked_line(child) == "again 0"
            assert read_marked_line(child) == "gone with the old broker 2002"
            assert child.wait(TIMEOUT) == 0
    finally:
        b.stop()


def test_broker_gone_keeps_the_sockets_usable(broker: Broker) -> None:
    c = broker.client()
    s = c.socket("127.0.0.1", 0, "udp")
    broker.stop()
    before = open_fds()
    with pytest.raises(sockpass.BrokerUnavailableError):
        c.request_socket("127.0.0.1", 0, "udp")
    # Nothing leaked: the lost connection itself is closed, and the client
    # says it can no longer work until reconnect().
    after = open_fds()
    assert after.items() <= before.items() and len(before) - len(after) == 1
    assert c.closed
    # The socket we hold is ours: it still works without the broker.
    with s, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        s.settimeout(TIMEOUT)
        tx.sendto(b"still here", s.getsockname())
        assert s.recv(32) == b"still here"
    c.close()  # the broker is gone, and with it every reference: not an error
    assert c.closed

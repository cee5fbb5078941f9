"""sockpass.spawn(catch_bind=...) with real processes: a python3 child binds
its own TCP socket and holds the broker's (same inode as a request that
shares it), serves a real connection on it, and once it has exited the
broker holds no reference for it; bad ports and an unreachable broker raise
and start nothing."""

from __future__ import annotations

import os
import socket
import sys
import textwrap

import pytest

import sockpass
from conftest import TIMEOUT, Broker, free_port, wait_for

# Binds TCP 127.0.0.1:argv[1], reports its socket's inode on fd 3, serves
# one connection.
SERVER = textwrap.dedent(
    """
    import os, socket, sys
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen(1)
    os.write(3, b"%d\\n" % os.fstat(s.fileno()).st_ino)
    c, _ = s.accept()
    c.sendall(b"caught")
    c.close()
    """
)


def test_a_caught_bind_holds_the_brokers_socket(broker: Broker) -> None:
    port = free_port(socket.SOCK_STREAM)
    r, w = os.pipe()
    child = sockpass.spawn(
        [sys.executable, "-c", SERVER, str(port)],
        fds=[w],
        catch_bind="inet",
        catch_socket=broker.path,
        catch_share=sockpass.Share.ANY,
        catch_app="pytest",
    )
    os.close(w)
    try:
        with os.fdopen(r, "rb") as rf:
            inode = int(rf.readline())
        # The broker holds it for the child; sharing it gives the same socket.
        assert broker.refs() == 1
        with broker.client() as c:
            fd, _token = c.request_socket("127.0.0.1", port, "tcp", share_mode=sockpass.Share.ANY, app_name="pytest")
            try:
                assert os.fstat(fd).st_ino == inode
            finally:
                os.close(fd)
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
            assert conn.recv(100) == b"caught"
        assert child.wait(TIMEOUT) == 0
        # Every filtered process gone: the supervisor's references go with it.
        wait_for("the broker to hold no reference", lambda: broker.refs() == 0)
    finally:
        child.kill()
        child.wait(TIMEOUT)


def test_bad_ports_and_no_broker_start_nothing(broker: Broker, tmp_path: object) -> None:
    marker = os.path.join(str(tmp_path), "started")
    argv = [sys.executable, "-c", f"open({marker!r}, 'w')"]
    for ports in ("80-70", "0", "x"):
        with pytest.raises(sockpass.BadRequestError):
            sockpass.spawn(argv, catch_bind=ports, catch_socket=broker.path)
    with pytest.raises(sockpass.BrokerUnavailableError):
        sockpass.spawn(argv, catch_bind=True, catch_socket=os.path.join(str(tmp_path), "none.sock"))
    assert not os.path.exists(marker)


# Binds TCP 127.0.0.1:argv[1], reports "pid inode" on fd 3, serves until
# stopped.
SERVING = textwrap.dedent(
    """
    import os, socket, sys
    s = socket.socket()
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen(16)
    os.write(3, b"%d %d\\n" % (os.getpid(), os.fstat(s.fileno()).st_ino))
    while True:
        c, _ = s.accept()
        c.sendall(b"pid %d" % os.getpid())
        c.close()
    """
)


def test_a_supervisor_restarts_a_program_that_binds_itself(broker: Broker) -> None:
    port = free_port(socket.SOCK_STREAM)
    r, w = os.pipe()
    sup = sockpass.Supervisor(
        [sys.executable, "-c", SERVING, str(port)],
        fds=[w],
        grace=0.5,
        drain_timeout=TIMEOUT,
        catch_bind="inet",
        catch_socket=broker.path,
        catch_share=sockpass.Share.SAMEAPP,
        catch_app="pytest-restart",
    )
    os.close(w)
    try:
        with os.fdopen(r, "rb") as rf:
            old_pid, inode = map(int, rf.readline().split())
            new_pid = sup.restart()
            # The new instance bound the same address: sameapp gave it the
            # old instance's socket, so nothing was refused in between.
            pid, new_inode = map(int, rf.readline().split())
        assert (pid, new_inode) == (new_pid, inode)
        assert new_pid != old_pid and sup.pid == new_pid
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
            assert conn.recv(100) == b"pid %d" % new_pid
    finally:
        sup.terminate()
        sup.wait()
        sup.close()
    wait_for("the broker to hold no reference", lambda: broker.refs() == 0)

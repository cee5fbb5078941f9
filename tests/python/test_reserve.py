"""Reservations: one client has the broker hold a socket, another picks it up by token."""

from __future__ import annotations

import errno
import os
import pathlib
import socket
import textwrap

import pytest

import sockpass
from conftest import TIMEOUT, Broker, open_fds, read_marked_line, run_python, wait_for


def test_reserve_then_pickup_in_another_process(broker: Broker, no_fd_leak: None) -> None:
    with broker.client() as manager:
        r = manager.reserve_socket("127.0.0.1", 0, "udp", sockpass.SHARE_NONE, "worker")
        assert isinstance(r, sockpass.Reservation) and r.port > 0
        assert manager.held() == []  # no fd: the broker holds the socket
        [row] = broker.status()
        assert row.port == r.port and [h.reserved for h in row.holders] == [True]
        code = textwrap.dedent(
            """
            import os, socket, sys, sockpass
            fd, tok = sockpass.pickup_socket(os.environ["TOKEN"])
            s = socket.socket(fileno=fd)
            print("@@", s.getsockname()[1], flush=True)
            print("@@", s.recv(32).decode(), flush=True)
            """
        )
        with run_python(code, {"SOCKPASS_SOCKET": broker.path, "TOKEN": r.token}) as child:
            assert read_marked_line(child) == str(r.port)
            [row] = broker.status()
            assert [(h.pid, h.reserved) for h in row.holders] == [(child.pid, False)]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                tx.sendto(b"for the worker", ("127.0.0.1", r.port))
            assert read_marked_line(child) == "for the worker"
            assert child.wait(TIMEOUT) == 0
        wait_for("the worker's reference to go with it", lambda: broker.status() == [])


def test_pickup_twice_and_bad_tokens(broker: Broker) -> None:
    with broker.client() as manager, broker.client() as worker:
        r = manager.reserve_socket("127.0.0.1", 0, "tcp")
        fd, tok = worker.pickup(r.token)
        assert worker.held() == [(fd, tok)]
        before = (open_fds(), broker.status())
        with pytest.raises(sockpass.TokenError) as ei:
            worker.pickup(r.token)  # one use only
        assert ei.value.errno in (2002, 2006)
        with pytest.raises(ValueError, match="invalid token") as ve:
            worker.pickup("nope")
        assert isinstance(ve.value, OSError) and ve.value.errno == errno.EINVAL
        with pytest.raises(TypeError, match="token must be a str"):
            worker.pickup(5)  # type: ignore[arg-type]
        assert (open_fds(), broker.status()) == before
        assert worker.release(fd) == 0
        os.close(fd)


def test_reservation_expires(tmp_path: pathlib.Path, no_fd_leak: None) -> None:
    b = Broker(tmp_path, "--reservation-ttl", "0.2")
    try:
        with b.client() as manager, b.client() as worker:
            r = manager.reserve_socket("127.0.0.1", 0, "udp")
            wait_for("the reservation to expire", lambda: b.status() == [])
            with pytest.raises(sockpass.TokenError) as ei:
                worker.pickup(r.token)
            assert ei.value.errno in (2002, 2006)
    finally:
        b.stop()


def test_module_reserve_and_pickup(default_broker: Broker, no_fd_leak: None) -> None:
    r = sockpass.reserve_socket("127.0.0.1", 0, "udp", sockpass.SHARE_ANY, "m")
    fd, tok = sockpass.pickup_socket(r.token)
    with socket.socket(fileno=fd) as s:
        assert s.getsockname() == ("127.0.0.1", r.port)
    assert sockpass.release_socket(tok) == 0


def test_client_from_a_handed_in_connection(broker: Broker, no_fd_leak: None) -> None:
    """A process that cannot see the broker's path (a container) gets a
    connection made for it and picks up through it."""
    with broker.client() as manager:
        r = manager.reserve_socket("127.0.0.1", 0, "udp", sockpass.SHARE_NONE, "ctr")
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.connect(broker.path)
        with sockpass.Client.from_fd(conn.detach()) as c:
            assert c.path == "" and c.broker_pid == broker.pid
            fd, tok = c.pickup(r.token)
            with socket.socket(fileno=fd) as s:
                assert s.getsockname()[1] == r.port
            assert tok == r.token
    wait_for("the reference to go", lambda: broker.status() == [])
    rd, wr = os.pipe()
    os.close(wr)
    with pytest.raises(sockpass.BadRequestError, match="not a socket"):
        sockpass.Client.from_fd(rd)  # taken over and closed


def test_upgrade_keeps_sockets(broker: Broker, no_fd_leak: None) -> None:
    with broker.client() as c:
        fd, tok = c.request_socket("127.0.0.1", 0, "udp", sockpass.SHARE_ANY, "up")
        assert c.upgrade() == broker.pid  # in place: same pid
        [row] = broker.status()
        assert row.refs == 1
        assert c.release(tok) == 0
        os.close(fd)
        with pytest.raises(sockpass.BadRequestError, match="absolute path"):
            c.upgrade("relative/sockpassd")

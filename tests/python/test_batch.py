"""Batch requests: many sockets in one call, all or nothing."""

from __future__ import annotations

import os
import socket

import pytest

import sockpass
from conftest import Broker, free_port


def free_ports(n: int, *, not_: tuple[int, ...] = ()) -> list[int]:
    """``n`` distinct free ports (the kernel's picks can repeat)."""
    out: list[int] = []
    while len(out) < n:
        p = free_port()
        if p not in out and p not in not_:
            out.append(p)
    return out


def test_a_batch_of_cached_and_new_sockets(broker: Broker, no_fd_leak: None) -> None:
    ports = free_ports(40)
    with broker.client() as anchor, broker.client() as c:
        held = anchor.request_sockets([f"udp:127.0.0.1:{p}" for p in ports], sockpass.SHARE_ANY, "app")
        specs: list[sockpass.BatchItem] = [f"udp:127.0.0.1:{p}" for p in ports]
        specs.append(("tcp:127.0.0.1:0?backlog=4", sockpass.SHARE_NONE))
        specs.append(("udp:127.0.0.1:0", sockpass.Share.NONE, "other"))
        got = c.request_sockets(specs, sockpass.SHARE_ANY, "app")
        assert len(got) == 42
        for (fd, token), (afd, _), p in zip(got, held, ports):
            assert os.fstat(fd).st_ino == os.fstat(afd).st_ino
            with socket.socket(fileno=os.dup(fd)) as s:
                assert s.getsockname()[1] == p
        assert {h.app for row in broker.status() for h in row.holders} == {"app", "other"}
        assert broker.refs() == 40 + 42
        fd, token = got[40]
        assert c.release(token) == 0
        assert c.release_all() == 41
        for fd, _ in got + held:
            os.close(fd)
        assert anchor.release_all() == 40
    assert broker.refs() == 0


def test_a_refused_batch_leaves_nothing(broker: Broker, no_fd_leak: None) -> None:
    taken = free_port()
    with broker.client() as anchor, broker.client() as c:
        afd, _ = anchor.request_spec(f"udp:127.0.0.1:{taken}", sockpass.SHARE_NONE, "other")
        new = free_ports(50, not_=(taken,))
        specs = [f"udp:127.0.0.1:{p}" for p in new] + [f"udp:127.0.0.1:{taken}"]
        with pytest.raises(sockpass.ShareError, match="spec 50 of 51: "):
            c.request_sockets(specs, sockpass.SHARE_ANY)
        assert c.held() == []
        assert broker.refs() == 1 and len(broker.status()) == 1
        for p in new:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", p))  # closed by the broker again
        os.close(afd)


def test_bad_batches_are_refused_before_sending(broker: Broker) -> None:
    with broker.client() as c:
        with pytest.raises(TypeError, match="not a str"):
            c.request_sockets("udp:127.0.0.1:0", sockpass.SHARE_NONE)
        with pytest.raises(TypeError, match=r"specs\[1\]"):
            c.request_sockets(["udp:127.0.0.1:0", 5], sockpass.SHARE_NONE)  # type: ignore[list-item]
        with pytest.raises(sockpass.BadRequestError, match=r"specs\[0\]"):
            c.request_sockets(["udp:nowhere"], sockpass.SHARE_NONE)
        with pytest.raises(sockpass.BadRequestError, match="share mode"):
            c.request_sockets([("udp:127.0.0.1:0", 9)], sockpass.SHARE_NONE)
        assert c.request_sockets([], sockpass.SHARE_NONE) == []
        assert broker.refs() == 0


def test_the_module_function_uses_the_default_client(default_broker: Broker) -> None:
    got = sockpass.request_sockets(["udp:127.0.0.1:0", ("tcp:127.0.0.1:0", sockpass.SHARE_ANY)])
    assert len(got) == 2
    for fd, token in got:
        assert sockpass.release_socket(token) == 0
        os.close(fd)


def test_a_reply_spin_receives_as_blocking(broker: Broker, no_fd_leak: None) -> None:
    """Issue 25 item 4: a client polling for its replies first gets them as
    a blocking one does (fds, a batch, errors)."""
    ports = free_ports(3)
    with broker.client() as c, broker.client() as other:
        c.set_reply_spin(50)
        other.set_reply_spin(5_000_000)  # capped at 1000 µs
        got = c.request_sockets([f"udp:127.0.0.1:{p}" for p in ports], sockpass.SHARE_NONE, "spin")
        assert len(got) == 3
        with pytest.raises(sockpass.ShareError):
            other.request_socket("127.0.0.1", ports[0], "udp", sockpass.SHARE_ANY, "x")
        for fd, token in got:
            assert c.release(token) == 0
            os.close(fd)
        with pytest.raises(OverflowError):
            c.set_reply_spin(-1)

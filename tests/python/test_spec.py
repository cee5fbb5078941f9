"""Spec strings carry socket options; per_worker gives each worker its own
socket in a reuseport group."""

from __future__ import annotations

import errno
import os
import select
import socket
import time

import pytest

import sockpass
from conftest import TIMEOUT, Broker, free_port, open_fds


def test_spec_options_reach_the_socket(broker: Broker, no_fd_leak: None) -> None:
    port = free_port()
    with broker.client() as c:
        fd, tok = c.request_spec(f"udp:127.0.0.1:{port}?reuseport=1", sockpass.SHARE_ANY, "opt")
        with socket.socket(fileno=fd) as s:
            assert s.getsockname() == ("127.0.0.1", port)
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert c.release(tok) == 0


def test_per_worker_group(broker: Broker, no_fd_leak: None) -> None:
    port = free_port()
    spec = f"udp:127.0.0.1:{port}?reuseport=1"
    with broker.client() as w1, broker.client() as w2, broker.client() as intruder:
        f1, _ = w1.request_spec(spec, sockpass.SHARE_SAMEAPP, "srv", per_worker=True)
        f2, _ = w2.request_spec(spec, sockpass.SHARE_SAMEAPP, "srv", per_worker=True)
        assert os.fstat(f1).st_ino != os.fstat(f2).st_ino, "each worker has its own socket"
        assert len(broker.status()) == 2
        with pytest.raises(sockpass.ShareError):
            intruder.request_spec(spec, sockpass.SHARE_SAMEAPP, "intruder", per_worker=True)
        with socket.socket(fileno=f1) as s1, socket.socket(fileno=f2) as s2:
            # The kernel spreads senders over the group by hash: with 64
            # senders both members get some (all on one: 2**-63).
            for _ in range(64):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                    tx.sendto(b"x", ("127.0.0.1", port))
            received = {s1: 0, s2: 0}
            deadline = time.monotonic() + TIMEOUT
            while sum(received.values()) < 64:
                left = deadline - time.monotonic()
                assert left > 0, f"only {list(received.values())} of 64 arrived"
                ready, _, _ = select.select([s1, s2], [], [], left)
                for r in ready:
                    r.recv(8)
                    received[r] += 1
            assert all(received.values()), list(received.values())


def test_without_per_worker_one_shared_socket(broker: Broker, no_fd_leak: None) -> None:
    spec = f"tcp:127.0.0.1:{free_port(socket.SOCK_STREAM)}?reuseport=1"
    with broker.client() as a, broker.client() as b:
        fa, _ = a.request_spec(spec, sockpass.SHARE_ANY, "x")
        fb, _ = b.request_spec(spec, sockpass.SHARE_ANY, "x")
        assert os.fstat(fa).st_ino == os.fstat(fb).st_ino
        os.close(fa)
        os.close(fb)


@pytest.mark.parametrize(
    "spec", ["", "udp", "udp:", "udp:127.0.0.1", "udp:127.0.0.1:65536", "sctp:127.0.0.1:0", "udp:127.0.0.1:0?bogus=1"]
)
def test_bad_specs(broker: Broker, spec: str) -> None:
    with broker.client() as c:
        before = (open_fds(), broker.status())
        with pytest.raises(ValueError) as ei:
            c.request_spec(spec)
        assert isinstance(ei.value, OSError) and ei.value.errno == errno.EINVAL and ei.value.strerror
        assert (open_fds(), broker.status()) == before


def test_spec_wrong_types(broker: Broker, no_fd_leak: None) -> None:
    with broker.client() as c:
        with pytest.raises(TypeError, match="spec must be a str"):
            c.request_spec(b"udp:127.0.0.1:0")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            c.request_spec("udp:127.0.0.1:0", per_worker="yes")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="share_mode must be an int"):
            c.request_spec("udp:127.0.0.1:0", "any")  # type: ignore[arg-type]
        assert broker.status() == []


def test_module_request_spec(default_broker: Broker, no_fd_leak: None) -> None:
    fd, tok = sockpass.request_spec("udp:127.0.0.1:0")
    assert sockpass.release_socket(fd) == 0
    os.close(fd)

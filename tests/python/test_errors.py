"""Refusals keep the broker's errno: policy -> PermissionError, a port bound
elsewhere -> EADDRINUSE, a limit -> errno 2003."""

from __future__ import annotations

import errno
import os
import pathlib
import socket
from collections.abc import Iterator

import pytest

import sockpass
from conftest import Broker, free_port, open_fds


@pytest.fixture
def strict_broker(tmp_path: pathlib.Path) -> Iterator[Broker]:
    policy = tmp_path / "policy.conf"
    # Like the built-in default for non-root, applied to everyone (root included).
    policy.write_text("deny * port=1-1023\nallow * port=0,1024-65535\n")
    b = Broker(tmp_path, "--policy", str(policy))
    try:
        yield b
    finally:
        b.stop()


def test_policy_refusal_is_permission_error(strict_broker: Broker) -> None:
    with strict_broker.client() as c:
        before = open_fds()
        # Refused before anything is bound, so the port number needs no care.
        with pytest.raises(PermissionError) as ei:
            c.request_socket("127.0.0.1", 1, "udp")
        assert ei.value.errno in (errno.EACCES, errno.EPERM) and ei.value.strerror
        assert open_fds() == before and c.held() == []
        fd, tok = c.request_socket("127.0.0.1", 0, "udp")  # still allowed what the policy allows
        assert c.release(tok) == 0
        os.close(fd)


def test_port_bound_elsewhere_is_eaddrinuse(broker: Broker) -> None:
    with socket.socket() as squatter, broker.client() as c:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        before = open_fds()
        with pytest.raises(OSError) as ei:
            c.request_socket("127.0.0.1", port, "tcp")
        assert type(ei.value) is OSError
        assert ei.value.errno == errno.EADDRINUSE and ei.value.strerror
        assert open_fds() == before
        assert broker.status() == []


def test_limit_reached(tmp_path: pathlib.Path) -> None:
    b = Broker(tmp_path, "--max-refs-per-client", "2")
    try:
        port = free_port()
        with b.client() as c:
            fds = [c.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY, "lim")[0] for _ in range(2)]
            before = open_fds()
            with pytest.raises(OSError) as ei:
                c.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY, "lim")
            assert ei.value.errno == 2003 and ei.value.strerror
            assert open_fds() == before
            assert b.refs() == 2
            for fd in fds:
                os.close(fd)
    finally:
        b.stop()

"""Real UDP and TCP traffic through sockets received from the broker."""

from __future__ import annotations

import os
import socket

import pytest

import sockpass
from conftest import TIMEOUT, Broker, free_port


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HOSTS = ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback"))]


@pytest.mark.parametrize("host", HOSTS)
def test_udp_traffic(default_broker: Broker, no_fd_leak: None, host: str) -> None:
    fd, token = sockpass.request_socket(host, 0, "UDP", sockpass.SHARE_NONE, "udp-echo")
    with socket.socket(fileno=fd) as srv:
        srv.settimeout(TIMEOUT)
        addr = srv.getsockname()[:2]
        with socket.socket(srv.family, socket.SOCK_DGRAM) as cli:
            cli.settimeout(TIMEOUT)
            for i in range(20):
                msg = f"ping {i}".encode()
                cli.sendto(msg, addr)
                data, peer = srv.recvfrom(100)
                assert data == msg
                srv.sendto(b"pong " + data, peer)
                assert cli.recv(100) == b"pong " + msg
    assert sockpass.release_socket(token) == 0


@pytest.mark.parametrize("host", HOSTS)
def test_tcp_traffic(default_broker: Broker, no_fd_leak: None, host: str) -> None:
    fd, token = sockpass.request_socket(host, 0, "TCP", sockpass.SHARE_NONE, "tcp-echo")
    with socket.socket(fileno=fd) as srv:
        srv.settimeout(TIMEOUT)
        # The broker hands TCP sockets over bound; listening is the service's call.
        srv.listen()
        addr = srv.getsockname()[:2]
        with socket.create_connection(addr, timeout=TIMEOUT) as cli:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                payload = os.urandom(256 * 1024)
                cli.sendall(payload)
                got = bytearray()
                while len(got) < len(payload):
                    chunk = conn.recv(65536)
                    assert chunk, "peer closed early"
                    got += chunk
                assert bytes(got) == payload
                conn.sendall(b"done")
                assert cli.recv(16) == b"done"
    assert sockpass.release_socket(fd) == 0


def test_shared_socket_carries_traffic_for_both_holders(broker: Broker, no_fd_leak: None) -> None:
    with broker.client() as a, broker.client() as b:
        port = free_port()
        sa = a.socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY, "pair")
        sb = b.socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY, "pair")
        with sa, sb:
            assert os.fstat(sa.fileno()).st_ino == os.fstat(sb.fileno()).st_ino
            sa.settimeout(TIMEOUT)
            sb.settimeout(TIMEOUT)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli:
                cli.sendto(b"one", ("127.0.0.1", port))
                # Same socket, so either holder's fd reads it.
                assert sb.recv(16) == b"one"
                cli.sendto(b"two", ("127.0.0.1", port))
                assert sa.recv(16) == b"two"

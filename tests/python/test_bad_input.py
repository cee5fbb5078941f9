"""Bad input gets a clear TypeError/ValueError/OSError, leaves no fd behind
and disturbs no other client."""

from __future__ import annotations

import errno
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import sockpass
from conftest import Broker, open_fds


@pytest.fixture
def calm(broker: Broker) -> Iterator[sockpass.Client]:
    """A client to misbehave with, while another client holds a socket;
    afterwards the broker must look exactly as before and no fd be new."""
    with broker.client() as bystander, broker.client() as c:
        b_fd, _ = bystander.request_socket("127.0.0.1", 0, "udp", sockpass.SHARE_NONE, "bystander")
        before_status = broker.status()
        before_fds = open_fds()
        yield c
        assert open_fds() == before_fds
        assert broker.status() == before_status
        assert c.held() == []
        os.close(b_fd)


GOOD: dict[str, Any] = {"address": "127.0.0.1", "port": 0, "proto": "udp", "share_mode": 0, "app_name": "x"}

TYPE_ERRORS = [
    ("address", 127001, "address must be a str, not int"),
    ("address", b"127.0.0.1", "address must be a str, not bytes"),
    ("address", None, "address must be a str, not NoneType"),
    ("port", "53", "port must be an int, not str"),
    ("port", 53.0, "port must be an int, not float"),
    ("port", None, "port must be an int, not NoneType"),
    ("proto", 17, "proto must be a str, not int"),
    ("proto", None, "proto must be a str, not NoneType"),
    ("share_mode", "any", "share_mode must be an int, not str"),
    ("share_mode", 1.0, "share_mode must be an int, not float"),
    ("share_mode", None, "share_mode must be an int, not NoneType"),
    ("app_name", 5, "app_name must be a str, not int"),
    ("app_name", b"app", "app_name must be a str, not bytes"),
    ("app_name", ["app"], "app_name must be a str, not list"),
]

VALUE_ERRORS = [
    ("port", -1, "port -1 out of range"),
    ("port", 65536, "port 65536 out of range"),
    ("port", 2**64, f"port {2**64} out of range"),
    ("port", -(2**70), "out of range"),
    ("proto", "sctp", "unknown protocol"),
    ("proto", "", "unknown protocol"),
    ("proto", "udp ", "unknown protocol"),
    ("share_mode", 3, "unknown share mode 3"),
    ("share_mode", -1, "unknown share mode -1"),
    ("share_mode", 2**70, "unknown share mode"),
    ("address", "", "invalid address"),
    ("address", "localhost", "invalid address"),
    ("address", "256.0.0.1", "invalid address"),
]


def _ways(c: sockpass.Client, broker: Broker) -> dict[str, Callable[..., object]]:
    return {
        "Client.request_socket": c.request_socket,
        "Client.socket": c.socket,
        "request_socket(socket_path=)": lambda *a: sockpass.request_socket(*a, socket_path=broker.path),
    }


@pytest.mark.parametrize("arg,value,message", TYPE_ERRORS)
@pytest.mark.parametrize("way", ["Client.request_socket", "Client.socket", "request_socket(socket_path=)"])
def test_wrong_types(broker: Broker, way: str, arg: str, value: object, message: str) -> None:
    sockpass.status(socket_path=broker.path)  # connect that path's client before the audit
    with broker.client() as c:
        f = _ways(c, broker)[way]
        before = (open_fds(), broker.status())
        with pytest.raises(TypeError, match=message):
            f(*{**GOOD, arg: value}.values())
        assert (open_fds(), broker.status()) == before


@pytest.mark.parametrize("arg,value,message", VALUE_ERRORS)
@pytest.mark.parametrize("way", ["Client.request_socket", "Client.socket", "request_socket(socket_path=)"])
def test_bad_values(broker: Broker, way: str, arg: str, value: object, message: str) -> None:
    sockpass.status(socket_path=broker.path)
    with broker.client() as c:
        f = _ways(c, broker)[way]
        before = (open_fds(), broker.status())
        with pytest.raises(ValueError, match=message) as ei:
            f(*{**GOOD, arg: value}.values())
        assert isinstance(ei.value, sockpass.BadRequestError) and isinstance(ei.value, OSError)
        assert ei.value.errno == errno.EINVAL and ei.value.strerror
        assert (open_fds(), broker.status()) == before


def test_default_client_wrong_types_and_values(default_broker: Broker, no_fd_leak: None) -> None:
    before = sockpass.status()
    for arg, value, message in TYPE_ERRORS:
        with pytest.raises(TypeError, match=message):
            sockpass.request_socket(*{**GOOD, arg: value}.values())
    for arg, value, message in VALUE_ERRORS:
        with pytest.raises(ValueError, match=message):
            sockpass.request_socket(*{**GOOD, arg: value}.values())
    for bad in (1.5, None, b"00" * 24, ["token"]):
        with pytest.raises(TypeError, match="fd_or_token must be an int"):
            sockpass.release_socket(bad)  # type: ignore[arg-type]
    assert sockpass.status() == before


def test_wrong_socket_path_type(no_fd_leak: None) -> None:
    with pytest.raises(TypeError):
        sockpass.request_socket("127.0.0.1", 0, "udp", socket_path=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sockpass.Client(5)  # type: ignore[arg-type]


def test_release_wrong_types(calm: sockpass.Client) -> None:
    for bad in (1.5, None, b"00" * 24, object()):
        with pytest.raises(TypeError, match="fd_or_token must be an int"):
            calm.release(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("token", ["", "zz" * 24, "00" * 23, "00" * 25, "é" * 48])
def test_release_malformed_token(calm: sockpass.Client, token: str) -> None:
    with pytest.raises(ValueError, match="invalid token") as ei:
        calm.release(token)
    assert isinstance(ei.value, OSError) and ei.value.errno == errno.EINVAL


def test_release_unknown_token(calm: sockpass.Client) -> None:
    with pytest.raises(sockpass.TokenError) as ei:
        calm.release("00" * 24)
    assert ei.value.errno == 2002 and ei.value.strerror


@pytest.mark.parametrize("by", ["fd", "token"])
def test_release_twice(calm: sockpass.Client, by: str) -> None:
    fd, tok = calm.request_socket("127.0.0.1", 0, "udp")
    key = fd if by == "fd" else tok
    assert calm.release(key) == 0
    with pytest.raises(sockpass.TokenError) as ei:
        calm.release(key)
    assert ei.value.errno == 2002
    os.close(fd)


def test_release_twice_default_client(default_broker: Broker, no_fd_leak: None) -> None:
    before = sockpass.status()
    fd, tok = sockpass.request_socket("127.0.0.1", 0, "tcp")
    os.close(fd)
    assert sockpass.release_socket(tok) == 0
    for key in (tok, fd):
        with pytest.raises(sockpass.TokenError) as ei:
            sockpass.release_socket(key)
        assert ei.value.errno == 2002
    assert sockpass.status() == before


def test_release_closed_fd(calm: sockpass.Client) -> None:
    # An fd number that is not open and never came from the broker.
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    with pytest.raises(sockpass.TokenError, match=f"fd {fd} did not come from this client"):
        calm.release(fd)
    # A broker fd closed by its owner still names its reference until released
    # (the token is what the broker counts); once released it names nothing.
    bfd, _ = calm.request_socket("127.0.0.1", 0, "udp")
    os.close(bfd)
    assert calm.release(bfd) == 0
    with pytest.raises(sockpass.TokenError):
        calm.release(bfd)


@pytest.mark.parametrize("fd", [-1, -(2**40), 2**40])
def test_release_impossible_fd(calm: sockpass.Client, fd: int) -> None:
    with pytest.raises((ValueError, sockpass.TokenError)) as ei:
        calm.release(fd)
    assert isinstance(ei.value, OSError) and ei.value.errno in (errno.EINVAL, 2002)


def test_closed_client(broker: Broker, no_fd_leak: None) -> None:
    c = broker.client()
    c.close()
    for f in (lambda: c.request_socket("127.0.0.1", 0, "udp"), lambda: c.release(3), c.status, c.held):
        with pytest.raises(ValueError, match="closed sockpass client"):
            f()


def test_unknown_token_from_another_client(broker: Broker, no_fd_leak: None) -> None:
    # Releasing a token another client holds is refused; the holder keeps it.
    with broker.client() as a, broker.client() as b:
        fd, tok = a.request_socket("127.0.0.1", 0, "udp")
        # The same answer as a token that does not exist.
        with pytest.raises(sockpass.TokenError, match="unknown token") as ei:
            b.release(tok)
        assert ei.value.errno == 2002
        assert broker.refs() == 1
        assert a.release(tok) == 0
        os.close(fd)


def test_errors_carry_errno_and_strerror(tmp_path: pathlib.Path) -> None:
    with pytest.raises(OSError) as ei:
        sockpass.Client(tmp_path / "none.sock")
    assert (ei.value.errno, type(ei.value)) == (2004, sockpass.BrokerUnavailableError)
    assert str(ei.value).startswith("[Errno 2004] cannot connect to sockpassd at ")

"""Server sockets handed to a daemon by a manager, and the manager's side.

A manager binds a unix stream socket for a daemon (in the daemon's mount or
network namespace if need be) and hands it over, listening, or unbound with a
*notifier*: the read end of a pipe whose write end the manager closes once
the socket listens. The daemon adopts it as a ``ServerSocket``, waits for the
notifier, and accepts connections with the peer's credentials.
"""

from __future__ import annotations

import os
import socket as _socket
from types import TracebackType
from typing import NamedTuple, Self

from . import _sockpass

__all__ = ["Creds", "LazyServer", "ServerSocket", "bind_in_namespace", "notifier_pair"]


class Creds(NamedTuple):
    """A peer's credentials (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


def _take(f: _socket.socket | int) -> int:
    # A socket object gives up its fd; an int is taken as is.
    return f.detach() if isinstance(f, _socket.socket) else f


class ServerSocket:
    """A unix server socket handed in by a manager: ``SOCK_STREAM`` unless
    ``type`` says ``SOCK_SEQPACKET``. ``sock`` (a ``socket.socket`` or an
    fd) and ``notifier`` (an fd) are taken over, and closed if refused.
    Accepting is allowed once the socket is known to listen: at once without
    a notifier, after ``wait()``/``check()`` with one."""

    def __init__(
        self,
        sock: _socket.socket | int,
        notifier: int | None = None,
        *,
        type: int = _socket.SOCK_STREAM,  # noqa: A002 (socket.socket's name for it)
    ) -> None:
        self._native = _sockpass.ServerSocket(_take(sock), notifier, type)

    @classmethod
    def from_activation(
        cls,
        *,
        type: int = _socket.SOCK_STREAM,  # noqa: A002
        unset_env: bool = True,
    ) -> ServerSocket | None:
        """The one listening unix socket of ``type`` that systemd-style
        socket activation passed on fd 3 (``LISTEN_PID`` is this process,
        ``LISTEN_FDS=1``), or None without activation. More than one fd, or
        one that is not such a socket, is an error (they are closed).
        ``unset_env`` removes the ``LISTEN_*`` variables."""
        native = _sockpass.ServerSocket.from_activation(type, unset_env)
        if unset_env:
            # The C environment lost them; keep os.environ's copy in step.
            for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                os.environ.pop(k, None)
        if native is None:
            return None
        self = cls.__new__(cls)
        self._native = native
        return self

    @property
    def path(self) -> bytes:
        """Path bytes, or a NUL byte then the abstract name; empty until ready."""
        return self._native.path

    @property
    def dbus_address(self) -> str:
        """``unix:path=...`` or ``unix:abstract=...``; empty until ready."""
        return self._native.dbus_address

    @property
    def ready(self) -> bool:
        return self._native.ready

    def notifier_fileno(self) -> int | None:
        """The notifier to watch in an event loop; None once ready."""
        return self._native.notifier_fileno()

    def fileno(self) -> int:
        return self._native.fileno()

    def check(self) -> bool:
        """Without blocking: True once ready."""
        return self._native.check()

    def wait(self, timeout: float | None = None) -> None:
        """Block until ready (``TimeoutError`` after ``timeout`` seconds)."""
        self._native.wait(timeout)

    def accept(self) -> tuple[_socket.socket, Creds]:
        """One connection and its peer's credentials."""
        fd, pid, uid, gid = self._native.accept()
        return _socket.socket(fileno=fd), Creds(pid, uid, gid)

    def detach(self) -> int:
        """Give up the listening socket's fd (a pending notifier is closed)."""
        return self._native.detach()

    def close(self) -> None:
        self._native.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def notifier_pair() -> tuple[int, int]:
    """``(read end for the daemon, write end for the manager)``, both
    CLOEXEC and the caller's. Closing the write end is the signal."""
    return _sockpass.notifier_pair()


def bind_in_namespace(
    path: str | bytes,
    *,
    target_pid: int | None = None,
    mode: int = 0o666,
    owner: tuple[int, int] | None = None,
    backlog: int = 128,
) -> _socket.socket:
    """Bind ``path`` (a leading NUL: an abstract name) inside ``target_pid``'s
    mount (or, for abstract names, network) namespace, or ours, and listen."""
    fd = _sockpass.bind_in_namespace(os.fsencode(path), target_pid, mode, owner, backlog)
    return _socket.socket(fileno=fd)


class LazyServer:
    """The manager's side of a socket handed over before it is bound."""

    def __init__(self, *, target_pid: int | None = None, abstract: bool = False) -> None:
        self._native = _sockpass.LazyServer.prepare(target_pid, abstract)

    def take_daemon_socket(self) -> int | None:
        """The daemon's copy of the socket (once; then None); the caller's fd."""
        return self._native.take_daemon_socket()

    def take_daemon_notifier(self) -> int | None:
        """The notifier's read end for the daemon (once; then None)."""
        return self._native.take_daemon_notifier()

    def fileno(self) -> int:
        return self._native.fileno()

    def bind_and_notify(
        self,
        path: str | bytes,
        *,
        target_pid: int | None = None,
        mode: int = 0o666,
        owner: tuple[int, int] | None = None,
        backlog: int = 128,
    ) -> None:
        """Bind, listen, then fire the notifier (it fires on error too, on a
        socket that does not listen). Once."""
        self._native.bind_and_notify(os.fsencode(path), target_pid, mode, owner, backlog)

    def close(self) -> None:
        """Give up unbound: the daemon sees the notifier fire on a socket
        that does not listen."""
        self._native.close()

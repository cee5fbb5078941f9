"""sockpass for Python: get bound sockets from the sockpass broker.

    import socket, sockpass
    fd, token = sockpass.request_socket("127.0.0.1", 5353, "UDP",
                                        sockpass.SHARE_SAMEAPP, "my-app")
    sock = socket.socket(fileno=fd)
    ...
    sock.close()
    sockpass.release_socket(token)   # or release_socket(fd)

The module functions use one connection per broker (per socket file,
however it is named), connected lazily: to ``socket_path=`` or the default
path (``$SOCKPASS_SOCKET``; else, for root, /run/sockpass/sockpassd.sock;
else ``$XDG_RUNTIME_DIR/sockpass/sockpassd.sock`` and then the system path).
They recover by themselves: after a lost connection, a protocol error or a
timeout the next call connects anew (a new lease: the broker dropped the
old one's references), and a call that failed before the broker got
anything (the broker restarted) is retried once. ``reset()`` releases
everything they hold. ``Client`` is for explicit paths and lifetimes. All
logic lives in the Rust core (the private module ``sockpass._sockpass``);
this package only gives it Python shapes.

Timeouts: ``timeout=`` (seconds, None: wait forever) on ``Client`` and on
the module functions (default ``getdefaulttimeout()``, set with
``setdefaulttimeout()``, as the ``socket`` module has it). A call that
times out raises ``TimeoutError`` and closes its connection, since the
reply may still come.

Fork: nothing a child does uses, releases or disturbs its parent's
connection or references. The module functions in a child make the child a
connection (a lease) of its own on its first call; its sockets are released
when it exits. A ``Client`` made before the fork is the parent's: in the
child it is ``closed``, its calls raise ``BrokerUnavailableError``
(``os_errno`` ``ECHILD``), ``close()`` and ``with`` only close the child's
copy of the connection (releasing nothing), a ``BrokerSocket`` closed in the
child only closes its fd, and ``reconnect()`` gives the child a connection
of its own. A fork while another thread is in a call does not hang the
child. ``multiprocessing`` with "fork" and "spawn" both work.

Application name: when ``app_name`` is None the program's name is sent: the
module run with ``python -m`` (``__main__.__spec__.name``), else the main
script's file name without ``.py``; with neither (``python -c``, the REPL)
the broker names the caller by its executable.
"""

from __future__ import annotations

import os
import socket as _socket
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Final, NamedTuple, Self, TypeAlias

from . import _module, _sockpass, notify, readiness
from ._appname import app_name_or_default, default_app_name
from ._errors import BadRequestError, BrokerUnavailableError, ChildFailedError, ShareError, TokenError
from ._share import Proto, Share
from ._listen import ListenFd, listen_fds
from ._spawn import INHERIT, Child, spawn
from ._supervise import Supervisor
from ._status import Counters, HolderStatus, SocketStatus, UidCounts, UidQuota, UidStatus, _from_rows, _users_from_rows

__all__ = [
    "INHERIT",
    "SHARE_ANY",
    "SHARE_NONE",
    "SHARE_SAMEAPP",
    "SHARE_SAMENAME",
    "BadRequestError",
    "BatchItem",
    "BrokerSocket",
    "BrokerUnavailableError",
    "Child",
    "ChildFailedError",
    "Client",
    "Counters",
    "HolderStatus",
    "ListenFd",
    "Proto",
    "Share",
    "ShareError",
    "SocketStatus",
    "UidCounts",
    "UidQuota",
    "UidStatus",
    "Supervisor",
    "TokenError",
    "Reservation",
    "default_app_name",
    "default_socket_path",
    "getdefaulttimeout",
    "listen_fds",
    "notify",
    "pickup_socket",
    "readiness",
    "release_socket",
    "request_socket",
    "request_sockets",
    "request_spec",
    "reserve_socket",
    "reset",
    "setdefaulttimeout",
    "spawn",
    "status",
]

__version__: Final = _sockpass.__version__

SHARE_NONE: Final = Share.NONE
SHARE_SAMEAPP: Final = Share.SAMEAPP
SHARE_SAMENAME: Final = Share.SAMENAME
SHARE_ANY: Final = Share.ANY

_Path: TypeAlias = str | os.PathLike[str]
# One spec of a batch: a spec string (with the call's share mode and
# application name), or (spec, share_mode) or (spec, share_mode, app_name).
BatchItem: TypeAlias = str | tuple[str, Share | int] | tuple[str, Share | int, str | None]


class Reservation(NamedTuple):
    """A socket the broker holds for someone else to pick up by ``token``."""

    token: str
    port: int


def default_socket_path() -> str:
    """The first broker path the default client tries (see the module's
    description for the others)."""
    return os.fspath(_sockpass.default_socket_paths()[0])


setdefaulttimeout = _module.setdefaulttimeout
getdefaulttimeout = _module.getdefaulttimeout
reset = _module.reset
_DEFAULT = _module.DEFAULT_TIMEOUT
_Timeout: TypeAlias = float | None | _module._Default


class Client:
    """One connection to sockpassd. The connection is the lease: when the
    client is closed (or the process dies) the broker drops every reference
    it held. Use it as a context manager to release everything on exit.
    Thread-safe: calls from several threads are serialized.

    Making one connects and sends nothing: a broker at its connection
    limit, or one that speaks another protocol version, is reported by the
    first call. ``hello()`` checks at once.

    ``timeout`` (seconds; None waits forever) bounds every wait for the
    broker; a call that times out raises ``TimeoutError``. After a timeout,
    a lost connection or a protocol error the connection is closed (the
    broker drops its references): ``closed`` is then True, calls raise
    ``BrokerUnavailableError``, and ``reconnect()`` makes a new one. In a
    child after ``fork()`` the client is its parent's: see the package's
    description."""

    def __init__(self, path: _Path | None = None, *, timeout: float | None = None) -> None:
        self._native = _sockpass.Client(path, timeout)

    @classmethod
    def from_fd(cls, fd: int) -> Self:
        """A client on a broker connection someone else made and handed in
        as ``fd`` (taken over): how a process in a container that cannot
        see the broker's socket path reaches it. ``path`` is empty."""
        self = cls.__new__(cls)
        self._native = _sockpass.Client.from_fd(fd)
        return self

    @property
    def path(self) -> str:
        """The broker's socket path ("" for a handed-in connection)."""
        p = self._native.path
        return "" if p is None else os.fspath(p)

    @property
    def broker_pid(self) -> int:
        """The broker's pid (asks the broker on first use: ``hello()``)."""
        return self._native.broker_pid

    def hello(self) -> int:
        """The version handshake, now: raises if the broker speaks another
        protocol version or will not serve this connection (its connection
        limit). Returns the broker's pid."""
        return self._native.hello()

    @property
    def closed(self) -> bool:
        """True when no call can work: closed by ``close()``, closed after an
        error, or made before a ``fork()`` in the parent."""
        return self._native.closed

    def reconnect(self) -> None:
        """A new connection to the same path (a new lease, holding nothing).
        After an error the broker has dropped the old references; in a
        fork's child the parent's are untouched."""
        self._native.reconnect()

    def settimeout(self, timeout: float | None) -> None:
        """Bound every wait for the broker (seconds; None: none)."""
        self._native.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self._native.gettimeout()

    def set_reply_spin(self, us: int) -> None:
        """Poll for each reply up to ``us`` microseconds before blocking (0,
        the default unless ``SOCKPASS_SPIN_US`` is set: block at once; at
        most 1000). It saves a cross-CPU wake-up when the broker answers
        from another CPU within the spin; the client polls only while its
        recent round trips were quick, and under load blocks at once."""
        self._native.set_reply_spin(us)

    def request_socket(
        self,
        address: str,
        port: int,
        proto: Proto | str,
        share_mode: Share | int = Share.NONE,
        app_name: str | None = None,
    ) -> tuple[int, str]:
        """Ask for a bound socket; returns ``(fd, token)``. The fd is the
        caller's to close (it is not inheritable)."""
        return self._native.request_socket(address, port, proto, share_mode, app_name_or_default(app_name))

    def request_spec(
        self,
        spec: str,
        share_mode: Share | int = Share.NONE,
        app_name: str | None = None,
        *,
        per_worker: bool = False,
    ) -> tuple[int, str]:
        """``request_socket`` with the socket given as a spec string, which can
        carry options: ``"udp:0.0.0.0:53?reuseport=1"`` (docs/PROTOCOL.md).
        ``per_worker`` (with reuseport) gives this requester its own socket in
        the port's reuseport group instead of a shared one."""
        return self._native.request_spec(spec, share_mode, app_name_or_default(app_name), per_worker)

    def request_sockets(
        self,
        specs: Iterable[BatchItem],
        share_mode: Share | int = Share.NONE,
        app_name: str | None = None,
    ) -> list[tuple[int, str]]:
        """Many sockets in one batch (one round trip for up to 145, their
        fds in one message; more pipelined). Each item is a spec string, which
        takes ``share_mode`` and ``app_name``, or a tuple ``(spec,
        share_mode[, app_name])``. All or nothing: returns ``(fd, token)`` for
        each, in order, or raises (naming the refused spec, ``spec I of N``)
        with no reference kept and no fd left open."""
        return self._native.request_sockets(_batch(specs, app_name), share_mode, app_name_or_default(app_name))

    def socket(
        self,
        address: str,
        port: int,
        proto: Proto | str,
        share_mode: Share | int = Share.NONE,
        app_name: str | None = None,
    ) -> BrokerSocket:
        """Like ``request_socket`` but returns a ``socket.socket`` whose
        ``close()`` also releases its reference."""
        fd, token = self.request_socket(address, port, proto, share_mode, app_name)
        try:
            return BrokerSocket(self, fd, token)
        except BaseException:
            os.close(fd)
            self._native.release(token)
            raise

    def reserve_socket(
        self,
        address: str,
        port: int,
        proto: Proto | str,
        share_mode: Share | int = Share.NONE,
        app_name: str | None = None,
    ) -> Reservation:
        """Have the broker create and hold a socket for another process,
        which collects it with ``pickup(token)`` before the reservation
        expires. ``port`` in the result is the bound port."""
        return Reservation(
            *self._native.reserve_socket(address, port, proto, share_mode, app_name_or_default(app_name))
        )

    def pickup(self, token: str) -> tuple[int, str]:
        """Collect a reserved socket; returns ``(fd, token)``, the reference
        now this client's."""
        return self._native.pickup(token)

    def release(self, fd_or_token: int | str) -> int:
        """Release one reference, by the fd it came with or by its token.
        Returns the references left on that socket (0: the broker closed it)."""
        return self._native.release(fd_or_token)

    def release_many(self, tokens: Iterable[str]) -> list[int | OSError]:
        """Release many references by token, up to 170 a message and several
        messages in flight: far fewer round trips than one ``release`` a
        token. Returns one result per token, in
        order: the references left on its socket, or the exception for that
        token (a ``TokenError`` for one unknown or already released). Raises,
        releasing nothing, if any token is malformed; raises
        ``BrokerUnavailableError`` if the broker goes away."""
        return self._native.release_many(tokens)

    def release_all(self) -> int:
        """Release every reference this client holds; returns how many."""
        return self._native.release_all()

    def held(self) -> list[tuple[int, str]]:
        """The ``(fd, token)`` pairs this client holds; fd is -1 where the
        fd was closed and a later grant got its number (the reference is
        still held: release it by token or with ``release_all``)."""
        return self._native.held()

    def status(self) -> list[SocketStatus]:
        """Every socket the broker holds, and who holds it."""
        rows, _, _ = self._native.status()
        return _from_rows(rows)

    def counters(self) -> Counters:
        """The broker's totals (sockets, references, connections, ...)."""
        _, c, _ = self._native.status()
        return Counters(*c)

    def users(self) -> list[UidStatus]:
        """Each uid that uses the broker, what it holds and its quota, as
        ``sockpass status`` shows them (a quota of ``None``: no limit)."""
        _, _, u = self._native.status()
        return _users_from_rows(u)

    def upgrade(self, exe: _Path | None = None) -> int:
        """Ask the broker to re-execute itself in place (``exe``, or its own
        binary), keeping every socket, reference and connection; returns its
        pid once it serves again. Only root or the broker's own uid may."""
        return self._native.upgrade(exe)

    def close(self) -> None:
        """Release everything and disconnect. Closing twice is a no-op. In
        a fork's child, for a client made in the parent, only the child's
        copy of the connection is closed: nothing is released."""
        try:
            if not self._native.closed:
                # Explicitly, so the broker has dropped the references when
                # close() returns (a bare disconnect is noticed asynchronously).
                self._native.release_all()
        except (BrokerUnavailableError, TimeoutError):
            pass  # The connection is gone, and with it every reference.
        finally:
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

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<sockpass.Client {self.path!r} {state}>"


class BrokerSocket(_socket.socket):
    """A ``socket.socket`` made from a broker's fd; ``close()`` also releases
    its reference (once, and not if its client is already closed). In a
    fork's child, for a socket inherited from the parent, ``close()`` only
    closes the child's fd: the reference stays the parent's."""

    token: str
    client: Client

    def __init__(self, client: Client, fd: int, token: str) -> None:
        super().__init__(fileno=fd)
        self.client = client
        self.token = token
        self._released = False

    def release(self) -> None:
        """Release the reference and keep the socket open."""
        if self._released or self.client.closed:
            return
        self._released = True
        try:
            self.client.release(self.token)
        except (TokenError, BrokerUnavailableError, TimeoutError):
            # Already released through the client, or the lease ended with
            # the broker connection: either way the reference is gone.
            pass

    def close(self) -> None:
        try:
            self.release()
        finally:
            super().close()

    def dup(self) -> Self:
        """The same socket on a duplicate fd. The reference stays with this
        object: closing the duplicate releases nothing."""
        d = type(self)(self.client, _socket.dup(self.fileno()), self.token)
        d._released = True
        return d


def _batch(specs: Iterable[BatchItem], app_name: str | None) -> Iterable[BatchItem]:
    """The items with an application name of None given the default one, as
    the single requests give it. A str is passed on for the core to refuse."""
    if isinstance(specs, str):
        return specs
    return [
        (s[0], s[1], app_name_or_default(app_name if s[2] is None else s[2]))
        if isinstance(s, tuple) and len(s) == 3
        else s
        for s in specs
    ]


def _native_for(socket_path: _Path | None) -> _sockpass.Client:
    return _module.client_for(socket_path)


def request_socket(
    address: str,
    port: int,
    proto: Proto | str,
    share_mode: Share | int = Share.NONE,
    app_name: str | None = None,
    *,
    socket_path: _Path | None = None,
    timeout: _Timeout = _DEFAULT,
) -> tuple[int, str]:
    """Ask the broker for a socket bound to ``address``:``port``.

    ``proto`` is "UDP"/"TCP" (any case) or a ``Proto``. Returns ``(fd, token)``;
    the fd is the caller's (not inheritable). Release with
    ``release_socket(token)`` or ``release_socket(fd)``."""
    return _native_for(socket_path).request_socket(
        address, port, proto, share_mode, app_name_or_default(app_name), timeout=_module.call_timeout(timeout)
    )


def request_spec(
    spec: str,
    share_mode: Share | int = Share.NONE,
    app_name: str | None = None,
    *,
    per_worker: bool = False,
    socket_path: _Path | None = None,
    timeout: _Timeout = _DEFAULT,
) -> tuple[int, str]:
    """``request_socket`` with a spec string that can carry socket options,
    e.g. ``"tcp:0.0.0.0:8080?reuseport=1"``; see ``Client.request_spec``."""
    return _native_for(socket_path).request_spec(
        spec, share_mode, app_name_or_default(app_name), per_worker, timeout=_module.call_timeout(timeout)
    )


def request_sockets(
    specs: Iterable[BatchItem],
    share_mode: Share | int = Share.NONE,
    app_name: str | None = None,
    *,
    socket_path: _Path | None = None,
    timeout: _Timeout = _DEFAULT,
) -> list[tuple[int, str]]:
    """Many sockets in one batch, all or nothing; see ``Client.request_sockets``."""
    return _native_for(socket_path).request_sockets(
        _batch(specs, app_name), share_mode, app_name_or_default(app_name), timeout=_module.call_timeout(timeout)
    )


def reserve_socket(
    address: str,
    port: int,
    proto: Proto | str,
    share_mode: Share | int = Share.NONE,
    app_name: str | None = None,
    *,
    socket_path: _Path | None = None,
    timeout: _Timeout = _DEFAULT,
) -> Reservation:
    """Reserve a socket for another process to ``pickup_socket(token)``."""
    return Reservation(
        *_native_for(socket_path).reserve_socket(
            address, port, proto, share_mode, app_name_or_default(app_name), timeout=_module.call_timeout(timeout)
        )
    )


def pickup_socket(token: str, *, socket_path: _Path | None = None, timeout: _Timeout = _DEFAULT) -> tuple[int, str]:
    """Collect a reserved socket by its token; returns ``(fd, token)``."""
    return _native_for(socket_path).pickup(token, timeout=_module.call_timeout(timeout))


def release_socket(fd_or_token: int | str, *, socket_path: _Path | None = None, timeout: _Timeout = _DEFAULT) -> int:
    """Release one reference by fd or token, through whichever of the
    module's connections holds it (``socket_path`` picks one); returns the
    references left on that socket (0: the broker closed it)."""
    c = None if socket_path is not None else _module.holder_of(fd_or_token)
    if c is None:
        c = _native_for(socket_path)
    return c.release(fd_or_token, timeout=_module.call_timeout(timeout))


def status(*, socket_path: _Path | None = None, timeout: _Timeout = _DEFAULT) -> list[SocketStatus]:
    """Every socket the broker holds, and who holds it."""
    rows, _, _ = _native_for(socket_path).status(timeout=_module.call_timeout(timeout))
    return _from_rows(rows)

"""The clients behind the module functions: one connection per broker.

A broker is its socket file, however it is named: ``socket_path="./b.sock"``,
an absolute path, a symlink and ``$SOCKPASS_SOCKET`` naming the same file
share one connection (one lease), keyed by the resolved path. These clients
are "automatic" (the core's ``client::shared``): after a lost connection, a
protocol error or a timeout the next call connects anew (a new lease), a
call whose send failed before the broker got anything is retried once, and
in a child after ``fork()`` the first call makes the child a connection of
its own, leaving the parent's references alone.
"""

from __future__ import annotations

import os
import threading

from . import _sockpass

_Native = _sockpass.Client

_clients: dict[str, _Native] = {}
# The path as given (None: the default) -> the key of its client.
_aliases: dict[str | None, str] = {}
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # Another thread may have held the lock at the fork: that thread is not
    # in the child. The clients themselves reconnect on their first call.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def client_for(socket_path: str | os.PathLike[str] | None) -> _Native:
    """The module's client for this broker, connected if it was not."""
    given = None if socket_path is None else os.fspath(socket_path)
    with _lock:
        key = _aliases.get(given)
        c = None if key is None else _clients.get(key)
        if c is not None and not c.user_closed:
            return c
        if given is not None:
            # Another name of a broker already connected to?
            key = os.path.realpath(given)
            c = _clients.get(key)
            if c is not None and not c.user_closed:
                _aliases[given] = key
                return c
    new = _Native(given, None, True)
    p = new.path
    key = os.path.realpath(os.fspath(p)) if p is not None else ""
    with _lock:
        c = _clients.get(key)
        if c is None or c.user_closed:
            c = _clients[key] = new
        _aliases[given] = key
    if c is not new:
        new.close()  # another thread connected first
    return c


def holder_of(fd_or_token: int | str) -> _Native | None:
    """The module client that holds this reference, if one does."""
    with _lock:
        clients = list(_clients.values())
    for c in clients:
        if c.holds(fd_or_token):
            return c
    return None


def reset() -> int:
    """Release everything the module clients hold and disconnect them; the
    next module call connects anew. Returns how many references were
    released."""
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
        _aliases.clear()
    released = 0
    for c in clients:
        try:
            if not c.closed:
                released += c.release_all()
        except OSError:
            pass  # gone with the connection anyway
        finally:
            c.close()
    return released


class _Default:
    pass


DEFAULT_TIMEOUT = _Default()
_default_timeout: float | None = None


def setdefaulttimeout(timeout: float | None) -> None:
    global _default_timeout
    if timeout is not None:
        timeout = float(timeout)
        if not timeout >= 0:
            raise ValueError("timeout must be a number of seconds >= 0 or None")
    _default_timeout = timeout


def getdefaulttimeout() -> float | None:
    return _default_timeout


def call_timeout(timeout: float | None | _Default) -> float:
    """The per-call timeout for the native client (inf: none)."""
    if isinstance(timeout, _Default):
        timeout = _default_timeout
    return float("inf") if timeout is None else timeout

"""sockpass.spawn: start a process with a planned set of fds."""

from __future__ import annotations

import enum
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Final, Literal, Protocol, TypeAlias

from . import _sockpass
from ._share import Share

__all__ = ["INHERIT", "Child", "spawn"]


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


class _Marker(enum.Enum):
    INHERIT = "INHERIT"

    def __repr__(self) -> str:
        return "sockpass.INHERIT"


INHERIT: Final = _Marker.INHERIT
"""An ``fds`` entry for ``spawn``: the child keeps whatever this process has
open at that slot's number (its close-on-exec flag cleared), or nothing if
that number is closed here. It is named ``unknown`` in ``LISTEN_FDNAMES``
and takes no name of its own."""

_Fd: TypeAlias = int | _HasFileno | None | Literal[_Marker.INHERIT]
_Arg: TypeAlias = str | bytes | os.PathLike[str]


def _slot(s: _Fd | tuple[_Fd, str]) -> tuple[int | None, str | None, bool]:
    fd, name = s if isinstance(s, tuple) else (s, None)
    if fd is INHERIT:
        return None, name, True
    if fd is None or isinstance(fd, int):
        return fd, name, False
    return fd.fileno(), name, False


class Child:
    """A process started by ``spawn``. Wait for it (or it stays a zombie
    until this process exits)."""

    def __init__(self, native: _sockpass.Child) -> None:
        self._native = native
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self._native.pid

    @property
    def ns_pid(self) -> int:
        """The pid as the child sees itself (its LISTEN_PID)."""
        return self._native.ns_pid

    @property
    def paused(self) -> bool:
        """Still waiting for ``resume()`` before exec."""
        return self._native.paused

    def resume(self) -> None:
        """Let a paused child exec; an exec failure is raised here."""
        self._native.resume()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the child to exit; returns its return code as
        ``subprocess`` does (negative: killed by that signal), or None if it
        still runs after ``timeout`` seconds. Without a timeout a paused child
        is let go first; with one it stays paused (and the wait times out)."""
        status = self._native.wait(timeout)
        if status is not None:
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode if status is not None else None

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` (a no-op once the child has been waited for)."""
        self._native.kill(sig)


def spawn(
    argv: Sequence[_Arg],
    *,
    fds: Sequence[_Fd | tuple[_Fd, str]] = (),
    env: Mapping[str, str] | None = None,
    setenv: Mapping[str, str | None] | None = None,
    start: int = 3,
    listen_env: bool = True,
    join_pid: int | None = None,
    namespaces: str | None = None,
    paused: bool = False,
    catch_bind: str | bool | None = None,
    catch_socket: str | os.PathLike[str] | None = None,
    catch_share: Share | int = Share.NONE,
    catch_app: str = "",
) -> Child:
    """Start ``argv`` with ``fds`` placed at ``start``, ``start + 1``, ...
    (socket activation: ``LISTEN_FDS``/``LISTEN_PID``/``LISTEN_FDNAMES`` set
    unless ``listen_env=False``).

    Each of ``fds`` is an fd or an object with ``fileno()`` (duplicated: the
    caller keeps its own), ``None`` for a number left closed (an empty slot),
    ``sockpass.INHERIT`` to keep whatever this process has open at that
    number, or a pair ``(fd or None, name)``. An empty slot still counts in
    ``LISTEN_FDS`` (named ``empty``), so the later slots keep their numbers;
    libsystemd's ``sd_listen_fds()`` refuses a set with such a hole (no fd
    at all for the program), so use empty slots with programs that take fds
    by number. With ``start=0`` the fds replace stdin/stdout/... (inetd
    style); with another start than 3, ``LISTEN_FDS_FIRST_FD`` says where
    they begin.

    ``env`` replaces the environment (default: inherited); ``setenv`` then
    sets variables over it, or unsets those mapped to ``None``.
    ``join_pid`` starts the child in that process's ``namespaces`` (e.g.
    ``"net,mnt"``; default all but user); ``namespaces`` without
    ``join_pid`` is an error. ``paused`` stops it before exec until
    ``resume()``. Set-up or exec failures raise ``OSError`` errno 2008,
    and leave no process behind.

    ``catch_bind`` catches the program's own ``bind()`` calls (seccomp user
    notification) and answers them with sockets from the broker, as
    ``sockpass run --catch-bind`` does: ``"privileged"`` (or ``True``: ports
    below ``ip_unprivileged_port_start``), ``"inet"`` (every non-zero port)
    or ports and ranges such as ``"53,80,8000-8099"``. ``catch_socket`` is
    the broker's socket (default: where every client looks),
    ``catch_share`` and ``catch_app`` the share mode and application name
    of each request. Binds not caught, and those the broker refuses, are
    the kernel's to judge (a line on stderr says why). Where the kernel
    cannot catch binds, or the broker cannot be reached, ``spawn`` raises
    and starts nothing. The catch lasts as long as the returned ``Child``."""
    native = _sockpass.spawn(
        *_plan_args(argv, fds, env, setenv, start, listen_env, join_pid, namespaces),
        paused,
        _catch(catch_bind, catch_socket, catch_share, catch_app),
    )
    return Child(native)


def _plan_args(
    argv: Sequence[_Arg],
    fds: Sequence[_Fd | tuple[_Fd, str]],
    env: Mapping[str, str] | None,
    setenv: Mapping[str, str | None] | None,
    start: int,
    listen_env: bool,
    join_pid: int | None,
    namespaces: str | None,
) -> _sockpass._PlanArgs:
    """The native plan arguments, shared by ``spawn`` and ``Supervisor``."""
    return (
        [os.fsdecode(a) for a in argv],
        [_slot(s) for s in fds],
        None if env is None else list(env.items()),
        [] if setenv is None else list(setenv.items()),
        start,
        listen_env,
        join_pid,
        namespaces,
    )


def _catch(
    ports: str | bool | None,
    socket: str | os.PathLike[str] | None,
    share: Share | int,
    app: str,
) -> tuple[str, str | None, int, str] | None:
    if ports is None or ports is False:
        return None
    return (
        "privileged" if ports is True else ports,
        None if socket is None else os.fsdecode(socket),
        int(share),
        app,
    )

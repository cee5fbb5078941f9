"""sockpass.spawn: start a process with a planned set of fds."""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from typing import Protocol, TypeAlias

from . import _sockpass

__all__ = ["Child", "spawn"]


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


_Fd: TypeAlias = int | _HasFileno | None
_Arg: TypeAlias = str | bytes | os.PathLike[str]


def _slot(s: _Fd | tuple[_Fd, str]) -> tuple[int | None, str | None]:
    fd, name = s if isinstance(s, tuple) else (s, None)
    if fd is None or isinstance(fd, int):
        return fd, name
    return fd.fileno(), name


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
        still runs after ``timeout`` seconds. A paused child is let go first."""
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
    start: int = 3,
    listen_env: bool = True,
    join_pid: int | None = None,
    namespaces: str | None = None,
    paused: bool = False,
) -> Child:
    """Start ``argv`` with ``fds`` placed at ``start``, ``start + 1``, ...
    (socket activation: ``LISTEN_FDS``/``LISTEN_PID``/``LISTEN_FDNAMES`` set
    unless ``listen_env=False``).

    Each of ``fds`` is an fd or an object with ``fileno()`` (duplicated: the
    caller keeps its own), ``None`` for a number left closed, or a pair
    ``(fd, name)``. ``env`` replaces the environment (default: inherited).
    ``join_pid`` starts the child in that process's ``namespaces`` (e.g.
    ``"net,mnt"``; default all but user). ``paused`` stops it before exec
    until ``resume()``. Set-up or exec failures raise ``OSError`` errno 2008,
    and leave no process behind."""
    native = _sockpass.spawn(
        [os.fsdecode(a) for a in argv],
        [_slot(s) for s in fds],
        None if env is None else list(env.items()),
        start,
        listen_env,
        join_pid,
        namespaces,
        paused,
    )
    return Child(native)

"""The sockets a service was handed by socket activation (``LISTEN_FDS``),
as ``sockpass run`` and systemd hand them over."""

from __future__ import annotations

import fcntl
import os
import socket as _socket
from typing import NamedTuple

__all__ = ["ListenFd", "listen_fds", "LISTEN_FDS_START"]

LISTEN_FDS_START = 3


class ListenFd(NamedTuple):
    """One handed-over fd: its number, its name (``LISTEN_FDNAMES``, or
    ``"unknown"`` as systemd says when there is none) and, for a socket, a
    ``socket.socket`` on it (None for any other kind of fd)."""

    fd: int
    name: str
    socket: _socket.socket | None


def listen_fds(unset_environment: bool = True) -> list[ListenFd]:
    """The fds handed over by ``LISTEN_FDS`` (from fd 3 on), if they are for
    this process: ``LISTEN_PID`` must be this process's pid (else they were
    meant for another process, say the parent that exec'd through a shell,
    and the list is empty). Each fd is made close-on-exec, as
    ``sd_listen_fds`` does. With ``unset_environment`` (the default, as
    python-systemd's) ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES``
    are removed from ``os.environ``, so a child does not take them for its
    own. Raises ``ValueError`` if the variables are malformed."""
    try:
        pid = os.environ.get("LISTEN_PID")
        count = os.environ.get("LISTEN_FDS")
        names = os.environ.get("LISTEN_FDNAMES")
        if pid is None or count is None:
            return []
        try:
            pid_n, n = int(pid), int(count)
        except ValueError:
            raise ValueError(f"malformed LISTEN_PID={pid!r} or LISTEN_FDS={count!r}") from None
        if pid_n != os.getpid():
            return []
        if n < 0:
            raise ValueError(f"malformed LISTEN_FDS={count!r}")
        name_list = names.split(":") if names else []
        out = []
        for i in range(n):
            fd = LISTEN_FDS_START + i
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
            name = name_list[i] if i < len(name_list) and name_list[i] else "unknown"
            try:
                sock: _socket.socket | None = _socket.socket(fileno=fd)
            except OSError:
                sock = None  # not a socket (ENOTSOCK): handed over as it is
            out.append(ListenFd(fd, name, sock))
        return out
    finally:
        if unset_environment:
            for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                os.environ.pop(k, None)

"""The exceptions sockpass raises for its own error kinds.

Every one is an ``OSError`` whose ``errno`` is the core's error code (the
same number the C API returns negated) and whose ``strerror`` is the core's
message. Refusals and bind failures that have a real errno are raised as
plain ``OSError(errno, message)``, which Python turns into
``PermissionError`` and friends.
"""

from __future__ import annotations

__all__ = ["BadRequestError", "BrokerUnavailableError", "ChildFailedError", "ShareError", "TokenError"]


class ShareError(OSError):
    """Another holder's share mode forbids sharing (errno 2001)."""


class TokenError(OSError):
    """The token (or fd) is not a live one of this client (errno 2002),
    or its reservation expired (errno 2006)."""


class BrokerUnavailableError(ConnectionError):
    """sockpassd could not be reached, or went away (errno 2004).
    ``os_errno`` says why: ``ENOENT`` or ``ECONNREFUSED`` (no broker
    there), ``EACCES`` (not allowed to connect), ``ECONNRESET``/``EPIPE``
    (the connection was lost), ``ENOTCONN`` (the client's connection was
    closed after an earlier error: ``reconnect()``), ``ECHILD`` (the client
    was made before ``fork()``, in the parent)."""

    os_errno: int = 0


class BadRequestError(OSError, ValueError):
    """The request makes no sense: a port out of range, an unknown protocol or
    share mode, an invalid address or token (errno EINVAL). A ``ValueError``
    too, as Python code expects for bad values."""


class ChildFailedError(OSError):
    """A spawned child failed before its program ran (errno 2008); the
    message names the step, and ``child_errno`` is that step's errno (e.g.
    ``ENOENT`` from exec), 0 if there was none."""

    child_errno: int = 0

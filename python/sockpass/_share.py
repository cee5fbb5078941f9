"""Share modes and protocols, as the core numbers and names them."""

from __future__ import annotations

import enum

__all__ = ["Proto", "Share"]


class Share(enum.IntEnum):
    """Who may share a socket with its holder (the wire numbers)."""

    NONE = 0
    SAMEAPP = 1
    ANY = 2
    # The name the original (BIND10) design used for SAMEAPP.
    SAMENAME = 1


class Proto(enum.StrEnum):
    """Socket protocols. Plain strings work too, in any case."""

    UDP = "udp"
    TCP = "tcp"
    RAW = "raw"
    UNIX = "unix"
    UNIX_DGRAM = "unix-dgram"
    UNIX_SEQPACKET = "unix-seqpacket"

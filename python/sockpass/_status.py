"""Typed rows of the broker's status listing."""

from __future__ import annotations

from dataclasses import dataclass

from ._share import Share

__all__ = ["HolderStatus", "SocketStatus", "Counters"]


@dataclass(frozen=True)
class HolderStatus:
    """One reference to a socket: who holds it and how it shares."""

    conn_id: int
    pid: int
    uid: int
    gid: int
    share: Share
    reserved: bool
    app: str


@dataclass(frozen=True)
class SocketStatus:
    """One socket the broker holds, with every reference to it."""

    id: int
    spec: str
    port: int
    refs: int
    holders: tuple[HolderStatus, ...]


@dataclass(frozen=True)
class Counters:
    """The broker's totals."""

    sockets: int
    references: int
    connections: int
    reservations: int
    broker_fds: int


_HolderRow = tuple[int, int, int, int, int, bool, str]
_SocketRow = tuple[int, str, int, int, list[_HolderRow]]
_CountersRow = tuple[int, int, int, int, int]


def _from_rows(rows: list[_SocketRow]) -> list[SocketStatus]:
    return [
        SocketStatus(id, spec, port, refs, tuple(HolderStatus(c, p, u, g, Share(s), r, a) for c, p, u, g, s, r, a in holders))
        for id, spec, port, refs, holders in rows
    ]

"""Typed rows of the broker's status listing."""

from __future__ import annotations

from dataclasses import dataclass

from ._share import Share

__all__ = ["HolderStatus", "SocketStatus", "Counters", "UidCounts", "UidQuota", "UidStatus"]


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


@dataclass(frozen=True)
class UidCounts:
    """What one uid uses of the broker's tables."""

    connections: int
    sockets: int
    references: int
    reservations: int
    status: int


@dataclass(frozen=True)
class UidQuota:
    """One uid's quota of the broker's tables (``None``: no limit)."""

    connections: int | None
    sockets: int | None
    references: int | None
    reservations: int | None
    status: int | None


@dataclass(frozen=True)
class UidStatus:
    """One uid that uses the broker: what it holds and its quota."""

    uid: int
    used: UidCounts
    quota: UidQuota


_HolderRow = tuple[int, int, int, int, int, bool, str]
_SocketRow = tuple[int, str, int, int, list[_HolderRow]]
_CountersRow = tuple[int, int, int, int, int]
_UidCountsRow = tuple[int, int, int, int, int]
_UidRow = tuple[int, _UidCountsRow, _UidCountsRow]
_NO_LIMIT = 0xFFFF_FFFF


def _from_rows(rows: list[_SocketRow]) -> list[SocketStatus]:
    return [
        SocketStatus(id, spec, port, refs, tuple(HolderStatus(c, p, u, g, Share(s), r, a) for c, p, u, g, s, r, a in holders))
        for id, spec, port, refs, holders in rows
    ]


def _users_from_rows(rows: list[_UidRow]) -> list[UidStatus]:
    def quota(c: _UidCountsRow) -> UidQuota:
        return UidQuota(*(None if v == _NO_LIMIT else v for v in c))

    return [UidStatus(uid, UidCounts(*used), quota(q)) for uid, used, q in rows]

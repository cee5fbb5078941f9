"""The package's surface: the issue's first call, enums, Client, BrokerSocket, status."""

from __future__ import annotations

import os
import pathlib
import re
import socket

import pytest

import sockpass
from conftest import Broker, free_port, open_fds, wait_for


def test_bind10_first_call(default_broker: Broker, no_fd_leak: None) -> None:
    port = free_port()
    fd, token = sockpass.request_socket("127.0.0.1", port, "UDP", sockpass.SHARE_SAMEAPP, "test-application")
    assert isinstance(fd, int) and re.fullmatch(r"[0-9a-f]{48}", token)
    assert not os.get_inheritable(fd)
    sock = socket.socket(fileno=fd)
    assert sock.getsockname() == ("127.0.0.1", port)
    assert sock.type == socket.SOCK_DGRAM
    [row] = [s for s in sockpass.status() if s.port == port]
    assert row.refs == 1
    [h] = row.holders
    assert (h.pid, h.app, h.share) == (os.getpid(), "test-application", sockpass.Share.SAMEAPP)
    sock.close()
    assert sockpass.release_socket(token) == 0
    assert not [s for s in sockpass.status() if s.port == port]


def test_share_constants() -> None:
    # The wire numbers, as the C API's constants.
    assert [int(sockpass.SHARE_NONE), int(sockpass.SHARE_SAMEAPP), int(sockpass.SHARE_ANY)] == [0, 1, 2]
    assert sockpass.SHARE_NONE is sockpass.Share.NONE
    assert sockpass.SHARE_ANY is sockpass.Share.ANY
    # SAMENAME is the original design's name for SAMEAPP: an alias, not a fourth mode.
    assert sockpass.Share["SAMENAME"] is sockpass.Share["SAMEAPP"] is sockpass.SHARE_SAMEAPP
    assert sockpass.Share(1) is sockpass.SHARE_SAMENAME
    assert [m.name for m in sockpass.Share] == ["NONE", "SAMEAPP", "ANY"]


@pytest.mark.parametrize("proto", ["UDP", "udp", "Udp", sockpass.Proto.UDP, "TCP", "tcp", "tCp", sockpass.Proto.TCP])
def test_proto_names_any_case(broker: Broker, proto: str, no_fd_leak: None) -> None:
    with broker.client() as c, c.socket("127.0.0.1", 0, proto) as s:
        want = socket.SOCK_DGRAM if str(proto).lower() == "udp" else socket.SOCK_STREAM
        assert s.type == want
        assert s.getsockname()[1] != 0


def test_release_by_fd_and_by_token(broker: Broker, no_fd_leak: None) -> None:
    port = free_port()
    with broker.client() as c:
        fds, tokens = zip(*[c.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY, "r") for _ in range(3)])
        assert broker.refs() == 3
        assert c.release(fds[0]) == 2  # by fd
        assert c.release(tokens[1]) == 1  # by token
        assert sorted(c.held()) == [(fds[2], tokens[2])]
        assert c.release(fds[2]) == 0
        assert broker.status() == []
        for fd in fds:
            os.close(fd)


def test_release_many_in_order(broker: Broker, no_fd_leak: None) -> None:
    port = free_port()
    with broker.client() as c:
        tokens = []
        for _ in range(1000):  # twice what a send-everything-first burst survived
            fd, tok = c.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY, "r")
            os.close(fd)
            tokens.append(tok)
        with pytest.raises(sockpass.BadRequestError, match=r"tokens\[1\]"):
            c.release_many([tokens[0], "nope"])
        with pytest.raises(TypeError, match=r"tokens\[0\] must be a str"):
            c.release_many([3])  # type: ignore[list-item]
        with pytest.raises(TypeError):
            c.release_many(tokens[0])  # a str is not a list of tokens
        assert broker.refs() == 1000  # nothing released by the refusals
        res = c.release_many(iter(tokens[:10] + ["0" * 48] + tokens[10:]))
        assert isinstance(res[10], sockpass.TokenError)
        del res[10]
        assert res == list(range(999, -1, -1))
        assert c.held() == [] and broker.status() == []
        assert c.release_many([]) == []


def test_module_release_by_fd_and_token(default_broker: Broker, no_fd_leak: None) -> None:
    port = free_port()
    a_fd, a_tok = sockpass.request_socket("127.0.0.1", port, "tcp", sockpass.SHARE_ANY, "m")
    b_fd, b_tok = sockpass.request_socket("127.0.0.1", port, "tcp", sockpass.SHARE_ANY, "m")
    assert os.fstat(a_fd).st_ino == os.fstat(b_fd).st_ino  # one cached socket, two references
    assert sockpass.release_socket(a_fd) == 1
    assert sockpass.release_socket(b_tok) == 0
    os.close(a_fd)
    os.close(b_fd)


def test_socket_path_keyword(broker: Broker) -> None:
    sockpass.status(socket_path=broker.path)  # connects that path's client (kept for the process)
    before = open_fds()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SOCKPASS_SOCKET", raising=False)
        fd, tok = sockpass.request_socket("127.0.0.1", 0, "udp", socket_path=broker.path)
        assert [s.refs for s in sockpass.status(socket_path=broker.path)] == [1]
        assert sockpass.release_socket(tok, socket_path=broker.path) == 0
        os.close(fd)
    assert open_fds() == before


def test_client_socket_close_releases(broker: Broker, no_fd_leak: None) -> None:
    with broker.client() as c:
        s = c.socket("127.0.0.1", 0, sockpass.Proto.UDP, sockpass.SHARE_NONE, "bs")
        assert isinstance(s, socket.socket) and isinstance(s, sockpass.BrokerSocket)
        assert not s.get_inheritable()
        assert c.held() == [(s.fileno(), s.token)]
        assert broker.refs() == 1
        s.close()
        assert broker.status() == []
        assert c.held() == []
        s.close()  # twice: a no-op, as for any socket


def test_broker_socket_dup_holds_no_reference(broker: Broker, no_fd_leak: None) -> None:
    with broker.client() as c, c.socket("127.0.0.1", 0, "udp") as s:
        d = s.dup()
        assert isinstance(d, sockpass.BrokerSocket) and not d.get_inheritable()
        assert os.fstat(d.fileno()).st_ino == os.fstat(s.fileno()).st_ino
        d.close()  # releases nothing: the reference belongs to s
        assert broker.refs() == 1
    assert broker.status() == []


def test_broker_socket_released_elsewhere_then_closed(broker: Broker, no_fd_leak: None) -> None:
    with broker.client() as c:
        s = c.socket("127.0.0.1", 0, "tcp")
        assert c.release(s.token) == 0
        s.close()  # the reference is already gone; closing still closes the fd
        assert s.fileno() == -1


def test_context_manager_releases_everything(broker: Broker, no_fd_leak: None) -> None:
    port = free_port()
    with broker.client() as c:
        fds = [c.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY, "cm")[0] for _ in range(4)]
        s = c.socket("127.0.0.1", 0, "tcp")
        assert broker.refs() == 5
    # Released by the time the with block is left, not eventually.
    assert broker.status() == []
    assert c.closed
    with pytest.raises(ValueError, match="closed"):
        c.request_socket("127.0.0.1", 0, "udp")
    s.close()  # its client is closed: nothing to release, the fd still closes
    for fd in fds:
        os.close(fd)
    c.close()  # twice: a no-op


def test_client_close_drops_lease(broker: Broker, no_fd_leak: None) -> None:
    c = broker.client()
    fd, _ = c.request_socket("127.0.0.1", 0, "udp")
    c.close()
    assert broker.status() == []
    os.close(fd)


def test_status_rows(broker: Broker) -> None:
    port = free_port()
    with broker.client() as a, broker.client() as b:
        fa, _ = a.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_SAMEAPP, "dns")
        fb, _ = b.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_SAMEAPP, "dns")
        [row] = a.status()
        assert isinstance(row, sockpass.SocketStatus)
        assert row.port == port and row.refs == 2 and row.spec.startswith(f"udp:127.0.0.1:{port}")
        assert len({h.conn_id for h in row.holders}) == 2
        for h in row.holders:
            assert isinstance(h, sockpass.HolderStatus)
            assert (h.pid, h.uid, h.gid, h.app, h.reserved) == (os.getpid(), os.getuid(), os.getgid(), "dns", False)
            assert h.share is sockpass.Share.SAMEAPP
        counters = a.counters()
        assert (counters.sockets, counters.references) == (1, 2)
        assert counters.connections >= 2
        os.close(fa)
        os.close(fb)


def test_client_properties(broker: Broker) -> None:
    with broker.client() as c:
        assert c.path == broker.path
        assert c.broker_pid == broker.pid
        assert not c.closed
        assert broker.path in repr(c)


def test_client_connects_lazily_and_hello_checks(tmp_path: pathlib.Path) -> None:
    # Making a Client only connects (as s6_fdholder_start); a broker at its
    # connection limit is heard by hello() or by the first request.
    b = Broker(tmp_path, "--max-connections", "2")

    def accepted() -> sockpass.Client | None:
        # The start-up probe's hang-up may not be noticed yet: retry.
        try:
            return b.client()
        except OSError:
            return None

    try:
        with wait_for("a place", accepted) as one, wait_for("a place", accepted) as two:
            assert one.hello() == two.broker_pid == b.pid
            for _ in range(2):
                with sockpass.Client(b.path) as third:  # connecting succeeds
                    with pytest.raises(OSError, match="connections") as e:
                        third.hello()
                    assert e.value.errno == 2003
            with sockpass.Client(b.path) as fourth:
                with pytest.raises(OSError, match="connections"):
                    fourth.request_socket("127.0.0.1", 0, "udp")
            # Inside the limit, served as ever.
            fd, _ = one.request_socket("127.0.0.1", 0, "udp")
            os.close(fd)
    finally:
        b.stop()


def test_default_socket_path_follows_env(default_broker: Broker) -> None:
    assert sockpass.default_socket_path() == default_broker.path


def test_unix_datagram_socket(tmp_path: pathlib.Path, no_fd_leak: None) -> None:
    # Unix sockets are not in the built-in policy for non-root: allow them here.
    policy = tmp_path / "policy.conf"
    policy.write_text(f"allow * proto=unix-dgram path={tmp_path}/\n")
    broker = Broker(tmp_path, "--policy", str(policy))
    try:
        path = str(tmp_path / "svc.sock")
        with broker.client() as c, c.socket(path, 0, sockpass.Proto.UNIX_DGRAM) as s:
            assert s.family == socket.AF_UNIX and s.type == socket.SOCK_DGRAM
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as tx:
                tx.sendto(b"hi", path)
            assert s.recv(16) == b"hi"
    finally:
        broker.stop()


def test_users_rows(tmp_path: pathlib.Path) -> None:
    # The per-uid section of the status: what each uid uses and its quota.
    b = Broker(tmp_path)
    try:
        with b.client() as c:
            fd, _ = c.request_socket("127.0.0.1", 0, "udp")
            [me] = [u for u in c.users() if u.uid == os.getuid()]
            assert isinstance(me, sockpass.UidStatus)
            assert isinstance(me.used, sockpass.UidCounts)
            assert (me.used.references, me.used.sockets) == (1, 1)
            assert me.used.connections >= 1
            # Root has no quota: every limit is None (the per-uid flags
            # bound the other uids).
            assert me.quota == sockpass.UidQuota(None, None, None, None, None)
            c.release(fd)
            os.close(fd)
            [me] = [u for u in c.users() if u.uid == os.getuid()]
            assert me.used.references == 0
    finally:
        b.stop()


def test_users_rows_map_the_wire_quota() -> None:
    # u32::MAX on the wire is "no limit"; anything else is the limit.
    from sockpass._status import _users_from_rows

    [u] = _users_from_rows([(65534, (1, 2, 3, 0, 1), (128, 0xFFFFFFFF, 7, 16, 4))])
    assert u == sockpass.UidStatus(65534, sockpass.UidCounts(1, 2, 3, 0, 1), sockpass.UidQuota(128, None, 7, 16, 4))

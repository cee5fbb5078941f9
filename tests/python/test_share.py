"""The full share-mode matrix: every (mode, app) of a first holder against
every (mode, app) of a second requester, on UDP and TCP."""

from __future__ import annotations

import errno
import itertools
import os

import pytest

import sockpass
from conftest import Broker, free_port
from sockpass import Share

# Who admits a newcomer: NONE nobody, SAMEAPP the same app name, ANY everyone.
# A request is granted when the holder admits the newcomer AND the newcomer
# admits the holder (written out here, not taken from the code under test).
EXPECTED = {
    # (holder mode, newcomer mode): (granted with the same app, granted with another app)
    (Share.NONE, Share.NONE): (False, False),
    (Share.NONE, Share.SAMEAPP): (False, False),
    (Share.NONE, Share.ANY): (False, False),
    (Share.SAMEAPP, Share.NONE): (False, False),
    (Share.SAMEAPP, Share.SAMEAPP): (True, False),
    (Share.SAMEAPP, Share.ANY): (True, False),
    (Share.ANY, Share.NONE): (False, False),
    (Share.ANY, Share.SAMEAPP): (True, False),
    (Share.ANY, Share.ANY): (True, True),
}


@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize(
    "first,second,same_app",
    [(a, b, s) for (a, b), s in itertools.product(itertools.product(Share, Share), [True, False])],
    ids=lambda v: v.name if isinstance(v, Share) else ("same-app" if v else "other-app"),
)
def test_share_matrix(broker: Broker, no_fd_leak: None, proto: str, first: Share, second: Share, same_app: bool) -> None:
    want = EXPECTED[(first, second)][0 if same_app else 1]
    port = free_port()
    with broker.client() as holder, broker.client() as newcomer, broker.client() as bystander:
        h_fd, h_tok = holder.request_socket("127.0.0.1", port, proto, first, "app-a")
        # A bystander on another socket must not be disturbed by anything below.
        b_fd, _ = bystander.request_socket("127.0.0.1", 0, proto, Share.NONE, "bystander")
        before = broker.status()
        app = "app-a" if same_app else "app-b"
        if want:
            n_fd, n_tok = newcomer.request_socket("127.0.0.1", port, proto, second, app)
            assert os.fstat(n_fd).st_ino == os.fstat(h_fd).st_ino, "granted, but not the same socket"
            [row] = [s for s in broker.status() if s.port == port]
            assert row.refs == 2
            assert sorted(h.app for h in row.holders) == sorted(["app-a", app])
            assert newcomer.release(n_tok) == 1
            os.close(n_fd)
        else:
            with pytest.raises(sockpass.ShareError) as ei:
                newcomer.request_socket("127.0.0.1", port, proto, second, app)
            assert ei.value.errno == 2001 and ei.value.strerror
            assert newcomer.held() == []
        # A refusal (or a grant and its release) leaves the broker as it was.
        assert broker.status() == before
        assert holder.release(h_tok) == 0
        os.close(h_fd)
        os.close(b_fd)


def test_samename_is_sameapp(broker: Broker, no_fd_leak: None) -> None:
    port = free_port()
    with broker.client() as a, broker.client() as b:
        fa, _ = a.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_SAMENAME, "x")
        fb, _ = b.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_SAMEAPP, "x")
        assert os.fstat(fa).st_ino == os.fstat(fb).st_ino
        with pytest.raises(sockpass.ShareError):
            b.request_socket("127.0.0.1", port, "udp", sockpass.SHARE_SAMENAME, "y")
        os.close(fa)
        os.close(fb)


def test_share_error_is_an_oserror() -> None:
    e = sockpass.ShareError(2001, "sharing conflict")
    assert isinstance(e, OSError) and e.errno == 2001 and e.errno != errno.EADDRINUSE

"""Thread safety: concurrent requests and releases with exact counts, and
blocking calls that release the GIL."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import threading
from collections.abc import Callable

import pytest

import sockpass
from conftest import TIMEOUT, Broker, free_port, wait_for

THREADS = 32
ROUNDS = 40


Request = Callable[[int], tuple[int, str]]
Release = Callable[[int, int | str], int]


def _hammer(request: Request, release: Release, keep: Callable[[int], int]) -> list[list[tuple[int, str]]]:
    """THREADS threads, started together, each ROUNDS times: thread i asks
    with request(i) and releases every other reference with release(i, ...),
    alternately by fd and by token (closing the fd only after, so its number
    is not reused meanwhile); at the end thread i keeps keep(i) references.
    Returns what each kept; fails if a thread raised or hung."""
    kept: list[list[tuple[int, str]]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def work(i: int) -> None:
        held: list[tuple[int, str]] = []
        try:
            start.wait(TIMEOUT)
            for k in range(ROUNDS):
                held.append(request(i))
                if k % 2 == 1:
                    fd, tok = held.pop(0)
                    release(i, fd if k % 4 == 1 else tok)
                    os.close(fd)
            while len(held) > keep(i):
                fd, tok = held.pop()
                release(i, tok)
                os.close(fd)
        except BaseException as e:
            errors.append(e)
        kept[i] = held

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 4)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors
    return kept


def test_32_threads_exact_reference_counts(broker: Broker, no_fd_leak: None) -> None:
    port = free_port()
    shared = broker.client()  # half the threads share one client, half have their own
    clients = [shared if i % 2 == 0 else broker.client() for i in range(THREADS)]
    kept = _hammer(
        lambda i: clients[i].request_socket("127.0.0.1", port, "udp", sockpass.SHARE_ANY, "threads"),
        lambda i, x: clients[i].release(x),
        lambda i: i % 5,
    )

    expected = sum(i % 5 for i in range(THREADS))
    assert sum(len(k) for k in kept) == expected
    [row] = broker.status()
    assert (row.port, row.refs, len(row.holders)) == (port, expected, expected)
    # Each client holds exactly what its threads kept, by the tokens they kept.
    assert sorted(shared.held()) == sorted(x for i in range(0, THREADS, 2) for x in kept[i])
    for i in range(1, THREADS, 2):
        assert sorted(clients[i].held()) == sorted(kept[i])
    with broker.client() as probe:
        counters = probe.counters()
        assert (counters.sockets, counters.references) == (1, expected)

    for c in set(clients):
        c.close()
    assert broker.status() == []
    for k in kept:
        for fd, _ in k:
            os.close(fd)


def _syscall_of(tid: int) -> int | None:
    try:
        with open(f"/proc/self/task/{tid}/syscall") as f:
            first = f.read().split()[0]
    except (FileNotFoundError, IndexError):
        return None
    return int(first) if first.isdigit() else None


RECVMSG = {"x86_64": 47, "aarch64": 212}.get(platform.machine())


@pytest.mark.skipif(RECVMSG is None, reason=f"recvmsg syscall number unknown on {platform.machine()}")
def test_blocking_call_releases_the_gil(broker: Broker) -> None:
    with broker.client() as c:
        # Stop the broker so the next call blocks in recvmsg waiting for it.
        os.kill(broker.pid, signal.SIGSTOP)
        # If the GIL were held while blocked, this test could not run on to
        # resume the broker; the watchdog does, so the test fails instead of hanging.
        # Its own process group, so killing it takes its sleep along.
        watchdog = subprocess.Popen(
            ["sh", "-c", f"sleep {TIMEOUT}; kill -CONT {broker.pid}"], start_new_session=True
        )
        try:
            result: list[object] = []
            worker = threading.Thread(target=lambda: result.append(c.status()))
            worker.start()
            assert worker.native_id is not None
            # This loop is Python code: it runs only if the worker let go of the GIL.
            wait_for("the worker to block in recvmsg", lambda: _syscall_of(worker.native_id or 0) == RECVMSG)
            assert worker.is_alive() and not result
            with open(f"/proc/{broker.pid}/stat") as f:
                assert f.read().rsplit(")", 1)[1].split()[0] == "T", "the broker was resumed: the GIL was held"
        finally:
            os.kill(broker.pid, signal.SIGCONT)
            os.killpg(watchdog.pid, signal.SIGKILL)
            watchdog.wait()
        worker.join(TIMEOUT)
        assert result == [[]]


def test_module_functions_from_32_threads(default_broker: Broker, no_fd_leak: None) -> None:
    """The process-wide default client behind sockpass.request_socket and
    sockpass.release_socket, used by many threads at once."""
    port = free_port()
    kept = _hammer(
        lambda i: sockpass.request_socket("127.0.0.1", port, "UDP", sockpass.SHARE_SAMEAPP, "mod-threads"),
        lambda i, x: sockpass.release_socket(x),
        lambda i: i % 3,
    )

    expected = sum(i % 3 for i in range(THREADS))
    rows = [r for r in sockpass.status() if r.port == port]
    assert [(r.refs, len(r.holders)) for r in rows] == [(expected, expected)]
    for k in kept:
        for fd, tok in k:
            sockpass.release_socket(tok)
            os.close(fd)
    assert [r for r in sockpass.status() if r.port == port] == []

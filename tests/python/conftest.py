"""Fixtures: real sockpassd brokers in temp dirs, fd audits, bounded waits.

The broker binary comes from `cargo build -p sockpassd`: $SOCKPASSD_BIN, or
$CARGO_TARGET_DIR/debug/sockpassd, or target/debug/sockpassd.
"""

from __future__ import annotations

import os
import pathlib
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

import sockpass

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT = 30.0
T = TypeVar("T")


def sockpassd_bin() -> str:
    b = os.environ.get("SOCKPASSD_BIN")
    if b:
        return b
    target = os.environ.get("CARGO_TARGET_DIR") or str(ROOT / "target")
    return os.path.join(target, "debug", "sockpassd")


def wait_for(what: str, cond: Callable[[], T | None], timeout: float = TIMEOUT) -> T:
    """Poll `cond` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def open_fds() -> dict[int, str]:
    """This process's open fds and what they point at."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            pass  # the listing's own directory fd, closed by now
    return out


def free_port(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP right now (the kernel's pick)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, kind) as s:
            s.bind((host, 0))
            port: int = s.getsockname()[1]
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        try:
            with socket.socket(family, other) as s:
                s.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError("no free port found")


class Broker:
    """A sockpassd process on a socket in a temp dir."""

    def __init__(self, tmp: pathlib.Path, *extra: str) -> None:
        self.dir = tmp
        self.path = str(tmp / "sockpassd.sock")
        self.log = tmp / "sockpassd.log"
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(
                [sockpassd_bin(), "--socket", self.path, *extra],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=logf,
            )
        wait_for("sockpassd to accept connections", self._ready)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"sockpassd exited early ({self.proc.returncode}): {self.log.read_text()}")
        try:
            with sockpass.Client(self.path) as c:
                c.hello()
        except sockpass.BrokerUnavailableError:
            return False
        return True

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self) -> sockpass.Client:
        """A client the broker has accepted (handshake done), so counts
        taken next include it."""
        c = sockpass.Client(self.path)
        c.hello()
        return c

    def status(self) -> list[sockpass.SocketStatus]:
        with self.client() as c:
            return c.status()

    def refs(self) -> int:
        return sum(s.refs for s in self.status())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
            self.proc.terminate()
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def broker(tmp_path: pathlib.Path) -> Iterator[Broker]:
    """A fresh broker for this test only."""
    b = Broker(tmp_path)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def default_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The broker the process-wide default client uses ($SOCKPASS_SOCKET).
    One per session, since the default client lives as long as the process."""
    if not os.path.exists(sockpassd_bin()):
        pytest.fail(f"{sockpassd_bin()} not found: run `cargo build -p sockpassd` (or set SOCKPASSD_BIN)")
    b = Broker(tmp_path_factory.mktemp("default-broker"))
    old = os.environ.get("SOCKPASS_SOCKET")
    os.environ["SOCKPASS_SOCKET"] = b.path
    sockpass.status()  # connect the default client now, so fd audits see it already open
    try:
        yield b
    finally:
        if old is None:
            del os.environ["SOCKPASS_SOCKET"]
        else:
            os.environ["SOCKPASS_SOCKET"] = old
        b.stop()


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Fail if the test leaves an fd open that was not open before."""
    before = open_fds()
    yield
    after = open_fds()
    leaked = {fd: what for fd, what in after.items() if before.get(fd) != what}
    assert not leaked, f"fds left open: {leaked}"


def read_marked_line(proc: subprocess.Popen[str], timeout: float = TIMEOUT) -> str:
    """The next '@@ '-marked line of a child's stdout, within `timeout`."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("child printed no '@@ ' line in time")
        r, _, _ = select.select([proc.stdout], [], [], left)
        if r:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"child exited early ({proc.wait()})")
            if line.startswith("@@ "):
                return line[3:].strip()


def run_python(code: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start `python -c code` with the given extra environment."""
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

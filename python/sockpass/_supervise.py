"""sockpass.Supervisor: one program across restarts, the old and the new
instance overlapping on the same sockets."""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence

from . import _sockpass
from ._share import Share
from ._spawn import _Arg, _catch, _Fd, _plan_args

__all__ = ["Supervisor"]


class Supervisor:
    """Start ``argv`` with ``fds`` (as ``sockpass.spawn`` takes them; they
    are duplicated, and every instance gets copies of the same open files at
    the same numbers) and keep it running across restarts.

    ``restart()`` starts a new instance, waits until it is ready (``ready``:
    ``"notify"``, ``"pipe"`` or ``"fd:N"``, each instance with its own
    channel, within ``ready_timeout`` seconds; without a method, alive for
    ``grace`` seconds), makes it current, sends the old one ``stop_signal``
    and waits up to ``drain_timeout`` seconds before SIGKILL. A new instance
    that exits or is not ready in time is stopped and reaped, the old one
    serves on, and the exception (``ChildFailedError``, ``TimeoutError``)
    carries its raw wait status as ``status`` (None if it never started).

    ``catch_bind``, ``catch_socket``, ``catch_share`` and ``catch_app`` are
    ``sockpass.spawn``'s: every instance gets its own catch (with
    ``catch_share=Share.SAMEAPP`` and an app name, old and new instance bind
    the same socket).

    Instances are neither stopped nor reaped by ``close()``: call
    ``terminate()`` and ``wait()`` first."""

    def __init__(
        self,
        argv: Sequence[_Arg],
        *,
        fds: Sequence[_Fd | tuple[_Fd, str]] = (),
        env: Mapping[str, str] | None = None,
        setenv: Mapping[str, str | None] | None = None,
        start: int = 3,
        listen_env: bool = True,
        join_pid: int | None = None,
        namespaces: str | None = None,
        ready: str | None = None,
        ready_timeout: float = 60.0,
        grace: float = 1.0,
        stop_signal: int = signal.SIGTERM,
        drain_timeout: float = 30.0,
        catch_bind: str | bool | None = None,
        catch_socket: str | os.PathLike[str] | None = None,
        catch_share: Share | int = Share.NONE,
        catch_app: str = "",
    ) -> None:
        self._native = _sockpass.supervise(
            _plan_args(argv, fds, env, setenv, start, listen_env, join_pid, namespaces),
            ready,
            float(ready_timeout),
            float(grace),
            int(stop_signal),
            float(drain_timeout),
            _catch(catch_bind, catch_socket, catch_share, catch_app),
        )
        self.returncode: int | None = None

    @property
    def pid(self) -> int | None:
        """The current instance's pid; None once none is left."""
        return self._native.pid

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the first instance is ready (at once without a
        method). It exiting first raises ``ChildFailedError``, running out
        of time ``TimeoutError`` (it is left running)."""
        self._native.wait_ready(timeout)

    def restart(self) -> int:
        """Restart and block until the outcome; the new instance's pid."""
        return self._native.restart()

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the current instance."""
        self._native.signal(sig)

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to every instance and refuse further restarts."""
        self._native.terminate(sig)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until no instance is left; the last current instance's
        return code as ``subprocess`` gives it (negative: killed by that
        signal), or None if one still runs after ``timeout`` seconds."""
        status = self._native.wait(timeout)
        if status is None:
            return None
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def close(self) -> None:
        """Close the fds this supervisor holds for its instances."""
        self._native.close()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pid is not None:
            self.terminate()
            self.wait()
        self.close()

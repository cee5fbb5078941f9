"""Readiness: wait for a child to say it is ready, or say so yourself.

Three protocols daemons already speak: ``"pipe"`` (the child closes or
writes to a pipe), ``"notify"`` (systemd's sd_notify ``READY=1`` on
``NOTIFY_SOCKET``) and ``"fd:N"`` (s6: a newline on fd N).

    r, child_fd = Readiness.create("pipe")      # child_fd: give it to the child
    proc = subprocess.Popen(cmd, pass_fds=[child_fd]); os.close(child_fd)
    r.wait_child(proc.pid, timeout=30)          # ChildFailed if it exits first

Timeouts raise ``TimeoutError``; a child that exits first raises
``OSError`` with errno 2008. Waits release the GIL.
"""

from __future__ import annotations

from ._sockpass import Readiness, notify_ready, report_ready_fd, send_notify

__all__ = ["Readiness", "notify_ready", "report_ready_fd", "send_notify"]

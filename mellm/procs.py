"""Child processes that do not outlive their parent.

A worker pool or server left running after its parent was SIGKILLed holds CPU, memory and ports
until someone finds it. On Linux the kernel can signal a child when its parent dies
(prctl PR_SET_PDEATHSIG); elsewhere this is a no-op and the usual clean shutdown applies.
"""

from __future__ import annotations

import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGKILL, parent_pid: int | None = None) -> None:
    """Call in the child (a pool initializer, or preexec_fn before exec): `signum` arrives when the
    parent dies. The kernel ties this to the parent *thread* that started the child, so start such
    children from a long-lived thread. With `parent_pid`, a parent that already died before this
    call is noticed too."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)
    except (OSError, AttributeError):  # not Linux / no glibc
        return
    if parent_pid is not None and os.getppid() != parent_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signum)

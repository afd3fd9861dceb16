"""Child processes that end with the process that started them, however it ends (SIGKILL included).

On Linux the kernel sends a child a chosen signal when its parent dies (PR_SET_PDEATHSIG). Servers get SIGTERM, so
they stop their own workers on the way out (BentoML's worker processes, the broker's snapshot); training ranks set
SIGKILL on themselves. Elsewhere commands run unchanged and a crashed launcher can leave children behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys

_PR_SET_PDEATHSIG = 1


def dies_with_parent(command: list[str], sig: str = "TERM") -> list[str]:
    """`command` started through util-linux's setpriv, which sets the parent-death signal and then execs it (the
    same pid). Unlike a preexec_fn this is safe in a process with threads; where setpriv is missing, unchanged."""
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    return [setpriv, "--pdeathsig", sig, "--", *command] if setpriv else command


def die_with_parent_now(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send this process `sig` when its parent dies (call it first thing in a child)."""
    if sys.platform != "linux":
        return
    import ctypes

    parent = os.getppid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent or parent == 1:  # the parent died before the request took effect
        os._exit(1)


def release_freed_memory() -> None:
    """Hand memory that Python and the libraries have freed back to the system. glibc keeps freed heap pages (and,
    having raised its mmap threshold after large frees, puts later large arrays there too), so a process that trained
    models in-process keeps their size resident long after; malloc_trim returns the free pages of every arena."""
    import gc

    gc.collect()
    if sys.platform == "linux":
        import ctypes

        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            pass

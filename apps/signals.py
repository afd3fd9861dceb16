"""Shutdown on SIGTERM the way Ctrl-C does, so long-running commands clean up in one `except KeyboardInterrupt`."""

from __future__ import annotations

import signal
from typing import Any


def _raise_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, _raise_interrupt)

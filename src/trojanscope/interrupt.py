"""Ctrl-C: remember that it came, whatever exception it turns into on its way up (a C
extension interrupted while it initialises raises ImportError, not KeyboardInterrupt)."""

from __future__ import annotations

import signal
import threading
from types import FrameType

_seen = False


def _handler(signum: int, frame: FrameType | None) -> None:
    global _seen
    _seen = True
    raise KeyboardInterrupt


def install() -> None:
    """Replace Python's default SIGINT handler by one that also records the interrupt (once,
    from the main thread; a handler someone else installed is left alone)."""
    if threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, _handler)


def seen() -> bool:
    """Whether Ctrl-C came since install()."""
    return _seen

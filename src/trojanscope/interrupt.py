"""Ctrl-C: remember that it came, whatever exception it turns into on its way up (a C
extension interrupted while it initialises raises ImportError, not KeyboardInterrupt)."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

_seen = False


def _handler(signum: int, frame: FrameType | None) -> None:
    global _seen
    _seen = True
    raise KeyboardInterrupt


def _unraisable(info: sys.UnraisableHookArgs) -> None:
    """Python prints, then ignores, an exception raised in a garbage-collection callback or a
    finalizer; Ctrl-C arriving there is recorded by the handler and ends the command later
    (trojanscope.cli), so it is not printed as a traceback."""
    if not (_seen and isinstance(info.exc_value, KeyboardInterrupt)):
        sys.__unraisablehook__(info)


def install() -> None:
    """Replace Python's default SIGINT handler by one that also records the interrupt (once,
    from the main thread; a handler someone else installed is left alone)."""
    if threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, _handler)
        sys.unraisablehook = _unraisable


def seen() -> bool:
    """Whether Ctrl-C came since install()."""
    return _seen

"""The `trojanscope` executable: `scan` starts on the standard library alone (it runs on every
commit and in CI); every other command loads the full Typer application."""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def main() -> None:
    """Dispatch: `trojanscope scan ...` to the fast path, anything else to the Typer app."""
    from trojanscope import interrupt

    interrupt.install()  # first: Ctrl-C during the imports below is an interrupt too
    if sys.argv[1:2] != ["scan"]:
        try:
            from trojanscope.cli import main as full
        except BaseException:
            if interrupt.seen():
                _interrupted("interrupted: nothing was done.")
            raise
        full()
        return
    from trojanscope.errors import TrojanscopeError
    from trojanscope.scan.command import run
    from trojanscope.textsafe import shown

    try:
        code = run(sys.argv[2:])
    except TrojanscopeError as exc:
        sys.stderr.write(f"error: {shown(exc)}\n")
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        _interrupted("interrupted: nothing was written.")
    except Exception as exc:
        if interrupt.seen():
            _interrupted("interrupted: nothing was written.")
        if os.environ.get("TROJANSCOPE_DEBUG"):
            raise
        sys.stderr.write(
            f"internal error: {type(exc).__name__}: {shown(exc)} "
            "(set TROJANSCOPE_DEBUG=1 for the traceback)\n"
        )
        raise SystemExit(1) from None
    sys.stdout.flush()
    raise SystemExit(code)


def _interrupted(message: str) -> NoReturn:
    """Exit 130 at once, as trojanscope.cli does (no teardown that could turn the interrupt
    into death by SIGINT)."""
    sys.stderr.write(message + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


if __name__ == "__main__":
    main()

"""The `trojanscope` executable: `scan` starts on the standard library alone (it runs on every
commit and in CI); every other command loads the full Typer application."""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Dispatch: `trojanscope scan ...` to the fast path, anything else to the Typer app."""
    if sys.argv[1:2] != ["scan"]:
        from trojanscope.cli import main as full

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
        sys.stderr.write("interrupted: nothing was written.\n")
        raise SystemExit(130) from None
    except Exception as exc:
        if os.environ.get("TROJANSCOPE_DEBUG"):
            raise
        sys.stderr.write(
            f"internal error: {type(exc).__name__}: {shown(exc)} "
            "(set TROJANSCOPE_DEBUG=1 for the traceback)\n"
        )
        raise SystemExit(1) from None
    sys.stdout.flush()
    raise SystemExit(code)


if __name__ == "__main__":
    main()

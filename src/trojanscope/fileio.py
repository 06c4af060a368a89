"""Files the user asked for: atomic writes with the user's umask, and checks of output paths.

Kept free of heavy imports: the scan command's fast start-up path writes SARIF with it.
"""

from __future__ import annotations

import os
from pathlib import Path

from trojanscope.errors import TrojanscopeError

#: Flags of a new temporary file (binary on Windows, not inherited by child processes).
_O_NEW = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename: readers never see half a file.

    The file gets the mode an ordinary ``open(path, "w")`` would give it (0o666 less the umask),
    not the private 0o600 of ``tempfile.mkstemp``: reports and exports are meant to be read."""
    while True:
        tmp = path.parent / f".tmp-{os.urandom(8).hex()}"
        try:  # the kernel applies the umask to 0o666, as for any file the user creates
            fd = os.open(tmp, _O_NEW, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_output_file(path: Path) -> None:
    """Refuse, in one sentence, an output path that cannot be written."""
    if path.is_dir():
        raise TrojanscopeError(f"cannot write {path}: it is a folder.")
    if not path.parent.is_dir():
        raise TrojanscopeError(f"cannot write {path}: folder {path.parent} does not exist.")
    if not os.access(path.parent, os.W_OK):
        raise TrojanscopeError(f"cannot write {path}: permission denied.")

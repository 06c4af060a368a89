"""Files the user asked for: atomic writes with the user's umask, and checks of output paths.

The one place that knows how trojanscope puts a file or a folder into place without readers
ever seeing half of it: a temporary sibling, then a rename (or a link). Kept free of heavy
imports: the scan command's fast start-up path writes SARIF with it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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


def _sibling(path: Path) -> Path:
    """A fresh temporary name beside ``path`` (the ``.tmp-`` prefix marks it as temporary)."""
    return path.with_name(f".tmp-{os.urandom(8).hex()}-{path.name}")


@contextmanager
def create_atomic(path: Path, suffixes: Sequence[str] = ()) -> Iterator[Path]:
    """A temporary path beside ``path`` for a file that something else creates (a SQLite
    engine, say); when the block ends without error the file is linked into place, never
    replacing a file that appeared at ``path`` meanwhile (that one is kept). The temporary file,
    and the files named after it with ``suffixes`` (``-journal``), are removed in any case:
    an interrupted creation leaves no file at ``path`` rather than half of one."""
    tmp = _sibling(path)
    try:
        yield tmp
        try:
            os.link(tmp, path)  # atomic, and never replaces an existing file
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not path.exists():
                os.replace(tmp, path)
    finally:
        for leftover in (tmp, *(tmp.with_name(tmp.name + s) for s in suffixes)):
            leftover.unlink(missing_ok=True)


@contextmanager
def replace_dir_atomic(path: Path) -> Iterator[Path]:
    """A new temporary folder beside ``path`` to build a tree in; when the block ends without
    error it is renamed to ``path`` (an empty folder there is replaced), otherwise removed with
    everything in it: readers never see half a tree."""
    tmp = _sibling(path)
    try:
        tmp.mkdir()
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_output_file(path: Path) -> None:
    """Refuse, in one sentence, an output path that cannot be written."""
    if path.is_dir():
        raise TrojanscopeError(f"cannot write {path}: it is a folder.")
    if not path.parent.is_dir():
        raise TrojanscopeError(f"cannot write {path}: folder {path.parent} does not exist.")
    if not os.access(path.parent, os.W_OK):
        raise TrojanscopeError(f"cannot write {path}: permission denied.")

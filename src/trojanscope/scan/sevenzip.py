"""7z archives, read member by member with the scan's size limits.

Not read yet: every 7z archive ends inconclusive (fail closed).
"""

from __future__ import annotations

from collections.abc import Iterator

from trojanscope.scan.limits import Budget


class SevenZipError(Exception):
    """The archive cannot be read."""


def iter_members(data: bytes | memoryview, budget: Budget) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file member."""
    raise SevenZipError("7z archives are not supported yet")
    yield  # pragma: no cover

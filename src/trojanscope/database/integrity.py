"""The store against the catalog: which artifacts the entries name, which files are missing,
corrupt or orphaned, and removing the orphans an interrupted build left.

Entries write their artifacts only while holding the catalog's write lock (``Catalog.record``),
so under that lock every file no entry names is garbage: a temporary file or an artifact of a
process killed before its commit. Both functions look at the store under the lock.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from trojanscope.database.catalog import Catalog
from trojanscope.database.schema import ARTIFACT_COLUMNS, EXTRA_ARTIFACTS, Localization
from trojanscope.database.store import ARTIFACT_NAME, sha256_of_file
from trojanscope.errors import CatalogError

#: Prefix of the temporary files ``fileio.write_atomic`` renames into place.
TEMPORARY_PREFIX = ".tmp-"


def references(session: Session) -> dict[str, list[str]]:
    """Every artifact the entries name -> who names it (``"defects 3 weights_sha256"``)."""
    refs: dict[str, list[str]] = defaultdict(list)
    for table, columns in ARTIFACT_COLUMNS.items():
        query = select(table.__table__.c.id, *(table.__table__.c[c] for c in columns))
        for row_id, *shas in session.execute(query):
            for column, sha in zip(columns, shas, strict=True):
                if sha:
                    refs[sha].append(f"{table.__tablename__} {row_id} {column}")
    for row_id, extra in session.execute(select(Localization.id, Localization.extra)):
        sha = (extra or {}).get(EXTRA_ARTIFACTS)
        if sha:
            refs[sha].append(f"localizations {row_id} extra.{EXTRA_ARTIFACTS}")
    return dict(refs)


def _garbage(path: Path, refs: dict[str, list[str]]) -> bool:
    """A file of the store no entry needs: an unnamed artifact or a temporary file."""
    match = ARTIFACT_NAME.fullmatch(path.name)
    return match is not None and match.group(1) not in refs


def sweep(catalog: Catalog) -> list[Path]:
    """Remove, under the write lock, every artifact no entry names and every temporary file
    (what a killed build leaves); returns the removed files. Files of other names are left
    alone (``verify`` reports them)."""
    removed = []
    with catalog.write_lock() as session:
        refs = references(session)
        for path in catalog.store.files():
            if _garbage(path, refs) or path.name.startswith(TEMPORARY_PREFIX):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


@dataclass
class Problem:
    """An artifact an entry names that is missing or whose content does not match its name."""

    sha256: str
    path: Path
    referenced_by: list[str]


@dataclass
class Integrity:
    """What ``verify`` found: artifacts checked, missing, corrupt, and orphaned files."""

    checked: int = 0
    missing: list[Problem] = field(default_factory=list)
    corrupt: list[Problem] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.orphans)


def verify(catalog: Catalog) -> Integrity:
    """Re-hash every artifact the catalog names; list the missing and corrupt ones and the
    files no entry names (orphans: unnamed artifacts, temporary files, anything else)."""
    try:  # a consistent view: no entry is being recorded while the store is listed
        with catalog.write_lock() as session:
            refs = references(session)
            files = list(catalog.store.files())
    except CatalogError:  # a catalog we may not write: read it as it is
        with catalog.session() as session:
            refs = references(session)
        files = list(catalog.store.files())
    report = Integrity(checked=len(refs))
    for sha, where in sorted(refs.items()):
        path = catalog.store.path(sha)
        if not path.is_file():
            report.missing.append(Problem(sha, path, where))
        elif sha256_of_file(path) != sha:
            report.corrupt.append(Problem(sha, path, where))
    named = {catalog.store.path(sha) for sha in refs}
    report.orphans = [p for p in files if p not in named]
    return report

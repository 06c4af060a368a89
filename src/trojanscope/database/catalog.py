"""The catalog: a SQLite database (via SQLAlchemy) beside a content-addressed artifact store.

Every entry is written in one transaction after its artifacts are safely on disk, so an
interrupted command leaves either the whole entry or none of it (artifacts without an entry
are harmless: they are content-addressed and simply unused).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from trojanscope.database.schema import Base
from trojanscope.database.store import ArtifactStore
from trojanscope.errors import CatalogError

CATALOG_FILE = "catalog.sqlite"
OBJECTS_DIR = "objects"


def content_key(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts: the identity of a catalog entry."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class Catalog:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = ArtifactStore(root / OBJECTS_DIR)
        self.engine = create_engine(f"sqlite:///{root / CATALOG_FILE}")
        event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def open(cls, root: str | os.PathLike[str], create: bool = False) -> Catalog:
        """Open the catalog at ``root``; with ``create``, make it if it does not exist."""
        path = Path(root)
        if path.exists() and not path.is_dir():
            raise CatalogError(f"--db {path} is a file, not a catalog folder.")
        if not (path / CATALOG_FILE).exists():
            if not create:
                raise CatalogError(
                    f"no trojanscope catalog at {path} (create one with `trojanscope quickstart"
                    f" --db {path}` or `trojanscope inject --db {path} ...`)."
                )
            if not path.parent.is_dir():
                raise CatalogError(f"cannot create catalog {path}: {path.parent} does not exist.")
            try:
                path.mkdir(exist_ok=True)
                (path / OBJECTS_DIR).mkdir(exist_ok=True)
            except OSError as exc:
                raise CatalogError(f"cannot create catalog {path}: {exc.strerror}.") from None
        catalog = cls(path)
        try:
            if create:
                Base.metadata.create_all(catalog.engine)
            _upgrade(catalog.engine)
            missing = set(Base.metadata.tables) - set(inspect(catalog.engine).get_table_names())
        except (DatabaseError, OperationalError) as exc:
            raise CatalogError(
                f"{path / CATALOG_FILE} is not a usable trojanscope catalog ({exc.orig})."
            ) from None
        if create:
            _probe_writable(path)
        if missing:
            raise CatalogError(f"{path / CATALOG_FILE} lacks tables {', '.join(sorted(missing))}.")
        return catalog

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose changes are committed together at the end, or not at all."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def session(self) -> Session:
        """A session for reading."""
        return self._sessions()


def _upgrade(engine: Engine) -> None:
    """Bring a catalog made by an earlier version up to date: tables added since are created
    and nullable columns added since are appended (SQLite's ALTER TABLE ADD COLUMN). A file
    without trojanscope's first table is left alone (the caller reports it)."""
    inspector = inspect(engine)
    tables = set(inspector.get_table_names())
    if "clean_models" not in tables:
        return
    if set(Base.metadata.tables) - tables:
        Base.metadata.create_all(engine)
    with engine.begin() as connection:
        for name, table in Base.metadata.tables.items():
            if name not in tables:
                continue
            present = {c["name"] for c in inspector.get_columns(name)}
            for column in table.columns:
                if column.name not in present and column.nullable:
                    kind = column.type.compile(dialect=engine.dialect)
                    connection.execute(
                        text(f'ALTER TABLE "{name}" ADD COLUMN "{column.name}" {kind}')
                    )


def _probe_writable(path: Path) -> None:
    """Fail now, clearly, rather than after an hour of training (os.access is wrong for root)."""
    for folder in (path, path / OBJECTS_DIR):
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise CatalogError(f"cannot write to catalog {folder}: {exc.strerror}.") from None
    try:
        connection = sqlite3.connect(path / CATALOG_FILE, timeout=30)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.rollback()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise CatalogError(f"cannot write to catalog {path / CATALOG_FILE}: {exc}.") from None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")  # parallel builders wait instead of failing
    cursor.close()

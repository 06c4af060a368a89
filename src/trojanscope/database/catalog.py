"""The catalog: a SQLite database (via SQLAlchemy) beside a content-addressed artifact store.

Every entry is recorded by :meth:`Catalog.record`: its row is inserted (taking SQLite's write
lock), its artifacts are written atomically, and the transaction commits, so an interrupted
command leaves either the whole entry or none of it. Artifacts are only ever written under the
write lock, so whoever holds it sees every file without an entry as garbage: a process killed
between the write and the commit leaves such a file, and ``integrity.sweep`` removes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from trojanscope.database.schema import Base
from trojanscope.database.store import ArtifactStore, Blob
from trojanscope.errors import CatalogError

CATALOG_FILE = "catalog.sqlite"
OBJECTS_DIR = "objects"


def content_key(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts: the identity of a catalog entry."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


#: The first 16 bytes of every SQLite 3 database file.
SQLITE_HEADER = b"SQLite format 3\x00"
#: The table whose presence makes a SQLite file a trojanscope catalog (present in every version).
MARKER_TABLE = "clean_models"


class Catalog:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = ArtifactStore(root / OBJECTS_DIR)
        self.engine = create_engine(f"sqlite:///{root / CATALOG_FILE}")
        event.listen(self.engine, "connect", _sqlite_pragmas)
        event.listen(self.engine, "handle_error", self._on_error)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def open(cls, root: str | os.PathLike[str], create: bool = False) -> Catalog:
        """Open the catalog at ``root``; with ``create``, make it if it does not exist.

        A catalog made by an earlier version is upgraded in place; a file that is not a
        trojanscope catalog (empty, not SQLite, another application's database) is refused and
        never modified."""
        path = Path(root)
        db_file = path / CATALOG_FILE
        if path.exists() and not path.is_dir():
            raise CatalogError(f"--db {path} is a file, not a catalog folder.")
        if not db_file.exists() and not db_file.is_symlink():
            if not create:
                raise CatalogError(
                    f"no trojanscope catalog at {path} (create one with `trojanscope db build "
                    f"SPEC --db {path}`, `trojanscope quickstart --db {path}` or `trojanscope "
                    f"inject --db {path} ...`)."
                )
            if not path.parent.is_dir():
                raise CatalogError(f"cannot create catalog {path}: {path.parent} does not exist.")
            try:
                path.mkdir(exist_ok=True)
                (path / OBJECTS_DIR).mkdir(exist_ok=True)
                _create_database(db_file)
            except OSError as exc:
                raise CatalogError(f"cannot create catalog {path}: {exc.strerror}.") from None
        else:
            _check_database_file(db_file)
        catalog = cls(path)
        try:
            inspector = inspect(catalog.engine)
            tables = {t for t in inspector.get_table_names() if not t.startswith("sqlite_")}
            if MARKER_TABLE not in tables:
                if tables:
                    raise CatalogError(
                        f"{db_file} is not a usable trojanscope catalog: it holds another "
                        f"application's tables ({', '.join(sorted(tables)[:5])}), and trojanscope "
                        "never adds its own to a foreign database; choose another --db."
                    )
                if create:  # a SQLite file without any table: nothing to adopt
                    Base.metadata.create_all(catalog.engine)
            _upgrade(catalog.engine)
            missing = set(Base.metadata.tables) - set(inspect(catalog.engine).get_table_names())
        except (DatabaseError, OperationalError) as exc:
            raise CatalogError(
                f"{db_file} is not a usable trojanscope catalog ({exc.orig})."
            ) from None
        if create:
            _probe_writable(path)
        if missing:
            raise CatalogError(f"{db_file} lacks tables {', '.join(sorted(missing))}.")
        return catalog

    def _on_error(self, context: ExceptionContext) -> None:
        """SQLite's errors about the file itself (damaged, read-only, locked, full) become one
        sentence naming the catalog; constraint violations pass (builders rely on them)."""
        original = context.original_exception
        if isinstance(original, sqlite3.IntegrityError | sqlite3.ProgrammingError):
            return
        if isinstance(original, sqlite3.DatabaseError):
            raise CatalogError(describe_sqlite_error(self.root / CATALOG_FILE, original))

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

    def record(self, row: Base, artifacts: Sequence[Blob] = ()) -> bool:
        """Record ``row`` and write its ``artifacts`` in one transaction; False if an entry
        with its key exists (another builder got there first: nothing of this one is kept).

        The insert comes first: it takes SQLite's write lock (and fails on a duplicate key
        before any file is written); the files are written while the lock is held, then the
        transaction commits. So a sweep holding the lock never sees a file that an entry
        about to be committed needs."""
        try:
            with self.transaction() as session:
                session.add(row)
                session.flush()
                self.store.write(artifacts)
        except IntegrityError:
            return False
        return True

    @contextmanager
    def write_lock(self) -> Iterator[Session]:
        """A session that holds SQLite's write lock until it ends (``BEGIN IMMEDIATE``):
        no entry is recorded, and so no artifact written, meanwhile."""
        with self.engine.connect() as connection:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                with Session(bind=connection) as session:
                    yield session
                    session.flush()
                connection.commit()
            except BaseException:
                connection.rollback()
                raise


def describe_sqlite_error(db_file: Path, exc: sqlite3.Error) -> str:
    """One sentence for an SQLite error about ``db_file`` (never the SQL statement)."""
    name = getattr(exc, "sqlite_errorname", "")
    message = str(exc).split("\n")[0]
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        return f"the catalog {db_file} is damaged ({message})."
    if name in ("SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH"):
        return f"cannot write to the catalog {db_file} ({message})."
    if name in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return f"the catalog {db_file} is locked by another process ({message}); try again later."
    if name == "SQLITE_FULL":
        return f"cannot write to the catalog {db_file}: the disk is full."
    if name == "SQLITE_CANTOPEN":
        return f"cannot open the catalog {db_file} ({message})."
    return f"the catalog {db_file} cannot be used ({message})."


def _check_database_file(db_file: Path) -> None:
    """Refuse, before SQLite touches it, a catalog file that is no trojanscope catalog."""
    try:
        if not db_file.is_file():
            raise CatalogError(f"{db_file} is not a usable trojanscope catalog: it is not a file.")
        with open(db_file, "rb") as fh:
            head = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise CatalogError(f"cannot read the catalog {db_file}: {exc.strerror}.") from None
    if not head:
        raise CatalogError(
            f"{db_file} is not a usable trojanscope catalog: it is an empty file (0 bytes); "
            "remove it to start a new catalog there, or choose another --db."
        )
    if head != SQLITE_HEADER:
        raise CatalogError(
            f"{db_file} is not a usable trojanscope catalog: it is not a SQLite database."
        )


def _create_database(db_file: Path) -> None:
    """Create the catalog's tables in a temporary file, then link it into place: an
    interrupted creation leaves no catalog file rather than an empty one, and a catalog that
    another process created meanwhile is kept."""
    tmp = db_file.with_name(f".tmp-{secrets.token_hex(8)}-{db_file.name}")
    engine = create_engine(f"sqlite:///{tmp}")
    try:
        try:
            Base.metadata.create_all(engine)
        except (DatabaseError, OperationalError) as exc:
            raise CatalogError(
                f"cannot create catalog {db_file.parent}: {str(exc.orig).split(chr(10))[0]}."
            ) from None
        finally:
            engine.dispose()
        try:
            os.link(tmp, db_file)  # atomic, and never replaces an existing catalog
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not db_file.exists():
                os.replace(tmp, db_file)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)


def _upgrade(engine: Engine) -> None:
    """Bring a catalog made by an earlier version up to date: tables added since are created
    and nullable columns added since are appended (SQLite's ALTER TABLE ADD COLUMN). A file
    without trojanscope's first table is left alone (the caller reports it)."""
    inspector = inspect(engine)
    tables = set(inspector.get_table_names())
    if MARKER_TABLE not in tables:
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

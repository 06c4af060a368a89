"""The catalog: a database (via SQLAlchemy; SQLite by default, PostgreSQL with ``--db-url``)
beside a content-addressed artifact store on disk.

Every entry is recorded by :meth:`Catalog.record`: in one transaction it takes the store lock
in shared mode, inserts its row (a duplicate key fails there, before any file is written),
writes its artifacts atomically and commits, so an interrupted command leaves either the whole
entry or none of it. ``integrity.sweep`` takes the store lock in exclusive mode, so it never
runs while an entry is being recorded, and sees every file without an entry as garbage (a
process killed between the write and the commit leaves such a file).

The store lock is the database's own: on SQLite the whole-database write lock (an insert takes
it; the sweep's ``BEGIN IMMEDIATE`` waits for it), on PostgreSQL a transaction-level advisory
lock (shared for recording, so that writers run in parallel; exclusive for the sweep).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
)
from sqlalchemy.orm import Session, sessionmaker

from trojanscope.database.schema import Base
from trojanscope.database.store import ArtifactStore, Blob
from trojanscope.errors import CatalogError, NoCatalogError
from trojanscope.fileio import create_atomic

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
#: The PostgreSQL advisory lock guarding the artifact store (a fixed 63-bit number: the first
#: 8 bytes of sha256("trojanscope artifact store")).
STORE_LOCK = int.from_bytes(hashlib.sha256(b"trojanscope artifact store").digest()[:8]) >> 1
#: The PostgreSQL advisory lock held while the catalog's tables are created or upgraded.
SCHEMA_LOCK = STORE_LOCK - 1
#: Seconds to wait for a PostgreSQL server that does not answer.
CONNECT_TIMEOUT = 10


class Catalog:
    """A catalog: its rows in a database, its artifacts in the store under ``root``.

    ``url`` None: the SQLite database ``root/catalog.sqlite``; else a PostgreSQL URL (the
    rows live there, the artifacts still under ``root``, a folder every builder shares)."""

    def __init__(self, root: Path, url: str | None = None) -> None:
        self.root = root
        self.store = ArtifactStore(root / OBJECTS_DIR)
        self.url = url
        if url is None:
            self.engine = create_engine(f"sqlite:///{root / CATALOG_FILE}")
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(
                postgres_url(url),
                connect_args={"connect_timeout": CONNECT_TIMEOUT},
                pool_pre_ping=True,
            )
        event.listen(self.engine, "handle_error", self._on_error)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        """True when the rows live in PostgreSQL."""
        return self.url is not None

    @property
    def location(self) -> str:
        """Where the rows live, for messages: the SQLite file, or the URL without password."""
        if self.url is None:
            return str(self.root / CATALOG_FILE)
        return shown_url(self.url)

    @classmethod
    def open(
        cls, root: str | os.PathLike[str], create: bool = False, url: str | None = None
    ) -> Catalog:
        """Open the catalog at ``root``; with ``create``, make it if it does not exist.

        With ``url`` (PostgreSQL) the rows live in that database and ``root`` holds the
        artifact store only. A catalog made by an earlier version is upgraded in place; a
        file or database that is not a trojanscope catalog (empty, not SQLite, another
        application's tables) is refused and never modified."""
        path = Path(root)
        if url is not None:
            return cls._open_postgres(path, url, create)
        db_file = path / CATALOG_FILE
        if path.exists() and not path.is_dir():
            raise CatalogError(f"--db {path} is a file, not a catalog folder.")
        if not db_file.exists() and not db_file.is_symlink():
            if not create:
                raise NoCatalogError(
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

    @classmethod
    def _open_postgres(cls, path: Path, url: str, create: bool) -> Catalog:
        """The PostgreSQL side of :meth:`open`: the store folder, then the database (its
        tables created under an advisory lock, so builders starting at once agree)."""
        postgres_url(url)  # a bad URL is refused before any folder is made
        if path.exists() and not path.is_dir():
            raise CatalogError(f"--db {path} is a file, not the catalog's artifact folder.")
        catalog = cls(path, url)
        where = catalog.location
        with catalog.engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
        if MARKER_TABLE not in tables:
            if tables:
                raise CatalogError(
                    f"the database {where} is not a usable trojanscope catalog: it holds "
                    f"another application's tables ({', '.join(sorted(tables)[:5])}), and "
                    "trojanscope never adds its own to a foreign database; choose another one."
                )
            if not create:
                raise NoCatalogError(
                    f"no trojanscope catalog in the database {where} (create one with "
                    f"`trojanscope db build SPEC --db {path} --db-url URL`)."
                )
        if not path.is_dir() and not create:
            raise CatalogError(
                f"no artifact store at {path}: with --db-url, --db names the folder (shared by "
                "every builder) that holds the catalog's artifacts."
            )
        if create:
            if not path.parent.is_dir():
                raise CatalogError(f"cannot create catalog {path}: {path.parent} does not exist.")
            try:
                (path / OBJECTS_DIR).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CatalogError(f"cannot create catalog {path}: {exc.strerror}.") from None
            _probe_writable_folders(path)
        if create or _outdated(catalog.engine):
            with catalog.engine.begin() as connection:
                connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
                if MARKER_TABLE not in set(inspect(connection).get_table_names()):
                    Base.metadata.create_all(connection)
                _upgrade(connection)
        return catalog

    def _on_error(self, context: ExceptionContext) -> None:
        """The database's errors about the catalog itself (SQLite: damaged, read-only, locked,
        full; PostgreSQL: unreachable, refused, out of room) become one sentence naming the
        catalog; constraint violations pass (builders rely on them)."""
        original = context.original_exception
        if self.url is not None:
            wrapped = context.sqlalchemy_exception
            if isinstance(wrapped, IntegrityError) or not isinstance(wrapped, DBAPIError):
                return
            raise CatalogError(describe_postgres_error(self.location, wrapped))
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

        The store lock is taken first, in shared mode (on SQLite the insert takes the
        database's write lock), then the row is inserted (a duplicate key fails there, before
        any file is written); the files are written while the lock is held, then the
        transaction commits. So a sweep, which holds the lock exclusively, never sees a file
        that an entry about to be committed needs."""
        try:
            with self.transaction() as session:
                if self.is_postgres:
                    session.execute(
                        text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": STORE_LOCK}
                    )
                session.add(row)
                session.flush()
                self.store.write(artifacts)
        except IntegrityError:
            return False
        return True

    @contextmanager
    def write_lock(self) -> Iterator[Session]:
        """A session that holds the store lock exclusively until it ends (SQLite: its write
        lock, ``BEGIN IMMEDIATE``; PostgreSQL: the exclusive advisory lock): no entry is
        recorded, and so no artifact written, meanwhile."""
        if self.is_postgres:
            with self.transaction() as session:
                session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": STORE_LOCK})
                yield session
            return
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

    @contextmanager
    def immediate(self) -> Iterator[Session]:
        """A transaction for a read-then-write (a job claim): on SQLite it takes the write
        lock at once (``BEGIN IMMEDIATE``: two such transactions never both read, then
        deadlock on the write); on PostgreSQL it is an ordinary transaction (the caller
        locks the rows it reads with ``FOR UPDATE``)."""
        if self.is_postgres:
            with self.transaction() as session:
                yield session
            return
        with self.write_lock() as session:
            yield session


def postgres_url(url: str) -> URL:
    """``url`` as a SQLAlchemy URL for the psycopg driver; anything but a PostgreSQL URL, or
    a machine without the driver, is one sentence."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise CatalogError(
            f"--db-url {url!r} is not a database URL (expected postgresql://USER@HOST:PORT/DB)."
        ) from None
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise CatalogError(
            f"--db-url takes a PostgreSQL URL (postgresql://USER@HOST:PORT/DB), not "
            f"{parsed.get_backend_name()}://...; a SQLite catalog is the folder --db names."
        )
    parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        parsed.get_dialect().import_dbapi()
    except (ImportError, NoSuchModuleError):
        raise CatalogError(
            "--db-url needs the PostgreSQL driver: pip install 'trojanscope[postgres]' (psycopg)."
        ) from None
    return parsed


def shown_url(url: str) -> str:
    """A database URL for messages: its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def describe_postgres_error(where: str, exc: DBAPIError) -> str:
    """One sentence for a PostgreSQL error about the catalog ``where`` (never the SQL)."""
    message = str(exc.orig).strip().split("\n")[0].rstrip(".")
    if isinstance(exc, OperationalError) or exc.connection_invalidated:
        return f"cannot reach the catalog database {where} ({message})."
    return f"the catalog database {where} cannot be used ({message})."


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
    with create_atomic(db_file, suffixes=("-journal",)) as tmp:
        engine = create_engine(f"sqlite:///{tmp}")
        try:
            Base.metadata.create_all(engine)
        except (DatabaseError, OperationalError) as exc:
            raise CatalogError(
                f"cannot create catalog {db_file.parent}: {str(exc.orig).split(chr(10))[0]}."
            ) from None
        finally:
            engine.dispose()


def _outdated(engine: Engine) -> bool:
    """Whether a catalog lacks a table, a column or an index this version has (read only)."""
    inspector = inspect(engine)
    tables = set(inspector.get_table_names())
    if MARKER_TABLE not in tables:
        return False
    if set(Base.metadata.tables) - tables:
        return True
    for name, table in Base.metadata.tables.items():
        present = {c["name"] for c in inspector.get_columns(name)}
        if any(column.name not in present for column in table.columns):
            return True
        indexes = {i["name"] for i in inspector.get_indexes(name)}
        if any(index.name not in indexes for index in table.indexes):
            return True
    return False


def _upgrade(bind: Engine | Connection) -> None:
    """Bring a catalog made by an earlier version up to date: tables added since are created,
    nullable columns added since are appended (ALTER TABLE ADD COLUMN, with their foreign key)
    and missing indexes are built. A column an earlier upgrade added without its foreign key
    keeps it that way (SQLite adds a constraint only by rebuilding the table); the catalog's
    own code sets parent_id only to existing rows. A database without trojanscope's first
    table is left alone (the caller reports it)."""
    if isinstance(bind, Engine):
        if not _outdated(bind):
            return
        with bind.connect() as connection:
            connection.exec_driver_sql("BEGIN IMMEDIATE")  # one upgrader at a time (SQLite)
            try:
                _upgrade(connection)
                connection.commit()
            except BaseException:
                connection.rollback()
                raise
        return
    inspector = inspect(bind)
    tables = set(inspector.get_table_names())
    if MARKER_TABLE not in tables:
        return
    if set(Base.metadata.tables) - tables:
        Base.metadata.create_all(bind)
    for name, table in Base.metadata.tables.items():
        if name not in tables:
            continue
        present = {c["name"] for c in inspector.get_columns(name)}
        for column in table.columns:
            if column.name not in present and column.nullable:
                kind = column.type.compile(dialect=bind.dialect)
                for key in column.foreign_keys:
                    kind += f' REFERENCES "{key.column.table.name}" ("{key.column.name}")'
                bind.execute(text(f'ALTER TABLE "{name}" ADD COLUMN "{column.name}" {kind}'))
        for index in table.indexes:
            index.create(bind, checkfirst=True)


def _probe_writable_folders(path: Path) -> None:
    """Fail now, clearly, if the catalog's folders cannot be written (os.access is wrong for
    root)."""
    for folder in (path, path / OBJECTS_DIR):
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise CatalogError(f"cannot write to catalog {folder}: {exc.strerror}.") from None


def _probe_writable(path: Path) -> None:
    """Fail now, clearly, rather than after an hour of training."""
    _probe_writable_folders(path)
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

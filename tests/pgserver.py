"""A throw-away PostgreSQL server for the tests: initdb into a temporary folder, started on a
free loopback port (its unix socket in the same folder), stopped and removed at the end.

PostgreSQL refuses to run as root: under root (CI on these machines) the server runs as the
unprivileged user ``nobody`` (through ``setpriv`` or ``runuser``), its folder owned by it.
Where the server binaries, the driver or a way to drop root are missing, ``unavailable()``
says why in one sentence and the tests that need a server skip with it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: Where the server binaries may be, besides PATH (Debian's layout).
BIN_DIRS = ("/usr/local/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True))
#: The unprivileged user the server runs as when the tests run as root.
SERVER_USER = "nobody"


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in BIN_DIRS:
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def _drop_root() -> list[str] | None:
    """The command prefix that runs a program as ``SERVER_USER`` (None if impossible)."""
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        return None
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={SERVER_USER}", f"--regid={_group()}", "--clear-groups"]
    if shutil.which("runuser"):
        return ["runuser", "-u", SERVER_USER, "--"]
    return None


def _group() -> str:
    return str(pwd.getpwnam(SERVER_USER).pw_gid)


def unavailable() -> str | None:
    """Why no test server can be started here, in one sentence (None: it can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the PostgreSQL driver psycopg is not installed (pip install 'psycopg[binary]')."
    missing = [n for n in ("initdb", "pg_ctl", "postgres") if _binary(n) is None]
    if missing:
        return f"no PostgreSQL server binaries here ({', '.join(missing)} not found)."
    if os.geteuid() == 0 and _drop_root() is None:
        return (
            f"the tests run as root, which PostgreSQL refuses, and there is no user "
            f"'{SERVER_USER}' with setpriv or runuser to run the server as."
        )
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running server: ``url(db)`` names one of its databases (user postgres, trust auth
    on loopback)."""

    folder: Path
    port: int
    prefix: list[str]
    _databases: int = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        self._databases += 1
        name = f"t{self._databases}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [
                *self.prefix,
                _binary("pg_ctl") or "pg_ctl",
                "-D",
                str(self.folder / "data"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


def start() -> Server:
    """initdb and start a server on a free loopback port (call ``unavailable()`` first)."""
    prefix = _drop_root() if os.geteuid() == 0 else []
    assert prefix is not None
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as
    # nobody; this folder is that user's alone.
    folder = Path(tempfile.mkdtemp(prefix="trojanscope-pg-"))
    if prefix:
        user = pwd.getpwnam(SERVER_USER)
        os.chown(folder, user.pw_uid, user.pw_gid)
    os.chmod(folder, 0o700)
    data = folder / "data"
    subprocess.run(
        [
            *prefix,
            _binary("initdb") or "initdb",
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=True,
    )
    for _ in range(5):  # another process may take the free port first: try another
        port = _free_port()
        started = subprocess.run(
            [
                *prefix,
                _binary("pg_ctl") or "pg_ctl",
                "-D",
                str(data),
                "-l",
                str(folder / "server.log"),
                "-w",
                "-t",
                "30",
                "-o",
                f"-k {folder} -h 127.0.0.1 -p {port} -F -c max_connections=200",
                "start",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        if started.returncode == 0:
            return Server(folder, port, prefix)
    log = (folder / "server.log").read_text(errors="replace")[-2000:]
    shutil.rmtree(folder, ignore_errors=True)
    raise RuntimeError(f"the test PostgreSQL server did not start:\n{log}")

"""Integrity manifests for a model directory: record the sha256 of every file, then check it.

A manifest lists relative POSIX paths, sizes and sha256 digests. Verification treats the
manifest as untrusted input: an entry whose path could reach outside the directory (absolute,
``..``, backslash, NUL, drive letter, or a symbolic link on disk) is refused and never opened.
Symbolic links are refused everywhere, on creation and on verification, because a model release
does not need them and a link is the easiest way to make a check read the wrong file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from trojanscope.errors import TrojanscopeError
from trojanscope.fileio import write_atomic

MANIFEST_NAME = "trojanscope-manifest.json"
MANIFEST_VERSION = 1
ALGORITHM = "sha256"
#: Files are hashed in chunks of this size, so memory stays bounded whatever the file size.
CHUNK_SIZE = 1024 * 1024
#: A manifest larger than this is rejected instead of being read into memory.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024

_HEX = frozenset("0123456789abcdef")
# Never follow a final symlink, never block on a FIFO swapped in after the checks.
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


@dataclass(frozen=True)
class EditedFile:
    """A listed file whose content no longer matches the manifest."""

    path: str
    expected_sha256: str
    actual_sha256: str

    def as_dict(self) -> dict[str, str]:
        return {
            "path": self.path,
            "expected_sha256": self.expected_sha256,
            "actual_sha256": self.actual_sha256,
        }


@dataclass(frozen=True)
class RefusedEntry:
    """A manifest entry or on-disk item that was not checked; ``reason`` says why."""

    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class ManifestResult:
    """Outcome of :func:`verify_manifest`; ``ok`` only when every listed file matched and
    nothing was missing, added or refused."""

    verified: list[str] = field(default_factory=list)
    edited: list[EditedFile] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    refused: list[RefusedEntry] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.edited or self.missing or self.extra or self.refused)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "verified": list(self.verified),
            "edited": [e.as_dict() for e in self.edited],
            "missing": list(self.missing),
            "extra": list(self.extra),
            "refused": [r.as_dict() for r in self.refused],
        }


class _Unreadable(Exception):
    """A file could not be hashed; the message is a sentence fragment ("could not be read")."""


# --------------------------------------------------------------------------- helpers


def _path_problem(rel: str) -> str | None:
    """Why ``rel`` is not a safe, canonical relative POSIX path, or None when it is.

    Shared by creation and verification so a manifest we write always passes our own check.
    """
    if rel == "":
        return "is an empty path"
    if "\x00" in rel:
        return "contains a NUL character"
    if "\\" in rel:
        return "contains a backslash"
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        return "is an absolute path"
    parts = rel.split("/")
    if ".." in parts:
        return "contains a '..' component"
    if "" in parts or "." in parts:
        return "is not a canonical relative path"
    try:
        os.fsencode(rel)
    except UnicodeEncodeError:
        return "cannot be represented as a file name on this system"
    return None


def _root(directory: Path) -> Path:
    """The resolved model directory, or a TrojanscopeError when it is not a folder."""
    try:
        root = Path(directory).resolve(strict=True)
    except OSError:
        raise TrojanscopeError(f"Directory {directory} does not exist.") from None
    if not root.is_dir():
        raise TrojanscopeError(f"{directory} is not a directory.")
    return root


def _rel_inside(root: Path, path: Path) -> str | None:
    """``path`` relative to ``root`` in POSIX form, or None when it lies outside.

    Only the parent is resolved: the final component may not exist yet or may be a link.
    """
    try:
        full = Path(path).parent.resolve() / Path(path).name
        return full.relative_to(root).as_posix()
    except (OSError, ValueError):
        return None


def _leaves(root: Path, path: Path) -> bool:
    """True when ``path``, with every symlink followed, ends up outside ``root``."""
    return not Path(os.path.realpath(path)).is_relative_to(root)


def _link_reason(root: Path, link: Path) -> str:
    if _leaves(root, link):
        return "is a symbolic link that leads outside the directory"
    return "is a symbolic link, and manifests cover regular files only"


def _walk(root: Path) -> tuple[list[str], list[str]]:
    """Regular files and symbolic links under ``root`` as sorted relative POSIX paths.

    Links are never followed, so a linked folder is reported, not entered; other special
    files (FIFOs, sockets, devices) are skipped because they have no content to hash.
    """
    files: list[str] = []
    links: list[str] = []
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise TrojanscopeError(
                f"Folder {folder} cannot be listed ({exc.strerror or exc})."
            ) from None
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_symlink():
                links.append(rel)
            elif entry.is_dir(follow_symlinks=False):
                stack.append((Path(entry.path), rel + "/"))
            elif entry.is_file(follow_symlinks=False):
                files.append(rel)
    return sorted(files), sorted(links)


def _hash_file(path: Path) -> tuple[int, str]:
    """Size and sha256 of a regular file, read in CHUNK_SIZE pieces without following a link."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Unreadable("became a symbolic link while being checked") from None
        raise _Unreadable(f"could not be opened ({exc.strerror or exc})") from None
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "rb", buffering=0) as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise _Unreadable("is not a regular file")
            buf = bytearray(CHUNK_SIZE)
            view = memoryview(buf)
            while n := fh.readinto(buf):
                digest.update(view[:n])
                size += n
    except OSError as exc:
        raise _Unreadable(f"could not be read ({exc.strerror or exc})") from None
    return size, digest.hexdigest()


def _excluded(root: Path, manifest: Path) -> set[str]:
    """Paths that are never listed: the conventional manifest name and the manifest in use."""
    names = {MANIFEST_NAME}
    rel = _rel_inside(root, manifest)
    if rel is not None:
        names.add(rel)
    return names


# --------------------------------------------------------------------------- create


def create_manifest(directory: Path, output: Path | None = None) -> Path:
    """Hash every regular file under ``directory`` and write a manifest; return its path.

    The output is deterministic apart from ``created``: files are sorted by path and the JSON
    keys are sorted. Any symbolic link aborts creation, because recording a link would either
    hash something outside the release or hide what the release really contains. The manifest
    is written to a temporary file beside ``output`` and renamed, so a reader never sees half
    of it.
    """
    root = _root(directory)
    output = Path(output) if output is not None else root / MANIFEST_NAME
    excluded = _excluded(root, output)
    files, links = _walk(root)
    for link in links:
        if link not in excluded:
            reason = _link_reason(root, root / link)
            raise TrojanscopeError(
                f"'{link}' in {root} {reason}; replace it with a regular file before creating "
                "a manifest."
            )
    entries: list[dict[str, Any]] = []
    for rel in files:
        if rel in excluded:
            continue
        problem = _path_problem(rel)
        if problem is not None:
            raise TrojanscopeError(
                f"'{rel}' in {root} {problem}, which a manifest cannot record safely."
            )
        try:
            size, digest = _hash_file(root / rel)
        except _Unreadable as exc:
            raise TrojanscopeError(f"'{rel}' in {root} {exc}.") from None
        entries.append({"path": rel, "size": size, "sha256": digest})
    document = {
        "version": MANIFEST_VERSION,
        "algorithm": ALGORITHM,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": entries,
    }
    text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=True) + "\n"
    _write_atomic(output, text.encode("ascii"))
    return output


def _write_atomic(output: Path, data: bytes) -> None:
    """Write ``data`` to ``output`` atomically (``trojanscope.fileio.write_atomic``).

    The manifest gets the mode of any file the user creates (0o666 less the umask): it is meant
    to be shared, and a user whose umask keeps files private gets a private manifest."""
    folder = output.parent
    if not folder.is_dir():
        raise TrojanscopeError(f"Folder {folder} for the manifest does not exist.")
    try:
        write_atomic(output, data)
    except OSError as exc:
        raise TrojanscopeError(
            f"Manifest {output} could not be written ({exc.strerror or exc})."
        ) from None


# --------------------------------------------------------------------------- verify


def _load(manifest: Path) -> list[dict[str, Any]]:
    """The validated ``files`` list of a manifest, or a TrojanscopeError naming the problem."""
    try:
        with open(manifest, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise TrojanscopeError(
            f"Manifest {manifest} cannot be read ({exc.strerror or exc})."
        ) from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise TrojanscopeError(
            f"Manifest {manifest} is larger than {MAX_MANIFEST_BYTES} bytes and was not read."
        )
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TrojanscopeError(f"Manifest {manifest} is not valid JSON.") from None

    def bad(what: str) -> TrojanscopeError:
        return TrojanscopeError(f"Manifest {manifest} is malformed: {what}.")

    if not isinstance(document, dict):
        raise bad("the top level is not an object")
    version = document.get("version")
    if type(version) is not int:
        raise bad("'version' is missing or not an integer")
    if version != MANIFEST_VERSION:
        raise TrojanscopeError(
            f"Manifest {manifest} has version {version}, but only version "
            f"{MANIFEST_VERSION} is supported."
        )
    algorithm = document.get("algorithm")
    if algorithm != ALGORITHM:
        raise TrojanscopeError(
            f"Manifest {manifest} uses algorithm {algorithm!r}, but only {ALGORITHM!r} is "
            "supported."
        )
    if not isinstance(document.get("created"), str):
        raise bad("'created' is missing or not a string")
    files = document.get("files")
    if not isinstance(files, list):
        raise bad("'files' is missing or not a list")
    seen: set[str] = set()
    for index, entry in enumerate(files):
        if not isinstance(entry, dict):
            raise bad(f"file entry {index} is not an object")
        path, size, digest = entry.get("path"), entry.get("size"), entry.get("sha256")
        if not isinstance(path, str):
            raise bad(f"file entry {index} has no string 'path'")
        if type(size) is not int or size < 0:
            raise bad(f"file entry {index} has no non-negative integer 'size'")
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
            raise bad(f"file entry {index} has no 64-digit lowercase hex 'sha256'")
        if path in seen:
            raise bad(f"path {path!r} is listed more than once")
        seen.add(path)
    return files


def _locate(root: Path, rel: str) -> Path | RefusedEntry | None:
    """The on-disk file for a safe ``rel``, a refusal, or None when it is missing.

    Every component is examined with lstat before anything is opened, so a symbolic link
    anywhere on the way is refused instead of followed.
    """
    parts = rel.split("/")
    current = root
    for index, part in enumerate(parts):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            return RefusedEntry(rel, f"cannot be examined ({exc.strerror or exc})")
        last = index == len(parts) - 1
        if stat.S_ISLNK(mode):
            if last:
                return RefusedEntry(rel, _link_reason(root, current))
            via = "/".join(parts[: index + 1])
            return RefusedEntry(rel, f"passes through '{via}', which {_link_reason(root, current)}")
        if not last and not stat.S_ISDIR(mode):
            return None
        if last and not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a special file"
            return RefusedEntry(rel, f"is {kind}, not a regular file")
    if _leaves(root, current):  # defence in depth; the lstat walk already rules this out
        return RefusedEntry(rel, "resolves outside the directory")
    return current


def verify_manifest(directory: Path, manifest: Path | None = None) -> ManifestResult:
    """Check ``directory`` against a manifest (default ``directory / MANIFEST_NAME``).

    Unsafe entries are refused without touching the file system beyond lstat; every symbolic
    link found on disk is refused as well. Raises TrojanscopeError when the manifest itself is
    unreadable, not JSON, malformed, or of an unknown version or algorithm.
    """
    root = _root(directory)
    manifest = Path(manifest) if manifest is not None else root / MANIFEST_NAME
    entries = _load(manifest)
    excluded = _excluded(root, manifest)
    result = ManifestResult()

    for entry in entries:
        rel: str = entry["path"]
        problem = _path_problem(rel)
        if problem is None and rel in excluded:
            problem = "names the manifest file itself"
        if problem is not None:
            result.refused.append(RefusedEntry(rel, problem))
            continue
        located = _locate(root, rel)
        if located is None:
            result.missing.append(rel)
            continue
        if isinstance(located, RefusedEntry):
            result.refused.append(located)
            continue
        try:
            size, digest = _hash_file(located)
        except _Unreadable as exc:
            result.refused.append(RefusedEntry(rel, str(exc)))
            continue
        if digest != entry["sha256"] or size != entry["size"]:
            result.edited.append(EditedFile(rel, entry["sha256"], digest))
        else:
            result.verified.append(rel)

    listed = {entry["path"] for entry in entries}
    files, links = _walk(root)
    result.extra = [rel for rel in files if rel not in listed and rel not in excluded]
    already = {r.path for r in result.refused}
    for link in links:
        if link not in excluded and link not in already:
            result.refused.append(RefusedEntry(link, _link_reason(root, root / link)))

    result.verified.sort()
    result.edited.sort(key=lambda e: e.path)
    result.missing.sort()
    result.refused.sort(key=lambda r: (r.path, r.reason))
    return result

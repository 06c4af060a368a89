"""`trojanscope scan`: recognise each file by its content and run the matching scanner.

Nothing is imported, unpickled or executed from a scanned file. Archives (zip, tar, gzip, bz2,
xz, zlib) are opened with bounded decompression and scanned member by member at any depth,
whatever the members are called; a limit hit makes the verdict inconclusive, never clean.
"""

from __future__ import annotations

import ast
import bz2
import gzip
import hashlib
import io
import json
import lzma
import mmap
import os
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trojanscope.scan.findings import FileReport, LimitExceeded
from trojanscope.scan.pickle_scan import Limits, looks_like_pickle, scan_pickle_stream
from trojanscope.scan.safetensors_check import check_safetensors

#: Members of a PyTorch zip checkpoint holding raw storage bytes (never unpickled by torch).
_TORCH_STORAGE = re.compile(r"(^|/)data/\d+$")
_TORCH_RAW = re.compile(r"(^|/)(version|byteorder|\.data/version|\.data/serialization_id)$")
_CHUNK = 1 << 20


class _Budget:
    """Decompressed bytes left for one top-level file (zip bombs stop here)."""

    def __init__(self, limits: Limits) -> None:
        self.left = limits.max_total_bytes
        self.members = 0


def detect(data: bytes | memoryview) -> str:
    """The format of ``data`` by content (magic numbers and structure), never by name."""
    head = bytes(data[:512])
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    if head[:6] == b"\x93NUMPY":
        return "npy"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"BZh" and head[3:4].isdigit():
        return "bz2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if len(head) >= 10:
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= len(data) - 8 and head[8:9] == b"{":
            return "safetensors"
    if looks_like_pickle(head):
        return "pickle"
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
        return "zlib"
    from trojanscope.scan.onnx_check import looks_like_onnx  # onnx is slow to import

    if looks_like_onnx(bytes(data[: 1 << 16])):
        return "onnx"
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "json"
    return "unknown"


def _read_bounded(
    stream: io.BufferedIOBase | io.RawIOBase, limits: Limits, budget: _Budget
) -> bytes:
    out = bytearray()
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            return bytes(out)
        out += chunk
        budget.left -= len(chunk)
        if len(out) > limits.max_member_bytes:
            raise LimitExceeded(
                f"a member decompresses to more than {limits.max_member_bytes} bytes"
            )
        if budget.left < 0:
            raise LimitExceeded(
                f"the file decompresses to more than {limits.max_total_bytes} bytes"
            )


class Scanner:
    """Scans paths into FileReports (one per file and per archive member)."""

    def __init__(self, limits: Limits | None = None, hashes: bool = False) -> None:
        self.limits = limits or Limits()
        self.hashes = hashes  # sha256 of every file and member (costs a full read)

    # -- entry points ----------------------------------------------------------------------

    def scan_paths(self, paths: list[Path]) -> list[FileReport]:
        reports: list[FileReport] = []
        for path in paths:
            if path.is_dir():
                reports.extend(self.scan_directory(path))
            else:
                reports.extend(self.scan_file(path))
        return reports

    def scan_directory(self, root: Path) -> list[FileReport]:
        reports: list[FileReport] = []
        files = sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())
        for path in files:
            if path.is_symlink():
                target = os.path.realpath(path)
                if not Path(target).is_relative_to(os.path.realpath(root)):
                    report = FileReport(str(path), "symlink")
                    report.add(
                        "file.symlink-escape",
                        "high",
                        f"symbolic link to {target}, outside the model directory",
                    )
                    reports.append(report)
                    continue
                if Path(target).is_dir():
                    continue  # a folder inside the model folder: its files are scanned anyway
            reports.extend(self.scan_file(path))
        reports.extend(_custom_code(root, files))
        return reports

    def scan_file(self, path: Path) -> list[FileReport]:
        reports: list[FileReport] = []
        try:
            with _mapped(path) as data:
                report = FileReport(str(path), "?", size=len(data))
                if self.hashes:
                    report.sha256 = hashlib.sha256(data).hexdigest()
                self._scan(data, report, reports, 0, _Budget(self.limits), path.parent)
        except OSError as exc:
            report = FileReport(str(path), "unreadable")
            report.error = f"cannot read {path}: {exc.strerror or exc}"
            reports.append(report)
        return reports

    # -- dispatch --------------------------------------------------------------------------

    def _scan(
        self,
        data: bytes | memoryview,
        report: FileReport,
        out: list[FileReport],
        depth: int,
        budget: _Budget,
        model_dir: Path | None,
    ) -> None:
        out.append(report)
        report.format = fmt = detect(data)
        try:
            if depth > self.limits.max_depth:
                raise LimitExceeded(f"archives nested deeper than {self.limits.max_depth}")
            if fmt == "pickle":
                scan_pickle_stream(data, report, self.limits)
            elif fmt == "zip":
                self._zip(data, report, out, depth, budget)
            elif fmt == "tar":
                self._tar(data, report, out, depth, budget)
            elif fmt in ("gzip", "bz2", "xz", "zlib"):
                self._compressed(fmt, data, report, out, depth, budget)
            elif fmt == "npy":
                self._npy(data, report, out, depth, budget)
            elif fmt == "safetensors":
                check_safetensors(data, report)  # reads only the header and sizes
            elif fmt == "onnx":
                from trojanscope.scan.onnx_check import check_onnx

                check_onnx(bytes(data), report, model_dir)
            elif fmt == "json":
                _json(data, report)
        except LimitExceeded as exc:
            report.incomplete = f"limit reached: {exc}"

    def _member(
        self,
        name: str,
        data: bytes,
        parent: FileReport,
        out: list[FileReport],
        depth: int,
        budget: _Budget,
    ) -> None:
        budget.members += 1
        if budget.members > self.limits.max_members:
            raise LimitExceeded(f"more than {self.limits.max_members} archive members")
        report = FileReport(f"{parent.location}!{name}", "?", size=len(data))
        if self.hashes:
            report.sha256 = hashlib.sha256(data).hexdigest()
        self._scan(data, report, out, depth + 1, budget, None)

    def _zip(self, data, report, out, depth, budget) -> None:
        try:
            archive = zipfile.ZipFile(_as_file(data))
        except (zipfile.BadZipFile, ValueError) as exc:
            report.add("archive.malformed", "medium", f"unreadable zip archive ({exc})")
            report.incomplete = "unreadable zip archive"
            return
        names = archive.namelist()
        torch_zip = any(n.endswith("data.pkl") for n in names)
        if torch_zip:
            report.metadata["format_detail"] = "PyTorch zip checkpoint"
        for info in archive.infolist():
            if info.is_dir():
                continue
            if torch_zip and (
                _TORCH_STORAGE.search(info.filename) or _TORCH_RAW.search(info.filename)
            ):
                continue  # raw tensor bytes: torch.load reads them as bytes, never unpickles
            if (
                info.compress_size
                and info.file_size / info.compress_size > 1000
                and info.file_size > 2**26
            ):
                report.add(
                    "archive.bomb",
                    "medium",
                    f"member {info.filename} expands {info.file_size // info.compress_size}x",
                )
                raise LimitExceeded(f"member {info.filename} looks like a decompression bomb")
            try:
                with archive.open(info) as stream:
                    content = _read_bounded(stream, self.limits, budget)
            except (
                zipfile.BadZipFile,
                zlib.error,
                lzma.LZMAError,
                OSError,
                EOFError,
                NotImplementedError,
                RuntimeError,
            ) as exc:
                report.add("archive.malformed", "medium", f"member {info.filename}: {exc}")
                report.incomplete = f"unreadable member {info.filename}"
                continue
            self._member(info.filename, content, report, out, depth, budget)

    def _tar(self, data, report, out, depth, budget) -> None:
        try:
            archive = tarfile.open(fileobj=_as_file(data), mode="r:")  # noqa: SIM115
        except tarfile.TarError as exc:
            report.add("archive.malformed", "medium", f"unreadable tar archive ({exc})")
            report.incomplete = "unreadable tar archive"
            return
        with archive:
            try:
                for member in archive:
                    if member.issym() or member.islnk():
                        report.add(
                            "archive.link",
                            "low",
                            f"member {member.name} is a link to {member.linkname}",
                        )
                        continue
                    if not member.isfile():
                        continue
                    stream = archive.extractfile(member)
                    if stream is None:
                        continue
                    self._member(
                        member.name,
                        _read_bounded(stream, self.limits, budget),
                        report,
                        out,
                        depth,
                        budget,
                    )
            except (tarfile.TarError, OSError, EOFError) as exc:
                report.add("archive.malformed", "medium", f"tar archive breaks off ({exc})")
                report.incomplete = "truncated tar archive"

    def _compressed(self, fmt, data, report, out, depth, budget) -> None:
        raw = _as_file(data)
        openers = {
            "gzip": lambda: gzip.GzipFile(fileobj=raw),  # noqa: SIM115
            "bz2": lambda: bz2.BZ2File(raw),  # noqa: SIM115
            "xz": lambda: lzma.LZMAFile(raw),  # noqa: SIM115 (entered below)
        }
        try:
            if fmt == "zlib":
                content = _inflate(bytes(data), self.limits, budget)
            else:
                with openers[fmt]() as stream:
                    content = _read_bounded(stream, self.limits, budget)
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
            if fmt == "zlib":
                report.format = "unknown"
                return
            report.add("archive.malformed", "medium", f"{fmt} stream breaks off ({exc})")
            report.incomplete = f"unreadable {fmt} stream"
            return
        self._member(f"<{fmt}>", content, report, out, depth, budget)

    def _npy(self, data, report, out, depth, budget) -> None:
        header = _npy_header(data)
        if header is None:
            report.add("npy.header", "medium", "malformed .npy header")
            report.incomplete = "malformed .npy header"
            return
        descr, offset = header
        report.metadata["dtype"] = str(descr)
        if "O" in str(descr):
            report.add(
                "npy.object-array",
                "medium",
                "object array: its elements are a pickle, run only with allow_pickle=True",
            )
            self._member("<object pickle>", bytes(data[offset:]), report, out, depth, budget)


class _ViewFile(io.RawIOBase):
    """A read-only, seekable file over a memoryview: archives inside a memory-mapped file are
    read in place instead of being copied (io.BytesIO would copy the whole file)."""

    def __init__(self, view: memoryview) -> None:
        self._view, self._pos = view, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = self._view[self._pos : self._pos + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


def _as_file(data: bytes | memoryview) -> io.IOBase:
    """A seekable file over ``data`` without copying it."""
    if isinstance(data, memoryview):
        return io.BufferedReader(_ViewFile(data), buffer_size=_CHUNK)
    return io.BytesIO(data)


def _inflate(data: bytes, limits: Limits, budget: _Budget) -> bytes:
    """A zlib stream (joblib's zlib compression), decompressed with the same bounds."""
    inflater = zlib.decompressobj()
    out = bytearray()
    for start in range(0, len(data), _CHUNK):
        piece = inflater.decompress(data[start : start + _CHUNK])
        out += piece
        budget.left -= len(piece)
        if len(out) > limits.max_member_bytes or budget.left < 0:
            raise LimitExceeded("a zlib stream decompresses past the size limit")
    return bytes(out + inflater.flush())


def _npy_header(data) -> tuple[str, int] | None:
    """(descr, data offset) of a .npy file, parsed as a Python literal (never evaluated)."""
    try:
        major = data[6]
        if major == 1:
            length, start = int.from_bytes(data[8:10], "little"), 10
        else:
            length, start = int.from_bytes(data[8:12], "little"), 12
        text = bytes(data[start : start + length]).decode("latin-1")
        header = ast.literal_eval(text)
        return str(header["descr"]), start + length
    except (ValueError, SyntaxError, KeyError, TypeError, IndexError, MemoryError, RecursionError):
        return None


def _json(data, report: FileReport) -> None:
    if len(data) > 50 * 2**20:
        return
    try:
        config = json.loads(bytes(data))
    except (ValueError, RecursionError):
        return
    if isinstance(config, dict) and "auto_map" in config:
        targets = config["auto_map"]
        report.add(
            "hf.auto-map",
            "high",
            "config names custom model code (auto_map): loading with trust_remote_code runs it",
            refs=targets if isinstance(targets, dict | list | str) else str(targets),
        )


def _custom_code(root: Path, files: list[Path]) -> list[FileReport]:
    """Python sources shipped in a model directory: what `auto_map` would import."""
    reports = []
    for path in files:
        if path.suffix == ".py" and path.is_file():
            report = FileReport(str(path), "python")
            report.add(
                "hf.custom-code",
                "medium",
                "Python source in the model directory: custom code a loader may import",
            )
            reports.append(report)
    return reports


@contextmanager
def _mapped(path: Path) -> Iterator[bytes | memoryview]:
    """The file's bytes, memory-mapped when non-empty (big checkpoints are not copied)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            yield b""
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                yield view
            finally:
                view.release()

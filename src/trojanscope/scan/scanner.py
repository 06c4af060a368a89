"""`trojanscope scan`: recognise each file by its content and run the matching reader.

Nothing is imported, unpickled or executed from a scanned file. Fail closed: a file is clean
only when every byte of it was accounted for by a supported format whose content is allowed.
Every file is tried as a pickle from its first byte whatever its format; archives (zip, tar,
7z, gzip, bz2, xz, zlib) are read member by member at any depth with bounded decompression;
what no reader accounts for, a limit, a parse error or a special file makes the verdict
inconclusive, never clean.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from trojanscope.scan import formats
from trojanscope.scan.decompress import TruncatedStream, decompress, read_member
from trojanscope.scan.detect import CONTAINERS, detect, hdf5_offset, image_kind
from trojanscope.scan.findings import FileReport, Finding, LimitExceeded
from trojanscope.scan.limits import BombDetected, Budget, Limits
from trojanscope.scan.pickle_scan import PickleMachine, scan_pickle_stream

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

#: Members of PyTorch zip and TorchScript archives holding raw storage bytes (never unpickled):
#: ``data/N``, and a mobile (lite interpreter) archive's ``constants/N`` and ``bytecode/N``.
_TORCH_STORAGE = re.compile(r"(^|/)(data|constants|bytecode)/\d+$")
_IMPORT_RULES = ("pickle.dangerous-import", "pickle.unknown-import")
# zipfile, tarfile and the NumPy reader are imported where used: `trojanscope scan` of a
# plain pickle must start as fast as a single-purpose scanner.
_ZIP_ERRORS = (
    zlib.error,
    OSError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
)


class _Context(NamedTuple):
    """Where a (member) file sits: output list, nesting depth, the top-level budget, the model
    folder (for ONNX external data) and what its container admits (TorchScript classes)."""

    out: list[FileReport]
    depth: int
    budget: Budget
    model_dir: Path | None
    allow: Callable[[str, str], bool] | None = None
    role: str | None = None  # "torchscript-code": a TorchScript source, not a pickle


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
        reports.extend(self._companions(reports))
        return reports

    def _companions(self, reports: list[FileReport]) -> list[FileReport]:
        """The files old joblib pickles make joblib.load read (``np.load(allow_pickle=True)``
        of a name next to the pickle): scanned too, and a missing one leaves the pickle
        inconclusive, since what joblib would load from it cannot be judged."""
        scanned = {os.path.realpath(r.location) for r in reports if "!" not in r.location}
        added: list[FileReport] = []
        queue = [r for r in reports if "!" not in r.location]
        while queue:
            report = queue.pop()
            for name in report.metadata.get("companion_files", []):
                path = Path(report.location).parent / name
                if os.path.realpath(path) in scanned:
                    continue
                if not path.is_file():
                    report.incomplete = report.incomplete or (
                        f"joblib.load also reads {name!r}, which is missing here"
                    )
                    continue
                scanned.add(os.path.realpath(path))
                found = self.scan_file(path)
                added.extend(found)
                queue.extend(found[:1])
        return added

    def scan_directory(self, root: Path) -> list[FileReport]:
        reports: list[FileReport] = []
        entries = sorted(p for p in root.rglob("*") if not p.is_dir() or p.is_symlink())
        real_root = os.path.realpath(root)
        for path in entries:
            if path.is_symlink():
                target = os.path.realpath(path)
                if not Path(target).is_relative_to(real_root):
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
        reports.extend(_custom_code(entries))
        return reports

    def scan_file(self, path: Path) -> list[FileReport]:
        """One file (and its members). Special files (FIFOs, devices, sockets) are never
        opened: reading one can block forever or have side effects."""
        special = _special_kind(path)
        if special is not None:
            report = FileReport(str(path), "special")
            report.incomplete = f"{special}, not a regular file: not read"
            return [report]
        reports: list[FileReport] = []
        try:
            with _mapped(path) as data:
                report = FileReport(str(path), "?", size=len(data))
                if self.hashes:
                    report.sha256 = hashlib.sha256(data).hexdigest()
                context = _Context(reports, 0, Budget(self.limits), path.parent)
                self._scan(data, report, context, name=path.name)
                _record_budget(report, context.budget)
        except _SpecialFile as exc:
            report = FileReport(str(path), "special")
            report.incomplete = f"{exc}, not a regular file: not read"
            reports.append(report)
        except OSError as exc:
            report = FileReport(str(path), "unreadable")
            report.error = f"cannot read {path}: {exc.strerror or exc}"
            reports.append(report)
        return reports

    def scan_bytes(self, data: bytes, location: str = "<bytes>") -> list[FileReport]:
        """``data`` as if it were a file called ``location`` (tests, archive tools)."""
        reports: list[FileReport] = []
        report = FileReport(location, "?", size=len(data))
        context = _Context(reports, 0, Budget(self.limits), None)
        self._scan(data, report, context, location)
        _record_budget(report, context.budget)
        return reports

    # -- dispatch --------------------------------------------------------------------------

    def _scan(self, data: bytes | memoryview, report: FileReport, ctx: _Context, name: str) -> None:
        ctx.out.append(report)
        try:
            if ctx.depth > self.limits.max_depth:
                raise LimitExceeded(f"archives nested deeper than {self.limits.max_depth}")
            if ctx.role == "torchscript-code":
                report.format = "torchscript-code"
                formats.torchscript_code(data, report, self.limits)
                return
            if len(data) == 0:
                report.format = "empty"  # nothing to load, nothing to run
                return
            fmt = detect(data)
            report.format = fmt
            if fmt == "zlib" and self._zlib(data, report, ctx):
                return
            if fmt in CONTAINERS and fmt != "zlib":
                if fmt not in ("zip", "gzip", "xz", "7z", "npy"):  # these cannot start a pickle
                    self._polyglot(data, report, ctx)
                self._container(fmt, data, report, ctx)
            elif not self._pickle(data, report, ctx):
                self._inert(fmt, data, report, ctx, name)
        except BombDetected as exc:
            report.add("archive.bomb", "medium", f"{exc}; the rest was not read")
            report.incomplete = f"limit reached: {exc}"
        except LimitExceeded as exc:
            report.incomplete = f"limit reached: {exc}"

    def _container(
        self, fmt: str, data: bytes | memoryview, report: FileReport, ctx: _Context
    ) -> None:
        if fmt == "zip":
            self._zip(data, report, ctx)
        elif fmt == "tar":
            self._tar(data, report, ctx)
        elif fmt == "7z":
            self._sevenzip(data, report, ctx)
        elif fmt in ("gzip", "bz2", "xz"):
            self._compressed(fmt, data, report, ctx)
        elif fmt == "npy":
            self._npy(data, report, ctx)
        elif fmt == "safetensors":
            from trojanscope.scan.safetensors_check import check_safetensors

            check_safetensors(data, report)  # reads only the header and sizes
        elif fmt == "hdf5":
            offset = hdf5_offset(data) or 0
            if offset:
                report.metadata["user_block"] = offset
            from trojanscope.scan.keras_check import check_hdf5

            check_hdf5(data, report, self.limits)

    # -- pickles ---------------------------------------------------------------------------

    def _pickle(self, data: bytes | memoryview, report: FileReport, ctx: _Context) -> bool:
        """Read ``data`` as a pickle stream; True (and the report filled) if it is one: a
        complete first pickle, a protocol header, or an import a loader would attempt."""
        if len(data) == 0:
            return False
        trial = FileReport(report.location, "pickle", size=report.size)
        scan_pickle_stream(data, trial, self.limits, ctx.allow)
        header = len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5
        complete = trial.metadata.get("pickles", 0) > 0
        if not (complete or header or any(_importable(f) for f in _imports(trial))):
            return False
        report.format = "pickle"
        report.findings += trial.findings
        report.imports += trial.imports
        report.metadata.update(trial.metadata)
        report.incomplete = report.incomplete or trial.incomplete
        return True

    def _polyglot(self, data: bytes | memoryview, report: FileReport, ctx: _Context) -> None:
        """A container that could also start a pickle (tar, safetensors, HDF5 after a user
        block, bz2): what a pickle loader would run from byte 0."""
        trial = FileReport(report.location, "pickle")
        machine = PickleMachine(data, trial, self.limits._replace(max_opcodes=1_000_000))
        try:
            result = machine.run(0)
        except LimitExceeded:
            return
        if result.complete:
            report.add(
                "file.polyglot",
                "high",
                f"the file is also a complete pickle (bytes 0-{result.end}): a pickle loader "
                "given this file runs it",
                0,
            )
            report.findings += [f for f in trial.findings if f.rule != "pickle.malformed"]
            report.imports += trial.imports
        else:
            importable = [f for f in _imports(trial) if _importable(f)]
            report.findings += importable
            report.imports += [f"{f.detail['module']}.{f.detail['name']}" for f in importable]

    # -- formats without magic -------------------------------------------------------------

    def _inert(
        self, fmt: str, data: bytes | memoryview, report: FileReport, ctx: _Context, name: str
    ) -> None:
        if fmt == "onnx":
            from trojanscope.scan.onnx_check import check_onnx

            check_onnx(bytes(data), report, ctx.model_dir)
        elif fmt in ("json", "text", "pickle"):  # "pickle": sniffed as one, but not a pickle
            formats.check_text(data, report, self.limits)
        elif fmt == "image":
            report.format = "image"
            report.metadata["format_detail"] = f"{image_kind(data)} image (inert data)"
        else:
            report.format = "unknown"
            what = formats.unsupported_kind(data, name)
            report.incomplete = f"unsupported format{f' ({what})' if what else ''}"

    def _zlib(self, data: bytes | memoryview, report: FileReport, ctx: _Context) -> bool:
        """A zlib stream (joblib's compression); False if it does not inflate."""
        try:
            content = decompress("zlib", data, ctx.budget)
        except (zlib.error, TruncatedStream):
            report.format = "unknown"
            return False
        self._member("<zlib>", content, report, ctx)
        return True

    # -- archives --------------------------------------------------------------------------

    def _member(
        self,
        name: str,
        data: bytes,
        parent: FileReport,
        ctx: _Context,
        allow: Callable[[str, str], bool] | None = None,
        role: str | None = None,
    ) -> None:
        ctx.budget.take_member()
        report = FileReport(f"{parent.location}!{name}", "?", size=len(data))
        if self.hashes:
            report.sha256 = hashlib.sha256(data).hexdigest()
        child = _Context(ctx.out, ctx.depth + 1, ctx.budget, None, allow or ctx.allow, role)
        self._scan(data, report, child, name.rsplit("/", 1)[-1])

    def _zip(self, data: bytes | memoryview, report: FileReport, ctx: _Context) -> None:
        import zipfile

        try:
            archive = zipfile.ZipFile(_as_file(data))
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            report.add("archive.malformed", "medium", f"unreadable zip archive ({exc})")
            report.incomplete = "unreadable zip archive"
            return
        names = archive.namelist()
        kind = formats.zip_kind(names)
        if kind:
            report.metadata["format_detail"] = kind
        allow = formats.torchscript_allowed if kind == "TorchScript archive" else None
        for info in archive.infolist():
            if info.is_dir():
                continue
            if kind in ("PyTorch zip checkpoint", "TorchScript archive") and _TORCH_STORAGE.search(
                info.filename
            ):
                continue  # raw tensor bytes: torch.load reads them as bytes, never unpickles
            if (
                info.compress_size
                and info.file_size > self.limits.ratio_floor
                and info.file_size > self.limits.max_ratio * info.compress_size
            ):
                raise BombDetected(
                    f"member {info.filename} declares {info.file_size} bytes from "
                    f"{info.compress_size}: a decompression bomb"
                )
            try:
                with archive.open(info) as stream:
                    content = read_member(stream, ctx.budget, info.compress_size or 1)
            except (zipfile.BadZipFile, *_ZIP_ERRORS) as exc:
                report.add("archive.malformed", "medium", f"member {info.filename}: {exc}")
                report.incomplete = f"unreadable member {info.filename}"
                continue
            role = (
                "torchscript-code"
                if kind == "TorchScript archive" and formats.is_torchscript_source(info.filename)
                else None
            )
            self._member(info.filename, content, report, ctx, allow, role)
        if kind == "Keras v3 archive" or "config.json" in names:
            from trojanscope.scan.keras_check import check_keras_archive

            # Keras builds the model from config.json alone: checked whatever else is there
            check_keras_archive(archive, report, self.limits, kind == "Keras v3 archive")

    def _tar(self, data: bytes | memoryview, report: FileReport, ctx: _Context) -> None:
        import tarfile

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
                    content = read_member(stream, ctx.budget, None)
                    self._member(member.name, content, report, ctx)
            except (tarfile.TarError, OSError, EOFError) as exc:
                report.add("archive.malformed", "medium", f"tar archive breaks off ({exc})")
                report.incomplete = "truncated tar archive"

    def _sevenzip(self, data: bytes | memoryview, report: FileReport, ctx: _Context) -> None:
        from trojanscope.scan.sevenzip import SevenZipError, iter_members

        def link(name: str, target: str) -> None:
            report.add("archive.link", "low", f"member {name} is a link to {target}")

        try:
            for name, content in iter_members(data, ctx.budget, link):
                self._member(name, content, report, ctx)
        except SevenZipError as exc:
            report.add("archive.malformed", "medium", f"unreadable 7z archive ({exc})")
            report.incomplete = "unreadable 7z archive"

    def _compressed(
        self, fmt: str, data: bytes | memoryview, report: FileReport, ctx: _Context
    ) -> None:
        try:
            content = decompress(fmt, data, ctx.budget)
        except BombDetected:
            raise
        except (TruncatedStream, OSError, EOFError, ValueError, zlib.error) as exc:
            report.add("archive.malformed", "medium", f"{fmt} stream: {exc}")
            report.incomplete = f"unreadable {fmt} stream"
            return
        self._member(f"<{fmt}>", content, report, ctx)

    def _npy(self, data: bytes | memoryview, report: FileReport, ctx: _Context) -> None:
        from trojanscope.scan.numpy_check import NpyError, read_layout

        try:
            layout = read_layout(data)
        except NpyError as exc:
            report.add("npy.header", "medium", f"malformed .npy header: {exc}")
            report.incomplete = "malformed .npy header"
            return
        report.metadata["dtype"] = layout.descr
        report.metadata["shape"] = list(layout.shape[:8])
        rest = len(data) - layout.data_offset
        if layout.has_object:
            report.add(
                "npy.object-array",
                "info",
                "object array: NumPy loads it only with allow_pickle=True; its pickle is "
                "scanned below",
            )
            self._member("<object pickle>", bytes(data[layout.data_offset :]), report, ctx)
            return
        expected = layout.data_bytes(cap=rest)
        if expected > rest:
            report.add("npy.truncated", "medium", "the array data is shorter than its shape")
            report.incomplete = "truncated .npy data"
        elif expected < rest:
            report.incomplete = (
                f"{rest - expected} bytes after the array data are not part of the .npy format"
            )


def _record_budget(report: FileReport, budget: Budget) -> None:
    if budget.used:
        report.metadata["decompressed_bytes"] = budget.used
    if budget.members:
        report.metadata["members"] = budget.members


class _SpecialFile(OSError):
    """A path that turned out not to be a regular file once opened."""


def _special_kind(path: Path) -> str | None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # reported as unreadable when opened
    if stat.S_ISREG(mode):
        return None
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _imports(report: FileReport) -> list[Finding]:
    return [f for f in report.findings if f.rule in _IMPORT_RULES]


def _importable(finding: object) -> bool:
    """An import a loader could actually perform: dotted identifiers (garbage read from a
    non-pickle file as GLOBAL arguments names no module)."""
    detail = getattr(finding, "detail", {})
    parts = f"{detail.get('module', '')}.{detail.get('name', '')}".split(".")
    return all(part.isidentifier() for part in parts)


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

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        with memoryview(buffer) as raw, raw.cast("B") as target:
            chunk = self._view[self._pos : self._pos + len(target)]
            target[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


def _as_file(data: bytes | memoryview) -> io.BufferedReader | io.BytesIO:
    """A seekable file over ``data`` without copying it."""
    if isinstance(data, memoryview):
        return io.BufferedReader(_ViewFile(data), buffer_size=1 << 20)
    return io.BytesIO(data)


def _custom_code(files: list[Path]) -> list[FileReport]:
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
    """The file's bytes, memory-mapped when non-empty (big checkpoints are not copied). Opened
    non-blocking and checked again once open, so a file swapped for a FIFO cannot block."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb", closefd=True) as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _SpecialFile("not a regular file")
        if info.st_size == 0:
            yield b""
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                yield view
            finally:
                view.release()

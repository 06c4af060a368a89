"""7z archives, read member by member with the scan's size limits.

py7zr parses the header; the members are decoded here, folder by folder, through py7zr's
per-folder decompressor, so the loop can stop in the middle of a member. ``read()`` and
``extractall()`` would hand over whole members (or the whole archive) only once decoded.

Bounds, in order:

1. before anything is decoded, the sizes the header declares: every member against
   ``max_member_bytes``, every folder (a compressed stream, shared by the members of a solid
   archive) against the ratio limit, everything against what is left of the file's budget.
   py7zr never decodes past a declared size, so these bound what decoding can produce;
2. while decoding, ``Budget.take_bytes`` after every chunk (member size, the file's total,
   and the ratio of the member's bytes to the compressed bytes its folder has read so far);
3. methods whose py7zr decoder ignores the output bound (zstd, Deflate64) are refused rather
   than decoded: one step of them could expand a megabyte into gigabytes before the loop sees
   it. Deflate is read in small input steps so one step stays within a few megabytes.

Encrypted archives are unreadable without the password (inconclusive); symbolic links are
reported through ``on_link`` and never yielded.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from trojanscope.scan.findings import LimitExceeded
from trojanscope.scan.limits import BombDetected, Budget

_OUT_CHUNK = 1 << 20  # decoded bytes asked for per step
_DEFLATE_IN_CHUNK = 1 << 14  # compressed bytes per step for Deflate (at most ~16 MiB out)
_LINK_PREVIEW = 512  # bytes of a symbolic link's target kept for the message


class SevenZipError(Exception):
    """The archive cannot be read."""


def iter_members(
    data: bytes | memoryview,
    budget: Budget,
    on_link: Callable[[str, str], None] | None = None,
) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file member (empty files first, then each compressed stream's
    members in order); ``on_link(name, target)`` for each symbolic link (its target is read,
    never followed)."""
    import py7zr

    from trojanscope.scan.scanner import _as_file  # reads a memory map in place, no copy

    if _check_header_size(data, budget):
        return  # an empty archive: nothing to read, and nothing left unread
    source = _as_file(data)
    with _unreadable("unreadable 7z header"):
        archive = py7zr.SevenZipFile(source, "r")
    with archive:
        if archive.password_protected:
            raise SevenZipError("encrypted archive: a password is needed")
        files = list(archive.files)
        if len(files) > budget.limits.max_members:
            raise LimitExceeded(f"more than {budget.limits.max_members} archive members")
        folders = _folders(archive)
        _check_declared(files, folders, budget)
        for f in files:
            if f.emptystream and not f.is_directory and not f.is_socket:
                yield f.filename, b""
        for folder, packsize, offset in folders:
            start = archive.afterheader + offset
            yield from _folder_members(source, folder, packsize, start, budget, on_link)
    end = 32 + int.from_bytes(data[12:20], "little") + int.from_bytes(data[20:28], "little")
    if len(data) > end:  # 7-Zip ignores them; so does the scan, which must say so
        raise SevenZipError(f"{len(data) - end} bytes after the end of the archive are not read")


@contextmanager
def _unreadable(what: str) -> Iterator[None]:
    """Turn whatever py7zr raises on a hostile or broken archive into SevenZipError. Its parser
    raises many types (Bad7zFile, TypeError, IndexError, EOFError, LZMAError, ...); any of them
    means the archive cannot be read. The scan's own limits pass through."""
    import py7zr.exceptions as errors

    try:
        yield
    except LimitExceeded:
        raise
    except (errors.PasswordRequired, errors.UnsupportedCompressionMethodError) as exc:
        if isinstance(exc, errors.PasswordRequired) or "password" in str(exc).lower():
            raise SevenZipError("encrypted archive: a password is needed") from exc
        raise SevenZipError(f"unsupported compression method ({exc})") from exc
    except MemoryError as exc:
        raise SevenZipError(f"{what}: out of memory") from exc
    except Exception as exc:  # noqa: BLE001 - any parser failure means "cannot be read"
        raise SevenZipError(f"{what}: {type(exc).__name__}: {exc}") from exc


def _check_header_size(data: bytes | memoryview, budget: Budget) -> bool:
    """A compressed ("encoded") header is decoded whole by py7zr when the archive is opened:
    what it declares is held against ``max_text_bytes`` first (py7zr's own cap is 256 MiB).
    True for an empty archive (a signature header announcing no header, as 7-Zip writes)."""
    from py7zr.archiveinfo import HeaderStreamsInfo

    if len(data) < 32:
        raise SevenZipError("truncated archive (no signature header)")
    if zlib.crc32(data[12:32]) != int.from_bytes(data[8:12], "little"):
        raise SevenZipError("corrupted signature header (CRC mismatch)")
    offset = int.from_bytes(data[12:20], "little")
    size = int.from_bytes(data[20:28], "little")
    start = 32 + offset
    if size == 0 and offset == 0:
        if len(data) > 32:
            raise SevenZipError(f"{len(data) - 32} bytes after an empty archive")
        return True
    if size == 0 or start + size > len(data):
        raise SevenZipError("truncated archive (the header lies past the end of the file)")
    if data[start] != 0x17:  # kEncodedHeader; a plain header is read from the file as it is
        return False
    with _unreadable("unreadable 7z header"):
        streams = HeaderStreamsInfo.retrieve(io.BytesIO(bytes(data[start + 1 : start + size])))
        declared = sum(_unpack_size(folder) for folder in streams.unpackinfo.folders)
    limit = budget.limits.max_text_bytes
    if declared > limit:
        raise LimitExceeded(f"the 7z header declares {declared} bytes once decoded, above {limit}")
    return False


def _folders(archive: Any) -> list[tuple[Any, int, int]]:
    """(folder, packed size, offset of its packed stream after the signature header) of every
    folder; only folders with one packed stream (all py7zr can decode) are accepted, and none
    whose decoder ignores the output bound."""
    streams = getattr(archive.header, "main_streams", None)
    if streams is None:
        return []
    packinfo, folders = streams.packinfo, streams.unpackinfo.folders
    if len(packinfo.packsizes) != len(folders):
        raise SevenZipError("unsupported 7z layout (a folder with several packed streams)")
    unbounded = _unbounded_methods()
    out = []
    for i, folder in enumerate(folders):
        for method in map(_filter_id, folder.coders):
            if method in unbounded:
                raise SevenZipError(
                    f"unsupported compression method {unbounded[method]}: its decoder cannot "
                    "be stopped within the scan's limits"
                )
        out.append((folder, packinfo.packsizes[i], packinfo.packpos + packinfo.packpositions[i]))
    return out


def _filter_id(coder: dict[str, Any]) -> int | None:
    """py7zr's filter id of a coder (None for a method it does not know)."""
    from py7zr.compressor import SupportedMethods

    return SupportedMethods.get_filter_id(coder)


def _unbounded_methods() -> dict[int, str]:
    """Methods whose py7zr decoder returns everything one input block expands to."""
    from py7zr.properties import FILTER_DEFLATE64, FILTER_ZSTD

    return {FILTER_DEFLATE64: "Deflate64", FILTER_ZSTD: "zstd"}


def _check_declared(files: list[Any], folders: list[tuple[Any, int, int]], budget: Budget) -> None:
    """The header's sizes against the limits, before anything is decoded."""
    lim = budget.limits
    total = 0
    for f in files:
        size = int(f.uncompressed or 0)
        total += size
        if size > lim.max_member_bytes:
            raise LimitExceeded(
                f"member {f.filename} declares {size} bytes, more than {lim.max_member_bytes}"
            )
    for folder, packsize, _ in folders:
        unpacked = _unpack_size(folder)
        if unpacked > lim.ratio_floor and unpacked > lim.max_ratio * max(packsize, 1):
            names = ", ".join(f.filename for f in list(folder.files or [])[:3])
            raise BombDetected(
                f"7z stream ({names}) declares {unpacked} bytes from {packsize}: "
                "a decompression bomb"
            )
    if total > budget.left:
        raise LimitExceeded(
            f"the archive declares {total} bytes, more than the {budget.left} left of "
            f"{lim.max_total_bytes}"
        )


def _unpack_size(folder: Any) -> int:
    """What a folder declares it decodes to (the largest of its coders' outputs)."""
    sizes = [int(s) for s in (folder.unpacksizes or [0])]
    return max(sizes)


def _folder_members(
    source: BinaryIO,
    folder: Any,
    packsize: int,
    start: int,
    budget: Budget,
    on_link: Callable[[str, str], None] | None,
) -> Iterator[tuple[str, bytes]]:
    """Decode one folder's members in order, yielding each as soon as it is complete."""
    members = list(folder.files or [])
    if not members:
        return
    with _unreadable("unreadable 7z stream"):
        decoder = folder.get_decompressor(packsize, reset=True)
        from py7zr.properties import FILTER_DEFLATE

        if FILTER_DEFLATE in map(_filter_id, folder.coders):
            decoder.block_size = _DEFLATE_IN_CHUNK  # zlib's decoder here ignores max_length
    source.seek(start)
    for f in members:
        content, crc = _decode_member(source, decoder, f, budget)
        if f.is_symlink or f.is_junction:
            if on_link is not None:
                on_link(f.filename, content[:_LINK_PREVIEW].decode("utf-8", "replace"))
        elif not (f.is_directory or f.is_socket):
            yield f.filename, content  # scanned even if corrupted: what a loader would see
        if f.crc32 is not None and crc != f.crc32:
            raise SevenZipError(f"member {f.filename}: CRC mismatch (corrupted data)")
    if source.tell() >= start + packsize and decoder.crc is not None and not decoder.check_crc():
        raise SevenZipError("CRC mismatch of a compressed stream (corrupted data)")


def _decode_member(source: BinaryIO, decoder: Any, f: Any, budget: Budget) -> tuple[bytes, int]:
    """The member's declared number of bytes from the folder's decoder, checked after every
    chunk; a decoder that stops making progress means the stream is cut short."""
    size = int(f.uncompressed or 0)
    out = bytearray()
    crc = 0
    while len(out) < size:
        before = decoder.consumed
        with _unreadable(f"member {f.filename}"):
            piece = decoder.decompress(source, min(size - len(out), _OUT_CHUNK))
        if not piece:
            if decoder.consumed == before:
                raise SevenZipError(f"member {f.filename}: the 7z stream breaks off")
            continue
        out += piece
        crc = zlib.crc32(piece, crc)
        budget.take_bytes(len(piece), len(out), decoder.consumed)
    return bytes(out), crc

"""Bounded decompression of gzip, bz2, xz and zlib streams and of archive members.

Written over the standard library's incremental decompressors rather than ``gzip.GzipFile``
and friends because those cannot stop on the expansion ratio: here every step produces at
most one chunk, and the member's size, the file's total and the ratio of decompressed to
compressed bytes are checked after each (``Budget.take_bytes``). Concatenated streams (gzip
members, bz2 and xz streams) are followed; bytes after the last stream are an error.
"""

from __future__ import annotations

import zlib
from typing import IO, Any

from trojanscope.scan.limits import Budget

_IN_CHUNK = 1 << 16  # compressed bytes fed per step
_OUT_CHUNK = 1 << 20  # decompressed bytes produced per step at most
_MAGIC = {"gzip": b"\x1f\x8b", "bz2": b"BZh", "xz": b"\xfd7zXZ\x00"}


class TruncatedStream(ValueError):
    """The compressed data ends before its end-of-stream marker, or trailing bytes follow it."""


def _decompressor(fmt: str) -> Any:
    import bz2  # imported on use: they cost start-up time a plain scan does not need
    import lzma

    if fmt == "gzip":
        return zlib.decompressobj(wbits=31)
    if fmt == "zlib":
        return zlib.decompressobj()
    if fmt == "bz2":
        return bz2.BZ2Decompressor()
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)


def decompress(fmt: str, data: bytes | memoryview, budget: Budget) -> bytes:
    """All of ``data`` (``gzip``, ``bz2``, ``xz`` or ``zlib``), within the budget's bounds.
    Corrupt data raises TruncatedStream whatever the decompressor's own exception is."""
    out = bytearray()
    start, n = 0, len(data)
    while True:
        try:
            start = _one_stream(fmt, data, start, out, budget)
        except TruncatedStream:
            raise
        except (zlib.error, OSError, EOFError, ValueError) as exc:
            raise TruncatedStream(f"corrupt {fmt} data ({exc})") from exc
        except Exception as exc:  # lzma.LZMAError derives from Exception only
            if type(exc).__name__ != "LZMAError":
                raise
            raise TruncatedStream(f"corrupt {fmt} data ({exc})") from exc
        if start >= n:
            return bytes(out)
        if fmt == "zlib" or bytes(data[start : start + len(_MAGIC[fmt])]) != _MAGIC[fmt]:
            raise TruncatedStream(
                f"{n - start} bytes after the end of the {fmt} stream are not {fmt} data"
            )


def _one_stream(
    fmt: str, data: bytes | memoryview, start: int, out: bytearray, budget: Budget
) -> int:
    """Decompress the stream at ``start`` into ``out``; the offset just past it."""
    d = _decompressor(fmt)
    is_zlib = fmt in ("gzip", "zlib")
    pos, n, tail = start, len(data), b""
    while not d.eof:
        if is_zlib:
            if not tail:
                if pos >= n:
                    raise TruncatedStream(f"the {fmt} stream breaks off")
                tail = bytes(data[pos : pos + _IN_CHUNK])
                pos += len(tail)
            piece = d.decompress(tail, _OUT_CHUNK)
            tail = d.unconsumed_tail
        elif d.needs_input:
            if pos >= n:
                raise TruncatedStream(f"the {fmt} stream breaks off")
            chunk = bytes(data[pos : pos + _IN_CHUNK])
            pos += len(chunk)
            piece = d.decompress(chunk, _OUT_CHUNK)
        else:
            piece = d.decompress(b"", _OUT_CHUNK)
        out += piece
        budget.take_bytes(len(piece), len(out), pos - len(tail))
    return pos - len(d.unused_data) - len(tail)


def read_member(stream: IO[bytes], budget: Budget, compressed: int | None) -> bytes:
    """An archive member's bytes from its decompressing reader; ``compressed`` is its stored
    size (None for uncompressed archives such as tar), for the ratio check."""
    out = bytearray()
    while True:
        chunk = stream.read(_OUT_CHUNK)
        if not chunk:
            return bytes(out)
        out += chunk
        budget.take_bytes(len(chunk), len(out), compressed)

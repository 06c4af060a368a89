"""Format sniffing by content (magic numbers and structure), never by file name.

The label only routes a file to its reader. Whatever the label, the scanner also tries every
file as a pickle from its first byte (a pickle needs no magic number), and a file no reader
accounts for is "unsupported", never clean.
"""

from __future__ import annotations

#: Formats whose magic number or structure identifies them at byte 0 (HDF5 also at 512, 1024,
#: ... after a user block).
CONTAINERS = frozenset(
    {"zip", "npy", "gzip", "bz2", "xz", "7z", "tar", "safetensors", "hdf5", "zlib"}
)
#: Formats that cannot make a model loader run code: no reader needs more than a look.
INERT = frozenset({"text", "json", "image"})

_HDF5 = b"\x89HDF\r\n\x1a\n"
_IMAGES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)


def detect(data: bytes | memoryview) -> str:
    """The format of ``data``: one of CONTAINERS, ``pickle``, ``onnx``, ``text``, ``json``,
    ``image`` or ``unknown``."""
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
    if head[:6] == b"7z\xbc\xaf\x27\x1c":
        return "7z"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if hdf5_offset(data) is not None:
        return "hdf5"
    if len(head) >= 10:
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= len(data) - 8 and head[8:9] == b"{":
            return "safetensors"
    from trojanscope.scan.pickle_scan import looks_like_pickle

    if looks_like_pickle(head[:64]):
        return "pickle"
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
        return "zlib"
    if any(head.startswith(magic) for magic, _ in _IMAGES) or (
        head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    ):
        return "image"
    from trojanscope.scan.onnx_sniff import looks_like_onnx

    if looks_like_onnx(bytes(data[: 1 << 16])):
        return "onnx"
    if looks_like_text(data):
        return "json" if head.lstrip()[:1] in (b"{", b"[") else "text"
    return "unknown"


def hdf5_offset(data: bytes | memoryview) -> int | None:
    """Where the HDF5 superblock starts (0, or a power of two from 512 after a user block)."""
    offset = 0
    while offset + 8 <= min(len(data), 1 << 20):
        if bytes(data[offset : offset + 8]) == _HDF5:
            return offset
        offset = 512 if offset == 0 else offset * 2
    return None


def looks_like_text(data: bytes | memoryview, sniff: int = 8192) -> bool:
    """UTF-8 without NUL bytes in the first ``sniff`` bytes (a multi-byte character cut at the
    end of the window is allowed)."""
    head = bytes(data[:sniff])
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return len(head) == sniff and exc.start >= sniff - 3
    return True


def image_kind(data: bytes | memoryview) -> str:
    head = bytes(data[:16])
    return next((kind for magic, kind in _IMAGES if head.startswith(magic)), "WebP")

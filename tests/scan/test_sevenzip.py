"""7z archives: members scanned by content at any depth, bombs stopped before or while they
decompress, encrypted and broken archives inconclusive. Archives are written by py7zr."""

import io
import os
import struct
import zipfile
import zlib

import py7zr
import pytest

from trojanscope.scan.findings import overall_verdict
from trojanscope.scan.limits import Budget, Limits
from trojanscope.scan.scanner import Scanner
from trojanscope.scan.sevenzip import SevenZipError, iter_members

SYSTEM0 = b"cos\nsystem\n(S'touch /tmp/never'\ntR."  # would run os.system if unpickled
LZMA2_FAST = [{"id": py7zr.FILTER_LZMA2, "preset": 1}]


def seven(members: dict[str, bytes], encoded_header: bool = True, **options) -> bytes:
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w", **options) as archive:
        archive.set_encoded_header_mode(encoded_header)
        for name, data in members.items():
            archive.writestr(data, name)
    return buf.getvalue()


def scan(data: bytes, limits: Limits | None = None):
    reports = Scanner(limits).scan_bytes(data, "sample.7z")
    return overall_verdict(reports), reports


def imports(reports) -> set[str]:
    return {i for r in reports for i in r.imports}


def test_a_pickle_member_is_found_and_the_rest_is_clean():
    data = seven({"weights.bin": os.urandom(4096), "model.pkl": SYSTEM0, "empty": b""})
    result, reports = scan(data)
    assert result == "dangerous" and "os.system" in imports(reports)
    by_name = {r.location.rsplit("!", 1)[-1]: r for r in reports[1:]}
    assert by_name["model.pkl"].verdict == "dangerous"
    assert by_name["empty"].format == "empty"
    assert reports[0].metadata["members"] == 3
    assert reports[0].metadata["decompressed_bytes"] == 4096 + len(SYSTEM0)


def test_a_benign_archive_is_clean_and_every_member_is_read():
    members = {f"notes/{i}.txt": f"line {i}\n".encode() * 100 for i in range(5)}
    result, reports = scan(seven(members))
    assert result == "clean", [r.as_dict() for r in reports]
    assert {r.location.split("!", 1)[1] for r in reports[1:]} == set(members)


@pytest.mark.parametrize(
    "filters",
    [
        [{"id": py7zr.FILTER_DEFLATE}],
        [{"id": py7zr.FILTER_BZIP2}],
        [{"id": py7zr.FILTER_PPMD}],
        [{"id": py7zr.FILTER_COPY}],
        [{"id": py7zr.FILTER_X86}, {"id": py7zr.FILTER_LZMA2}],
    ],
    ids=["deflate", "bzip2", "ppmd", "copy", "bcj-lzma2"],
)
def test_members_are_read_whatever_the_method(filters):
    data = seven({"a.txt": b"text " * 2000, "model.pkl": SYSTEM0}, filters=filters)
    result, reports = scan(data)
    assert result == "dangerous" and "os.system" in imports(reports)


def test_a_method_whose_decoder_cannot_be_bounded_is_inconclusive():
    data = seven({"model.pkl": b"harmless text"}, filters=[{"id": py7zr.FILTER_ZSTD}])
    result, reports = scan(data)
    assert result == "inconclusive"
    assert "zstd" in reports[0].findings[0].message


def test_a_7z_inside_a_zip_is_read(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("inner.7z", seven({"model.pkl": SYSTEM0}))
    path = tmp_path / "outer.zip"
    path.write_bytes(buf.getvalue())
    reports = Scanner().scan_paths([path])  # memory-mapped: the 7z is read from a view
    assert overall_verdict(reports) == "dangerous"
    assert reports[-1].location.endswith("outer.zip!inner.7z!model.pkl")


def test_a_7z_file_on_disk_is_read(tmp_path):
    path = tmp_path / "model.7z"
    path.write_bytes(seven({"a/b/model.pkl": SYSTEM0}))
    reports = Scanner().scan_paths([path])
    assert overall_verdict(reports) == "dangerous" and "os.system" in imports(reports)


@pytest.fixture(scope="module")
def zeros_64m() -> bytes:
    return seven({"zeros.bin": bytes(64 * 2**20)}, filters=LZMA2_FAST)


def test_a_bomb_is_stopped_from_its_declared_sizes_before_decompressing(zeros_64m):
    result, reports = scan(zeros_64m)  # default limits: 64 MiB from ~10 KiB is > 200x
    assert result == "inconclusive"
    assert [f.rule for f in reports[0].findings] == ["archive.bomb"]
    assert reports[0].metadata.get("decompressed_bytes", 0) == 0
    assert len(reports) == 1  # the member was never produced


def test_a_member_declaring_more_than_the_size_limit_is_not_decompressed(zeros_64m):
    limits = Limits(max_member_bytes=8 * 2**20, max_ratio=10**9)
    result, reports = scan(zeros_64m, limits)
    assert result == "inconclusive" and "declares" in reports[0].incomplete
    assert reports[0].metadata.get("decompressed_bytes", 0) == 0


def test_the_total_declared_is_held_against_the_budget():
    data = seven({"a.bin": bytes(3 * 2**20), "b.bin": bytes(3 * 2**20)})
    limits = Limits(max_total_bytes=5 * 2**20, max_ratio=10**9)
    result, reports = scan(data, limits)
    assert result == "inconclusive" and "declares" in reports[0].incomplete
    assert reports[0].metadata.get("decompressed_bytes", 0) == 0
    _, reports = scan(data, Limits(max_ratio=10**9))  # within the default total: all read
    assert reports[0].metadata["decompressed_bytes"] == 6 * 2**20


def _lie_about_packed_size(data: bytes, packsize: int) -> bytes:
    """The archive with its (plain) header claiming ``packsize`` compressed bytes, CRCs fixed:
    the declared ratio then looks harmless while the real stream is tiny."""
    offset, size = struct.unpack_from("<QQ", data, 12)
    start = 32 + offset
    header = bytes(data[start : start + size])
    # Header, MainStreamsInfo, PackInfo, packpos 0, one stream, Size, then the packed size
    prefix = b"\x01\x04\x06\x00\x01\x09"
    assert header.startswith(prefix), header[:8].hex()
    first = header[len(prefix)]
    width = 1 + next(i for i in range(8) if not first & (0x80 >> i))  # 7z number: 1-9 bytes
    assert packsize < 1 << 21
    field = bytes([0xC0 | (packsize >> 16), packsize & 0xFF, (packsize >> 8) & 0xFF])
    header = prefix + field + header[len(prefix) + width :]
    out = bytearray(data[:start] + header)
    struct.pack_into("<QQI", out, 12, offset, len(header), zlib.crc32(header))
    struct.pack_into("<I", out, 8, zlib.crc32(out[12:32]))
    return bytes(out)


def test_a_bomb_whose_header_understates_its_ratio_is_stopped_while_decompressing():
    honest = seven({"zeros.bin": bytes(32 * 2**20)}, encoded_header=False, filters=LZMA2_FAST)
    lying = _lie_about_packed_size(honest, (1 << 21) - 1)  # declares 16x: below the limit
    limits = Limits(max_ratio=50, ratio_floor=2**20)
    result, reports = scan(lying, limits)
    assert result == "inconclusive"
    assert [f.rule for f in reports[0].findings] == ["archive.bomb"]
    produced = reports[0].metadata["decompressed_bytes"]
    assert 2**20 < produced <= 4 * 2**20  # stopped just past the floor, not at 32 MiB
    # the same archive read without a ratio limit really holds all 32 MiB
    _, full = scan(lying, Limits(max_ratio=10**9))
    assert full[0].metadata["decompressed_bytes"] == 32 * 2**20


def test_an_encrypted_archive_is_inconclusive():
    for header_encryption in (False, True):
        data = seven({"model.pkl": SYSTEM0}, password="s3cret", header_encryption=header_encryption)
        result, reports = scan(data)
        assert result == "inconclusive"
        assert "password" in reports[0].findings[0].message


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9, 0.99])
def test_a_truncated_archive_is_inconclusive(keep):
    data = seven({"a.txt": os.urandom(20000).hex().encode(), "b.txt": b"x" * 5000})
    result, reports = scan(data[: int(len(data) * keep)])
    assert result == "inconclusive"
    assert reports[0].incomplete == "unreadable 7z archive"


def test_a_corrupted_stream_is_inconclusive_but_its_member_still_scanned():
    data = bytearray(seven({"model.pkl": SYSTEM0 + b"#" * 64}, filters=[{"id": py7zr.FILTER_COPY}]))
    at = bytes(data).index(b"#" * 64)
    data[at] ^= 0xFF  # the stored bytes no longer match the CRC
    result, reports = scan(bytes(data))
    assert result == "dangerous"  # what a loader would see is still scanned
    assert reports[0].incomplete == "unreadable 7z archive"
    assert "CRC" in reports[0].findings[0].message


def test_symbolic_links_are_reported_and_never_followed(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.txt").write_text("hi")
    os.symlink("/etc/passwd", folder / "passwd")
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as archive:
        archive.writeall(folder, "d")
    result, reports = scan(buf.getvalue())
    assert result == "suspicious"
    assert [f.rule for f in reports[0].findings] == ["archive.link"]
    assert "/etc/passwd" in reports[0].findings[0].message
    assert [r.location.split("!", 1)[1] for r in reports[1:]] == ["d/a.txt"]


def test_iter_members_yields_one_member_at_a_time():
    data = seven({"a": b"1" * 10, "b": b"2" * 20}, filters=[{"id": py7zr.FILTER_COPY}])
    budget = Budget(Limits())
    members = iter_members(data, budget)
    assert next(members) == ("a", b"1" * 10)
    assert budget.used == 10  # b not decoded yet
    assert next(members) == ("b", b"2" * 20)
    with pytest.raises(StopIteration):
        next(members)


def test_garbage_after_the_signature_raises_sevenzip_error():
    with pytest.raises(SevenZipError):
        list(iter_members(b"7z\xbc\xaf\x27\x1c" + b"\x00" * 26, Budget(Limits())))


def test_a_compressed_header_is_held_against_the_limits_before_py7zr_decodes_it():
    members = {f"{'long-name-' * 8}{i}.txt": b"x" for i in range(200)}
    data = seven(members)
    result, reports = scan(data, Limits(max_text_bytes=4096))
    assert result == "inconclusive" and "header declares" in reports[0].incomplete
    assert scan(data)[0] == "clean"


def test_too_many_members_stop_before_anything_is_decoded():
    data = seven({f"{i}.txt": b"text" for i in range(5)})
    result, reports = scan(data, Limits(max_members=3))
    assert result == "inconclusive" and "more than 3" in reports[0].incomplete
    assert reports[0].metadata.get("decompressed_bytes", 0) == 0


def test_an_empty_archive_is_clean_and_bytes_after_it_are_not():
    empty = bytearray(b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(24))  # no header, as 7-Zip writes
    struct.pack_into("<I", empty, 8, zlib.crc32(empty[12:32]))
    assert scan(bytes(empty))[0] == "clean"
    assert scan(bytes(empty) + b"\x00" * 8)[0] == "inconclusive"
    assert scan(seven({}))[0] == "clean"  # py7zr's own empty archive


def test_bytes_after_the_archive_are_not_clean():
    data = seven({"a.txt": b"text"})
    assert scan(data)[0] == "clean"
    result, reports = scan(data + b"hidden payload")
    assert result == "inconclusive" and "after the end" in reports[0].findings[0].message
    assert reports[1].location.endswith("!a.txt")  # the members were still read

"""Every scan is bounded: adversarial pickles and archives end in a verdict after work linear
in their size (a work counter, never a timing), and expansion bombs are findings."""

import bz2
import gzip
import lzma
import zlib

import pytest

from trojanscope.scan.findings import FileReport, overall_verdict
from trojanscope.scan.limits import Limits
from trojanscope.scan.pickle_scan import scan_pickle_stream
from trojanscope.scan.scanner import Scanner

JOBLIB = b"\x80\x02cjoblib.numpy_pickle\nNumpyArrayWrapper\n0"  # makes the scanner track values


def scan(data: bytes, limits: Limits | None = None) -> FileReport:
    report = FileReport("x", "pickle")
    scan_pickle_stream(data, report, limits or Limits())
    return report


def get(key: int) -> bytes:
    return b"h" + bytes([key]) if key < 256 else b"j" + key.to_bytes(4, "little")


def shared_tuple_dag(levels: int) -> bytes:
    """t0 = (1, 1); t_i = (t_{i-1}, t_{i-1}): 2**levels leaves from 4 opcodes a level."""
    body = b"K\x01K\x01\x86\x94"
    for level in range(1, levels + 1):
        body += get(level - 1) + get(level - 1) + b"\x86\x94"
    return body


def test_a_shared_tuple_dag_used_as_a_dict_key_is_linear_in_value_tracking():
    # the DAG becomes a dict key (hashing it would walk 2**60 leaves), then the file breaks
    # off, so the scanner reads it a second time tracking values
    data = JOBLIB + b"}" + shared_tuple_dag(60) + b"K\x01s" + b"\xff"
    report = scan(data)
    assert report.metadata["format_detail"] == "joblib"
    assert report.verdict == "inconclusive" and report.incomplete  # it breaks off: never clean
    assert report.metadata["work"] <= 10 * len(data)


@pytest.mark.parametrize("tracked", [False, True], ids=["plain", "value-tracking"])
def test_mark_and_memo_limits_hold_in_both_readings(tracked):
    prefix = JOBLIB if tracked else b"\x80\x02"
    report = scan(prefix + b"(" * 1000 + b"\xff", Limits(max_marks=100))
    assert report.verdict == "inconclusive" and "MARK" in report.incomplete
    memo = b"".join(b"N\x94" for _ in range(1000))
    report = scan(prefix + memo + b"\xff", Limits(max_memo=100))
    assert report.verdict == "inconclusive" and "memo" in report.incomplete


def test_a_stack_flood_stops_at_the_limit():
    data = b"\x80\x02" + b"N" * 200_000 + b"."
    report = scan(data, Limits(max_stack=50_000))
    assert report.verdict == "inconclusive" and "stack" in report.incomplete
    assert report.metadata["opcodes"] < 50_000 + 2 * 0x4000


def laughs_by_memo(levels: int) -> bytes:
    return (
        b"\x80\x02]\x94"
        + b"".join(get(level - 1) + get(level - 1) + b"\x86\x94" for level in range(1, levels + 1))
        + b"."
    )


def laughs_by_dup(levels: int) -> bytes:
    return b"\x80\x02]" + b"2\x86" * levels + b"."


def laughs_by_mark(levels: int, width: int = 10) -> bytes:
    body = b"]\x94"
    for level in range(1, levels + 1):
        body += b"(" + get(level - 1) * width + b"l\x94"
    return b"\x80\x02" + body + b"."


@pytest.mark.parametrize(
    "data",
    [laughs_by_memo(40), laughs_by_dup(40), laughs_by_mark(9)],
    ids=["memo", "dup", "mark"],
)
def test_billion_laughs_are_a_finding(data):
    report = scan(data)
    assert [f.rule for f in report.findings] == ["pickle.expansion-bomb"]
    assert report.verdict == "suspicious"
    assert report.findings[0].detail["nodes"] >= 10**9
    assert report.metadata["work"] <= 4 * len(data)


def test_honest_sharing_is_not_a_bomb():
    import pickle

    shared = list(range(100))
    report = scan(pickle.dumps([shared] * 50 + [{"k": shared}], protocol=4))
    assert report.verdict == "clean", report.findings


def bomb(fmt: str, size: int) -> bytes:
    chunk, out = b"\x00" * (1 << 20), []
    compressor = {
        "gzip": lambda: zlib.compressobj(1, zlib.DEFLATED, 31),
        "bz2": lambda: bz2.BZ2Compressor(9),
        "xz": lambda: lzma.LZMACompressor(),
    }[fmt]()
    for _ in range(size >> 20):
        out.append(compressor.compress(chunk))
    out.append(compressor.flush())
    return b"".join(out)


@pytest.mark.parametrize("fmt", ["gzip", "bz2", "xz"])
def test_decompression_bombs_stop_early(fmt):
    data = bomb(fmt, 256 << 20)
    assert len(data) < 2 << 20
    reports = Scanner().scan_bytes(data, f"weights.{fmt}")
    assert overall_verdict(reports) == "inconclusive"
    top = reports[0]
    assert top.findings[0].rule == "archive.bomb" and top.incomplete
    assert top.metadata["decompressed_bytes"] <= Limits().ratio_floor + (1 << 21)


def test_an_honest_compressed_pickle_is_clean():
    import pickle

    data = gzip.compress(pickle.dumps(list(range(100_000)), protocol=4))
    reports = Scanner().scan_bytes(data, "list.pkl.gz")
    assert overall_verdict(reports) == "clean"
    assert (
        gzip.compress(b"x")
        and overall_verdict(Scanner().scan_bytes(data + b"junk", "x.gz")) == "inconclusive"
    )


def test_concatenated_gzip_members_are_all_read():
    evil = b"cos\nsystem\n(S'touch /tmp/never'\ntR."
    data = gzip.compress(b"\x80\x02].") + gzip.compress(evil)
    reports = Scanner().scan_bytes(data, "x.gz")
    assert overall_verdict(reports) == "dangerous"


@pytest.mark.parametrize(
    "data",
    [laughs_by_memo(40), laughs_by_dup(40), laughs_by_mark(9)],
    ids=["memo", "dup", "mark"],
)
def test_billion_laughs_are_a_finding_when_values_are_tracked(data):
    # the same structures in a joblib stream, which the scanner reads a second time with values
    report = scan(JOBLIB + data[2:])
    assert report.metadata["format_detail"] == "joblib"
    assert "pickle.expansion-bomb" in [f.rule for f in report.findings]
    assert report.metadata["work"] <= 8 * len(data)


def test_a_cycle_is_not_a_bomb():
    data = b"\x80\x02]\x94h\x00a."  # a list that contains itself
    assert scan(data).verdict == "clean"
    assert scan(JOBLIB + data[2:]).verdict == "clean"


@pytest.mark.parametrize("fmt", ["gzip", "bz2", "xz"])
def test_corrupt_compressed_streams_are_inconclusive(fmt):
    good = {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[fmt](b"data " * 200)
    bad = good[:20] + bytes(b ^ 0x55 for b in good[20:40]) + good[40:]
    (top, *_) = Scanner().scan_bytes(bad, f"x.{fmt}")
    assert top.verdict == "inconclusive" and top.format == fmt

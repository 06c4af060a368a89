"""Structural validation of a safetensors file, without the safetensors library.

Layout (format specification): an 8-byte little-endian u64 header length N, N bytes of UTF-8
JSON (an object mapping tensor names to ``{"dtype", "shape", "data_offsets"}`` plus an optional
``__metadata__`` object of strings), then the byte buffer. Offsets are relative to the buffer;
tensors must not overlap and must cover it without holes.

The reference loader is strict: every "medium" finding here names something it refuses or that
different parsers read differently. The header is never decoded past ``max_header`` bytes and
findings per rule are capped, so a forged header cannot exhaust memory.
"""

from __future__ import annotations

import bisect
import json
import re
import struct
from collections import Counter
from typing import Any

from trojanscope.scan.findings import SEVERITY_RANK, FileReport, Severity

#: Bits per element of every dtype the reference implementation accepts (safetensors 0.8).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}

LOADER_MAX_HEADER = 100_000_000  # the reference loader refuses longer headers
U64_MAX = 2**64 - 1
METADATA_KEY = "__metadata__"
TENSOR_FIELDS = ("dtype", "shape", "data_offsets")
MAX_FINDINGS_PER_RULE = 20
MAX_METADATA_ENTRIES = 256
MAX_METADATA_CHARS = 4096
MAX_GAPS_LISTED = 16

_SURROGATE = re.compile("[\ud800-\udfff]")


class _Capped:
    """Adds findings to a report, at most ``MAX_FINDINGS_PER_RULE`` per rule plus a summary."""

    def __init__(self, report: FileReport) -> None:
        self.report = report
        self.counts: Counter[str] = Counter()
        self.worst: dict[str, Severity] = {}

    def add(
        self, rule: str, severity: Severity, message: str, offset: int | None = None, **detail: Any
    ) -> None:
        self.counts[rule] += 1
        if self.counts[rule] <= MAX_FINDINGS_PER_RULE:
            self.report.add(rule, severity, message, offset, **detail)
            return
        previous = self.worst.get(rule, "info")
        if SEVERITY_RANK[severity] >= SEVERITY_RANK[previous]:
            self.worst[rule] = severity

    def close(self) -> None:
        for rule, severity in self.worst.items():
            hidden = self.counts[rule] - MAX_FINDINGS_PER_RULE
            self.report.add(rule, severity, f"{hidden} more {rule} findings not listed")


class _JsonAudit:
    """``object_pairs_hook`` that notes what Python's json accepts but the spec does not."""

    def __init__(self) -> None:
        self.duplicates: list[str] = []
        self.surrogates = False

    def hook(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, value in pairs:
            if key in seen:
                self.duplicates.append(key)
            seen.add(key)
            if _SURROGATE.search(key) or (isinstance(value, str) and _SURROGATE.search(value)):
                self.surrogates = True
        return dict(pairs)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _short(name: str, limit: int = 80) -> str:
    return repr(name if len(name) <= limit else name[:limit] + "...")


def _shape_text(shape: list[int]) -> str:
    text = str(shape)
    return text if len(text) <= 80 else text[:76] + "...]"


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= U64_MAX


def check_safetensors(
    data: bytes | memoryview, report: FileReport, max_header: int = 100 * 2**20
) -> None:
    """Validate ``data`` as a safetensors file, adding findings and metadata to ``report``.

    Never raises on malformed input: a header that cannot be read sets ``report.incomplete``.
    """
    out = _Capped(report)
    try:
        header = _read_header(data, report, out, max_header)
        if header is not None:
            _check_header(header, len(data) - 8 - report.metadata["safetensors_header_length"], out)
    finally:
        out.close()


def _read_header(
    data: bytes | memoryview, report: FileReport, out: _Capped, max_header: int
) -> dict[str, Any] | None:
    """Return the parsed JSON header, or None (with a finding and ``incomplete``) if unreadable."""
    if len(data) < 8:
        out.add(
            "safetensors.header-length",
            "medium",
            f"file is {len(data)} bytes, too short for the 8-byte header length",
            0,
        )
        report.incomplete = "safetensors file truncated before the header length"
        return None
    (length,) = struct.unpack_from("<Q", data, 0)
    report.metadata["safetensors_header_length"] = length
    available = len(data) - 8
    if length > available:
        loader = " (also above the loader's 100 MB limit)" if length > LOADER_MAX_HEADER else ""
        out.add(
            "safetensors.header-length",
            "medium",
            f"header length declares {length} bytes but only {available} follow{loader}: "
            "truncated or forged file",
            0,
            declared=length,
            available=available,
        )
        report.incomplete = "safetensors header length beyond the end of the file"
        return None
    if length > LOADER_MAX_HEADER:
        out.add(
            "safetensors.header-length",
            "medium",
            f"header of {length} bytes exceeds the {LOADER_MAX_HEADER}-byte limit of the loader, "
            "which refuses the file",
            0,
            declared=length,
        )
    if length > max_header:
        out.add(
            "safetensors.header-length",
            "info",
            f"header of {length} bytes exceeds the scan limit of {max_header} bytes: not parsed",
            0,
            declared=length,
            limit=max_header,
        )
        report.incomplete = f"limit reached: safetensors header of {length} bytes"
        return None
    raw = bytes(data[8 : 8 + length])  # bytes, bytearray or memoryview
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        out.add(
            "safetensors.json", "medium", f"header is not valid UTF-8: {exc.reason}", 8 + exc.start
        )
        report.incomplete = "safetensors header is not UTF-8"
        return None
    audit = _JsonAudit()
    try:
        header = json.loads(text, object_pairs_hook=audit.hook, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        offset = 8 + len(text[: exc.pos].encode("utf-8"))
        out.add("safetensors.json", "medium", f"header is not valid JSON: {exc.msg}", offset)
        report.incomplete = "safetensors header is not valid JSON"
        return None
    except (ValueError, RecursionError) as exc:
        out.add("safetensors.json", "medium", f"header is not valid JSON: {exc}", 8)
        report.incomplete = "safetensors header is not valid JSON"
        return None
    if not isinstance(header, dict):
        out.add(
            "safetensors.json",
            "medium",
            f"header is a JSON {type(header).__name__}, not an object",
            8,
        )
        report.incomplete = "safetensors header is not a JSON object"
        return None
    if not text.startswith("{"):
        out.add(
            "safetensors.json",
            "low",
            "header starts with whitespace: the specification requires '{' first and strict "
            "parsers refuse it",
            8,
        )
    if audit.surrogates:
        out.add(
            "safetensors.json",
            "medium",
            "header holds an unpaired UTF-16 surrogate escape, which strict JSON parsers refuse",
            8,
        )
    for key in audit.duplicates:
        out.add(
            "safetensors.duplicate-key",
            "medium",
            f"key {_short(key)} appears twice in the header: the specification forbids it and "
            "parsers disagree on which one wins",
            8,
            key=key[:200],
        )
    return header


def _check_header(header: dict[str, Any], buffer_len: int, out: _Capped) -> None:
    """Check the metadata and every tensor entry, then the layout of the byte buffer."""
    meta = out.report.metadata
    if METADATA_KEY in header:
        _check_metadata(header[METADATA_KEY], out)
    ranges: list[tuple[int, int, str]] = []
    dtypes: Counter[str] = Counter()
    tensors = 0
    all_placed = True
    for name, entry in header.items():
        if name == METADATA_KEY:
            continue
        tensors += 1
        placed = _check_tensor(name, entry, buffer_len, out, dtypes)
        if placed is None:
            all_placed = False
        else:
            ranges.append((placed[0], placed[1], name))
    meta["safetensors_tensor_count"] = tensors
    meta["safetensors_tensor_bytes"] = sum(end - begin for begin, end, _ in ranges)
    meta["safetensors_buffer_bytes"] = buffer_len
    meta["safetensors_dtypes"] = dict(sorted(dtypes.items()))
    _check_layout(ranges, buffer_len, all_placed, out)


def _check_metadata(value: Any, out: _Capped) -> None:
    """``__metadata__`` must be null or an object of string values; record what it holds."""
    if value is None:
        return
    if not isinstance(value, dict):
        out.add(
            "safetensors.metadata",
            "medium",
            f"__metadata__ is a JSON {type(value).__name__}, not an object of strings",
            8,
        )
        return
    kept: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(item, str):
            out.add(
                "safetensors.metadata",
                "medium",
                f"__metadata__[{_short(key)}] is a JSON {type(item).__name__}, not a string: "
                "the loader refuses the file",
                8,
            )
            continue
        if len(kept) < MAX_METADATA_ENTRIES:
            kept[key[:MAX_METADATA_CHARS]] = item[:MAX_METADATA_CHARS]
    if len(value) > MAX_METADATA_ENTRIES or any(
        len(k) > MAX_METADATA_CHARS or (isinstance(v, str) and len(v) > MAX_METADATA_CHARS)
        for k, v in value.items()
    ):
        out.add(
            "safetensors.metadata",
            "info",
            f"__metadata__ truncated in the report ({len(value)} entries; at most "
            f"{MAX_METADATA_ENTRIES} entries of {MAX_METADATA_CHARS} characters are kept)",
        )
    out.report.metadata["safetensors_metadata"] = kept


def _check_tensor(
    name: str, entry: Any, buffer_len: int, out: _Capped, dtypes: Counter[str]
) -> tuple[int, int] | None:
    """Check one tensor entry; return its byte range if its offsets are within the buffer."""
    label = f"tensor {_short(name)}"
    if not isinstance(entry, dict):
        out.add(
            "safetensors.entry",
            "medium",
            f"{label} is a JSON {type(entry).__name__}, not an object",
            8,
            tensor=name[:200],
        )
        return None
    missing = [f for f in TENSOR_FIELDS if f not in entry]
    if missing:
        out.add(
            "safetensors.entry",
            "medium",
            f"{label} lacks {', '.join(missing)}",
            8,
            tensor=name[:200],
        )
    extra = sorted(k for k in entry if k not in TENSOR_FIELDS)
    if extra:
        out.add(
            "safetensors.entry",
            "info",
            f"{label} has fields outside the specification: {', '.join(map(_short, extra[:5]))}",
            8,
            tensor=name[:200],
        )
    bits = _check_dtype(label, name, entry, out)
    elements = _check_shape(label, name, entry, out)
    placed = _check_offsets(label, name, entry, buffer_len, out)
    if bits is not None:
        dtypes[entry["dtype"]] += 1
    if bits is None or elements is None or "data_offsets" not in entry or not _offsets_ok(entry):
        return placed
    begin, end = entry["data_offsets"]
    if elements > U64_MAX or elements * bits > U64_MAX:
        out.add(
            "safetensors.shape-size",
            "medium",
            f"{label}: the byte size of shape {_shape_text(entry['shape'])} overflows 64 bits",
            8,
            tensor=name[:200],
        )
    elif elements * bits % 8:
        out.add(
            "safetensors.shape-size",
            "medium",
            f"{label}: {elements} elements of {entry['dtype']} do not end on a byte boundary",
            8,
            tensor=name[:200],
        )
    elif elements * bits // 8 != end - begin:
        out.add(
            "safetensors.shape-size",
            "medium",
            f"{label}: shape {_shape_text(entry['shape'])} of {entry['dtype']} needs "
            f"{elements * bits // 8} bytes but data_offsets span {end - begin}",
            8,
            tensor=name[:200],
            expected=elements * bits // 8,
            actual=end - begin,
        )
    return placed


def _check_dtype(label: str, name: str, entry: dict[str, Any], out: _Capped) -> int | None:
    """Return the bits per element of the entry's dtype, or None if it is missing or unknown."""
    if "dtype" not in entry:
        return None
    dtype = entry["dtype"]
    if isinstance(dtype, str) and dtype in DTYPE_BITS:
        return DTYPE_BITS[dtype]
    shown = _short(dtype) if isinstance(dtype, str) else f"a JSON {type(dtype).__name__}"
    out.add(
        "safetensors.dtype",
        "medium",
        f"{label}: dtype {shown} is not a safetensors dtype",
        8,
        tensor=name[:200],
    )
    return None


def _check_shape(label: str, name: str, entry: dict[str, Any], out: _Capped) -> int | None:
    """Return the element count of the entry's shape (capped past 64 bits), or None."""
    if "shape" not in entry:
        return None
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        out.add(
            "safetensors.shape",
            "medium",
            f"{label}: shape must be a list of non-negative 64-bit integers",
            8,
            tensor=name[:200],
        )
        return None
    if 0 in shape:
        return 0
    elements = 1
    for dim in shape:
        elements *= dim
        if elements > U64_MAX:  # stop early: a forged shape must not build a huge integer
            return U64_MAX + 1
    return elements


def _offsets_ok(entry: dict[str, Any]) -> bool:
    offsets = entry.get("data_offsets")
    return (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_uint(o) for o in offsets)
        and offsets[0] <= offsets[1]
    )


def _check_offsets(
    label: str, name: str, entry: dict[str, Any], buffer_len: int, out: _Capped
) -> tuple[int, int] | None:
    """Return ``(begin, end)`` if data_offsets are well formed and inside the buffer."""
    if "data_offsets" not in entry:
        return None
    if not _offsets_ok(entry):
        out.add(
            "safetensors.offsets",
            "medium",
            f"{label}: data_offsets must be [begin, end] with 0 <= begin <= end",
            8,
            tensor=name[:200],
        )
        return None
    begin, end = entry["data_offsets"]
    if end > buffer_len:
        out.add(
            "safetensors.offsets",
            "medium",
            f"{label}: data_offsets [{begin}, {end}] run past the {buffer_len}-byte buffer",
            8,
            tensor=name[:200],
            begin=begin,
            end=end,
            buffer=buffer_len,
        )
        return None
    return begin, end


def _check_layout(
    ranges: list[tuple[int, int, str]],
    buffer_len: int,
    all_placed: bool,
    out: _Capped,
) -> None:
    """Overlaps between tensors (medium) and bytes no tensor covers (low)."""
    start = 8 + out.report.metadata["safetensors_header_length"]
    filled = sorted((b, e, n) for b, e, n in ranges if b < e)
    reach_end, reach_name = 0, ""
    for begin, end, name in filled:
        if begin < reach_end:
            out.add(
                "safetensors.overlap",
                "medium",
                f"tensor {_short(name)} [{begin}, {end}] overlaps tensor {_short(reach_name)} "
                f"(which ends at {reach_end}): two tensors share bytes",
                start + begin,
                tensors=[name[:200], reach_name[:200]],
            )
        if end > reach_end:
            reach_end, reach_name = end, name
    begins = [b for b, _, _ in filled]
    for begin, end, name in ranges:
        if begin != end:
            continue
        index = bisect.bisect_left(begins, begin) - 1
        if index >= 0 and filled[index][1] > begin:
            out.add(
                "safetensors.overlap",
                "medium",
                f"zero-size tensor {_short(name)} sits at {begin}, inside tensor "
                f"{_short(filled[index][2])}: the loader refuses the layout",
                start + begin,
                tensors=[name[:200], filled[index][2][:200]],
            )
    if not all_placed:
        return  # gaps would only echo the entries already reported
    gaps: list[tuple[int, int]] = []
    cursor = 0
    for begin, end, _ in filled:
        if begin > cursor:
            gaps.append((cursor, begin))
        cursor = max(cursor, end)
    if cursor < buffer_len:
        gaps.append((cursor, buffer_len))
    if gaps:
        total = sum(e - b for b, e in gaps)
        out.add(
            "safetensors.gap",
            "low",
            f"{total} byte(s) of the buffer belong to no tensor ({len(gaps)} gap(s)): hidden "
            "data or a polyglot file; the reference loader refuses it",
            start + gaps[0][0],
            gaps=[[b, e] for b, e in gaps[:MAX_GAPS_LISTED]],
            gap_bytes=total,
        )

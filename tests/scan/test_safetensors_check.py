"""check_safetensors: benign files are clean, forged headers name the right rule, and on fuzzed
input it never raises and agrees with the reference loader (safetensors' own deserializer)."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import deserialize
from safetensors.torch import save

from trojanscope.scan.findings import SEVERITY_RANK, FileReport
from trojanscope.scan.safetensors_check import DTYPE_BITS, check_safetensors

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

BENIGN = save(
    {
        "weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "bias": torch.zeros(4, dtype=torch.int64),
        "half": torch.ones(2, 2, dtype=torch.bfloat16),
        "flag": torch.tensor([True, False]),
    },
    metadata={"format": "pt", "note": "benign"},
)


def _forge(header: Any, buffer: bytes = b"", *, length: int | None = None) -> bytes:
    """A file with ``header`` (a JSON value, or raw bytes) and its true or a forged length."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + buffer


def _t(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def _scan(data: bytes, **kwargs: Any) -> FileReport:
    report = FileReport("model.safetensors", "safetensors")
    check_safetensors(data, report, **kwargs)
    return report


def _serious(report: FileReport, floor: str = "low") -> set[str]:
    return {f.rule for f in report.findings if SEVERITY_RANK[f.severity] >= SEVERITY_RANK[floor]}


def _reference_accepts(data: bytes) -> bool:
    try:
        deserialize(data)
    except Exception:
        return False
    return True


def test_benign_file_is_clean_and_described():
    report = _scan(BENIGN)
    assert _serious(report) == set()
    assert report.incomplete is None
    assert report.verdict == "clean"
    assert report.metadata["safetensors_metadata"] == {"format": "pt", "note": "benign"}
    assert report.metadata["safetensors_tensor_count"] == 4
    assert report.metadata["safetensors_tensor_bytes"] == 48 + 32 + 8 + 2
    assert report.metadata["safetensors_dtypes"] == {"BF16": 1, "BOOL": 1, "F32": 1, "I64": 1}


def test_benign_edge_tensors_are_clean():
    data = save({"empty": torch.zeros(0, 3), "scalar": torch.tensor(1.5), "u8": torch.ones(5, 1)})
    report = _scan(data)
    assert _serious(report) == set() and report.incomplete is None


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        pytest.param(b"", "safetensors.header-length", id="empty-file"),
        pytest.param(b"\x05\x00\x00", "safetensors.header-length", id="shorter-than-8"),
        pytest.param(_forge({}, length=500), "safetensors.header-length", id="beyond-file"),
        pytest.param(_forge({}, length=2**63), "safetensors.header-length", id="huge-2**63"),
        pytest.param(_forge({}, length=2**64 - 1), "safetensors.header-length", id="huge-u64-max"),
        pytest.param(BENIGN[:40], "safetensors.header-length", id="truncated-in-header"),
        pytest.param(_forge(b"not json at all"), "safetensors.json", id="non-json"),
        pytest.param(_forge(b'{"a": \xff\xfe}'), "safetensors.json", id="not-utf8"),
        pytest.param(_forge([1, 2]), "safetensors.json", id="json-array"),
        pytest.param(_forge(b'{"__metadata__": {"x": NaN}}'), "safetensors.json", id="nan"),
        pytest.param(_forge(b"[" * 100_000 + b"]" * 100_000), "safetensors.json", id="deep-nest"),
    ],
)
def test_unreadable_header_is_reported_and_incomplete(data: bytes, rule: str):
    report = _scan(data)
    assert [f.rule for f in report.findings] == [rule]
    assert report.findings[0].severity == "medium"
    assert report.incomplete is not None
    assert report.verdict == "inconclusive"
    assert not _reference_accepts(data)


def test_header_over_scan_limit_is_inconclusive_not_malformed():
    report = _scan(BENIGN, max_header=64)
    assert _serious(report) == set()
    assert [f.rule for f in report.findings] == ["safetensors.header-length"]
    assert "limit" in report.incomplete


def test_invalid_utf8_offset_points_at_the_bad_byte():
    report = _scan(_forge(b'{"a": \xff\xfe}'))
    assert report.findings[0].offset == 8 + 6


F32_2 = b"\x00" * 8


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        pytest.param(
            _forge({"a": _t("F32", [4], 0, 16)}, F32_2), "safetensors.offsets", id="end-oob"
        ),
        pytest.param(
            _forge({"a": _t("F32", [0], 8, 0)}, F32_2), "safetensors.offsets", id="reversed"
        ),
        pytest.param(
            _forge({"a": _t("F32", [2], -8, 0)}, F32_2), "safetensors.offsets", id="negative"
        ),
        pytest.param(
            _forge({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 8]}}, F32_2),
            "safetensors.offsets",
            id="three-offsets",
        ),
        pytest.param(BENIGN[:-3], "safetensors.offsets", id="truncated-buffer"),
        pytest.param(
            _forge({"a": _t("F32", [2], 0, 8), "b": _t("F32", [1], 4, 8)}, F32_2),
            "safetensors.overlap",
            id="overlap",
        ),
        pytest.param(
            _forge({"a": _t("F32", [2], 0, 8), "b": _t("F32", [2], 0, 8)}, F32_2),
            "safetensors.overlap",
            id="aliased",
        ),
        pytest.param(
            _forge({"a": _t("F32", [2], 0, 8), "e": _t("F32", [0], 4, 4)}, F32_2),
            "safetensors.overlap",
            id="empty-inside-tensor",
        ),
        pytest.param(_forge({"a": _t("F128", [1], 0, 8)}, F32_2), "safetensors.dtype", id="dtype"),
        pytest.param(_forge({"a": _t("f32", [2], 0, 8)}, F32_2), "safetensors.dtype", id="lower"),
        pytest.param(
            _forge({"a": {"dtype": 7, "shape": [2], "data_offsets": [0, 8]}}, F32_2),
            "safetensors.dtype",
            id="dtype-int",
        ),
        pytest.param(
            _forge({"a": _t("F32", [3], 0, 8)}, F32_2), "safetensors.shape-size", id="size"
        ),
        pytest.param(_forge({"a": _t("F64", [2], 0, 8)}, F32_2), "safetensors.shape-size", id="dt"),
        pytest.param(
            _forge({"a": _t("F4", [3], 0, 2)}, b"\x00\x00"), "safetensors.shape-size", id="f4-odd"
        ),
        pytest.param(
            _forge({"a": _t("F32", [2**40, 2**40], 0, 8)}, F32_2),
            "safetensors.shape-size",
            id="size-overflow",
        ),
        pytest.param(_forge({"a": _t("F32", [-2], 0, 8)}, F32_2), "safetensors.shape", id="neg"),
        pytest.param(
            _forge(b'{"a": {"dtype": "F32", "shape": [true, 2], "data_offsets": [0, 8]}}', F32_2),
            "safetensors.shape",
            id="bool-dim",
        ),
        pytest.param(_forge({"a": _t("F32", [2.0], 0, 8)}, F32_2), "safetensors.shape", id="float"),
        pytest.param(
            _forge({"a": {"dtype": "F32", "data_offsets": [0, 8]}}, F32_2),
            "safetensors.entry",
            id="missing-shape",
        ),
        pytest.param(_forge({"a": [1, 2]}, F32_2), "safetensors.entry", id="entry-not-object"),
        pytest.param(
            _forge({"__metadata__": {"k": 1}, "a": _t("F32", [2], 0, 8)}, F32_2),
            "safetensors.metadata",
            id="metadata-int",
        ),
        pytest.param(
            _forge({"__metadata__": ["x"], "a": _t("F32", [2], 0, 8)}, F32_2),
            "safetensors.metadata",
            id="metadata-list",
        ),
        pytest.param(
            _forge(b'{"\\ud800": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', F32_2),
            "safetensors.json",
            id="lone-surrogate",
        ),
        pytest.param(
            _forge(b'{"a": {"dtype": "F32", "dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}')
            + F32_2,
            "safetensors.duplicate-key",
            id="duplicate-field",
        ),
    ],
)
def test_malformed_entry_is_medium_with_the_right_rule(data: bytes, rule: str):
    report = _scan(data)
    assert _serious(report, "medium") == {rule}, report.findings
    assert report.verdict == "suspicious"
    assert not _reference_accepts(data)


def test_sub_byte_dtype_must_end_on_a_byte_boundary():
    report = _scan(_forge({"a": _t("F4", [3], 0, 2)}, b"\x00\x00"))
    assert "byte boundary" in report.findings[0].message
    assert _serious(_scan(_forge({"a": _t("F4", [4], 0, 2)}, b"\x00\x00"))) == set()
    assert _serious(_scan(_forge({"a": _t("F6_E2M3", [4], 0, 3)}, b"\x00" * 3))) == set()


def test_forged_shape_with_many_dims_stays_cheap_and_short():
    shape = [2**63] * 100_000
    report = _scan(_forge({"a": _t("F32", shape, 0, 8)}, F32_2))
    (finding,) = report.findings
    assert finding.rule == "safetensors.shape-size"
    assert len(finding.message) < 300


def test_duplicate_tensor_name_is_reported_though_the_loader_accepts_it():
    raw = (
        b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},'
        b' "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'
    )
    report = _scan(_forge(raw, F32_2))
    assert _serious(report) == {"safetensors.duplicate-key"}
    assert report.findings[0].detail["key"] == "a"


def test_gap_is_low_and_located():
    data = _forge({"a": _t("F32", [1], 0, 4), "b": _t("F32", [1], 6, 10)}, b"\x00" * 12)
    report = _scan(data)
    assert _serious(report) == {"safetensors.gap"}
    (gap,) = report.findings
    assert gap.severity == "low"
    assert gap.detail["gaps"] == [[4, 6], [10, 12]]
    assert gap.detail["gap_bytes"] == 4
    header_len = report.metadata["safetensors_header_length"]
    assert gap.offset == 8 + header_len + 4
    assert report.incomplete is None and report.verdict == "suspicious"


def test_trailing_bytes_after_benign_file_are_a_gap():
    report = _scan(BENIGN + b"PK\x03\x04polyglot")
    assert _serious(report) == {"safetensors.gap"}


def test_leading_whitespace_and_extra_fields_are_not_malformed():
    raw = b'  {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}}'
    report = _scan(_forge(raw, F32_2))
    assert _serious(report, "medium") == set()
    assert {(f.rule, f.severity) for f in report.findings} == {
        ("safetensors.json", "low"),
        ("safetensors.entry", "info"),
    }
    assert _reference_accepts(_forge(raw, F32_2))


def test_findings_per_rule_are_capped():
    header = {f"t{i}": _t("F32", [2], 0, 8) for i in range(200)}
    report = _scan(_forge(header, F32_2))
    overlaps = [f for f in report.findings if f.rule == "safetensors.overlap"]
    assert 2 <= len(overlaps) <= 25
    assert "more" in overlaps[-1].message


def test_metadata_values_are_truncated_in_the_report():
    data = _forge({"__metadata__": {"big": "x" * 100_000}})
    report = _scan(data)
    assert len(report.metadata["safetensors_metadata"]["big"]) <= 4096
    assert _serious(report) == set()


# -- fuzzing: never raise, and agree with the reference loader --------------------------------


def _agrees_with_reference(data: bytes) -> None:
    report = _scan(data)  # must return normally whatever the bytes
    serious = _serious(report, "medium")
    if _reference_accepts(data):
        assert report.incomplete is None, report.incomplete
        assert serious <= {"safetensors.duplicate-key"}, report.findings
    else:
        assert serious or report.incomplete or "safetensors.gap" in _serious(report), data[:200]


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes):
    _agrees_with_reference(data)


@FUZZ
@given(st.integers(0, 300), st.binary(max_size=300))
def test_fuzz_random_bytes_behind_a_plausible_length(length: int, rest: bytes):
    _agrees_with_reference(struct.pack("<Q", length) + rest)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(BENIGN) - 1), st.integers(0, 255)), max_size=4),
    st.one_of(st.none(), st.integers(0, len(BENIGN))),
    st.one_of(st.none(), st.tuples(st.integers(0, len(BENIGN)), st.binary(min_size=1, max_size=8))),
)
def test_fuzz_mutated_benign_file(
    writes: list[tuple[int, int]], cut: int | None, insert: tuple[int, bytes] | None
):
    data = bytearray(BENIGN)
    for pos, value in writes:
        data[pos] = value
    if insert is not None:
        data[insert[0] : insert[0]] = insert[1]
    if cut is not None:
        del data[cut:]
    _agrees_with_reference(bytes(data))


_SMALL = st.integers(-1, 24)
_FORGED_ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from([*DTYPE_BITS, "F128", "f32", 3]),
        "shape": st.lists(_SMALL, max_size=3),
        "data_offsets": st.lists(_SMALL, min_size=1, max_size=3),
        "extra": st.integers(),
    },
)


@st.composite
def _layouts(draw: st.DrawFn) -> bytes:
    """Mostly-consistent files: contiguous tensors, then one small perturbation."""
    specs = draw(
        st.lists(
            st.tuples(st.sampled_from(sorted(DTYPE_BITS)), st.lists(st.integers(0, 3), max_size=3)),
            max_size=4,
        )
    )
    header: dict[str, Any] = {}
    cursor = 0
    for i, (dtype, shape) in enumerate(specs):
        elements = 1
        for dim in shape:
            elements *= dim
        size = -(-elements * DTYPE_BITS[dtype] // 8)
        header[f"t{i}"] = _t(dtype, shape, cursor, cursor + size)
        cursor += size
    if draw(st.booleans()):
        header["__metadata__"] = draw(
            st.dictionaries(st.text(max_size=3), st.one_of(st.text(max_size=3), st.integers()))
        )
    mode = draw(st.sampled_from(["none", "nudge", "slide"])) if specs else "none"
    if mode == "nudge":  # one offset off by a little: size mismatch, overlap or gap
        name = f"t{draw(st.integers(0, len(specs) - 1))}"
        index = draw(st.integers(0, 1))
        header[name]["data_offsets"][index] += draw(st.integers(-3, 3))
    elif mode == "slide":  # last tensor slid back onto its neighbour, buffer cut to match
        last = header[f"t{len(specs) - 1}"]["data_offsets"]
        back = draw(st.integers(0, min(last[0], 4)))
        last[0] -= back
        last[1] -= back
        cursor -= back
    if header and draw(st.booleans()):
        name = draw(st.sampled_from(sorted(header)))
        header[name] = draw(_FORGED_ENTRY)
    cursor += draw(st.sampled_from([0, 0, 0, -1, 1, 5]))
    return _forge(header, b"\x00" * max(cursor, 0))


@FUZZ
@given(_layouts())
def test_fuzz_forged_layouts(data: bytes):
    _agrees_with_reference(data)


def test_fuzz_layouts_reach_both_verdicts():
    """The layout strategy must produce accepted and refused files, or it tests nothing."""
    seen: set[bool] = set()

    @settings(max_examples=100, deadline=None, database=None, derandomize=True)
    @given(_layouts())
    def collect(data: bytes) -> None:
        seen.add(_reference_accepts(data))

    collect()
    assert seen == {True, False}

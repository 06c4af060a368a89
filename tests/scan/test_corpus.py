"""Checks of the scanner test corpus itself, by static parsing only: nothing here unpickles,
``torch.load``s or imports a corpus file.

Every malicious sample's expected import (module and name) appears verbatim in its pickle bytes;
in the memo and indirect samples they appear only as string pushes, never in a GLOBAL. The samples
without an expected import are the EXT ones (the bytes hold only a code number) and the custom-code
directory (no pickle at all).
"""

from __future__ import annotations

import io
import itertools
import json
import pickletools
import re
import struct
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.scan.corpus import Sample, build_corpus, build_large_benign

CALL_OPS = {"REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"}
NO_GLOBAL = {"pickle-ext1", "pickle-ext2", "pickle-ext4", "hf-auto-map-custom-code"}
BROKEN = {"pickle-garbage-after-reduce", "pickle-truncated-after-reduce", "pickle-no-stop"}
#: Samples whose dangerous call happens without any REDUCE opcode.
NO_REDUCE = {
    "pickle-inst-os-system",
    "pickle-obj-posix-system",
    "pickle-newobj-popen",
    "pickle-newobj-ex-popen",
    "pickle-build-setstate-injection",
    "pickle-build-popen-state",
}
OPCODE_OF = {
    "pickle-p0-os-system": "STRING",
    "pickle-p3-os-system": "BINBYTES",
    "pickle-p4-os-system": "STACK_GLOBAL",
    "pickle-p2-os-system": "GLOBAL",
    "pickle-inst-os-system": "INST",
    "pickle-obj-posix-system": "OBJ",
    "pickle-newobj-popen": "NEWOBJ",
    "pickle-newobj-ex-popen": "NEWOBJ_EX",
    "pickle-build-setstate-injection": "BUILD",
    "pickle-build-popen-state": "BUILD",
    "pickle-memo-memoize-binget": "BINGET",
    "pickle-memo-long-binget": "LONG_BINGET",
    "pickle-memo-overwrite": "BINGET",
    "pickle-frame-split": "FRAME",
    "pickle-frame-zero-length": "FRAME",
    "pickle-ext1": "EXT1",
    "pickle-ext2": "EXT2",
    "pickle-ext4": "EXT4",
    "pickle-persid-p0": "PERSID",
    "pickle-binpersid-p2": "BINPERSID",
}
_TORCH_RAW = re.compile(r"(^|/)(data/\d+|version|byteorder|\.format_version|\.storage_alignment)$")


@dataclass
class Stream:
    """One pickle stream found in a file, statically parsed."""

    where: str
    data: bytes
    ops: list[str]
    error: str | None


def _is_safetensors(data: bytes) -> bool:
    return len(data) > 8 and data[8:9] == b"{" and struct.unpack("<Q", data[:8])[0] < len(data)


def _looks_like_pickle(data: bytes) -> bool:
    return (data[:1] == b"\x80" and len(data) > 1 and data[1] <= 5) or data[:1] in (b"c", b"(")


def _parse(where: str, data: bytes, start: int) -> tuple[Stream, int]:
    stream = io.BytesIO(data)
    stream.seek(start)
    ops, error = [], None
    try:
        for op, _arg, _pos in pickletools.genops(stream):
            ops.append(op.name)
    except ValueError as exc:  # unknown opcode, truncated argument or no STOP
        error = str(exc)
    end = stream.tell()
    return Stream(where, data[start:end], ops, error), end


def _streams(where: str, data: bytes) -> list[Stream]:
    """Pickle streams in ``data``, opening zip, tar.gz and npy layers (reading bytes only)."""
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return [
                s
                for info in zf.infolist()
                if not _TORCH_RAW.search(info.filename)
                for s in _streams(f"{where}!{info.filename}", zf.read(info))
            ]
    if data[:2] == b"\x1f\x8b":
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
            return [
                s
                for member in tf.getmembers()
                if member.isfile()
                for s in _streams(f"{where}!{member.name}", tf.extractfile(member).read())
            ]
    if data[:6] == b"\x93NUMPY":
        fp = io.BytesIO(data)
        np.lib.format.read_magic(fp)
        _shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        return _streams(where, data[fp.tell() :]) if dtype.hasobject else []
    if _is_safetensors(data) or not _looks_like_pickle(data):
        return []
    found, pos = [], 0
    while True:  # a legacy torch file is several pickles in a row, then raw storages
        stream, pos = _parse(where, data, pos)
        found.append(stream)
        if stream.error or not _looks_like_pickle(data[pos : pos + 2]):
            return found


def _sample_streams(sample: Sample) -> list[Stream]:
    files = sorted(sample.path.rglob("*")) if sample.path.is_dir() else [sample.path]
    return [s for f in files if f.is_file() for s in _streams(f.name, f.read_bytes())]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Sample], Path]:
    root = tmp_path_factory.mktemp("corpus")
    canary = root / "canary"
    return build_corpus(root / "samples", canary), canary


@pytest.fixture(scope="module")
def streams(built) -> dict[str, list[Stream]]:
    return {s.name: _sample_streams(s) for s in built[0]}


def _by_name(built) -> dict[str, Sample]:
    return {s.name: s for s in built[0]}


def test_names_unique_paths_exist_and_sizes(built) -> None:
    samples, _canary = built
    assert len({s.name for s in samples}) == len(samples)
    assert len({s.path for s in samples}) == len(samples)
    assert all(s.path.exists() for s in samples)
    assert sum(s.malicious for s in samples) >= 35
    assert sum(not s.malicious for s in samples) >= 10
    assert all(s.expected_import is None for s in samples if not s.malicious)
    assert {s.name for s in samples if s.malicious and s.expected_import is None} == NO_GLOBAL


def test_canary_absent_after_build(built) -> None:
    assert not built[1].exists()


def test_expected_import_in_bytes(built, streams) -> None:
    for sample in built[0]:
        if sample.expected_import is None:
            continue
        module, name = sample.expected_import.rsplit(".", 1)
        assert any(
            module.encode() in s.data and name.encode() in s.data for s in streams[sample.name]
        ), sample.name


def test_call_opcode_reached(built, streams) -> None:
    for sample in built[0]:
        if not sample.malicious or sample.name == "hf-auto-map-custom-code":
            continue
        ops = {op for s in streams[sample.name] for op in s.ops}
        assert ops & CALL_OPS, sample.name
        if sample.name in OPCODE_OF:
            assert OPCODE_OF[sample.name] in ops, sample.name
        if sample.name in NO_REDUCE:
            assert "REDUCE" not in ops, sample.name


def test_raw_pickles_well_formed(built, streams) -> None:
    for sample in built[0]:
        if not sample.name.startswith(("pickle-", "disguised-")):
            continue
        (stream,) = streams[sample.name]
        if sample.name in BROKEN:
            assert stream.error is not None and "REDUCE" in stream.ops, sample.name
        else:
            assert stream.error is None and stream.ops[-1] == "STOP", sample.name
            assert stream.data == sample.path.read_bytes(), sample.name


def test_containers_hold_the_payload(built, streams) -> None:
    named = _by_name(built)
    assert [s.where for s in streams["nested-zip-targz-zip"]] == [
        "release.zip!weights.safetensors!README.txt!weights.safetensors"
    ]
    assert [s.where for s in streams["torch-zip-renamed-members"]] == [
        "model_final.pt!model_final/weights.bin"
    ]
    assert streams["hf-pytorch-model-bin"][0].where == "pytorch_model.bin!pytorch_model/data.pkl"
    for label, index in (("sysinfo", 2), ("object", 3), ("keys", 4)):
        found = streams[f"torch-legacy-{label}-swapped"]
        assert len(found) == 5 and all(s.error is None for s in found)
        module = named[f"torch-legacy-{label}-swapped"].expected_import.split(".")[0]
        assert [i for i, s in enumerate(found) if module.encode() in s.data] == [index]
    header = named["npy-object-dtype"].path.read_bytes()
    assert (10 + struct.unpack("<H", header[8:10])[0]) % 64 == 0


def test_custom_code_directory(built, streams) -> None:
    sample = _by_name(built)["hf-auto-map-custom-code"]
    config = json.loads((sample.path / "config.json").read_text())
    assert config["auto_map"] == {"AutoModel": "modeling_evil.EvilModel"}
    assert str(built[1].absolute()) in (sample.path / "modeling_evil.py").read_text()
    assert streams[sample.name] == []


def test_benign_pickles_parse(built, streams) -> None:
    for sample in built[0]:
        if sample.malicious:
            continue
        for stream in streams[sample.name]:
            assert b"system" not in stream.data, sample.name
            if sample.name != "benign-joblib":  # joblib writes array bytes inside the stream
                assert stream.error is None, (sample.name, stream.where)


def test_large_benign(tmp_path: Path) -> None:
    path = build_large_benign(tmp_path)
    data = path.read_bytes()
    assert 40_000_000 < len(data) < 80_000_000
    assert data[:2] == b"\x80\x04" and data[-1:] == b"."
    pos, frames = 2, 0
    while pos < len(data):  # every byte after PROTO sits in exactly one FRAME
        assert data[pos : pos + 1] == b"\x95"
        pos += 9 + struct.unpack("<Q", data[pos + 1 : pos + 9])[0]
        frames += 1
    assert pos == len(data) and frames > 900
    with path.open("rb") as fp:
        ops = {op.name for op, _a, _p in itertools.islice(pickletools.genops(fp), 200_000)}
    assert ops & CALL_OPS == set()
    assert "GLOBAL" not in ops and "STACK_GLOBAL" not in ops


def test_canary_absent_at_end(built) -> None:
    assert not built[1].exists()

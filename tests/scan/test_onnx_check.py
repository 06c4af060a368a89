"""check_onnx and looks_like_onnx on small models built with onnx.helper (never run)."""

from __future__ import annotations

import io
import pickle
import random
import zipfile
from pathlib import Path

import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import FunctionProto, GraphProto, NodeProto, TensorProto, helper
from safetensors.torch import save

from trojanscope.scan.findings import SEVERITY_RANK, FileReport
from trojanscope.scan.onnx_check import check_onnx, looks_like_onnx

X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
Z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])


def _graph(
    nodes: list[NodeProto], initializers: list[TensorProto] | None = None, name: str = "g"
) -> GraphProto:
    return helper.make_graph(nodes, name, [X, Y], [Z], initializers or [])


def _model(graph: GraphProto, functions: list[FunctionProto] | None = None) -> bytes:
    opsets = [helper.make_opsetid("", 17)]
    opsets += [helper.make_opsetid(f.domain, 1) for f in functions or []]
    model = helper.make_model(
        graph, opset_imports=opsets, producer_name="trojanscope-test", functions=functions or []
    )
    return model.SerializeToString()


def _add() -> NodeProto:
    return helper.make_node("Add", ["x", "y"], ["z"], name="add")


def _external(name: str, location: str, *, external: bool = True) -> TensorProto:
    tensor = helper.make_tensor(name, TensorProto.FLOAT, [2], [0.0, 0.0])
    tensor.ClearField("float_data")
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    if external:
        tensor.data_location = TensorProto.EXTERNAL
    return tensor


def _scan(data: bytes, model_dir: Path | None = None) -> FileReport:
    report = FileReport("model.onnx", "onnx")
    check_onnx(data, report, model_dir)
    return report


def _above_info(report: FileReport) -> list[tuple[str, str]]:
    return [(f.rule, f.severity) for f in report.findings if SEVERITY_RANK[f.severity] > 0]


TINY = _model(_graph([_add()]))


def test_tiny_add_model_is_clean_and_described(tmp_path: Path):
    report = _scan(TINY, tmp_path)
    assert _above_info(report) == []
    assert report.incomplete is None and report.verdict == "clean"
    assert report.metadata["onnx_producer"] == "trojanscope-test"
    assert report.metadata["onnx_node_count"] == 1
    assert report.metadata["onnx_opset_imports"] == [{"domain": "", "version": 17}]
    assert report.metadata["onnx_ir_version"] == onnx.IR_VERSION


def test_custom_domain_node_is_medium():
    evil = helper.make_node("Backdoor", ["z"], ["w"], name="bd", domain="evil.custom")
    report = _scan(_model(_graph([_add(), evil])))
    assert _above_info(report) == [("onnx.custom-domain", "medium")]
    detail = report.findings[0].detail
    assert (detail["domain"], detail["op_type"], detail["nodes"]) == ("evil.custom", "Backdoor", 1)
    assert report.metadata["onnx_custom_ops"] == ["evil.custom:Backdoor"]


@pytest.mark.parametrize("domain", ["", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training"])
def test_standard_domains_are_not_custom(domain: str):
    node = helper.make_node("Add", ["x", "y"], ["z"], domain=domain)
    assert _above_info(_scan(_model(_graph([node])))) == []


def _nested(inner: list[NodeProto]) -> GraphProto:
    """Main graph -> If.then_branch -> Loop.body -> ``inner``."""
    body = helper.make_graph(inner, "loop_body", [], [])
    loop = helper.make_node("Loop", ["", ""], ["l"], body=body, name="loop")
    then_branch = helper.make_graph([loop], "then", [], [])
    else_branch = helper.make_graph([], "else", [], [])
    cond = helper.make_node(
        "If", ["c"], ["o"], then_branch=then_branch, else_branch=else_branch, name="if"
    )
    return _graph([_add(), cond])


def test_custom_domain_deep_in_subgraphs_is_found():
    evil = helper.make_node("Hidden", [], ["h"], domain="evil.custom")
    report = _scan(_model(_nested([evil])))
    assert _above_info(report) == [("onnx.custom-domain", "medium")]
    assert report.metadata["onnx_node_count"] == 4
    assert report.metadata["onnx_graph_count"] == 4


def test_scan_subgraphs_in_graphs_attribute_are_walked():
    evil = helper.make_node("Hidden", [], ["h"], domain="evil.custom")
    body = helper.make_graph([evil], "scan_body", [], [])
    node = helper.make_node("Scan", ["x"], ["s"], name="scan")
    node.attribute.append(helper.make_attribute("bodies", [body]))
    assert _above_info(_scan(_model(_graph([node])))) == [("onnx.custom-domain", "medium")]


def test_custom_domain_inside_a_function_body_is_found():
    evil = helper.make_node("Hidden", ["a"], ["b"], domain="evil.custom")
    function = helper.make_function(
        "local.fn", "Wrap", ["a"], ["b"], [evil], [helper.make_opsetid("", 17)]
    )
    call = helper.make_node("Wrap", ["x"], ["z"], domain="local.fn")
    report = _scan(_model(_graph([call]), [function]))
    assert [f.detail["domain"] for f in report.findings] == ["evil.custom"]


def test_call_to_a_model_local_function_is_not_custom():
    inner = helper.make_node("Add", ["a", "a"], ["b"])
    function = helper.make_function(
        "local.fn", "Double", ["a"], ["b"], [inner], [helper.make_opsetid("", 17)]
    )
    call = helper.make_node("Double", ["x"], ["z"], domain="local.fn")
    report = _scan(_model(_graph([call]), [function]))
    assert _above_info(report) == []
    assert report.metadata["onnx_function_count"] == 1
    undefined = helper.make_node("Triple", ["x"], ["z"], domain="local.fn")
    assert _above_info(_scan(_model(_graph([undefined]), [function]))) == [
        ("onnx.custom-domain", "medium")
    ]


@pytest.mark.parametrize(
    "location",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "sub/../../outside.bin",
        "..\\..\\secret.bin",
        "C:\\Windows\\win.ini",
        "\\\\server\\share\\w.bin",
    ],
)
@pytest.mark.parametrize("with_dir", [True, False])
def test_external_data_escaping_the_model_dir_is_high(
    tmp_path: Path, location: str, with_dir: bool
):
    data = _model(_graph([_add()], [_external("w", location)]))
    report = _scan(data, tmp_path if with_dir else None)
    assert _above_info(report) == [("onnx.external-data-escape", "high")]
    assert report.findings[0].detail["location"] == location
    assert report.verdict == "dangerous"
    assert report.metadata["onnx_external_data"] == [location]


@pytest.mark.parametrize("location", ["weights.bin", "sub/w.bin", "sub/../w.bin", "./w.bin"])
def test_external_data_inside_the_model_dir_is_fine(tmp_path: Path, location: str):
    data = _model(_graph([_add()], [_external("w", location)]))
    report = _scan(data, tmp_path)
    assert _above_info(report) == []
    assert report.metadata["onnx_external_data"] == [location]


def test_external_data_through_a_symlink_out_of_the_dir_is_high(tmp_path: Path):
    model_dir, outside = tmp_path / "model", tmp_path / "outside"
    model_dir.mkdir()
    outside.mkdir()
    (model_dir / "link").symlink_to(outside, target_is_directory=True)
    data = _model(_graph([_add()], [_external("w", "link/weights.bin")]))
    report = _scan(data, model_dir)
    assert _above_info(report) == [("onnx.external-data-escape", "high")]
    assert "symlink" in report.findings[0].message
    # Without the directory only the path itself can be judged, and it looks harmless.
    assert _above_info(_scan(data, None)) == []


def test_many_tensors_sharing_one_location_give_one_finding(tmp_path: Path):
    tensors = [_external(f"w{i}", "../shared.bin") for i in range(30)]
    report = _scan(_model(_graph([_add()], tensors)), tmp_path)
    assert _above_info(report) == [("onnx.external-data-escape", "high")]
    assert report.findings[0].detail["tensors"] == 30


def test_external_tensor_in_a_nested_constant_attribute_is_found(tmp_path: Path):
    const = helper.make_node("Constant", [], ["k"], value=_external("k", "/etc/shadow"))
    report = _scan(_model(_nested([const])), tmp_path)
    assert _above_info(report) == [("onnx.external-data-escape", "high")]


def test_location_on_a_non_external_tensor_is_only_low(tmp_path: Path):
    data = _model(_graph([_add()], [_external("w", "../x.bin", external=False)]))
    assert _above_info(_scan(data, tmp_path)) == [("onnx.external-data-escape", "low")]


def test_external_tensor_without_location_is_invalid(tmp_path: Path):
    tensor = helper.make_tensor("w", TensorProto.FLOAT, [2], [0.0, 0.0])
    tensor.data_location = TensorProto.EXTERNAL
    report = _scan(_model(_graph([_add()], [tensor])), tmp_path)
    assert _above_info(report) == [("onnx.external-data-invalid", "medium")]


@pytest.mark.parametrize(
    "data",
    [b"\xff\xff\xff\xff", TINY[: len(TINY) // 2], b"\x0a\x05abc", b"PK\x03\x04" + b"\x00" * 30],
    ids=["garbage", "truncated", "short-field", "zip"],
)
def test_unparsable_model_is_medium_and_incomplete(data: bytes):
    report = _scan(data)
    assert _above_info(report) == [("onnx.parse", "medium")]
    assert report.incomplete is not None and report.verdict == "inconclusive"


def test_protobuf_without_graph_is_not_a_loadable_model():
    report = _scan(b"")
    assert _above_info(report) == [("onnx.parse", "medium")]
    assert "ir_version" in report.findings[0].message


# -- looks_like_onnx ------------------------------------------------------------------------


def test_looks_like_onnx_accepts_models():
    big = helper.make_tensor("w", TensorProto.FLOAT, [256], [0.5] * 256, raw=False)
    with_weights = _model(_graph([_add()], [big]))
    assert looks_like_onnx(TINY)
    assert looks_like_onnx(with_weights)
    assert looks_like_onnx(with_weights[: len(with_weights) // 2])  # truncated inside the graph
    assert looks_like_onnx(_model(_nested([])))
    assert looks_like_onnx(b"\x08\x07\x3a\x00")  # ir_version 7, empty graph


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"a": 1}))
    return buffer.getvalue()


def _torch_save_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        *(pickle.dumps({"w": [1.0, 2.0]}, protocol=p) for p in range(6)),
        _zip_bytes(),
        _torch_save_bytes(),
        save({"w": torch.zeros(3)}),
        b"",
        b"\x08\x07",  # an ir_version alone
        b"\x08\x00\x3a\x00",  # ir_version 0
        b"\x08\x07\x3a\x00\x48\x01",  # unknown field 9 after a graph
        b"\x08\x07\x38\x05",  # graph field 7 with the varint wire type
    ],
)
def test_looks_like_onnx_rejects_other_formats(data: bytes):
    assert not looks_like_onnx(data)


def test_looks_like_onnx_rejects_random_bytes():
    rng = random.Random(1234)
    hits = [n for n in range(2000) if looks_like_onnx(rng.randbytes(rng.randint(1, 512)))]
    assert hits == []


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(st.tuples(st.integers(0, len(TINY) - 1), st.integers(0, 255)), max_size=4))
def test_fuzz_mutated_model_never_raises(writes: list[tuple[int, int]]):
    data = bytearray(TINY)
    for pos, value in writes:
        data[pos] = value
    report = _scan(bytes(data))
    assert report.verdict in {"clean", "suspicious", "inconclusive", "dangerous"}
    looks_like_onnx(bytes(data))

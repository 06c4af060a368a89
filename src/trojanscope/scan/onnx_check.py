"""ONNX model audit: parse the protobuf, never load external data, never run the model.

Two things in an ONNX file reach outside it when a runtime loads it:

* external-data tensors name a file by path (``external_data`` key ``location``), read relative
  to the model's directory: an absolute path, a ``..`` that climbs out or a symlink makes the
  loader read any file the user can read (``onnx.external-data-escape``);
* a node in a non-standard domain is a custom operator, implemented by a native library the
  engineer must load and has not reviewed (``onnx.custom-domain``).

Every graph is walked: the main graph, subgraphs in node attributes (If/Loop/Scan bodies),
training-info graphs and model-local functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import onnx
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, SparseTensorProto, TensorProto

from trojanscope.scan.findings import FileReport
from trojanscope.scan.onnx_sniff import looks_like_onnx  # noqa: F401 (re-exported)

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training"})

MAX_TEXT = 200  # characters of producer names etc. kept in the report
MAX_LISTED = 50


@dataclass
class _Inventory:
    """Every node and tensor of a model, each with where it sits."""

    nodes: list[tuple[str, NodeProto]] = field(default_factory=list)
    tensors: list[tuple[str, TensorProto]] = field(default_factory=list)
    graphs: int = 0


def _sparse(where: str, sparse: SparseTensorProto) -> Iterable[tuple[str, TensorProto]]:
    yield f"{where}.values", sparse.values
    yield f"{where}.indices", sparse.indices


def _inventory(model: ModelProto) -> _Inventory:
    """Walk all graphs (iteratively: nesting depth is the file's choice) and functions."""
    inv = _Inventory()
    graphs: list[tuple[str, GraphProto]] = []
    attributes: list[tuple[str, AttributeProto]] = []
    if model.HasField("graph"):
        graphs.append(("graph", model.graph))
    for i, info in enumerate(model.training_info):
        for part in ("initialization", "algorithm"):
            if info.HasField(part):
                graphs.append((f"training_info[{i}].{part}", getattr(info, part)))
    node_lists: list[tuple[str, Iterable[NodeProto]]] = []
    for function in model.functions:
        where = f"function {function.domain}:{function.name}"
        node_lists.append((where, function.node))
        attributes.extend((f"{where}.{a.name}", a) for a in function.attribute_proto)
    while graphs or node_lists or attributes:
        if graphs:
            where, graph = graphs.pop()
            inv.graphs += 1
            inv.tensors.extend((f"{where}/initializer {t.name}", t) for t in graph.initializer)
            for sparse in graph.sparse_initializer:
                inv.tensors.extend(_sparse(f"{where}/sparse_initializer", sparse))
            node_lists.append((where, graph.node))
        elif node_lists:
            where, nodes = node_lists.pop()
            for index, node in enumerate(nodes):
                inv.nodes.append((where, node))
                label = f"{where}/{node.op_type}:{node.name or index}"
                attributes.extend((f"{label}.{a.name}", a) for a in node.attribute)
        else:
            where, attr = attributes.pop()
            # Every field is read whatever ``type`` says: a forged attribute may lie about it.
            if attr.HasField("t"):
                inv.tensors.append((where, attr.t))
            inv.tensors.extend((where, t) for t in attr.tensors)
            if attr.HasField("sparse_tensor"):
                inv.tensors.extend(_sparse(where, attr.sparse_tensor))
            for sparse in attr.sparse_tensors:
                inv.tensors.extend(_sparse(where, sparse))
            if attr.HasField("g"):
                graphs.append((where, attr.g))
            graphs.extend((f"{where}[{i}]", g) for i, g in enumerate(attr.graphs))
    return inv


def _escape_reason(location: str, model_dir: Path | None) -> str | None:
    """Why reading ``location`` relative to the model directory leaves it, or None."""
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).anchor:
        return "is an absolute path"
    depth = 0
    for part in location.replace("\\", "/").split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return "climbs out of the model directory with '..'"
        elif part not in ("", "."):
            depth += 1
    if model_dir is None:
        return None
    base = model_dir.resolve()
    target = (model_dir / location).resolve()
    if not target.is_relative_to(base):
        return (
            f"resolves (through a symlink) to {str(target)[:MAX_TEXT]}, outside the model directory"
        )
    return None


def _check_external(inv: _Inventory, report: FileReport, model_dir: Path | None) -> None:
    """One finding per distinct external-data location that escapes or cannot be used."""
    groups: dict[tuple[str, bool], list[str]] = {}
    for where, tensor in inv.tensors:
        external = tensor.data_location == TensorProto.EXTERNAL
        locations = [e.value for e in tensor.external_data if e.key == "location"]
        if external and not locations:
            report.add(
                "onnx.external-data-invalid",
                "medium",
                f"{where}: external tensor without a location: the loader refuses it",
            )
        for location in locations:
            groups.setdefault((location, external), []).append(where)
    listed = sorted({location for location, _ in groups})
    if listed:
        report.metadata["onnx_external_data"] = [loc[:MAX_TEXT] for loc in listed[:MAX_LISTED]]
    for (location, external), places in sorted(groups.items()):
        shown = repr(location[:MAX_TEXT])
        count = f"{len(places)} tensor(s), first {places[0][:MAX_TEXT]}"
        if not location or "\0" in location:
            report.add(
                "onnx.external-data-invalid",
                "medium",
                f"external-data location {shown} is empty or holds a NUL byte ({count})",
                location=location[:MAX_TEXT],
            )
            continue
        try:
            reason = _escape_reason(location, model_dir)
        except (OSError, RuntimeError, ValueError) as exc:  # symlink loop, bad name, ...
            report.add(
                "onnx.external-data-invalid",
                "medium",
                f"external-data location {shown} cannot be resolved: {exc} ({count})",
                location=location[:MAX_TEXT],
            )
            continue
        if reason is None:
            continue
        if external:
            report.add(
                "onnx.external-data-escape",
                "high",
                f"external-data location {shown} {reason}: loading the model reads that file "
                f"into a tensor ({count})",
                location=location[:MAX_TEXT],
                tensors=len(places),
            )
        else:
            report.add(
                "onnx.external-data-escape",
                "low",
                f"external-data location {shown} {reason}, on a tensor whose data_location is "
                f"not EXTERNAL, so loaders ignore it today ({count})",
                location=location[:MAX_TEXT],
                tensors=len(places),
            )


def _check_domains(inv: _Inventory, model: ModelProto, report: FileReport) -> None:
    """One finding per custom (domain, op_type); calls to model-local functions are exempt."""
    local = {(f.domain, f.name, f.overload) for f in model.functions}
    custom: dict[tuple[str, str], list[str]] = {}
    for where, node in inv.nodes:
        if node.domain in STANDARD_DOMAINS or (node.domain, node.op_type, node.overload) in local:
            continue
        custom.setdefault((node.domain, node.op_type), []).append(f"{where} node {node.name!r}")
    if custom:
        report.metadata["onnx_custom_ops"] = [
            f"{d[:MAX_TEXT]}:{op[:MAX_TEXT]}" for d, op in sorted(custom)[:MAX_LISTED]
        ]
    for (domain, op_type), places in sorted(custom.items()):
        report.add(
            "onnx.custom-domain",
            "medium",
            f"operator {op_type[:MAX_TEXT]!r} of custom domain {domain[:MAX_TEXT]!r} "
            f"({len(places)} node(s), first in {places[0][:MAX_TEXT]}): running it needs a native "
            "library that registers it, code outside this file that was not reviewed",
            domain=domain[:MAX_TEXT],
            op_type=op_type[:MAX_TEXT],
            nodes=len(places),
        )


def _describe(model: ModelProto, inv: _Inventory) -> dict[str, Any]:
    return {
        "onnx_ir_version": model.ir_version,
        "onnx_producer": model.producer_name[:MAX_TEXT],
        "onnx_producer_version": model.producer_version[:MAX_TEXT],
        "onnx_opset_imports": [
            {"domain": o.domain[:MAX_TEXT], "version": o.version}
            for o in model.opset_import[:MAX_LISTED]
        ],
        "onnx_node_count": len(inv.nodes),
        "onnx_graph_count": inv.graphs,
        "onnx_function_count": len(model.functions),
        "onnx_tensor_count": len(inv.tensors),
    }


def check_onnx(data: bytes, report: FileReport, model_dir: Path | None) -> None:
    """Audit a serialized ONNX model; ``model_dir`` is the directory it would be loaded from.

    Without ``model_dir`` external-data paths are checked lexically only (no symlinks).
    """
    try:
        model = onnx.load_model_from_string(bytes(data), format="protobuf")
    except Exception as exc:  # protobuf raises DecodeError, RecursionError, ... on bad input
        report.add("onnx.parse", "medium", f"not a parsable ONNX model: {str(exc)[:MAX_TEXT]}", 0)
        report.incomplete = "ONNX protobuf could not be parsed"
        return
    if model.ir_version <= 0 or not model.HasField("graph"):
        report.add(
            "onnx.parse",
            "medium",
            "protobuf parses but is no loadable model: "
            + ("no ir_version" if model.ir_version <= 0 else "no graph"),
            0,
        )
    inv = _inventory(model)
    report.metadata.update(_describe(model, inv))
    _check_external(inv, report, model_dir)
    _check_domains(inv, model, report)

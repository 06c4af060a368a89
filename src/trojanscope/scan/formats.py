"""Readers of the formats that need no parser of their own: text and JSON (Hugging Face
configs, YAML), TorchScript archives and sources, and names for what is not supported."""

from __future__ import annotations

import json
import re

from trojanscope.scan.findings import FileReport
from trojanscope.scan.limits import Limits

#: Operator namespaces TorchScript code uses without any native library of the user's.
_STANDARD_OPS = frozenset(
    {"aten", "prim", "quantized", "_quantized", "quantized_decomposed", "profiler", "prepacked"}
)
_OPS = re.compile(r"\bops\.([A-Za-z_]\w*)\.([A-Za-z_]\w*)")
#: TorchScript operators that touch files.
_FILE_OPS = frozenset({"from_file", "save", "load"})
#: YAML tags that make a full/unsafe YAML loader construct Python objects or call functions.
_YAML_PYTHON = re.compile(r"(?:^|[\s:\[{,-])!!python/(object|name|module|apply|new)", re.M)


def zip_kind(names: list[str]) -> str | None:
    """What a zip archive is, from its member names (the loaders decide the same way)."""
    tops = {n.split("/", 1)[1] for n in names if "/" in n}
    if "constants.pkl" in tops or "constants.pkl" in names:
        return "TorchScript archive"  # torch.load hands any zip with constants.pkl to torch.jit
    if "data.pkl" in tops or "data.pkl" in names:
        return "PyTorch zip checkpoint"
    if "config.json" in names and ("metadata.json" in names or "model.weights.h5" in names):
        return "Keras v3 archive"
    if names and all(n.endswith(".npy") for n in names):
        return "NumPy .npz archive"
    return None


def torchscript_allowed(module: str, name: str) -> bool:
    """Names a TorchScript archive's pickles legitimately carry: classes compiled from the
    archive's own TorchScript sources, and the TorchScript unpickler's list builders. They are
    resolved by torch.jit's own (C++) unpickler, never imported as Python modules."""
    return module == "__torch__" or module.startswith("__torch__.") or module == "torch.jit._pickle"


def is_torchscript_source(member: str) -> bool:
    """A TorchScript source file of an archive (``code/**.py``; ``.debug_pkl`` are pickles)."""
    return "/code/" in f"/{member}" and member.endswith(".py")


def torchscript_code(data: bytes | memoryview, report: FileReport, limits: Limits) -> None:
    """A TorchScript source: compiled by torch.jit.load, never run as Python. Operators from
    non-standard namespaces need a native library; file operators reach the file system."""
    text = _decode(data, report, limits)
    if text is None:
        return
    custom, files = set(), set()
    for namespace, op in _OPS.findall(text):
        if namespace not in _STANDARD_OPS:
            custom.add(f"{namespace}::{op}")
        elif op in _FILE_OPS:
            files.add(f"{namespace}::{op}")
    for op in sorted(custom)[:20]:
        report.add(
            "torchscript.custom-op",
            "medium",
            f"calls operator {op}, which a native extension library must provide",
            operator=op,
        )
    for op in sorted(files):
        report.add("torchscript.file-op", "medium", f"calls {op}, which reads or writes files")


def check_text(data: bytes | memoryview, report: FileReport, limits: Limits) -> None:
    """Text or JSON: inert for model loaders, except Hugging Face's ``auto_map`` (custom code
    loaded with trust_remote_code) and YAML's Python tags (run by an unsafe YAML loader)."""
    text = _decode(data, report, limits)
    if text is None:
        return
    report.format = "text"
    if text.lstrip()[:1] in ("{", "["):
        try:
            document = json.loads(text)
        except (ValueError, RecursionError):
            document = None
        else:
            report.format = "json"
        if isinstance(document, dict) and "auto_map" in document:
            targets = document["auto_map"]
            report.add(
                "hf.auto-map",
                "high",
                "config names custom model code (auto_map): loading with trust_remote_code runs it",
                refs=targets if isinstance(targets, dict | list | str) else str(targets),
            )
    tags = sorted(set(_YAML_PYTHON.findall(text)))
    if tags:
        report.add(
            "yaml.python-tag",
            "high",
            "YAML tags !!python/" + ", !!python/".join(tags) + ": a full or unsafe YAML loader "
            "builds Python objects or calls functions from them",
        )


def _decode(data: bytes | memoryview, report: FileReport, limits: Limits) -> str | None:
    if len(data) > limits.max_text_bytes:
        report.incomplete = (
            f"a text file above {limits.max_text_bytes} bytes is not read (raise the limit)"
        )
        return None
    raw = bytes(data)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        report.format = "unknown"
        report.incomplete = "unsupported format (binary data that is not text)"
        return None
    return text


def unsupported_kind(data: bytes | memoryview, name: str) -> str | None:
    """A name for a format the scanner recognises but does not read, for the message."""
    head = bytes(data[:8])
    if name in ("saved_model.pb", "saved_model.pbtxt"):
        return "TensorFlow SavedModel"
    if name.startswith("variables.data-") or name == "variables.index":
        return "TensorFlow checkpoint"
    if head[4:8] == b"TFL3":
        return "TensorFlow Lite"
    if head[:4] == b"GGUF":
        return "GGUF"
    if name.endswith((".pb", ".pbtxt")):
        return "protobuf"
    return None

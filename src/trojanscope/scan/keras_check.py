"""Keras model files: v3 ``.keras`` archives and legacy HDF5 ``.h5`` files.

Nothing is deserialized by Keras and no model is loaded: the model configuration (JSON) is
walked as data. What a Keras loader would turn into code is a finding:

- a ``Lambda`` layer, or any serialized Python bytecode (``__lambda__`` objects, base64
  ``marshal`` strings): Keras rebuilds the function from the file (``keras.lambda-layer``,
  ``keras.lambda-function``, high);
- a ``module`` outside the Keras packages, a ``registered_name`` / class / function named
  ``package>Name`` outside Keras: the loader needs (older versions import) that Python code
  (``keras.custom-object``, medium; ``keras.dangerous-import``, high, for modules and names
  the pickle deny-list knows, such as ``os`` or ``builtins.eval``);
- ``TFOpLambda`` layers, which call a TensorFlow function chosen by name (``keras.tf-op``).

HDF5 files are opened with h5py from memory; only root attributes and the object tree's link
and attribute metadata are read, never a dataset's data. A configuration that cannot be read
(bad JSON, too large, too deep, missing) makes the scan inconclusive.
"""

from __future__ import annotations

import binascii
import json
import zipfile
import zlib
from typing import Any

from trojanscope.scan.findings import FileReport
from trojanscope.scan.limits import Limits
from trojanscope.scan.policy import classify

#: Packages whose classes Keras itself resolves and imports (Keras 3 restricts module imports
#: to these); anything else in a ``module`` field is code the loader has to find elsewhere.
_KERAS_PACKAGES = (
    "keras",
    "tf_keras",
    "tensorflow.keras",
    "tensorflow.python.keras",
    "keras_hub",
    "keras_nlp",
    "keras_cv",
)
_BUILTIN_MODULES = frozenset({"builtins", "__builtin__"})
#: Keys of a training / compile configuration whose strings name losses and metrics.
_TRAINING_KEYS = frozenset({"loss", "metrics", "weighted_metrics"})
#: TensorFlow namespaces and names a TFOpLambda could call that run Python or touch files.
_RISKY_TF_NAMESPACES = ("io.", "raw_ops.", "gfile.", "compat.v1.gfile.", "summary.", "debugging.")
_RISKY_TF_NAMES = ("py_func", "py_function", "numpy_function", "read_file", "write_file")
_MAX_DEPTH = 512  # nesting of a configuration walked (Keras writes a few dozen levels)
_MAX_PER_RULE = 50  # findings of one rule per file; the rest are counted
_MAX_HDF5_OBJECTS = 200_000  # links visited in an HDF5 file
_MAX_ATTR_BYTES = 1 << 20  # attributes other than the configurations


def check_keras_archive(
    archive: zipfile.ZipFile, report: FileReport, limits: Limits, declared: bool = True
) -> None:
    """The model configuration of a Keras v3 archive (``config.json``; ``metadata.json`` as
    metadata); the members themselves, ``model.weights.h5`` included, are scanned by content.
    Keras' loader builds the model from ``config.json`` before it looks for anything else, so
    a zip that is not ``declared`` a Keras archive by its other members is checked too when
    its ``config.json`` is a Keras model configuration."""
    config = _zip_json(archive, "config.json", report, limits, quiet=not declared)
    if config is None:
        return
    if not declared and not _is_model_config(config):
        return  # another library's config.json (Hugging Face, ...): read as JSON already
    report.metadata.setdefault("format_detail", "Keras v3 archive")
    scratch = FileReport(report.location, "json")
    metadata = _zip_json(archive, "metadata.json", scratch, limits, quiet=True)
    if isinstance(metadata, dict):
        for key in ("keras_version", "date_saved"):
            if isinstance(metadata.get(key), str):
                report.metadata[key] = metadata[key][:100]
    check_config(config, report, "config.json")


def check_hdf5(data: bytes | memoryview, report: FileReport, limits: Limits) -> None:
    """An HDF5 file (legacy Keras ``.h5``, Keras 3 ``model.weights.h5``, any arrays): the root
    attributes ``model_config`` / ``training_config`` checked like a Keras configuration,
    ``keras_version`` / ``backend`` as metadata, links and PyTables object arrays as
    findings. Dataset contents are never read: they are arrays, inert for every loader
    except the object arrays reported here."""
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        report.incomplete = "unsupported format (HDF5: h5py is not installed)"
        return
    from trojanscope.scan.scanner import _as_file  # reads a memory map in place, no copy

    try:
        with h5py.File(_as_file(data), "r") as handle:
            _check_hdf5_file(handle, report, limits)
    except Exception as exc:  # noqa: BLE001 - h5py raises many types on a broken file
        report.incomplete = f"unreadable HDF5 file ({type(exc).__name__}: {exc})"


# -- configurations ------------------------------------------------------------------------


def check_config(document: Any, report: FileReport, where: str, training: bool = False) -> None:
    """Walk a Keras configuration (v3 ``config.json`` or a legacy ``model_config`` /
    ``training_config``) with an explicit stack: no recursion, bounded depth."""
    if not training and not _is_model_config(document):
        report.incomplete = f"{where} is not a Keras model configuration"
        return
    if not training and isinstance(document.get("class_name"), str):
        report.metadata.setdefault("keras_model", document["class_name"][:100])
    walker = _Walker(report, where)
    walker.walk(document)
    if walker.suppressed:
        key = "keras_findings_not_listed"
        report.metadata[key] = report.metadata.get(key, 0) + walker.suppressed


class _Walker:
    """One pass over a parsed configuration, reporting into ``report``."""

    def __init__(self, report: FileReport, where: str) -> None:
        self.report, self.where = report, where
        self.counts: dict[str, int] = {}
        self.suppressed = 0
        self.custom: set[str] = set()  # package>name values already reported

    def add(self, rule: str, severity: Any, message: str, **detail: Any) -> None:
        """A finding, at most ``_MAX_PER_RULE`` of each rule (a file of a million Lambda layers
        does not make a million-line report)."""
        self.counts[rule] = self.counts.get(rule, 0) + 1
        if self.counts[rule] > _MAX_PER_RULE:
            self.suppressed += 1
            return
        self.report.add(rule, severity, f"{self.where}: {message}", **detail)

    def walk(self, root: Any) -> None:
        # (node, depth, inside a Lambda layer, inside loss/metrics names)
        stack: list[tuple[Any, int, bool, bool]] = [(root, 0, False, False)]
        too_deep = False
        while stack:
            node, depth, in_lambda, in_names = stack.pop()
            if depth > _MAX_DEPTH:
                too_deep = True
                continue
            if isinstance(node, dict):
                in_lambda = self.visit(node, in_lambda) or in_lambda
                for key, value in node.items():
                    if isinstance(value, dict | list):
                        names = in_names or key in _TRAINING_KEYS
                        stack.append((value, depth + 1, in_lambda, names))
                    elif isinstance(value, str):
                        self.string(value, in_lambda, in_names or key in _TRAINING_KEYS)
            elif isinstance(node, list):
                for value in node:
                    if isinstance(value, dict | list):
                        stack.append((value, depth + 1, in_lambda, in_names))
                    elif isinstance(value, str):
                        self.string(value, in_lambda, in_names)
        if too_deep:
            self.report.incomplete = (
                f"{self.where} is nested deeper than {_MAX_DEPTH} levels: not fully checked"
            )

    def visit(self, node: dict[str, Any], in_lambda: bool) -> bool:
        """Check one object of the configuration; True if it is a Lambda layer."""
        cls = _text(node.get("class_name"))
        module = _text(node.get("module"))
        registered = _text(node.get("registered_name"))
        label = _label(node, cls)
        if cls == "Lambda":
            self.add(
                "keras.lambda-layer",
                "high",
                f"Lambda layer {label}: Keras rebuilds its Python function from the file "
                f"({_lambda_kind(node)}) and runs it",
                layer=label,
            )
            return True
        if cls == "__lambda__" and not in_lambda:
            self.add(
                "keras.lambda-function",
                "high",
                f"serialized Python function (__lambda__) in {label}: loading runs its bytecode",
            )
        if cls in ("TFOpLambda", "SlicingOpLambda"):
            function = _text(_config(node).get("function")) or "?"
            risky = function.startswith(_RISKY_TF_NAMESPACES) or any(
                name in function for name in _RISKY_TF_NAMES
            )
            self.add(
                "keras.tf-op",
                "high" if risky else "medium",
                f"{cls} layer {label} calls TensorFlow function {function} by name",
                function=function,
            )
        reasons: list[str] = []
        if module is not None and not _is_keras(module):
            named = _function_name(node, cls)
            if module in _BUILTIN_MODULES and cls == "function":
                if named is not None and ">" in named and not _keras_registered(named):
                    reasons.append(f"custom function {named}")
                    self.custom.add(named)
                elif named is not None and classify(module, named) == "dangerous":
                    self._dangerous(module, named, label)
            elif classify(module, named or "") == "dangerous":
                self._dangerous(module, named or "", label)
            elif not in_lambda:  # a legacy Lambda's own module: the Lambda finding says it
                reasons.append(f"module {module}")
        if registered is not None and ">" in registered and not _keras_registered(registered):
            reasons.append(f"registered name {registered}")
        if cls is not None and ">" in cls and not _keras_registered(cls):
            reasons.append(f"class {cls}")
        if reasons:
            self.add(
                "keras.custom-object",
                "medium",
                f"{label} names {', '.join(dict.fromkeys(reasons))}: loading needs that "
                "Python code (older Keras versions import the module named in the file)",
                module=module,
                registered_name=registered,
            )
        return False

    def _dangerous(self, module: str, name: str, label: str) -> None:
        self.add(
            "keras.dangerous-import",
            "high",
            f"{label} names {module}.{name}: a Keras loader that imports it reaches code "
            "execution or the system",
            module=module,
            name=name,
        )

    def string(self, value: str, in_lambda: bool, in_names: bool) -> None:
        """A string value: marshalled bytecode anywhere, ``package>name`` among losses and
        metrics (legacy training configurations name custom objects that way)."""
        if not in_lambda and _is_marshal(value):
            self.add(
                "keras.lambda-function",
                "high",
                "serialized Python bytecode (base64 marshal data): a Keras loader rebuilds "
                "and runs the function",
            )
        if in_names and ">" in value and value not in self.custom and not _keras_registered(value):
            self.custom.add(value)
            self.add(
                "keras.custom-object",
                "medium",
                f"loss or metric {value[:100]} is a registered custom object: loading needs "
                "that Python code",
                registered_name=value[:100],
            )


def _is_model_config(document: Any) -> bool:
    """The shape of a serialized Keras object: ``{"class_name": ..., "config": ...}``."""
    return (
        isinstance(document, dict)
        and isinstance(document.get("class_name"), str)
        and "config" in document
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _config(node: dict[str, Any]) -> dict[str, Any]:
    config = node.get("config")
    return config if isinstance(config, dict) else {}


def _label(node: dict[str, Any], cls: str | None) -> str:
    """A short name for messages: the layer's name and class when known."""
    name = _text(_config(node).get("name")) or _text(node.get("name"))
    what = (cls or "object")[:80]
    return f"'{name[:80]}' ({what})" if name else what


def _lambda_kind(node: dict[str, Any]) -> str:
    function = _config(node).get("function")
    if isinstance(function, dict) and function.get("class_name") == "__lambda__":
        return "marshalled bytecode"
    if isinstance(function, list):
        return "marshalled bytecode"  # Keras 2: [base64 code, defaults, closure]
    kind = _text(_config(node).get("function_type"))
    return f"function type {kind}" if kind else "a function reference"


def _function_name(node: dict[str, Any], cls: str | None) -> str | None:
    """The name a ``module`` field goes with: a function's name for ``class_name:
    "function"`` (Keras 3), the ``function`` of a legacy Lambda config, else the class."""
    if cls == "function":
        return _text(node.get("config"))
    return _text(node.get("function")) or cls


def _is_keras(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in _KERAS_PACKAGES)


def _keras_registered(name: str) -> bool:
    """``package>Name`` registered by a Keras package itself."""
    return _is_keras(name.split(">", 1)[0])


def _is_marshal(value: str) -> bool:
    """A base64 string of a Python code object (what Keras' ``func_dump`` writes: marshal
    data starting with TYPE_CODE | FLAG_REF, 0xe3, which base64 renders as '4w')."""
    if len(value) < 24 or not value.startswith("4w"):
        return False
    try:
        head = binascii.a2b_base64(value[:24])
    except (binascii.Error, ValueError):
        return False
    return head[:1] == b"\xe3"


# -- reading ---------------------------------------------------------------------------------


def _zip_json(
    archive: zipfile.ZipFile, name: str, report: FileReport, limits: Limits, quiet: bool = False
) -> Any:
    """A JSON member of the archive, bounded by ``max_text_bytes``; None when it is missing,
    too large or not JSON (and the report inconclusive, unless ``quiet``)."""

    def fail(reason: str) -> None:
        if not quiet:
            report.incomplete = reason

    try:
        info = archive.getinfo(name)
    except KeyError:
        fail(f"Keras archive without {name}: the model configuration is not read")
        return None
    if info.file_size > limits.max_text_bytes:
        fail(f"{name} above {limits.max_text_bytes} bytes is not read")
        return None
    try:
        with archive.open(info) as stream:
            raw = stream.read(limits.max_text_bytes + 1)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as exc:
        fail(f"unreadable {name} ({exc})")
        return None
    if len(raw) > limits.max_text_bytes:
        fail(f"{name} above {limits.max_text_bytes} bytes is not read")
        return None
    scratch = FileReport(report.location, "json")
    document = _parse(raw, name, scratch)
    if scratch.incomplete:
        fail(scratch.incomplete)
    return document


def _parse(raw: bytes | str, where: str, report: FileReport) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        report.incomplete = f"{where} is nested too deeply to parse"
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        report.incomplete = f"{where} is not valid JSON ({exc})"
    return None


def _check_hdf5_file(handle: Any, report: FileReport, limits: Limits) -> None:
    attrs = handle.attrs
    keys = set(attrs.keys())
    for key in ("keras_version", "backend"):
        if key in keys:
            value = _attr_text(handle, key, _MAX_ATTR_BYTES, report)
            if value is not None:
                report.metadata[key] = value[:100]
    found = False
    for key, training in (("model_config", False), ("training_config", True)):
        if key not in keys:
            continue
        found = True
        text = _attr_text(handle, key, limits.max_text_bytes, report)
        document = _parse(text, key, report) if text is not None else None
        if document is not None:
            check_config(document, report, key, training=training)
    report.metadata["format_detail"] = (
        "Keras HDF5 model" if found else "HDF5 (arrays only, no Keras configuration)"
    )
    _check_tree(handle, report)


def _attr_text(handle: Any, key: str, limit: int, report: FileReport) -> str | None:
    """A root attribute as text, refused above ``limit`` bytes (a fixed-size attribute is
    sized before it is read; a variable-length one can be no larger than the file)."""
    try:
        attr_id = handle.attrs.get_id(key)
        if attr_id.get_storage_size() > limit:
            report.incomplete = f"HDF5 attribute {key} above {limit} bytes is not read"
            return None
        value = handle.attrs[key]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        report.incomplete = f"unreadable HDF5 attribute {key} ({exc})"
        return None
    if hasattr(value, "shape") and getattr(value, "size", 1) == 1:
        value = value.reshape(()).item() if value.shape else value.item()
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            report.incomplete = f"HDF5 attribute {key} is not UTF-8 text"
            return None
    if not isinstance(value, str):
        report.incomplete = f"HDF5 attribute {key} is not text"
        return None
    if len(value) > limit:
        report.incomplete = f"HDF5 attribute {key} above {limit} bytes is not read"
        return None
    return value


def _check_tree(handle: Any, report: FileReport) -> None:
    """Links and datasets, by their metadata only: links to other files, datasets whose data
    lives in other files, PyTables object arrays (pickles that pandas / PyTables load)."""
    import h5py

    seen = 0
    datasets = 0

    def visit(name: str, link: Any) -> bool | None:
        nonlocal seen, datasets
        seen += 1
        if seen > _MAX_HDF5_OBJECTS:
            return True  # stop
        if isinstance(link, h5py.ExternalLink):
            report.add(
                "hdf5.external-link",
                "medium",
                f"link {name[:200]} points into another file, {link.filename[:200]}: a "
                "loader following it reads that file",
                target=link.filename[:200],
            )
            return None
        if not isinstance(link, h5py.HardLink):
            return None
        obj = handle.get(name)
        if isinstance(obj, h5py.Dataset):
            datasets += 1
            _check_dataset(name, obj, report)
        return None

    handle.visititems_links(visit)
    report.metadata["hdf5_datasets"] = datasets
    if seen > _MAX_HDF5_OBJECTS:
        report.incomplete = f"more than {_MAX_HDF5_OBJECTS} HDF5 links: not all were checked"


def _check_dataset(name: str, dataset: Any, report: FileReport) -> None:
    external = dataset.external
    if external or dataset.is_virtual:
        files = sorted({str(entry[0])[:200] for entry in external or []})
        report.add(
            "hdf5.external-data",
            "medium",
            f"dataset {name[:200]} takes its data from other files"
            + (f" ({', '.join(files[:5])})" if files else " (virtual dataset)")
            + ": reading it reads those files",
            files=files[:20],
        )
    pseudo = dataset.attrs.get("PSEUDOATOM") if "PSEUDOATOM" in dataset.attrs else None
    if isinstance(pseudo, bytes):
        pseudo = pseudo.decode("latin-1")
    if pseudo == "object":
        report.add(
            "hdf5.pickled-objects",
            "medium",
            f"dataset {name[:200]} is a PyTables object array: pandas / PyTables unpickle it "
            "on read, and its pickles are not scanned",
        )
        report.incomplete = report.incomplete or f"pickled objects in {name[:200]} not scanned"

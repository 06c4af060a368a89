"""Export to and import from the BackdoorDefects4NN layout, the reference database's folders.

::

    DIR/<dataset>_fault/
        <arch>_<attack>/<arch>_<attack>_level_<level>_top_<NNN>/
            attack_model.pt                   the defect's state dict
            poison_path.pt                    infected neurons: layer -> indices
            poison_path.txt                   the same, for people
            infected_neuron_contribution.pt   per infected neuron: contribution, shift, ...
            defect_record.pt                  the catalog entries (trojanscope's addition)
        <dataset>_attack_data/<attack>/attack_data.pt        triggers and triggered test data
        <dataset>_clean_model/<arch>_<key16>/clean_model.pt  the clean models (our addition)

Every file holds only tensors, strings, numbers, None, lists and dicts, so it loads with
``torch.load(path, weights_only=True)``; docs/bdefects4nn.md gives each file's keys, dtypes
and shapes. An import scans every file of the tree with trojanscope's own scanner before
anything is loaded, loads exactly the bytes it scanned, checks each artifact against the sha256
its record names and records each defect with ``Catalog.record`` (row and artifacts in one
transaction), so an interrupted import leaves no half-entry and a second run adds nothing.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, String, Text

from trojanscope.database.catalog import Catalog, content_key
from trojanscope.database.schema import Base, CleanModel, Defect, InfectedNeuronRow
from trojanscope.database.store import Blob
from trojanscope.device import CPU
from trojanscope.errors import CatalogError, CorruptArtifactError, TrojanscopeError
from trojanscope.fileio import replace_dir_atomic, write_atomic
from trojanscope.models.base import ARCHITECTURES
from trojanscope.neurons import NeuronRef, all_neurons
from trojanscope.workflows.defects import find_by_key, get_defect_by_key

#: What ``defect_record.pt`` says it is, and the version of its layout.
FORMAT = "trojanscope/bdefects4nn"
VERSION = 1
MODEL_FILE = "attack_model.pt"
PATH_FILE = "poison_path.pt"
PATH_TEXT = "poison_path.txt"
CONTRIBUTION_FILE = "infected_neuron_contribution.pt"
RECORD_FILE = "defect_record.pt"
ATTACK_DATA_FILE = "attack_data.pt"
CLEAN_FILE = "clean_model.pt"
#: The files an import needs in every case folder.
CASE_FILES = (RECORD_FILE, MODEL_FILE, PATH_FILE, CONTRIBUTION_FILE)
#: A name that may be one component of a folder name: ``_`` separates components.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]*")
#: Columns never carried over: row ids, and the provenance an import sets itself.
_SKIP = frozenset({"id", "clean_model_id", "provenance"})
#: ``carrying`` of a neuron recorded before the flag existed.
CARRYING_UNKNOWN = -1


def fault_dir(dataset: str) -> str:
    return f"{dataset}_fault"


def attack_data_dir(dataset: str) -> str:
    return f"{dataset}_attack_data"


def clean_model_dir(dataset: str) -> str:
    return f"{dataset}_clean_model"


def case_name(arch: str, attack: str, level: str, index: int, width: int = 3) -> str:
    """``<arch>_<attack>_level_<level>_top_<NNN>``: NNN is the defect's place in its cell."""
    return f"{arch}_{attack}_level_{level}_top_{index:0{width}d}"


# -- export ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedCase:
    """One defect written: its catalog id, key and status, and its folder under the export."""

    defect_id: int
    key: str
    status: str
    path: str


@dataclass
class ExportResult:
    out: Path
    cases: list[ExportedCase] = field(default_factory=list)
    clean_models: int = 0
    files: int = 0


def export_layout(catalog: Catalog, out: Path, defects: list[Defect]) -> ExportResult:
    """Write ``defects`` (with their clean models, triggers and triggered test data) under
    ``out`` in the BackdoorDefects4NN layout.

    The tree is built in a temporary folder beside ``out`` and renamed into place at the end,
    so an interrupted export leaves no half tree; ``out`` must not exist or be an empty folder.
    """
    _check_export_target(out)
    result = ExportResult(out)
    try:
        with replace_dir_atomic(out) as tmp:  # an empty folder at ``out`` is replaced too
            _write_tree(catalog, tmp, defects, result)
    except OSError as exc:
        raise TrojanscopeError(f"cannot write the export {out}: {exc.strerror or exc}.") from None
    return result


def _check_export_target(out: Path) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise TrojanscopeError(f"cannot export to {out}: it exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()):
        raise TrojanscopeError(
            f"cannot export to {out}: the folder is not empty (choose a new or empty folder)."
        )
    if not out.parent.is_dir():
        raise TrojanscopeError(f"cannot export to {out}: folder {out.parent} does not exist.")


def _write_tree(catalog: Catalog, root: Path, defects: list[Defect], result: ExportResult) -> None:
    cells: dict[tuple[str, str, str, str], list[Defect]] = {}
    for row in sorted(defects, key=lambda d: d.id):
        clean = row.clean_model
        for what, name in (
            ("data set", clean.dataset),
            ("architecture", clean.arch),
            ("attack", row.attack),
            ("level", row.level),
        ):
            if not SAFE_NAME.fullmatch(name):
                raise TrojanscopeError(
                    f"defect {row.id} cannot be exported: its {what} name '{name}' does not fit "
                    "the layout's folder names (letters, digits, '.', '+', '-')."
                )
        cells.setdefault((clean.dataset, clean.arch, row.attack, row.level), []).append(row)
    attack_data: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    written_clean: set[str] = set()
    for (dataset, arch, attack, level), rows in cells.items():
        width = max(3, len(str(len(rows) - 1)))
        for index, row in enumerate(rows):
            rel = Path(
                fault_dir(dataset), f"{arch}_{attack}", case_name(arch, attack, level, index, width)
            )
            result.files += _write_case(catalog, root / rel, row)
            result.cases.append(ExportedCase(row.id, row.key, row.status, rel.as_posix()))
            data = attack_data.setdefault((dataset, attack), {"triggers": {}, "poisoned_test": {}})
            data["triggers"][row.trigger_sha256] = _exact(catalog, row.trigger_sha256)
            data["poisoned_test"][row.poisoned_test_sha256] = _exact(
                catalog, row.poisoned_test_sha256
            )
            clean = row.clean_model
            if clean.key not in written_clean:
                written_clean.add(clean.key)
                folder = root / fault_dir(dataset) / clean_model_dir(dataset)
                _save(
                    folder / clean_folder(clean.arch, clean.key) / CLEAN_FILE,
                    _exact(catalog, clean.weights_sha256),
                )
                result.files += 1
    for (dataset, attack), data in attack_data.items():
        path = root / fault_dir(dataset) / attack_data_dir(dataset) / attack / ATTACK_DATA_FILE
        _save(
            path,
            {"format": FORMAT, "version": VERSION, "dataset": dataset, "attack": attack, **data},
        )
        result.files += 1
    result.clean_models = len(written_clean)


def clean_folder(arch: str, key: str) -> str:
    """The folder of a clean model under ``<dataset>_clean_model``."""
    return f"{arch}_{key[:16]}"


def _write_case(catalog: Catalog, folder: Path, row: Defect) -> int:
    """The files of one defect; returns how many were written."""
    _save(folder / MODEL_FILE, _exact(catalog, row.weights_sha256))
    path: dict[str, list[int]] = {}
    for n in row.infected:
        path.setdefault(n.layer, []).append(n.index)
    _save(
        folder / PATH_FILE,
        {layer: torch.tensor(ix, dtype=torch.int64) for layer, ix in path.items()},
    )
    lines = [f"# infected neurons of {folder.name}, per layer, in injection order"]
    lines += [f"{layer}: {', '.join(map(str, ix))}" for layer, ix in path.items()]
    (folder / PATH_TEXT).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / PATH_TEXT, ("\n".join(lines) + "\n").encode())
    infected = row.infected
    _save(
        folder / CONTRIBUTION_FILE,
        {
            "layer": [n.layer for n in infected],
            "index": torch.tensor([n.index for n in infected], dtype=torch.int64),
            "rank": torch.tensor([n.rank for n in infected], dtype=torch.int64),
            "contribution": torch.tensor([n.contribution for n in infected], dtype=torch.float64),
            "activation_shift": torch.tensor(
                [n.activation_shift for n in infected], dtype=torch.float64
            ),
            "carrying": torch.tensor(
                [CARRYING_UNKNOWN if n.carrying is None else int(n.carrying) for n in infected],
                dtype=torch.int8,
            ),
        },
    )
    _save(
        folder / RECORD_FILE,
        {
            "format": FORMAT,
            "version": VERSION,
            "clean_model": _columns(row.clean_model),
            "defect": _columns(row),
        },
    )
    return 5


def _columns(row: Base) -> dict[str, Any]:
    """A row's columns (but ids and provenance) as plain values; times as ISO 8601 text."""
    values: dict[str, Any] = {}
    for column in row.__table__.columns:
        if column.name in _SKIP:
            continue
        value = getattr(row, column.name)
        values[column.name] = value.isoformat() if isinstance(value, datetime) else value
    return values


def _exact(catalog: Catalog, sha256: str) -> dict[str, torch.Tensor]:
    """The tensors of an artifact, checked to encode back to the same bytes (an import
    re-encodes them and must find the same sha256)."""
    tensors = catalog.store.get(sha256)
    if catalog.store.encode(tensors).sha256 != sha256:
        raise CatalogError(
            f"artifact {sha256[:12]} carries metadata the layout cannot hold; it cannot be "
            "exported exactly."
        )
    return tensors


def _save(path: Path, obj: object) -> None:
    """``obj`` as a torch file, written atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buffer.getvalue())


# -- import ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A case folder of the layout, with the names its path gives."""

    path: Path
    dataset: str
    arch: str  # the published architecture name
    attack: str
    level: str


@dataclass(frozen=True)
class ImportedCase:
    """One case folder: the defect it is in the catalog, and whether this import added it."""

    path: str
    defect_id: int
    key: str
    imported: bool


@dataclass
class ImportResult:
    source: Path
    cases: list[ImportedCase] = field(default_factory=list)
    clean_models_imported: int = 0


def parse_arch_map(items: Iterable[str]) -> dict[str, str]:
    """``PUBLISHED=OURS`` pairs, each checked to name a registered architecture."""
    mapping: dict[str, str] = {}
    for item in items:
        published, sep, ours = item.partition("=")
        if not sep or not published or not ours:
            raise TrojanscopeError(f"--arch-map '{item}' is not of the form PUBLISHED=OURS.")
        if ours not in ARCHITECTURES.names():
            raise TrojanscopeError(
                f"--arch-map '{item}' maps to '{ours}', which is no registered architecture "
                f"(registered: {', '.join(ARCHITECTURES.names())})."
            )
        if mapping.get(published, ours) != ours:
            raise TrojanscopeError(f"--arch-map maps '{published}' twice.")
        mapping[published] = ours
    return mapping


def scan_tree(root: Path) -> dict[str, str]:
    """Scan every file under ``root`` with trojanscope's scanner and refuse the tree unless
    every one of them is clean; returns the sha256 of each file by its real path."""
    from trojanscope.scan.findings import SEVERITY_RANK
    from trojanscope.scan.scanner import Scanner

    reports = Scanner(hashes=True).scan_directory(root)
    order = {"dangerous": 0, "suspicious": 1, "error": 2, "inconclusive": 3}
    bad = sorted((r for r in reports if r.verdict != "clean"), key=lambda r: order[r.verdict])
    if bad:
        first = bad[0]
        files = {r.location.split("!")[0] for r in bad}
        worst = max(first.findings, key=lambda f: SEVERITY_RANK[f.severity], default=None)
        why = (
            f"{worst.rule}: {worst.message}"
            if worst is not None and first.verdict in ("dangerous", "suspicious")
            else first.error or first.incomplete or first.verdict
        )
        more = f" and {len(files) - 1} more file(s) were refused too" if len(files) > 1 else ""
        raise TrojanscopeError(
            f"refused {first.location.split('!')[0]}: the scanner found it {first.verdict} "
            f"({why.rstrip('.')}){more}; nothing was loaded or imported."
        )
    return {
        os.path.realpath(r.location): r.sha256 or ""
        for r in reports
        if "!" not in r.location and r.sha256 is not None
    }


def find_cases(root: Path) -> list[Case]:
    """The case folders of the layout under ``root``, in name order."""
    if not root.is_dir():
        raise TrojanscopeError(f"{root} is not a folder.")
    cases: list[Case] = []
    for fault in sorted(p for p in root.iterdir() if p.is_dir() and p.name.endswith("_fault")):
        dataset = fault.name.removesuffix("_fault")
        for cell in sorted(p for p in fault.iterdir() if p.is_dir()):
            if cell.name in (attack_data_dir(dataset), clean_model_dir(dataset)):
                continue
            arch, sep, attack = cell.name.rpartition("_")
            if not sep or not arch or not attack:
                raise TrojanscopeError(
                    f"{cell} is not a folder of the layout (expected <arch>_<attack>)."
                )
            pattern = re.compile(re.escape(cell.name) + r"_level_([A-Za-z0-9.+-]+)_top_\d+")
            for case in sorted(p for p in cell.iterdir() if p.is_dir()):
                found = pattern.fullmatch(case.name)
                if found is None:
                    raise TrojanscopeError(
                        f"{case} is not a case folder of the layout (expected "
                        f"{cell.name}_level_<level>_top_<NNN>)."
                    )
                cases.append(Case(case, dataset, arch, attack, found.group(1)))
    if not cases:
        raise TrojanscopeError(
            f"no defect in the BackdoorDefects4NN layout under {root} (expected "
            "<dataset>_fault/<arch>_<attack>/<arch>_<attack>_level_<level>_top_<NNN>/)."
        )
    return cases


def resolve_archs(cases: list[Case], arch_map: Mapping[str, str]) -> dict[str, str]:
    """Our architecture for each published name the cases use (``arch_map``, else the same
    name if it is registered)."""
    published = {c.arch for c in cases}
    for name in arch_map:
        if name not in published:
            raise TrojanscopeError(
                f"--arch-map names '{name}', which no defect of the tree uses (it uses "
                f"{', '.join(sorted(published))})."
            )
    resolved: dict[str, str] = {}
    for case in cases:
        ours = arch_map.get(case.arch, case.arch)
        if ours not in ARCHITECTURES.names():
            raise TrojanscopeError(
                f"architecture '{case.arch}' of {case.path} is not registered; map it with "
                f"--arch-map {case.arch}=NAME (registered: {', '.join(ARCHITECTURES.names())})."
            )
        resolved[case.arch] = ours
    return resolved


def import_layout(
    catalog: Catalog,
    root: Path,
    arch_map: Mapping[str, str] | None = None,
    step: Callable[[str], None] | None = None,
) -> ImportResult:
    """Import every case under ``root`` into ``catalog`` (see the module); ``step`` is told
    about each case before it is imported."""
    cases = find_cases(root)
    archs = resolve_archs(cases, arch_map or {})
    scanned = scan_tree(root)  # before anything is loaded
    reader = _Reader(root, scanned)
    result = ImportResult(root)
    for case in cases:
        if step is not None:
            step(case.path.name)
        result.cases.append(_import_case(catalog, reader, case, archs[case.arch], result))
    return result


class _Reader:
    """Loads files of the tree: exactly the bytes the scan saw, with weights_only=True."""

    def __init__(self, root: Path, scanned: dict[str, str]) -> None:
        self.root = root
        self.scanned = scanned
        self._cache: dict[Path, Any] = {}

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def load(self, path: Path, cache: bool = False) -> Any:
        if path in self._cache:
            return self._cache[path]
        if not path.is_file():
            raise CorruptArtifactError(f"{path} is missing from the layout.")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CorruptArtifactError(f"cannot read {path}: {exc.strerror or exc}.") from None
        sha = hashlib.sha256(data).hexdigest()
        if self.scanned.get(os.path.realpath(path)) != sha:
            raise CorruptArtifactError(
                f"{path} changed after it was scanned; it was not loaded (run the import again)."
            )
        try:
            obj = torch.load(io.BytesIO(data), map_location=CPU, weights_only=True)
        except Exception as exc:  # torch raises many types on bad or refused files
            detail = str(exc).strip().split("\n")[0].rstrip(".")[:200] or type(exc).__name__
            raise CorruptArtifactError(
                f"{path} does not load with torch.load(weights_only=True) ({detail})."
            ) from None
        if cache:
            self._cache[path] = obj
        return obj


def _import_case(
    catalog: Catalog, reader: _Reader, case: Case, arch: str, result: ImportResult
) -> ImportedCase:
    folder = case.path
    for name in CASE_FILES:
        if not (folder / name).is_file():
            more = (
                " (trojanscope imports the layouts it exports: the reference's own release lacks"
                " the clean model and metrics a catalog entry needs)"
                if name == RECORD_FILE
                else ""
            )
            raise CorruptArtifactError(f"{folder} has no {name}{more}.")
    record_path = folder / RECORD_FILE
    record = reader.load(record_path)
    if (
        not isinstance(record, dict)
        or record.get("format") != FORMAT
        or not isinstance(record.get("clean_model"), dict)
        or not isinstance(record.get("defect"), dict)
    ):
        raise CorruptArtifactError(f"{record_path} is not a trojanscope defect record.")
    if record.get("version") != VERSION:
        raise CorruptArtifactError(
            f"{record_path} has layout version {record.get('version')!r}; this trojanscope "
            f"reads version {VERSION}."
        )
    clean_fields = _fields(CleanModel, record["clean_model"], record_path)
    defect_fields = _fields(Defect, record["defect"], record_path)
    for what, named, given in (
        ("architecture", case.arch, clean_fields["arch"]),
        ("attack", case.attack, defect_fields["attack"]),
        ("level", case.level, defect_fields["level"]),
        ("data set", case.dataset, clean_fields["dataset"]),
    ):
        if named != given:
            raise CorruptArtifactError(
                f"{record_path} names {what} '{given}' but its folder says '{named}'."
            )
    published_key = clean_fields["key"]
    if arch != clean_fields["arch"]:  # mapped: another identity than the exported one
        clean_fields["arch"] = arch
        clean_fields["key"] = content_key("bdefects4nn", published_key, arch)
        defect_fields["key"] = content_key("bdefects4nn", defect_fields["key"], clean_fields["key"])
    present = get_defect_by_key(catalog, defect_fields["key"])
    if present is not None:
        return ImportedCase(reader.rel(folder), present.id, present.key, False)

    state = _state_dict(reader.load(folder / MODEL_FILE), folder / MODEL_FILE)
    model = _fit(state, clean_fields, folder / MODEL_FILE)
    weights = _blob(catalog, state, defect_fields["weights_sha256"], folder / MODEL_FILE, "weights")
    infected = _infected(reader, folder, model)
    data_path = folder.parents[1] / attack_data_dir(case.dataset) / case.attack / ATTACK_DATA_FILE
    data = reader.load(data_path, cache=True)
    trigger = _entry(catalog, data, "triggers", defect_fields["trigger_sha256"], data_path)
    poisoned = _entry(
        catalog, data, "poisoned_test", defect_fields["poisoned_test_sha256"], data_path
    )
    clean_id = _clean_model(
        catalog,
        reader,
        folder.parents[1] / clean_model_dir(case.dataset),
        clean_fields,
        published_key,
        case,
        record_path,
        result,
    )
    files = [record_path, folder / MODEL_FILE, folder / PATH_FILE, folder / CONTRIBUTION_FILE]
    if (folder / PATH_TEXT).is_file():
        files.append(folder / PATH_TEXT)
    row = Defect(
        **defect_fields,
        clean_model_id=clean_id,
        provenance=_provenance(reader, folder, [*files, data_path]),
    )
    row.infected = infected
    if catalog.record(row, [weights, trigger, poisoned]):
        return ImportedCase(reader.rel(folder), row.id, row.key, True)
    raced = get_defect_by_key(catalog, defect_fields["key"])  # another import got there first
    if raced is None:
        raise CatalogError(f"cannot record the defect of {folder} in {catalog.root}.")
    return ImportedCase(reader.rel(folder), raced.id, raced.key, False)


def _clean_model(
    catalog: Catalog,
    reader: _Reader,
    folder: Path,
    fields: dict[str, Any],
    published_key: str,
    case: Case,
    record_path: Path,
    result: ImportResult,
) -> int:
    """The id of the defect's clean model, imported now if the catalog lacks it."""
    found = find_by_key(catalog, CleanModel, fields["key"])
    if found is not None:
        return found.id
    if not re.fullmatch(r"[0-9a-f]{64}", published_key):
        raise CorruptArtifactError(f"{record_path} names a malformed clean model key.")
    path = folder / clean_folder(case.arch, published_key) / CLEAN_FILE
    state = _state_dict(reader.load(path), path)
    _fit(state, fields, path)
    blob = _blob(catalog, state, fields["weights_sha256"], path, "clean weights")
    row = CleanModel(**fields, provenance=_provenance(reader, path.parent, [path, record_path]))
    if catalog.record(row, [blob]):
        result.clean_models_imported += 1
        return row.id
    raced = find_by_key(catalog, CleanModel, fields["key"])
    if raced is None:
        raise CatalogError(f"cannot record the clean model of {path} in {catalog.root}.")
    return raced.id


def _provenance(reader: _Reader, source: Path, files: list[Path]) -> dict[str, Any]:
    return {
        "format": "bdefects4nn",
        "source": str(source.resolve()),
        "files": {reader.rel(p): reader.scanned[os.path.realpath(p)] for p in files},
    }


def _fields(table: type[Base], given: dict[str, Any], path: Path) -> dict[str, Any]:
    """The columns of ``table`` from a record, each checked against its column's type."""
    values: dict[str, Any] = {}
    for column in table.__table__.columns:
        name = column.name
        if name in _SKIP:
            continue
        if name not in given or given[name] is None:
            if column.nullable or column.default is not None:
                continue
            raise CorruptArtifactError(f"{path} lacks the field '{name}' of a {table.__name__}.")
        value = given[name]
        kind = column.type
        ok: bool
        if isinstance(kind, Float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(kind, Boolean):
            ok = isinstance(value, bool)
        elif isinstance(kind, Integer):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(kind, String | Text):
            ok = isinstance(value, str)
        elif isinstance(kind, JSON):
            ok = isinstance(value, dict)
        elif isinstance(kind, DateTime):
            try:
                value, ok = datetime.fromisoformat(value), True
            except (TypeError, ValueError):
                ok = False
        else:  # pragma: no cover - a column type added without teaching the import
            ok = False
        if not ok:
            raise CorruptArtifactError(
                f"{path} has a malformed field '{name}' ({type(given[name]).__name__})."
            )
        values[name] = value
    return values


def _state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise CorruptArtifactError(f"{path} holds no state dict of tensors.")
    return obj


def _fit(state: dict[str, torch.Tensor], clean: dict[str, Any], path: Path) -> torch.nn.Module:
    """The network of the clean model's architecture with ``state`` loaded, or one sentence
    saying why the state dict does not fit it."""
    shape = clean["input_shape"]
    try:
        dims = [int(shape[k]) for k in ("channels", "height", "width", "num_classes")]
    except (KeyError, TypeError, ValueError):
        raise CorruptArtifactError(f"{path}: its record has a malformed input shape.") from None
    arch, params = clean["arch"], clean["arch_params"]
    model = ARCHITECTURES.create(arch, **params).build(dims[0], dims[3], min(dims[1], dims[2]))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        k
        for k in expected
        if k in state
        and (state[k].shape != expected[k].shape or state[k].dtype != expected[k].dtype)
    ]
    if missing or unexpected or misshaped:
        first = (missing or unexpected or misshaped)[0]
        raise CorruptArtifactError(
            f"{path} does not fit architecture '{arch}' {params}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected and {len(misshaped)} mis-shaped tensors (first: "
            f"{first})."
        )
    model.load_state_dict(state, strict=True)
    return model


def _blob(
    catalog: Catalog, tensors: dict[str, torch.Tensor], sha256: str, path: Path, what: str
) -> Blob:
    """``tensors`` encoded as a catalog artifact, checked to be the one the record names."""
    blob = catalog.store.encode(tensors)
    if blob.sha256 != sha256:
        raise CorruptArtifactError(
            f"{path} does not hold the {what} its record names (sha256 {blob.sha256[:12]}, "
            f"recorded {str(sha256)[:12]})."
        )
    return blob


def _entry(catalog: Catalog, data: Any, section: str, sha256: str, path: Path) -> Blob:
    """A trigger or triggered test set of ``attack_data.pt``, by the sha256 the record names."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CorruptArtifactError(f"{path} is not trojanscope attack data.")
    entries = data.get(section)
    tensors = entries.get(sha256) if isinstance(entries, dict) else None
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
    ):
        raise CorruptArtifactError(f"{path} lacks the {section} entry {str(sha256)[:12]}.")
    return _blob(catalog, tensors, sha256, path, section.replace("_", " "))


def _infected(reader: _Reader, folder: Path, model: torch.nn.Module) -> list[InfectedNeuronRow]:
    """The infected neurons of a case, checked against its poison path and the network."""
    path = folder / CONTRIBUTION_FILE
    table = reader.load(path)
    columns = ("index", "rank", "contribution", "activation_shift", "carrying")
    if not isinstance(table, dict) or not isinstance(table.get("layer"), list):
        raise CorruptArtifactError(f"{path} is not a table of infected neurons.")
    n = len(table["layer"])
    if not all(isinstance(x, str) for x in table["layer"]) or not all(
        isinstance(table.get(c), torch.Tensor) and tuple(table[c].shape) == (n,) for c in columns
    ):
        raise CorruptArtifactError(f"{path} is not a table of infected neurons.")
    lists = {c: table[c].tolist() for c in columns}
    rows = [
        InfectedNeuronRow(
            layer=table["layer"][i],
            index=int(lists["index"][i]),
            rank=int(lists["rank"][i]),
            contribution=float(lists["contribution"][i]),
            activation_shift=float(lists["activation_shift"][i]),
            carrying=None
            if lists["carrying"][i] == CARRYING_UNKNOWN
            else bool(lists["carrying"][i]),
        )
        for i in range(n)
    ]
    eligible = set(all_neurons(model))
    for row in rows:
        if NeuronRef(row.layer, row.index) not in eligible:
            raise CorruptArtifactError(
                f"{path} names neuron {row.layer}:{row.index}, which the network has not."
            )
    by_layer: dict[str, list[int]] = {}
    for row in rows:
        by_layer.setdefault(row.layer, []).append(row.index)
    poison_path = reader.load(folder / PATH_FILE)
    if (
        not isinstance(poison_path, dict)
        or {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in poison_path.items()}
        != by_layer
    ):
        raise CorruptArtifactError(
            f"{folder / PATH_FILE} does not name the neurons of {CONTRIBUTION_FILE}."
        )
    return rows

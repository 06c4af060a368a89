"""`db export --format bdefects4nn` and `db import`: the catalog written to and read from the
BackdoorDefects4NN layout (``trojanscope.workflows.bdefects4nn``), as the records the command
line prints."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from trojanscope.database.catalog import Catalog
from trojanscope.workflows.bdefects4nn import export_layout, import_layout, parse_arch_map
from trojanscope.workflows.records import (
    ExportedCase,
    ExportSummary,
    ImportedCase,
    ImportSummary,
)
from trojanscope.workflows.study import select_defects

FORMAT = "bdefects4nn"


def export_bdefects4nn(
    catalog: Catalog, out: Path, where: str | None = None, include_rejected: bool = False
) -> ExportSummary:
    """Write the selected defects (accepted ones unless ``include_rejected`` or ``where``
    names a status; never lifecycle links) under ``out`` in the BackdoorDefects4NN layout."""
    defects = [  # lifecycle links have no place in the reference layout (`db export ID` has)
        d
        for d in select_defects(
            catalog, where, default_status=None if include_rejected else "accepted"
        )
        if d.parent_id is None
    ]
    result = export_layout(catalog, out, defects)
    return ExportSummary(
        db=str(catalog.root),
        out=str(out),
        format=FORMAT,
        defects=len(result.cases),
        clean_models=result.clean_models,
        files=result.files,
        cases=[
            ExportedCase(defect_id=c.defect_id, key=c.key, status=c.status, path=c.path)
            for c in result.cases
        ],
    )


def import_bdefects4nn(
    catalog: Catalog,
    source: Path,
    arch_map: Iterable[str] = (),
    step: Callable[[str], None] | None = None,
) -> ImportSummary:
    """Import every defect of the layout under ``source`` (``arch_map``: ``PUBLISHED=OURS``
    pairs), scanning every file first; defects already in the catalog are kept as they are."""
    result = import_layout(catalog, source, parse_arch_map(arch_map), step)
    imported = sum(c.imported for c in result.cases)
    return ImportSummary(
        source=str(source),
        db=str(catalog.root),
        format=FORMAT,
        found=len(result.cases),
        imported=imported,
        present=len(result.cases) - imported,
        clean_models_imported=result.clean_models_imported,
        cases=[
            ImportedCase(path=c.path, defect_id=c.defect_id, key=c.key, imported=c.imported)
            for c in result.cases
        ],
    )

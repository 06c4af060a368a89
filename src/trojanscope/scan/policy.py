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

_NUMPY_SCALARS = [
    "bool",
    "bool_",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "longlong",
    "ulonglong",
    "float16",
    "float32",
    "float64",
    "longdouble",
    "complex64",
    "complex128",
    "clongdouble",
    "str_",
    "bytes_",
    "datetime64",
    "timedelta64",
]
_NUMPY_DTYPES = [
    "BoolDType",
    "Int8DType",
    "ByteDType",
    "UInt8DType",
    "UByteDType",
    "Int16DType",
    "ShortDType",
    "UInt16DType",
    "UShortDType",
    "Int32DType",
    "IntDType",
    "UInt32DType",
    "UIntDType",
    "Int64DType",
    "LongDType",
    "UInt64DType",
    "ULongDType",
    "LongLongDType",
    "ULongLongDType",
    "Float16DType",
    "Float32DType",
    "Float64DType",
    "LongDoubleDType",
    "Complex64DType",
    "Complex128DType",
    "CLongDoubleDType",
    "ObjectDType",
    "BytesDType",
    "StrDType",
    "VoidDType",
    "DateTime64DType",
    "TimeDelta64DType",
    "StringDType",
]
_SPARSE_FORMATS = ["coo", "csr", "csc", "bsr", "dia", "lil", "dok"]

#: Names real model and data files use, each with why calling it with arguments the file chooses
#: (REDUCE, NEWOBJ, INST, OBJ, BUILD) can neither run code nor reach the system. The test: every
#: callable it may call indirectly is itself an import the scanner classifies (an allowed name's
#: result is never a way to reach an unnamed callable), and it touches no file, process, network
#: or module but its own. Memory is not a criterion here: ``bytes(10**10)`` exhausts memory as
#: ``bytearray`` always could.
REASONS: dict[tuple[str, str], str] = {
    # -- harmless builtins (Python 2's __builtin__ spellings map here through _compat_pickle) --
    ("builtins", "len"): "returns the length an allowed object reports",
    ("builtins", "dict"): "builds a dict from a mapping or pairs of allowed values",
    ("builtins", "list"): "builds a list from an iterable of allowed values",
    ("builtins", "tuple"): "builds a tuple from an iterable of allowed values",
    ("builtins", "int"): "parses or converts a number (CPython caps int() at 4300 digits)",
    ("builtins", "float"): "parses or converts a number",
    ("builtins", "bool"): "truth value of an allowed object",
    ("builtins", "str"): "text of an allowed object, or bytes decoded by a stdlib codec",
    ("builtins", "bytes"): "protocols 0-2 write b'' as bytes(); builds bytes from ints or text",
    ("builtins", "object"): "protocol 0-1 plain objects name it as the base of "
    "copyreg._reconstructor; object() takes no arguments",
    ("builtins", "Ellipsis"): "a constant (slices in saved indexing configurations)",
    ("builtins", "NotImplemented"): "a constant",
    # -- standard-library value types --
    ("datetime", "datetime"): "value type rebuilt from its packed bytes and a tzinfo",
    ("datetime", "date"): "value type rebuilt from its packed bytes",
    ("datetime", "time"): "value type rebuilt from its packed bytes and a tzinfo",
    ("datetime", "timedelta"): "value type from days, seconds, microseconds",
    ("datetime", "timezone"): "fixed-offset tzinfo from a timedelta and a name",
    ("decimal", "Decimal"): "parses a decimal string (exponents are stored, never expanded)",
    ("uuid", "UUID"): "value type; pickles restore its 128-bit int through __setstate__",
    ("collections", "Counter"): "dict subclass counting an iterable of allowed values",
    ("argparse", "Namespace"): "sets its keyword arguments as its own attributes (training "
    "scripts save their arguments this way)",
    # -- NumPy array reconstruction --
    ("numpy.core._internal", "_reconstruct"): "pre-1.0 NumPy array pickles: "
    "ndarray.__new__(subtype, shape, dtype)",
    ("numpy.core.numeric", "_frombuffer"): "protocol-5 array pickles of NumPy 1.x: "
    "frombuffer(buf, dtype).reshape(shape)",
    ("numpy._core.numeric", "_frombuffer"): "protocol-5 array pickles of NumPy 2: "
    "frombuffer(buf, dtype).reshape(shape)",
    ("numpy", "matrix"): "ndarray subclass; from a string it parses numbers with "
    "ast.literal_eval only",
    ("numpy.matrixlib.defmatrix", "matrix"): "numpy.matrix under its pre-1.25 module name",
    ("numpy", "recarray"): "ndarray subclass with named fields (NumPy 1.x spelling)",
    ("numpy.rec", "recarray"): "ndarray subclass with named fields",
    ("numpy", "record"): "scalar type of a record array's elements",
    ("numpy.ma.core", "_mareconstruct"): "masked-array pickles: two ndarray.__new__ and "
    "subtype.__new__(subtype, data, mask=..., dtype=...) of an imported subtype",
    ("numpy.ma", "MaskedArray"): "ndarray subclass with a mask; its __setstate__ sets data "
    "and mask",
    ("numpy.ma.core", "MaskedArray"): "numpy.ma.MaskedArray under its defining module",
    ("numpy.ma.core", "MaskedConstant"): "numpy.ma.masked: calling the class returns the singleton",
    # -- NumPy random generators (scikit-learn estimators carry them) --
    ("numpy.random._pickle", "__bit_generator_ctor"): "looks a bit generator up by name in "
    "NumPy's own table, or calls an imported class with no arguments",
    ("numpy.random._pickle", "__generator_ctor"): "Generator(bit generator); a bit generator "
    "constructor given by the file must itself be an import the scanner classifies",
    ("numpy.random._pickle", "__randomstate_ctor"): "RandomState(bit generator); same "
    "constructor argument as __generator_ctor",
    ("numpy.random", "__RandomState_ctor"): "pre-1.17 RandomState pickles: RandomState(seed=0)",
    ("numpy.random._mt19937", "MT19937"): "bit generator; its state is set by __setstate__",
    ("numpy.random._pcg64", "PCG64"): "bit generator; its state is set by __setstate__",
    ("numpy.random._pcg64", "PCG64DXSM"): "bit generator; its state is set by __setstate__",
    ("numpy.random._philox", "Philox"): "bit generator; its state is set by __setstate__",
    ("numpy.random._sfc64", "SFC64"): "bit generator; its state is set by __setstate__",
    ("numpy.random.bit_generator", "SeedSequence"): "seed sequence (entropy and counters)",
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"): "Cython's unpickler: "
    "SeedSequence.__new__ of a SeedSequence subtype and its typed fields",
    # -- joblib wrappers: the scanner reads their state (pickle_scan checks companion files) --
    ("joblib.numpy_pickle", "NDArrayWrapper"): "joblib <= 0.9 array placeholder under its "
    "old module; joblib.load reads the companion file it names, which the scanner checks",
    ("joblib.numpy_pickle", "ZNDArrayWrapper"): "joblib <= 0.9 compressed array placeholder; "
    "joblib.load reads the companion file it names, which the scanner checks",
    ("joblib.numpy_pickle_compat", "ZNDArrayWrapper"): "the same under its current module",
}
REASONS.update(
    {("numpy", name): "NumPy scalar type: converts a number or string" for name in _NUMPY_SCALARS}
)
REASONS.update(
    {("numpy.dtypes", name): "NumPy DType class: returns its dtype" for name in _NUMPY_DTYPES}
)
for _fmt in _SPARSE_FORMATS:
    REASONS.update(
        {
            (f"scipy.sparse._{_fmt}", f"{_fmt}_{kind}"): "SciPy sparse container: pickled as "
            "cls.__new__ plus a __dict__ of arrays, shape and ints (data only)"
            for kind in ("matrix", "array")
        }
    )
    REASONS[(f"scipy.sparse.{_fmt}", f"{_fmt}_matrix")] = "the same under its pre-1.8 module"

#: (module, name) pairs model files legitimately name: tensor and storage rebuilds, containers,
#: numpy array reconstruction, and every name of REASONS.
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
        ("joblib.numpy_pickle", "NumpyArrayWrapper"),
        ("joblib.numpy_pickle_compat", "NDArrayWrapper"),
    }
    | {("torch", name) for name in _TORCH_DTYPES + _STORAGES}
    | {("torch.storage", name) for name in ("UntypedStorage", "TypedStorage")}
    | set(REASONS)
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
        # the C modules behind denied ones: same objects under another import name
        "_io",
        "_socket",
        "_ctypes",
        "_imp",
        "_thread",
        "_multiprocessing",
        "_frozen_importlib",
        "_frozen_importlib_external",
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
        # pickle writes the C implementations' own module names: _functools.reduce is what
        # pickle.dumps(functools.reduce) names
        ("_functools", "partial"),
        ("_functools", "reduce"),
        ("_operator", "attrgetter"),
        ("_operator", "methodcaller"),
        ("_operator", "itemgetter"),
        ("_operator", "getitem"),
        ("torch", "load"),
        ("torch.storage", "_load_from_bytes"),  # a nested torch.load of embedded bytes
        ("torch.serialization", "load"),
        ("numpy", "load"),
        ("numpy.lib.npyio", "load"),
        ("numpy.testing._private.utils", "runstring"),
        ("copyreg", "__newobj__"),
        ("copyreg", "__newobj_ex__"),
        ("copyreg", "_reconstructor_ex"),
        # import gadgets: __import__(module) + getattr(name) for names given as arguments
        ("numpy.core", "_ufunc_reconstruct"),
        ("numpy._core", "_ufunc_reconstruct"),
        ("numpy.ctypeslib", "load_library"),  # loads a native library
        # nested loaders: unpickle a file the arguments name
        ("joblib", "load"),
        ("joblib.numpy_pickle", "load"),
        ("pandas", "read_pickle"),
        ("pandas.io.pickle", "read_pickle"),
        # open, create or overwrite a file (or URL) the arguments name
        ("numpy", "memmap"),
        ("numpy.core.memmap", "memmap"),
        ("numpy._core.memmap", "memmap"),
        ("numpy", "fromfile"),
        ("numpy", "save"),
        ("numpy", "savez"),
        ("numpy", "savez_compressed"),
        ("numpy", "savetxt"),
        ("numpy", "loadtxt"),
        ("numpy", "genfromtxt"),
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
    if "." in name and any(_is_dunder(part) for part in name.split(".")):
        # protocol 4 resolves qualified names attribute by attribute: object.__subclasses__,
        # f.__globals__, x.__class__.__init__ ... walk to any object in the interpreter
        return "dangerous"
    return "unknown"


def _is_dunder(part: str) -> bool:
    return len(part) > 4 and part.startswith("__") and part.endswith("__")

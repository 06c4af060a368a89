"""NumPy ``.npy`` files: the header is read as a Python literal (never evaluated) and the data
is accounted for by dtype and shape; object arrays carry a pickle, scanned like any other."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

MAX_HEADER = 1 << 16  # numpy itself refuses headers above 10,000 bytes by default
_PY2_LONG = re.compile(r"(?<=\d)[lL]\b")  # Python 2 wrote shapes as (2L, 3L)


@dataclass
class NpyLayout:
    descr: str
    shape: tuple[int, ...]
    data_offset: int
    itemsize: int
    has_object: bool

    def data_bytes(self, cap: int) -> int:
        """Bytes of array data, or ``cap + 1`` as soon as it exceeds ``cap`` (a forged shape
        must not make the product itself expensive)."""
        total = self.itemsize
        for dim in self.shape:
            total *= dim
            if total > cap:
                return cap + 1
        return total


class NpyError(ValueError):
    """The header cannot be read."""


def read_layout(data: bytes | memoryview) -> NpyLayout:
    """Parse the header of a ``.npy`` file (versions 1.0, 2.0 and 3.0)."""
    if len(data) < 10:
        raise NpyError("the .npy header is truncated")
    major = data[6]
    if major == 1:
        length, start = int.from_bytes(data[8:10], "little"), 10
    elif major in (2, 3):
        length, start = int.from_bytes(data[8:12], "little"), 12
    else:
        raise NpyError(f".npy format version {major} is not one NumPy writes")
    if length > MAX_HEADER or start + length > len(data):
        raise NpyError(f"the .npy header declares {length} bytes")
    text = bytes(data[start : start + length]).decode("utf-8" if major == 3 else "latin-1")
    header = _literal(text)
    if not isinstance(header, dict) or not {"descr", "shape"} <= header.keys():
        raise NpyError("the .npy header has no descr and shape")
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise NpyError("the .npy shape is not a tuple of sizes")
    import numpy as np  # only parses the dtype description
    from numpy.lib.format import descr_to_dtype

    try:
        dtype = descr_to_dtype(header["descr"])
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise NpyError(f"the .npy dtype {str(header['descr'])[:60]!r} is not a dtype") from exc
    return NpyLayout(
        descr=str(header["descr"])[:200],
        shape=shape,
        data_offset=start + length,
        itemsize=np.dtype(dtype).itemsize,
        has_object=bool(dtype.hasobject),
    )


def _literal(text: str) -> object:
    for candidate in (text, _PY2_LONG.sub("", text)):
        try:
            return ast.literal_eval(candidate)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    raise NpyError("the .npy header is not a Python literal")

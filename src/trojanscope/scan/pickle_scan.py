"""Static pickle analysis: a symbolic run of CPython's unpickler that imports and calls nothing.

Every opcode moves symbolic values on a stack, a metastack (MARK) and a memo exactly as the
unpickler moves real ones, so names computed at load time (STACK_GLOBAL over memoized strings,
across FRAME boundaries) resolve as they would, and every call the load would make (REDUCE,
INST, OBJ, NEWOBJ, NEWOBJ_EX, BUILD through ``__setstate__``) is seen with its callable.

Written by hand, not on ``pickletools.genops``: genops decodes every argument (a 50 MB array
of floats becomes millions of Python floats) and cannot say how far it got in a broken file.
This reader skips arguments it does not need and reports what it saw before any error.

Bounded: the work is linear in the bytes read (each opcode costs O(1) plus the items it moves),
the stack, MARK depth and memo are capped, and containers carry their size as a tree so that
"billion laughs" structures (a few opcodes that expand to billions of nodes when a consumer
walks the result) are reported without ever being expanded.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from trojanscope.scan.findings import FileReport, LimitExceeded
from trojanscope.scan.limits import Limits
from trojanscope.scan.policy import classify

__all__ = ["Global", "Limits", "PickleMachine", "looks_like_pickle", "scan_pickle_stream"]

#: Tree sizes saturate here (sizes of bombs grow exponentially; Python ints would too).
_CAP = 1 << 62
#: Growth checks (stack over every MARK level, memo, opcode budget) run every this many opcodes.
_CHECK_EVERY = 0x3FFF
_MAX_NESTED_ARRAYS = 8  # joblib object arrays nest pickles inside pickles


class Global:
    """A name the pickle imports (GLOBAL, STACK_GLOBAL, INST)."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"Global({self.module!r}, {self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Global) and (self.module, self.name) == (other.module, other.name)

    def __hash__(self) -> int:
        return hash((self.module, self.name))


class Called:
    """The result of a call the load would make (``args`` kept only in value-tracking mode);
    ``n`` is its size as a tree (1 + its arguments')."""

    __slots__ = ("func", "args", "n")

    def __init__(self, func: object, args: object = None, n: int = 1) -> None:
        self.func, self.args, self.n = func, args, n


class _Box:
    """A container the pickle builds: only its size as a tree is kept (expansion bombs)."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n


class _Unknown:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<value>"


UNKNOWN = _Unknown()
SHORT_TEXT = 512  # longer strings are never decoded (no import name is that long)


class Str(str):
    """A string value from the pickle (only short ones are decoded)."""


class PickleResult:
    """One pickle's run: where it ended, whether it reached STOP, its value and imports."""

    __slots__ = ("end", "complete", "value", "imports")

    def __init__(self, end: int, complete: bool) -> None:
        self.end = end  # offset just past STOP (or where the scan stopped)
        self.complete = complete
        self.value: object = UNKNOWN
        self.imports: list[Global] = []


def _size(value: object) -> int:
    return getattr(value, "n", 1)


def _sizes(items: list[object]) -> int:
    """Total tree size of ``items``, saturated at _CAP (callers add small amounts on top)."""
    n = len(items)
    for v in items:
        if type(v) is _Box or type(v) is Called:
            n += v.n - 1
    return n if n < _CAP else _CAP


# Argument kinds: fixed-size, length-prefixed (size of the length field), newline-terminated.
_FIXED = {
    **dict.fromkeys("(.012NRabdelostu})]\x85\x86\x87\x88\x89\x81\x92\x93\x94\x8f\x90\x91", 0),
    **dict.fromkeys("\x97\x98Q", 0),
    **dict.fromkeys("Kqh\x80\x82", 1),
    **dict.fromkeys("M\x83", 2),
    **dict.fromkeys("Jrj\x84", 4),
    **dict.fromkeys("G\x95", 8),
}
_SIZED = {  # opcode: (bytes of the length field, signed, kind of payload)
    "U": (1, False, "bytes"),
    "C": (1, False, "bytes"),
    "\x8c": (1, False, "text"),
    "\x8a": (1, False, "long"),
    "T": (4, True, "bytes"),
    "B": (4, False, "bytes"),
    "X": (4, False, "text"),
    "\x8b": (4, True, "long"),
    "\x8d": (8, False, "text"),
    "\x8e": (8, False, "bytes"),
    "\x96": (8, False, "bytes"),
}
#: One-byte opcodes pushing one scalar with a fixed-size argument: {opcode: argument size}.
_PUSH_FIXED = {
    ord(op): size
    for op, size in {
        "N": 0,
        ")": 0,
        "\x88": 0,
        "\x89": 0,
        "\x97": 0,
        "K": 1,
        "M": 2,
        "J": 4,
        "G": 8,
    }.items()
}
_EMPTY_MUTABLE = {ord(op) for op in "}]\x8f"}  # EMPTY_DICT, EMPTY_LIST, EMPTY_SET
#: Opcodes that pop everything since the last MARK (and the MARK).
_TO_MARK = {ord(op) for op in "eult\x90\x91d"}
_TO_MARK_PUSH = {ord(op) for op in "ltd\x91"}  # ... and push the container they built
_STRINGS = {ord(op) for op in "UC\x8cTBX\x8d\x8e"}
_SIZED_INT = {ord(op): (w, signed, kind == "text") for op, (w, signed, kind) in _SIZED.items()}
_LINES = {"I": 1, "L": 1, "F": 1, "S": 1, "V": 1, "P": 1, "g": 1, "p": 1, "c": 2, "i": 2}

#: Bytes per element of the storage classes the legacy torch format names.
_STORAGE_BYTES = {
    "DoubleStorage": 8,
    "FloatStorage": 4,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "LongStorage": 8,
    "IntStorage": 4,
    "ShortStorage": 2,
    "CharStorage": 1,
    "ByteStorage": 1,
    "BoolStorage": 1,
    "ComplexFloatStorage": 8,
    "ComplexDoubleStorage": 16,
    "QUInt8Storage": 1,
    "QInt8Storage": 1,
    "QInt32Storage": 4,
    "QUInt4x2Storage": 1,
    "QUInt2x4Storage": 1,
    "UntypedStorage": 1,
}


def _is_joblib_array(value: object) -> bool:
    return (
        isinstance(value, Called)
        and isinstance(value.func, Global)
        and (value.func.module, value.func.name) == ("joblib.numpy_pickle", "NumpyArrayWrapper")
    )


#: joblib <= 0.9 placeholders: joblib.load replaces each by ``np.load(allow_pickle=True)`` (or a
#: zlib read) of the companion file its state names, joined to the pickle's directory.
_JOBLIB_COMPANIONS = frozenset(
    (module, name)
    for module in ("joblib.numpy_pickle", "joblib.numpy_pickle_compat")
    for name in ("NDArrayWrapper", "ZNDArrayWrapper")
)
#: Imports that make a stream a joblib stream, read a second time with values.
_JOBLIB_NAMES = frozenset(
    f"{module}.{name}"
    for module, name in _JOBLIB_COMPANIONS | {("joblib.numpy_pickle", "NumpyArrayWrapper")}
)


def _companion_class(value: object) -> Global | None:
    """The joblib placeholder class ``value`` is an instance of (built by NEWOBJ, or by
    copyreg._reconstructor in protocols 0-1), or None."""
    if not isinstance(value, Called):
        return None
    func = value.func
    if (
        isinstance(func, Global)
        and (func.module, func.name)
        in (("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor"))
        and isinstance(value.args, tuple)
        and value.args
    ):
        func = value.args[0]
    if isinstance(func, Global) and (func.module, func.name) in _JOBLIB_COMPANIONS:
        return func
    return None


def _companion_escape(name: str) -> str | None:
    """Why ``name``, joined to the pickle's directory by joblib, leaves that directory."""
    if not name or "\0" in name:
        return "is empty or holds a NUL byte"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    depth = 0
    for part in name.replace("\\", "/").split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return "climbs out of the pickle's directory with '..'"
        elif part not in ("", "."):
            depth += 1
    return None


def _children(value: object) -> list[object] | tuple[object, ...] | None:
    """The values a value-tracking container holds (None for a leaf)."""
    if type(value) is list or type(value) is tuple:
        return value
    if type(value) is dict:
        return [*value.keys(), *value.values()]
    if type(value) is Called:
        return None if value.args is None else [value.args]
    return None


def _tree_size(root: object) -> tuple[int, int]:
    """The size of ``root`` as a tree and the edges visited to find it: each shared node is
    sized once, so the work is linear in the graph, never in the expansion. A reference back
    to a node still being sized (a cycle) counts as one node."""
    sizes: dict[int, int] = {}
    pending: list[tuple[object, bool]] = [(root, False)]
    visited = 0
    while pending:
        node, ready = pending.pop()
        children = _children(node)
        if children is None or (not ready and id(node) in sizes):
            continue
        visited += len(children)
        if not ready:
            sizes[id(node)] = 1  # in progress: a cycle back here counts once
            pending.append((node, True))
            pending.extend(
                (c, False) for c in children if id(c) not in sizes and _children(c) is not None
            )
            continue
        total = 1 + sum(sizes.get(id(c), 1) for c in children)
        sizes[id(node)] = total if total < _CAP else _CAP
    return sizes.get(id(root), 1), visited


# An undecoded string argument is pushed as a plain tuple (start, end, is_text): no other stack
# value is a tuple in the fast mode, and tuples are the cheapest object Python makes.


class PickleMachine:
    """Runs pickles symbolically, reporting into ``report``. ``allow`` admits extra imports
    that are legitimate in the container the pickle sits in (TorchScript's ``__torch__``)."""

    def __init__(
        self,
        data: bytes | memoryview,
        report: FileReport,
        limits: Limits,
        allow: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.data = memoryview(data)
        self.report = report
        self.limits = limits
        self.allow = allow
        self.seen: dict[str, Global] = {}
        self.called: set[str] = set()
        self.opcodes = 0
        self.work = 0  # opcodes plus items moved by container opcodes (linear in the input)
        #: Value-tracking mode (joblib, legacy torch): real values for scalars and containers,
        #: so that the raw bytes written after the pickles can be skipped exactly.
        self.track = False
        self.persistent_ids: list[tuple[object, ...]] = []
        self.first_array: int | None = None  # offset of the first joblib array skipped
        self._nested = 0

    # -- reporting ----------------------------------------------------------------------------

    def _import(self, g: Global, offset: int) -> None:
        key = str(g)
        if key in self.seen:
            return
        self.seen[key] = g
        self.report.imports.append(key)
        if self.allow is not None and self.allow(g.module, g.name):
            return
        kind = classify(g.module, g.name)
        if kind == "dangerous":
            self.report.add(
                "pickle.dangerous-import",
                "critical",
                f"imports {key}: loading this file can run code or reach the system",
                offset,
                module=g.module,
                name=g.name,
            )
        elif kind == "unknown":
            self.report.add(
                "pickle.unknown-import",
                "medium",
                f"imports {key}, which is not on the allow-list of what model files name",
                offset,
                module=g.module,
                name=g.name,
            )

    def _call(self, func: object, offset: int, how: str) -> None:
        if isinstance(func, Global):
            key = f"{func}:{how}"
            if key not in self.called:
                self.called.add(key)
                self.report.metadata.setdefault("calls", []).append(f"{how} {func}")
            return
        if isinstance(func, Called):
            return  # calling a call's result: the inner call was already reported
        self.report.add(
            "pickle.opaque-call",
            "high",
            f"{how} calls a callable the scanner cannot name (from the memo, an extension code "
            "or a persistent id)",
            offset,
        )

    # -- reading -------------------------------------------------------------------------------

    def _line(self, pos: int) -> tuple[bytes, int]:
        """A newline-terminated argument; short lines cost a short copy (no import name, number
        or protocol-0 string the scanner needs is longer than 4096 bytes)."""
        for width in (80, 4096):
            chunk = bytes(self.data[pos : pos + width])
            end = chunk.find(b"\n")
            if end >= 0:
                return chunk[:end], pos + end + 1
            if len(chunk) < width:
                break
        raise ValueError("unterminated text argument")

    def _check_growth(
        self, stack: list[object], marks: list[list[object]], memo: dict[int, object]
    ) -> None:
        lim = self.limits
        if len(stack) + sum(map(len, marks)) > lim.max_stack:
            raise LimitExceeded(f"more than {lim.max_stack} values on the stack")
        if len(memo) > lim.max_memo:
            raise LimitExceeded(f"more than {lim.max_memo} memo entries")

    def run(self, start: int) -> PickleResult:
        """Scan from ``start`` to STOP; errors are findings, limits raise LimitExceeded."""
        data, n, lim = self.data, len(self.data), self.limits
        stack: list[object] = []
        marks: list[list[object]] = []
        memo: dict[int, object] = {}
        result = PickleResult(start, False)
        pos = op_pos = start
        budget = lim.max_opcodes - self.opcodes
        first = budget
        push_fixed, sized, empty_mutable = _PUSH_FIXED, _SIZED_INT, _EMPTY_MUTABLE
        check_every, box, sizes = _CHECK_EVERY, _Box, _sizes
        moved = 0  # items moved by MARK-delimited opcodes (the work beyond one per opcode)
        append = stack.append
        try:
            while True:
                budget -= 1
                if not budget & check_every:
                    if budget <= 0:
                        raise LimitExceeded(f"more than {lim.max_opcodes} opcodes")
                    self._check_growth(stack, marks, memo)
                op_pos = pos
                code = data[pos]  # IndexError past the end: reported as a missing STOP
                pos += 1
                if self.track:
                    stack, pos = self._tracked(code, op_pos, pos, stack, marks, memo, result)
                    append = stack.append
                    if result.complete:
                        break
                    continue
                # Fast paths for what dense pickles are made of (scalars, containers, strings).
                size = push_fixed.get(code)
                if size is not None:
                    pos += size
                    append(UNKNOWN)
                    continue
                spec = sized.get(code)
                if spec is not None:
                    width, signed, is_text = spec
                    if width == 1:
                        length = data[pos]
                    else:
                        length = int.from_bytes(data[pos : pos + width], "little", signed=signed)
                    pos += width
                    if length < 0 or pos + length > n or pos > n:
                        raise ValueError(f"declared length {length} runs past the end of the data")
                    # Strings stay undecoded (start, end, text?) until an import reads them.
                    append((pos, pos + length, is_text) if code in _STRINGS else UNKNOWN)
                    pos += length
                    continue
                if code in empty_mutable:
                    append(box(1))
                    continue
                if 0x85 <= code <= 0x87:  # TUPLE1/2/3
                    size = code - 0x84
                    if len(stack) < size:
                        raise IndexError
                    items = stack[-size:]
                    del stack[-size:]
                    append(box(1 + sizes(items)))
                    continue
                if code == 0x73:  # SETITEM
                    if len(stack) < 3:
                        raise IndexError
                    value = stack.pop()
                    key = stack.pop()
                    target = stack[-1]
                    if type(target) is box or type(target) is Called:
                        grown = target.n + getattr(key, "n", 1) + getattr(value, "n", 1)
                        target.n = grown if grown < _CAP else _CAP
                    continue
                if code == 0x68:  # BINGET
                    key = data[pos]
                    pos += 1
                    if key not in memo:
                        raise ValueError(f"memo key {key} read before it is written")
                    append(memo[key])
                    continue
                if code == 0x94:  # MEMOIZE
                    if len(memo) >= lim.max_memo:
                        raise LimitExceeded(f"more than {lim.max_memo} memo entries")
                    memo[len(memo)] = stack[-1]
                    continue
                if code == 0x28:  # MARK
                    if len(marks) >= lim.max_marks:
                        raise LimitExceeded(f"more than {lim.max_marks} nested MARKs")
                    marks.append(stack)
                    stack = []
                    append = stack.append
                    continue
                if code in _TO_MARK:  # APPENDS, SETITEMS, ADDITEMS, LIST, TUPLE, DICT, ...
                    items = stack
                    stack = marks.pop()
                    append = stack.append
                    moved += len(items)
                    grown = sizes(items)
                    if code in _TO_MARK_PUSH:
                        append(box(1 + grown))
                    else:
                        target = stack[-1]  # IndexError: nothing to add to
                        if type(target) is box or type(target) is Called:
                            grown += target.n
                            target.n = grown if grown < _CAP else _CAP
                    continue
                stack, pos = self._step(code, op_pos, pos, stack, marks, memo, result)
                append = stack.append
                if result.complete:
                    break
        except IndexError:
            if op_pos >= n:
                self._broken(result, op_pos, start, "the pickle ends without STOP")
            else:
                self._broken(
                    result, op_pos, start, "pops from an empty stack or an unbalanced MARK"
                )
        except (ValueError, struct.error, UnicodeDecodeError, OverflowError) as exc:
            self._broken(result, op_pos, start, str(exc))
        except RecursionError:
            self._broken(result, op_pos, start, "nesting too deep")
        finally:
            self.opcodes = lim.max_opcodes - budget
            self.work += first - budget + moved
        if result.complete:
            self._check_expansion(result, first - budget)
        result.imports = list(self.seen.values())
        return result

    def _check_expansion(self, result: PickleResult, opcodes: int) -> None:
        if self.track:
            tree, visited = _tree_size(result.value)
            self.work += visited
        else:
            tree = _size(result.value)
        lim = self.limits
        if tree > max(lim.min_expansion, lim.max_expansion_ratio * opcodes):
            self.report.add(
                "pickle.expansion-bomb",
                "medium",
                f"the loaded object expands to {tree if tree < _CAP else 'over 4e18'} nodes "
                f"from {opcodes} opcodes: shared references nested to blow up whoever walks it "
                "(a 'billion laughs' structure)",
                result.end - 1,
                nodes=tree,
                opcodes=opcodes,
            )

    def _text(self, value: object) -> str | None:
        """The string a stack value holds, if it is a (short) string."""
        if type(value) is tuple and len(value) == 3 and type(value[0]) is int:
            start, end, is_text = value
            if end - start > SHORT_TEXT:
                return None
            raw = bytes(self.data[start:end])
            return raw.decode("utf-8", "surrogatepass") if is_text else raw.decode("latin-1")
        if isinstance(value, str):  # Str, or a decoded string in value-tracking mode
            return str(value)
        return None

    def _tracked(
        self,
        code: int,
        op_pos: int,
        pos: int,
        stack: list[object],
        marks: list[list[object]],
        memo: dict[int, object],
        result: PickleResult,
    ) -> tuple[list[object], int]:
        """One opcode with real values for scalars, strings and containers. Values are kept
        shallow: dict keys are scalars only (hashing file-built tuples would recurse)."""
        data, n, lim = self.data, len(self.data), self.limits
        op = chr(code)
        if code in _PUSH_FIXED or code in _EMPTY_MUTABLE:
            size = _PUSH_FIXED.get(code, 0)
            raw = bytes(data[pos : pos + size])
            if len(raw) < size:
                raise ValueError("argument runs past the end of the data")
            pos += size
            if op in "KMJ":
                value: object = int.from_bytes(raw, "little", signed=op == "J")
            elif op == "G":
                value = struct.unpack(">d", raw)[0]
            else:
                value = {"N": None, "\x88": True, "\x89": False, ")": (), "]": [], "}": {}}.get(
                    op, UNKNOWN
                )
            stack.append(value)
        elif code in _SIZED_INT:
            width, signed, is_text = _SIZED_INT[code]
            length = int.from_bytes(data[pos : pos + width], "little", signed=signed)
            pos += width
            if length < 0 or pos + length > n:
                raise ValueError(f"declared length {length} runs past the end of the data")
            if code in _STRINGS:
                text = self._text((pos, pos + length, is_text))
                stack.append(text if text is not None else UNKNOWN)
            elif op == "\x8a" and length <= 16:  # LONG1: storage sizes above 2**31
                stack.append(int.from_bytes(data[pos : pos + length], "little", signed=True))
            else:
                stack.append(UNKNOWN)
            pos += length
        elif code == 0x94:  # MEMOIZE
            if len(memo) >= lim.max_memo:
                raise LimitExceeded(f"more than {lim.max_memo} memo entries")
            memo[len(memo)] = stack[-1]
        elif code == 0x68:  # BINGET
            slot = data[pos]
            pos += 1
            if slot not in memo:
                raise ValueError(f"memo key {slot} read before it is written")
            stack.append(memo[slot])
        elif code == 0x28:  # MARK
            if len(marks) >= lim.max_marks:
                raise LimitExceeded(f"more than {lim.max_marks} nested MARKs")
            marks.append(stack)
            stack = []
        elif code in _TO_MARK:
            items, stack = stack, marks.pop()
            self.work += len(items)
            if op == "l":
                stack.append(items)
            elif op == "t":
                stack.append(tuple(items))
            elif op in "du":
                target = {} if op == "d" else stack[-1]
                if isinstance(target, dict):
                    for key, value in zip(items[::2], items[1::2], strict=False):
                        if type(key) in (str, Str, int, float, bool):
                            target[key] = value
                if op == "d":
                    stack.append(target)
            elif op == "e":
                if isinstance(stack[-1], list):
                    stack[-1].extend(items)
            elif op == "\x91":
                stack.append(UNKNOWN)
            else:
                stack[-1]  # noqa: B018 (ADDITEMS needs a set below the MARK)
        elif 0x85 <= code <= 0x87:
            size = code - 0x84
            if len(stack) < size:
                raise IndexError
            items = stack[-size:]
            del stack[-size:]
            stack.append(tuple(items))
        elif op == "a" and len(stack) >= 2 and isinstance(into := stack[-2], list):  # APPEND
            into.append(stack.pop())
        elif op == "s" and len(stack) >= 3 and isinstance(mapping := stack[-3], dict):  # SETITEM
            value, key = stack.pop(), stack.pop()
            if type(key) in (str, Str, int, float, bool):
                mapping[key] = value
        elif op == "R" and len(stack) >= 2:  # REDUCE keeping the arguments
            args, func = stack.pop(), stack.pop()
            self._call(func, op_pos, "REDUCE")
            stack.append(Called(func, args))
        elif op == "b" and len(stack) >= 2 and _is_joblib_array(stack[-2]):
            state = stack.pop()
            if self.first_array is None:
                self.first_array = op_pos
            pos = self._skip_joblib_array(state, pos)
        elif op == "b" and len(stack) >= 2 and (wrapper := _companion_class(stack[-2])):
            self._check_companion(wrapper, stack[-1], op_pos)
            return self._step(code, op_pos, pos, stack, marks, memo, result)
        elif op == "Q":  # BINPERSID: the legacy torch format names its storages here
            pid = stack.pop()
            if type(pid) is tuple:
                self.persistent_ids.append(pid)
            stack.append(UNKNOWN)
            self.report.metadata["persistent_ids"] = (
                self.report.metadata.get("persistent_ids", 0) + 1
            )
        else:
            return self._step(code, op_pos, pos, stack, marks, memo, result)
        return stack, pos

    def _skip_joblib_array(self, state: object, pos: int) -> int:
        """Past the array bytes joblib writes right after a NumpyArrayWrapper's BUILD."""
        if not isinstance(state, dict):
            raise ValueError("NumpyArrayWrapper state is not a dict")
        dtype, shape = state.get("dtype"), state.get("shape")
        descr = (
            dtype.args[0] if isinstance(dtype, Called) and isinstance(dtype.args, tuple) else None
        )
        if not isinstance(descr, str) or not isinstance(shape, tuple):
            raise ValueError("NumpyArrayWrapper state without a readable dtype and shape")
        import numpy as np  # only parses a dtype string such as "f8" or "<i4"

        try:
            kind = np.dtype(descr)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"NumpyArrayWrapper dtype {descr[:40]!r} is not a dtype") from exc
        if kind.hasobject:  # object arrays are a nested pickle
            self.report.add(
                "joblib.object-array",
                "info",
                "object array: joblib unpickles its elements; the nested pickle is scanned with "
                "the rest",
                pos,
            )
            if self._nested >= _MAX_NESTED_ARRAYS:
                raise LimitExceeded(f"object arrays nested deeper than {_MAX_NESTED_ARRAYS}")
            self._nested += 1
            try:
                nested = self.run(pos)
            finally:
                self._nested -= 1
            if not nested.complete:
                raise ValueError("nested object-array pickle breaks off")
            return nested.end
        if state.get("numpy_array_alignment_bytes"):
            pos += 1 + self.data[pos]
        count, left = 1, len(self.data) - pos
        for dim in shape:
            if type(dim) is not int or dim < 0:
                raise ValueError("NumpyArrayWrapper shape is not a tuple of sizes")
            count *= dim
            if count * kind.itemsize > left:
                raise ValueError("joblib array data runs past the end of the file")
        return pos + count * kind.itemsize

    def _check_companion(self, cls: Global, state: object, offset: int) -> None:
        """A joblib placeholder's companion file: joblib.load reads (and for NDArrayWrapper
        unpickles, through ``np.load(allow_pickle=True)``) the file its state names."""
        name = state.get("filename") if isinstance(state, dict) else None
        if not isinstance(name, str):
            self.report.add(
                "joblib.companion-unreadable",
                "high",
                f"{cls.name} without a readable file name: joblib.load opens whatever path its "
                "state holds",
                offset,
            )
            return
        shown = repr(name[:200])
        why = _companion_escape(name)
        if why is not None:
            self.report.add(
                "joblib.companion-escape",
                "high",
                f"{cls.name} names companion file {shown}, which {why}: joblib.load reads that "
                "file" + (" and unpickles it" if cls.name == "NDArrayWrapper" else ""),
                offset,
                filename=name[:200],
            )
            return
        listed = self.report.metadata.setdefault("companion_files", [])
        if name not in listed and len(listed) < 100:
            listed.append(name)
            self.report.add(
                "joblib.companion-file",
                "info",
                f"joblib.load also reads companion file {shown} next to this one"
                + (" with np.load(allow_pickle=True)" if cls.name == "NDArrayWrapper" else "")
                + ": it is judged by its own scan (scan the folder)",
                offset,
                filename=name[:200],
            )

    def skip_legacy_storages(self, keys: object, pos: int) -> int:
        """Past the raw storages of a legacy torch checkpoint, by the sizes they declare: each
        key of the storage-key list (the fifth pickle) has an 8-byte element count followed by
        that many elements of the storage type its persistent id names."""
        data, n = self.data, len(self.data)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("the legacy checkpoint's storage key list is unreadable")
        declared: dict[str, tuple[int | None, object]] = {}
        for pid in self.persistent_ids:
            if len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[2], str):
                kind = pid[1]
                name = kind.name if isinstance(kind, Global) else None
                declared[pid[2]] = (_STORAGE_BYTES.get(name or ""), pid[4])
        for key in keys:
            if key not in declared:
                raise ValueError(f"storage {key[:40]!r} is listed but no persistent id names it")
            element, numel = declared[key]
            if element is None:
                raise ValueError(f"storage {key[:40]!r} has an unknown element type")
            if pos + 8 > n:
                raise ValueError("the legacy storage records are truncated")
            count = int.from_bytes(data[pos : pos + 8], "little", signed=True)
            if count < 0 or (isinstance(numel, int) and count != numel):
                raise ValueError(
                    f"storage {key[:40]!r} declares {count} elements where its persistent id "
                    f"says {numel}"
                )
            pos += 8 + count * element
            if pos > n:
                raise ValueError(f"storage {key[:40]!r} runs past the end of the file")
        return pos

    def _step(
        self,
        code: int,
        op_pos: int,
        pos: int,
        stack: list[object],
        marks: list[list[object]],
        memo: dict[int, object],
        result: PickleResult,
    ) -> tuple[list[object], int]:
        """Every opcode the fast paths do not take (CPython's Unpickler, opcode by opcode)."""
        data, n = self.data, len(self.data)
        op = chr(code)
        # The argument's type depends on the opcode (an int, a (module, name) pair, a string,
        # a float, raw bytes or None): each branch below reads it as its opcode defines it.
        arg: Any
        if op in _FIXED:
            size = _FIXED[op]
            if pos + size > n:
                raise ValueError("argument runs past the end of the data")
            raw = data[pos : pos + size]
            pos += size
            arg = int.from_bytes(raw, "little") if size else None
        elif op in _LINES:
            first, pos = self._line(pos)
            if _LINES[op] == 2:
                second, pos = self._line(pos)
                arg = (first.decode("latin-1"), second.decode("latin-1"))
            elif op in "SV":
                text = first.decode("latin-1")
                arg = Str(text[1:-1] if op == "S" and len(text) >= 2 else text)
            elif op in "gp":
                arg = int(first)
            elif op in "IL":  # INT, LONG: a decimal literal, as CPython's int() reads it
                arg = int(first[:-1] if op == "L" and first.endswith(b"L") else first)
            elif op == "F":
                arg = float(first)
            else:
                arg = first
        else:
            raise ValueError(f"unknown opcode {code:#04x}")

        if op == ".":  # STOP
            if not stack:  # CPython: "unpickling stack underflow", nothing is returned
                raise IndexError
            result.value = stack.pop()
            result.complete = True
            result.end = pos
        elif op == "c":  # GLOBAL module\nname\n
            g = Global(*arg)
            self._import(g, op_pos)
            stack.append(g)
        elif op == "\x93":  # STACK_GLOBAL
            name, module = self._text(stack.pop()), self._text(stack.pop())
            if module is not None and name is not None:
                g = Global(module, name)
                self._import(g, op_pos)
                stack.append(g)
            else:
                self.report.add(
                    "pickle.computed-import",
                    "high",
                    "STACK_GLOBAL imports a name the scanner cannot resolve statically",
                    op_pos,
                )
                stack.append(UNKNOWN)
        elif op == "i":  # INST module\nname\n: call with the items since MARK
            g = Global(*arg)
            self._import(g, op_pos)
            self._call(g, op_pos, "INST")
            items = stack
            stack = marks.pop()
            stack.append(Called(g, None, min(_CAP, 1 + _sizes(items))))
        elif op == "o":  # OBJ: the first item since MARK is the class
            items = stack
            stack = marks.pop()
            if not items:
                raise ValueError("OBJ without a class")
            self._call(items[0], op_pos, "OBJ")
            stack.append(Called(items[0], None, min(_CAP, _sizes(items))))
        elif op == "R":  # REDUCE
            args, func = stack.pop(), stack.pop()
            self._call(func, op_pos, "REDUCE")
            stack.append(Called(func, None, min(_CAP, 1 + _size(args))))
        elif op == "\x81":  # NEWOBJ
            args, cls = stack.pop(), stack.pop()
            self._call(cls, op_pos, "NEWOBJ")
            stack.append(Called(cls, None, min(_CAP, 1 + _size(args))))
        elif op == "\x92":  # NEWOBJ_EX
            kwargs, args, cls = stack.pop(), stack.pop(), stack.pop()
            self._call(cls, op_pos, "NEWOBJ_EX")
            stack.append(Called(cls, None, min(_CAP, 1 + _size(args) + _size(kwargs))))
        elif op == "b":  # BUILD: obj.__setstate__(state) or a dict update
            state = stack.pop()
            target = stack[-1]
            if isinstance(target, Global):
                self._call(target, op_pos, "BUILD")
            elif type(target) is _Box or type(target) is Called:
                target.n = min(_CAP, target.n + _size(state))
        elif op in "\x82\x83\x84":  # EXT1/2/4: a global named only by a registry code
            self.report.add(
                "pickle.extension-code",
                "high",
                f"imports the object registered under extension code {arg}, which the scanner "
                "cannot name (copyreg's registry belongs to the loading process)",
                op_pos,
                code=arg,
            )
            stack.append(UNKNOWN)
        elif op in "PQ":  # persistent id: resolved by the loader's persistent_load
            if op == "Q":
                stack.pop()
            stack.append(UNKNOWN)
            self.report.metadata["persistent_ids"] = (
                self.report.metadata.get("persistent_ids", 0) + 1
            )
        elif op in "pqr":  # PUT, BINPUT, LONG_BINPUT
            if len(memo) >= self.limits.max_memo:
                raise LimitExceeded(f"more than {self.limits.max_memo} memo entries")
            memo[int(arg)] = stack[-1]
        elif op in "ghj":  # GET, BINGET, LONG_BINGET
            slot = int(arg)
            if slot not in memo:
                raise ValueError(f"memo key {slot} read before it is written")
            stack.append(memo[slot])
        elif op == "0":  # POP; CPython pops a MARK when the stack is empty
            if stack:
                stack.pop()
            else:
                stack = marks.pop()
        elif op == "1":  # POP_MARK
            stack = marks.pop()
        elif op == "2":  # DUP
            stack.append(stack[-1])
        elif op == "a":  # APPEND
            item = stack.pop()
            target = stack[-1]
            if type(target) is _Box or type(target) is Called:
                target.n = min(_CAP, target.n + _size(item))
        elif op == "s":  # SETITEM
            value, key = stack.pop(), stack.pop()
            target = stack[-1]
            if type(target) is _Box or type(target) is Called:
                target.n = min(_CAP, target.n + _size(key) + _size(value))
        elif op in "\x85\x86\x87":  # TUPLE1/2/3
            size = code - 0x84
            if len(stack) < size:
                raise IndexError
            items = stack[-size:]
            del stack[-size:]
            stack.append(_Box(min(_CAP, 1 + _sizes(items))))
        elif op in "SV":
            stack.append(arg)
        elif op in "\x80\x95":  # PROTO, FRAME: no stack effect
            if op == "\x80" and not 0 <= int(arg) <= 5:
                raise ValueError(f"unsupported pickle protocol {arg}")
        elif op == "\x98":  # READONLY_BUFFER needs a value
            stack[-1]  # noqa: B018
        elif op in "}]\x8f":  # EMPTY_DICT, EMPTY_LIST, EMPTY_SET (reached in value-tracking)
            stack.append(_Box(1))
        else:  # a value from a text argument (INT, LONG, FLOAT) or NEXT_BUFFER
            stack.append(UNKNOWN)
        return stack, pos

    def _broken(self, result: PickleResult, offset: int, start: int, why: str) -> None:
        result.end = offset
        where = f"the pickle starting at byte {start}" if start else "the pickle"
        self.report.add(
            "pickle.malformed",
            "medium",
            f"{where} is malformed at byte {offset} ({why}); what precedes it was analysed",
            offset,
        )
        self.report.incomplete = f"malformed pickle at byte {offset}"


#: A legacy torch checkpoint's first pickle: the magic number 0x1950a86a20f9469cfc6c.
_TORCH_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


def is_torch_legacy(data: bytes | memoryview) -> bool:
    """A stream that starts with the legacy torch magic-number pickle (any protocol)."""
    head = bytes(data[:32])
    return head[:1] == b"\x80" and _TORCH_MAGIC in head


def looks_like_pickle(head: bytes) -> bool:
    """A cheap sniff for format labels: a protocol 2-5 header, or a stream whose first opcodes
    parse (whatever the first byte). The scanner itself tries every file as a pickle."""
    if len(head) >= 2 and head[0] == 0x80:
        return 2 <= head[1] <= 5
    if not head:
        return False
    probe = FileReport("probe", "pickle")
    machine = PickleMachine(head, probe, Limits(max_opcodes=64))
    try:
        result = machine.run(0)
    except LimitExceeded:
        return True
    if result.complete or probe.imports:
        return True
    return not any(
        f.rule == "pickle.malformed" and (f.offset or 0) < min(len(head), 16)
        for f in probe.findings
    )


def scan_pickle_stream(
    data: bytes | memoryview,
    report: FileReport,
    limits: Limits,
    allow: Callable[[str, str], bool] | None = None,
) -> None:
    """Scan every pickle of a stream, from its first byte to its last: consecutive pickles are
    followed whatever byte comes next, the legacy torch format's storages are skipped by their
    declared sizes and joblib's arrays by their dtype and shape. Any byte no pickle accounts
    for makes the report incomplete."""
    if len(data) == 0:
        report.add("pickle.malformed", "medium", "empty pickle stream", 0)
        report.incomplete = "empty pickle stream"
        return
    legacy = is_torch_legacy(data)
    machine = _scan_stream(data, report, limits, track=legacy, allow=allow)
    joblib = any(name in _JOBLIB_NAMES for name in report.imports)
    if legacy or not joblib:
        return
    # A joblib stream is read again with values, whether or not the plain reading broke off:
    # the plain reading takes raw array bytes for opcodes, and reads an object array's nested
    # pickle as part of the outer one (its memo indices then name the outer pickle's values),
    # which can end "complete" with findings that are artefacts. The value reading skips raw
    # arrays by dtype and shape, runs nested pickles on their own memo and reads the state of
    # the old placeholders. Both readings agree up to the first array; anything the first saw
    # before it that the second did not is kept.
    second = FileReport(report.location, report.format, size=report.size)
    again = _scan_stream(data, second, limits, track=True, allow=allow)
    before = again.first_array if again.first_array is not None else len(data)
    seen = {(f.rule, f.offset) for f in second.findings}
    second.findings += [
        f
        for f in report.findings
        if (f.rule, f.offset) not in seen and f.offset is not None and f.offset < before
    ]
    second.metadata["format_detail"] = "joblib"
    second.metadata["opcodes"] = machine.opcodes + again.opcodes
    second.metadata["work"] = machine.work + again.work
    report.findings, report.imports, report.metadata = (
        second.findings,
        second.imports,
        second.metadata,
    )
    report.incomplete = second.incomplete


def _scan_stream(
    data: bytes | memoryview,
    report: FileReport,
    limits: Limits,
    track: bool,
    allow: Callable[[str, str], bool] | None,
) -> PickleMachine:
    """One pass over the stream."""
    machine = PickleMachine(data, report, limits, allow)
    machine.track = track
    pos, count, n = 0, 0, len(data)
    legacy = is_torch_legacy(data)
    try:
        while pos < n:
            if count >= limits.max_pickles:
                raise LimitExceeded(f"more than {limits.max_pickles} pickles in one stream")
            result = machine.run(pos)
            if not result.complete:
                break
            count += 1
            pos = result.end
            if legacy and count == 5:
                report.metadata["format_detail"] = "legacy torch checkpoint"
                try:
                    pos = machine.skip_legacy_storages(result.value, pos)
                except ValueError as exc:
                    machine._broken(result, pos, 0, str(exc))
                    break
    except LimitExceeded as exc:
        report.incomplete = f"limit reached: {exc}"
    report.metadata["pickles"] = count
    report.metadata["opcodes"] = machine.opcodes
    report.metadata["work"] = machine.work
    return machine

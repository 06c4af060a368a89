"""Static pickle analysis: a symbolic run of CPython's unpickler that imports and calls nothing.

Every opcode moves symbolic values on a stack, a metastack (MARK) and a memo exactly as the
unpickler moves real ones, so names computed at load time (STACK_GLOBAL over memoized strings,
across FRAME boundaries) resolve as they would, and every call the load would make (REDUCE,
INST, OBJ, NEWOBJ, NEWOBJ_EX, BUILD through ``__setstate__``) is seen with its callable.

Written by hand, not on ``pickletools.genops``: genops decodes every argument (a 50 MB array
of floats becomes millions of Python floats) and cannot say how far it got in a broken file.
This reader skips arguments it does not need and reports what it saw before any error.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from trojanscope.scan.findings import FileReport, LimitExceeded
from trojanscope.scan.policy import classify


@dataclass(frozen=True)
class Limits:
    """Safety bounds; reaching one makes the verdict inconclusive, never clean."""

    max_opcodes: int = 200_000_000
    max_stack: int = 5_000_000
    max_marks: int = 100_000
    max_memo: int = 20_000_000
    max_pickles: int = 64  # consecutive pickles in one stream (the legacy torch format has 5)
    max_member_bytes: int = 4 * 2**30  # per decompressed archive member
    max_total_bytes: int = 16 * 2**30  # decompressed bytes per top-level file
    max_depth: int = 8  # archive nesting
    max_members: int = 100_000


@dataclass(frozen=True)
class Global:
    module: str
    name: str

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True, eq=False)
class Called:
    """The result of a call the load would make (``args`` kept only in value-tracking mode)."""

    func: object
    args: object = None


class _Unknown:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<value>"


UNKNOWN = _Unknown()
MARK = object()
SHORT_TEXT = 512  # longer strings are never decoded (no import name is that long)


class Str(str):
    """A string value from the pickle (only short ones are decoded)."""


@dataclass
class PickleResult:
    end: int  # offset just past STOP (or where the scan stopped)
    complete: bool
    value: object = UNKNOWN
    imports: list[Global] = field(default_factory=list)


# Argument kinds: fixed-size, length-prefixed (size of the length field), newline-terminated.
_FIXED = {
    "(": 0,
    ".": 0,
    "0": 0,
    "1": 0,
    "2": 0,
    "N": 0,
    "R": 0,
    "a": 0,
    "b": 0,
    "d": 0,
    "e": 0,
    "l": 0,
    "o": 0,
    "s": 0,
    "t": 0,
    "u": 0,
    "}": 0,
    "]": 0,
    ")": 0,
    "\x85": 0,
    "\x86": 0,
    "\x87": 0,
    "\x88": 0,
    "\x89": 0,
    "\x81": 0,
    "\x92": 0,
    "\x93": 0,
    "\x94": 0,
    "\x8f": 0,
    "\x90": 0,
    "\x91": 0,
    "\x97": 0,
    "\x98": 0,
    "Q": 0,
    "K": 1,
    "q": 1,
    "h": 1,
    "\x80": 1,
    "\x82": 1,
    "M": 2,
    "\x83": 2,
    "J": 4,
    "r": 4,
    "j": 4,
    "\x84": 4,
    "G": 8,
    "\x95": 8,
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
#: One-byte opcodes pushing one value with a fixed-size argument: {opcode: argument size}.
_PUSH_FIXED = {
    ord(op): size
    for op, size in {
        "N": 0,
        "}": 0,
        "]": 0,
        ")": 0,
        "\x88": 0,
        "\x89": 0,
        "\x8f": 0,
        "\x97": 0,
        "K": 1,
        "M": 2,
        "J": 4,
        "G": 8,
    }.items()
}
#: Opcodes that pop everything since the last MARK (and the MARK).
_TO_MARK = {ord(op) for op in "eult\x90\x91d"}
_TO_MARK_PUSH = {ord(op) for op in "ltd\x91"}  # ... and push the container they built
_STRINGS = {ord(op) for op in "UC\x8cTBX\x8d\x8e"}
_SIZED_INT = {ord(op): (w, signed, kind == "text") for op, (w, signed, kind) in _SIZED.items()}


def _is_joblib_array(value: object) -> bool:
    return (
        isinstance(value, Called)
        and isinstance(value.func, Global)
        and (value.func.module, value.func.name) in (("joblib.numpy_pickle", "NumpyArrayWrapper"),)
    )


# An undecoded string argument is pushed as a plain tuple (start, end, is_text): no other stack
# value is a tuple, and tuples are the cheapest object Python makes.


_LINES = {"I": 1, "L": 1, "F": 1, "S": 1, "V": 1, "P": 1, "g": 1, "p": 1, "c": 2, "i": 2}
_STRING_PUSH = {"U", "C", "\x8c", "T", "B", "X", "\x8d", "\x8e", "S", "V"}


class PickleMachine:
    """Runs one pickle symbolically, reporting into ``report``."""

    def __init__(self, data: bytes | memoryview, report: FileReport, limits: Limits) -> None:
        self.data = memoryview(data)
        self.report = report
        self.limits = limits
        self.seen: dict[str, Global] = {}
        self.called: set[str] = set()
        self.opcodes = 0
        #: Value-tracking mode (joblib): real values for scalars and containers, so that the
        #: raw array bytes joblib writes after each NumpyArrayWrapper can be skipped exactly.
        self.track = False

    # -- reporting ----------------------------------------------------------------------------

    def _import(self, g: Global, offset: int) -> None:
        key = str(g)
        if key in self.seen:
            return
        self.seen[key] = g
        self.report.imports.append(key)
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
        end = bytes(self.data[pos : pos + 4096]).find(b"\n")
        if end < 0:
            raise ValueError("unterminated text argument")
        return bytes(self.data[pos : pos + end]), pos + end + 1

    def run(self, start: int) -> PickleResult:
        """Scan from ``start`` to STOP; errors are findings, limits raise LimitExceeded."""
        data, n, lim = self.data, len(self.data), self.limits
        stack: list[object] = []
        marks: list[list[object]] = []
        memo: dict[int, object] = {}
        result = PickleResult(start, False)
        pos = op_pos = start
        budget = lim.max_opcodes - self.opcodes
        push_fixed, sized = _PUSH_FIXED, _SIZED_INT
        append = stack.append
        try:
            while True:
                budget -= 1
                op_pos = pos
                code = data[pos]  # IndexError past the end: reported as a missing STOP
                pos += 1
                if self.track:
                    if budget < 0:
                        raise LimitExceeded(f"more than {lim.max_opcodes} opcodes")
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
                if 0x85 <= code <= 0x87:  # TUPLE1/2/3
                    size = code - 0x84
                    if len(stack) < size:
                        raise IndexError
                    del stack[len(stack) - size :]
                    append(UNKNOWN)
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
                    stack = marks.pop()
                    append = stack.append
                    if code in _TO_MARK_PUSH:
                        append(UNKNOWN)
                    continue
                if budget < 0:
                    raise LimitExceeded(f"more than {lim.max_opcodes} opcodes")
                stack, pos = self._step(code, op_pos, pos, stack, marks, memo, result)
                append = stack.append
                if result.complete:
                    break
                if len(stack) > lim.max_stack:
                    raise LimitExceeded(f"more than {lim.max_stack} values on the stack")
        except IndexError:
            if op_pos >= n:
                self._broken(result, op_pos, "the pickle ends without STOP")
            else:
                self._broken(result, op_pos, "pops from an empty stack or an unbalanced MARK")
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            self._broken(result, op_pos, str(exc))
        finally:
            self.opcodes = lim.max_opcodes - budget
        result.imports = list(self.seen.values())
        return result

    def _text(self, value: object) -> str | None:
        """The string a stack value holds, if it is a (short) string."""
        if type(value) is tuple and value[1] - value[0] <= SHORT_TEXT:
            start, end, is_text = value
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
        """One opcode with real values for scalars, strings and containers (joblib mode)."""
        data, n = self.data, len(self.data)
        op = chr(code)
        if code in _PUSH_FIXED:
            size = _PUSH_FIXED[code]
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
            text = self._text((pos, pos + length, is_text)) if code in _STRINGS else None
            stack.append(text if text is not None else UNKNOWN)
            pos += length
        elif code == 0x94:  # MEMOIZE
            memo[len(memo)] = stack[-1]
        elif code == 0x68:  # BINGET
            key = data[pos]
            pos += 1
            if key not in memo:
                raise ValueError(f"memo key {key} read before it is written")
            stack.append(memo[key])
        elif code == 0x28:  # MARK
            marks.append(stack)
            stack = []
        elif code in _TO_MARK:
            items, stack = stack, marks.pop()
            if op == "l":
                stack.append(items)
            elif op == "t":
                stack.append(tuple(items))
            elif op in "du":
                target = {} if op == "d" else stack[-1]
                if isinstance(target, dict):
                    for key, value in zip(items[::2], items[1::2], strict=False):
                        if isinstance(key, str | int | float | bool | tuple):
                            target[key] = value
                if op == "d":
                    stack.append(target)
            elif op == "e" and isinstance(stack[-1], list):
                stack[-1].extend(items)
            elif op == "\x91":
                stack.append(UNKNOWN)
        elif 0x85 <= code <= 0x87:
            size = code - 0x84
            if len(stack) < size:
                raise IndexError
            items = stack[len(stack) - size :]
            del stack[len(stack) - size :]
            stack.append(tuple(items))
        elif op == "R" and len(stack) >= 2:  # REDUCE keeping the arguments
            args, func = stack.pop(), stack.pop()
            self._call(func, op_pos, "REDUCE")
            stack.append(Called(func, args))
        elif op == "b" and len(stack) >= 2 and _is_joblib_array(stack[-2]):
            state = stack.pop()
            pos = self._skip_joblib_array(state, pos, result)
        else:
            return self._step(code, op_pos, pos, stack, marks, memo, result)
        return stack, pos

    def _skip_joblib_array(self, state: object, pos: int, result: PickleResult) -> int:
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

        kind = np.dtype(descr)
        if kind.hasobject:  # object arrays are a nested pickle
            nested = self.run(pos)
            if not nested.complete:
                raise ValueError("nested object-array pickle breaks off")
            return nested.end
        if state.get("numpy_array_alignment_bytes"):
            pos += 1 + self.data[pos]
        count = 1
        for dim in shape:
            if not isinstance(dim, int) or dim < 0:
                raise ValueError("NumpyArrayWrapper shape is not a tuple of sizes")
            count *= dim
        pos += count * kind.itemsize
        if pos > len(self.data):
            raise ValueError("joblib array data runs past the end of the file")
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
            result.value = stack.pop() if stack else UNKNOWN
            result.complete = True
            result.end = pos
        elif op == "c":  # GLOBAL module\nname\n
            g = Global(*arg)  # type: ignore[misc]
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
            g = Global(*arg)  # type: ignore[misc]
            self._import(g, op_pos)
            self._call(g, op_pos, "INST")
            stack = marks.pop()
            stack.append(Called(g))
        elif op == "o":  # OBJ: the first item since MARK is the class
            items = stack
            stack = marks.pop()
            if not items:
                raise ValueError("OBJ without a class")
            self._call(items[0], op_pos, "OBJ")
            stack.append(Called(items[0]))
        elif op == "R":  # REDUCE
            _args, func = stack.pop(), stack.pop()
            self._call(func, op_pos, "REDUCE")
            stack.append(Called(func))
        elif op == "\x81":  # NEWOBJ
            _args, cls = stack.pop(), stack.pop()
            self._call(cls, op_pos, "NEWOBJ")
            stack.append(Called(cls))
        elif op == "\x92":  # NEWOBJ_EX
            _kwargs, _args, cls = stack.pop(), stack.pop(), stack.pop()
            self._call(cls, op_pos, "NEWOBJ_EX")
            stack.append(Called(cls))
        elif op == "b":  # BUILD: obj.__setstate__(state) or a dict update
            stack.pop()
            if isinstance(stack[-1], Global):
                self._call(stack[-1], op_pos, "BUILD")
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
            memo[int(arg)] = stack[-1]  # type: ignore[arg-type]
        elif op in "ghj":  # GET, BINGET, LONG_BINGET
            key = int(arg)  # type: ignore[arg-type]
            if key not in memo:
                raise ValueError(f"memo key {key} read before it is written")
            stack.append(memo[key])
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
            stack.pop()
        elif op == "s":  # SETITEM
            stack.pop()
            stack.pop()
        elif op in "\x85\x86\x87":  # TUPLE1/2/3
            size = code - 0x84
            if len(stack) < size:
                raise IndexError
            del stack[len(stack) - size :]
            stack.append(UNKNOWN)
        elif op in "SV":
            stack.append(arg)
        elif op in "\x80\x95":  # PROTO, FRAME: no stack effect
            pass
        elif op == "\x98":  # READONLY_BUFFER needs a value
            stack[-1]  # noqa: B018
        else:  # a value from a text argument (INT, LONG, FLOAT) or NEXT_BUFFER
            stack.append(UNKNOWN)
        return stack, pos

    def _memo_put(self, memo: dict[int, object], key: int, stack: list[object]) -> None:
        if len(memo) >= self.limits.max_memo:
            raise LimitExceeded(f"more than {self.limits.max_memo} memo entries")
        memo[key] = stack[-1]

    def _broken(self, result: PickleResult, offset: int, why: str) -> None:
        result.end = offset
        self.report.add(
            "pickle.malformed",
            "medium",
            f"the pickle is malformed at byte {offset} ({why}); what precedes it was analysed",
            offset,
        )
        self.report.incomplete = f"malformed pickle at byte {offset}"


TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_MAGIC_PICKLE = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


def looks_like_pickle(head: bytes) -> bool:
    """A protocol 2-5 header, or a protocol 0/1 stream whose first opcodes parse."""
    if len(head) >= 2 and head[0] == 0x80:
        return 2 <= head[1] <= 5
    if not head or chr(head[0]) not in "(]}cIiLFSVNKJMGXTU\x8c":
        return False
    probe = FileReport("probe", "pickle")
    machine = PickleMachine(head, probe, Limits(max_opcodes=64))
    try:
        machine.run(0)
    except LimitExceeded:
        return True
    return not any(
        f.rule == "pickle.malformed" and (f.offset or 0) < min(len(head), 16)
        for f in probe.findings
    )


def scan_pickle_stream(data: bytes | memoryview, report: FileReport, limits: Limits) -> None:
    """Scan one or more consecutive pickles (the legacy torch format writes five, then raw
    storage bytes, which are not parsed)."""
    if len(data) == 0:
        report.add("pickle.malformed", "medium", "empty pickle stream", 0)
        report.incomplete = "empty pickle stream"
        return
    if _scan_stream(data, report, limits, track=False):
        return
    # A joblib file breaks a plain reading at its first raw array: read it again with values.
    report.findings.clear()
    report.imports.clear()
    report.metadata.clear()
    report.incomplete = None
    report.metadata["format_detail"] = "joblib"
    _scan_stream(data, report, limits, track=True)


def _scan_stream(data: bytes | memoryview, report: FileReport, limits: Limits, track: bool) -> bool:
    """One pass; False when it should be redone in value-tracking mode (a joblib file)."""
    machine = PickleMachine(data, report, limits)
    machine.track = track
    pos, count = 0, 0
    legacy = bytes(memoryview(data)[: len(_TORCH_MAGIC_PICKLE)]) == _TORCH_MAGIC_PICKLE
    try:
        while pos < len(data):
            result = machine.run(pos)
            count += 1
            if not result.complete:
                break
            pos = result.end
            if legacy and count == 5:
                report.metadata["format_detail"] = "legacy torch checkpoint"
                break
            if count >= limits.max_pickles:
                raise LimitExceeded(f"more than {limits.max_pickles} pickles in one stream")
            if not (
                pos + 1 < len(data) and looks_like_pickle(bytes(memoryview(data)[pos : pos + 64]))
            ):
                break
    except LimitExceeded as exc:
        report.incomplete = f"limit reached: {exc}"
    report.metadata["pickles"] = count
    report.metadata["opcodes"] = machine.opcodes
    if pos < len(data) and not report.incomplete:
        report.metadata["trailing_bytes"] = len(data) - pos
    joblib = "joblib.numpy_pickle.NumpyArrayWrapper" in report.imports
    return track or not (joblib and report.incomplete)

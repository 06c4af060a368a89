"""Benchmark: trojanscope's model-file scanner against two peer scanners, picklescan and modelscan.

The peers are installed from PyPI into their own virtual environment (``scan-peers-venv`` next to
the results, created on first use) and only ever run as subprocesses of their CLIs: nothing of
theirs is imported here. trojanscope runs both as a subprocess of its CLI (``trojanscope scan
FILE --json``: process start-up is included for every tool, so the timings compare) and
in-process (``Scanner().scan_paths``), reported separately.

1. Throughput (MB = 10^6 bytes, best of N wall-clock runs) on large benign checkpoints (torch
   zip, legacy torch, safetensors, ~200 MB each), opcode-dense pickles (protocol 4 and 2) and a
   tiny pickle (start-up cost). Every verdict must be clean: anything else is a false positive.
2. Start-up: ``trojanscope scan tiny.pkl`` (its default, human-readable output) against
   ``picklescan -p tiny.pkl``, run in turn (A B A B ...) so that the machine's drift hits both,
   with every tool's modules compiled to bytecode as a normal install has them; the median
   wall time of each and the median of the pairwise ratios.
3. Detection on the corpus of ``tests/scan/corpus.py``: flagged or not per sample and tool, with
   the tool's own reasoning; errors and skipped (unsupported) files are never counted as
   detections. The canary file that any payload would create must not exist afterwards.

    python benchmarks/scan.py [--out benchmarks/results/scan] [--skip-throughput] [--skip-peers]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("picklescan", "modelscan")
TOOLS = ("trojanscope", "trojanscope-inproc", *PEERS)
TOOL_LABELS = {
    "trojanscope": "trojanscope (CLI)",
    "trojanscope-inproc": "trojanscope (in-process)",
    "picklescan": "picklescan (CLI)",
    "modelscan": "modelscan (CLI)",
}
MB = 1e6
RUN_TIMEOUT = 600.0  # seconds per scan
INSTALL_TIMEOUT = 900.0
REASON_CHARS = 700


# --- machine and environment -----------------------------------------------------------------


def limit_cpus(count: int = 2) -> list[int]:
    """Pin this process (and so every subprocess) to at most ``count`` CPUs."""
    cpus = sorted(os.sched_getaffinity(0))[:count]
    os.sched_setaffinity(0, cpus)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(count)
    return cpus


def machine_info(cpus: list[int]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_used": cpus,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_total_gb"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    return info


def _tail(text: str, chars: int = 1500) -> str:
    text = text.strip()
    return text if len(text) <= chars else "..." + text[-chars:]


def _peer_version(python: Path, package: str) -> str | None:
    """Version of ``package`` in the peers' venv (asks that interpreter, not ours)."""
    if not python.exists():
        return None
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def ensure_peers(venv: Path) -> dict[str, dict[str, Any]]:
    """Create the peers' venv and pip-install each peer that is missing; never raises."""
    python = venv / "bin" / "python"
    info: dict[str, dict[str, Any]] = {}
    if not python.exists():
        base = shutil.which("python3") or sys.executable
        print(f"creating {venv} with {base} -m venv")
        result = subprocess.run([base, "-m", "venv", str(venv)], capture_output=True, text=True)
        if result.returncode != 0:
            error = f"python3 -m venv failed: {_tail(result.stderr)}"
            return {peer: {"installed": False, "error": error} for peer in PEERS}
    for peer in PEERS:
        version = _peer_version(python, peer)
        log = None
        if version is None:
            print(f"pip install {peer} into {venv}")
            cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", peer]
            try:
                result = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT
                )
                log = _tail(result.stdout + result.stderr)
            except subprocess.TimeoutExpired:
                log = f"pip install timed out after {INSTALL_TIMEOUT:.0f} s"
            version = _peer_version(python, peer)
        cli = venv / "bin" / peer
        if version is None or not cli.exists():
            info[peer] = {"installed": False, "error": log or "not importable after install"}
            print(f"  {peer}: install FAILED")
        else:
            info[peer] = {"installed": True, "version": version, "cli": str(cli)}
    return info


# --- running the tools ---------------------------------------------------------------------------


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# Runs one command and prints its measures as JSON. A separate small process (python -I -S)
# forks the tool, because Linux's ru_maxrss survives exec: a child forked straight from this
# process (torch, 200 MB state dicts) would inherit our peak RSS as its own.
_LAUNCHER = r"""
import json, os, signal, sys, time
out, err, timeout, cmd = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.dup2(os.open(out, os.O_WRONLY | os.O_TRUNC), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_TRUNC), 2)
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
signal.signal(signal.SIGALRM, lambda *_: os.kill(pid, signal.SIGKILL))
signal.setitimer(signal.ITIMER_REAL, timeout)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
signal.setitimer(signal.ITIMER_REAL, 0)
print(json.dumps({
    "code": os.waitstatus_to_exitcode(status),
    "timed_out": seconds >= timeout,
    "seconds": seconds,
    "cpu_seconds": usage.ru_utime + usage.ru_stime,
    "peak_rss_mb": usage.ru_maxrss / 1024,
}))
"""


def _run(cmd: list[str], cwd: Path) -> tuple[int | None, str, str, dict[str, float]]:
    """Run ``cmd``; return (exit code or None on timeout, stdout, stderr, measures): wall
    ``seconds`` from fork to exit (process start-up included), ``cpu_seconds`` (user + system)
    and ``peak_rss_mb`` of the tool's process, from ``wait4`` in the launcher."""
    env = dict(os.environ, COLUMNS="250", NO_COLOR="1", PYTHONIOENCODING="utf-8")
    out_path, err_path = cwd / "tool.stdout", cwd / "tool.stderr"
    out_path.write_bytes(b"")
    err_path.write_bytes(b"")
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(out_path), str(err_path)]
    result = subprocess.run(
        [*launcher, str(RUN_TIMEOUT), *cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT + 60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"launcher failed for {cmd}: {_tail(result.stderr)}")
    measures = json.loads(result.stdout)
    code = None if measures.pop("timed_out") else measures.pop("code")
    measures.pop("code", None)
    out = out_path.read_bytes().decode(errors="replace")
    err = err_path.read_bytes().decode(errors="replace")
    return code, out, err, measures


def _result(
    status: str, measures: dict[str, float], verdict: str, reason: str, **extra: Any
) -> dict:
    """``status``: clean, flagged, error (the tool failed), unsupported (nothing scanned) or
    timeout; ``verdict`` is the tool's own word for it."""
    return {
        "status": status,
        "flagged": status == "flagged",
        **measures,
        "verdict": verdict,
        "reason": reason[:REASON_CHARS],
        **extra,
    }


def _ts_reason(files: list[dict[str, Any]]) -> str:
    parts = []
    for report in files:
        where = report["location"].split("!", 1)
        member = f" [{where[1]}]" if len(where) > 1 else ""
        for finding in report["findings"]:
            if finding["severity"] != "info":
                text = f"{finding['severity']} {finding['rule']}: {finding['message']}"
                parts.append(text + member)
        if report.get("incomplete"):
            parts.append(f"inconclusive: {report['incomplete']}{member}")
        if report.get("error"):
            parts.append(f"error: {report['error']}")
    return "; ".join(parts)


def _ts_names(files: list[dict[str, Any]]) -> list[str]:
    return sorted({name for report in files for name in report.get("imports", [])})


def run_trojanscope_cli(cli: Path, path: Path, cwd: Path) -> dict:
    code, out, err, measures = _run([str(cli), "scan", str(path), "--json"], cwd)
    if code is None:
        return _result("timeout", measures, "timeout", "")
    try:
        report = json.loads(out)
    except json.JSONDecodeError:
        return _result("error", measures, f"exit {code}", _tail(out + err), exit_code=code)
    from trojanscope.scan.findings import EXIT_CODES

    verdict = report["verdict"]
    status = "clean" if verdict == "clean" else "flagged"
    odd = "" if EXIT_CODES.get(verdict) == code else f" (unexpected exit {code})"
    files = report["files"]
    reason = _ts_reason(files)
    return _result(status, measures, verdict + odd, reason, exit_code=code, names=_ts_names(files))


def run_trojanscope_inproc(path: Path) -> dict:
    from trojanscope.scan.findings import overall_verdict
    from trojanscope.scan.scanner import Scanner

    started, cpu = time.perf_counter(), time.process_time()
    reports = Scanner().scan_paths([path])
    verdict = overall_verdict(reports)
    measures = {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "peak_rss_mb": None,  # not measurable per call inside this process
    }
    files = [r.as_dict() for r in reports]
    status = "clean" if verdict == "clean" else "flagged"
    return _result(status, measures, verdict, _ts_reason(files), names=_ts_names(files))


_PICKLESCAN_COUNT = re.compile(
    r"^(Scanned files|Infected files|Suspicious globals|Dangerous globals): (\d+)$", re.M
)


def run_picklescan(cli: Path, path: Path, cwd: Path, show_globals: bool = False) -> dict:
    """Exit codes (picklescan/cli.py): 0 no dangerous global, 1 dangerous globals, 2 scan error
    (wins over 1 when both happen, so the printed counts decide). Suspicious globals do not
    change the exit code and are not counted as a detection (they are listed in the reason)."""
    cmd = [str(cli), "--path", str(path)] + (["--globals"] if show_globals else [])
    code, out, err, measures = _run(cmd, cwd)
    if code is None:
        return _result("timeout", measures, "timeout", "")
    counts = {k: int(v) for k, v in _PICKLESCAN_COUNT.findall(out)}
    lines = [
        line.strip()
        for line in (out + "\n" + err).splitlines()
        if line.strip()
        and not _PICKLESCAN_COUNT.match(line.strip())
        and "SCAN SUMMARY" not in line
        and "All globals found" not in line
    ]
    # the most telling lines first: dangerous imports, then everything else
    lines.sort(key=lambda line: 0 if "dangerous" in line.lower() else 1)
    reason = " | ".join(lines).replace(str(path.parent) + os.sep, "")
    # with --globals: "  * module.name - dangerous|suspicious|innocuous"
    names = sorted(set(re.findall(r"^\s*\* (\S+) - \w+$", out, re.M)))
    extra = {"exit_code": code, "counts": counts, "names": names}
    dangerous = counts.get("Dangerous globals", 0) + counts.get("Infected files", 0)
    suspicious = counts.get("Suspicious globals", 0)
    verdict = f"exit {code}, {counts.get('Dangerous globals', 0)} dangerous"
    verdict += f", {suspicious} suspicious" if suspicious else ""
    if dangerous > 0 or code == 1:
        return _result("flagged", measures, verdict, reason, **extra)
    if code != 0 or "Scanned files" not in counts:
        return _result("error", measures, f"exit {code}", reason or _tail(out + err), **extra)
    if counts["Scanned files"] == 0:
        return _result("unsupported", measures, "nothing scanned", reason, **extra)
    if "could not parse" in out:
        verdict += ", not parsed"
    return _result("clean", measures, verdict, reason, **extra)


def run_modelscan(cli: Path, path: Path, cwd: Path) -> dict:
    """Exit codes (modelscan/cli.py): 0 no issue, 1 issues found, 2 scan errors (wins over 1),
    3 nothing scanned (no supported file, or its only file failed to parse), 4 usage error.
    The JSON report (written with ``-o``: its stdout copy is wrapped by rich) decides: issues
    found = detection, even with errors too; errors (also with exit 3) = error; nothing scanned
    and no error = unsupported. Runs in an empty cwd, so no ``modelscan-settings.toml`` is
    picked up."""
    report_file = cwd / "modelscan-report.json"
    report_file.unlink(missing_ok=True)
    cmd = [str(cli), "scan", "-p", str(path), "-r", "json", "-o", str(report_file)]
    code, out, err, measures = _run(cmd, cwd)
    if code is None:
        return _result("timeout", measures, "timeout", "")
    try:
        report = json.loads(report_file.read_text())
    except (OSError, json.JSONDecodeError):
        verdict = f"exit {code}, no report"
        return _result("error", measures, verdict, _tail(out + err), exit_code=code)
    issues, errors = report.get("issues", []), report.get("errors", [])
    scanned = report.get("summary", {}).get("scanned", {}).get("total_scanned", 0)
    parts = [
        f"{i.get('severity')} {i.get('module')}.{i.get('operator')} in {i.get('source')}"
        for i in issues
    ]
    parts += [
        f"error {e.get('category')}: {e.get('description')} ({e.get('source')})" for e in errors
    ]
    reason = "; ".join(parts).replace(str(path.parent) + os.sep, "")
    names = sorted({f"{i.get('module')}.{i.get('operator')}" for i in issues})
    extra = {"exit_code": code, "issues": len(issues), "errors": len(errors), "scanned": scanned}
    extra["names"] = names
    verdict = f"exit {code}, {len(issues)} issues" + (f", {len(errors)} errors" if errors else "")
    if issues or code == 1:
        return _result("flagged", measures, verdict, reason, **extra)
    # exit 3 also comes with errors when the only file failed to parse: that is an error
    if errors or code not in (0, 3):
        return _result("error", measures, verdict, reason or _tail(out + err), **extra)
    if code == 3 or scanned == 0:
        return _result("unsupported", measures, f"exit {code}, nothing scanned", reason, **extra)
    return _result("clean", measures, verdict, reason, **extra)


def make_runners(
    peers: dict[str, dict[str, Any]], cwd: Path, detail: bool
) -> dict[str, Callable[[Path], dict]]:
    cli = Path(sys.executable).parent / "trojanscope"
    runners: dict[str, Callable[[Path], dict]] = {
        "trojanscope": lambda p: run_trojanscope_cli(cli, p, cwd),
        "trojanscope-inproc": run_trojanscope_inproc,
    }
    if peers.get("picklescan", {}).get("installed"):
        picklescan = Path(peers["picklescan"]["cli"])
        runners["picklescan"] = lambda p: run_picklescan(picklescan, p, cwd, detail)
    if peers.get("modelscan", {}).get("installed"):
        modelscan = Path(peers["modelscan"]["cli"])
        runners["modelscan"] = lambda p: run_modelscan(modelscan, p, cwd)
    return runners


# --- start-up ------------------------------------------------------------------------------------


def startup(peers: dict[str, dict[str, Any]], tiny: Path, cwd: Path, runs: int) -> dict:
    """Median wall seconds of `scan` on a tiny pickle, trojanscope and picklescan in turn."""
    import statistics

    # pip compiles an installed package's modules; an editable install (and an environment
    # with PYTHONDONTWRITEBYTECODE) would otherwise compile trojanscope's on every start
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "trojanscope")],
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    )
    commands = {"trojanscope": [str(Path(sys.executable).parent / "trojanscope"), "scan"]}
    if peers.get("picklescan", {}).get("installed"):
        commands["picklescan"] = [peers["picklescan"]["cli"], "-p"]
    times: dict[str, list[float]] = {tool: [] for tool in commands}
    for _ in range(runs + 1):  # the first round warms the file cache and is dropped
        for tool, command in commands.items():
            code, _, _, measures = _run([*command, str(tiny)], cwd)
            if code not in (0, None):
                raise RuntimeError(f"{tool} exited {code} on {tiny}")
            times[tool].append(measures["seconds"])
    result: dict[str, Any] = {
        tool: {"median_s": statistics.median(t[1:]), "min_s": min(t[1:])}
        for tool, t in times.items()
    }
    if "picklescan" in times:
        ratios = [
            a / b for a, b in zip(times["trojanscope"][1:], times["picklescan"][1:], strict=True)
        ]
        result["ratio_median"] = statistics.median(ratios)
    result["runs"] = runs
    return result


# --- throughput ----------------------------------------------------------------------------------


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Build ``path`` through a temporary name, so an interrupted run leaves no partial file."""
    if not path.exists():
        tmp = path.with_name(path.name + ".partial")
        if tmp.is_dir():
            shutil.rmtree(tmp)
        else:
            tmp.unlink(missing_ok=True)
        print(f"generating {path.name}")
        write(tmp)
        tmp.rename(path)
    return path


def _state_dict() -> dict[str, Any]:
    """~201 MB of float32: four 4096x3072 weights and their biases."""
    import torch

    generator = torch.Generator().manual_seed(0)
    state = {}
    for i in range(4):
        state[f"layer{i}.weight"] = torch.randn(4096, 3072, generator=generator)
        state[f"layer{i}.bias"] = torch.randn(4096, generator=generator)
    return state


def throughput_files(folder: Path) -> list[tuple[str, Path, str]]:
    import torch
    from safetensors.torch import save_file

    from tests.scan.corpus import build_large_benign

    folder.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {}

    def get_state() -> dict[str, Any]:
        if not state:
            state.update(_state_dict())
        return state

    def large_benign(tmp: Path) -> None:
        tmp.mkdir()
        build_large_benign(tmp).rename(tmp.with_suffix(".tmp"))
        tmp.rmdir()
        tmp.with_suffix(".tmp").rename(tmp)

    def dense_p2(tmp: Path) -> None:
        records = [(i, i * 0.5, {"k": i % 256}) for i in range(1_000_000)]
        tmp.write_bytes(pickle.dumps(records, protocol=2))

    files = [
        (
            "tiny.pkl",
            lambda t: t.write_bytes(pickle.dumps([1, 2.5, "x", {"k": (1,)}], protocol=4)),
            "tiny protocol 4 pickle: measures start-up cost",
        ),
        (
            "torch-zip-200mb.pt",
            lambda t: torch.save(get_state(), t),
            "torch.save zip of a state dict: 4 float32 weights 4096x3072 + biases",
        ),
        (
            "torch-legacy-200mb.pt",
            lambda t: torch.save(get_state(), t, _use_new_zipfile_serialization=False),
            "the same state dict, legacy (non-zip) torch.save",
        ),
        (
            "model-200mb.safetensors",
            lambda t: save_file(get_state(), str(t)),
            "the same state dict, safetensors",
        ),
        (
            "large-benign-p4.pkl",
            large_benign,
            "tests/scan/corpus.py build_large_benign: 2M (int, float, str, dict) records, "
            "protocol 4, framed",
        ),
        (
            "dense-p2-1m.pkl",
            dense_p2,
            "pickle.dumps protocol 2 of 1M tuples (int, float, {'k': int})",
        ),
    ]
    return [(name, _atomic(folder / name, write), what) for name, write, what in files]


def throughput(
    files: list[tuple[str, Path, str]], runners: dict[str, Callable[[Path], dict]], runs: int
) -> list[dict[str, Any]]:
    rows = []
    for name, path, what in files:
        size = _size(path)
        row: dict[str, Any] = {"file": name, "description": what, "bytes": size, "tools": {}}
        print(f"{name} ({size / MB:.1f} MB)")
        for tool, runner in runners.items():
            results = []
            for _ in range(runs):
                results.append(runner(path))
                # a slow tool on a big file: one or two runs tell enough
                if results[-1]["seconds"] > 60 or results[-1]["status"] == "timeout":
                    break
            best = min(results, key=lambda r: r["seconds"])
            rss = [r["peak_rss_mb"] for r in results if r["peak_rss_mb"] is not None]
            entry = {
                "seconds": best["seconds"],
                "all_seconds": [r["seconds"] for r in results],
                "cpu_seconds": best["cpu_seconds"],
                "peak_rss_mb": max(rss) if rss else None,
                "mb_per_s": size / MB / best["seconds"] if best["status"] != "timeout" else None,
                "status": best["status"],
                "verdict": best["verdict"],
                "false_positive": best["status"] == "flagged",
                "reason": best["reason"],
            }
            if len({r["status"] for r in results}) > 1:
                entry["unstable_status"] = [r["status"] for r in results]
            row["tools"][tool] = entry
            print(
                f"  {tool:20s} {best['seconds']:8.3f} s {entry['mb_per_s'] or 0:9.1f} MB/s "
                f"{entry['peak_rss_mb'] or 0:7.0f} MB RSS {best['status']:11s} {best['verdict']}"
            )
        rows.append(row)
    return rows


# --- detection -----------------------------------------------------------------------------------


def detection(
    corpus_dir: Path, canary: Path, runners: dict[str, Callable[[Path], dict]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Scan every corpus sample with every tool; the second value lists the runs after which
    the canary existed (must stay empty)."""
    from tests.scan.corpus import build_corpus

    if corpus_dir.exists():
        shutil.rmtree(corpus_dir)
    samples = build_corpus(corpus_dir, canary)
    print(f"corpus: {len(samples)} samples in {corpus_dir}")
    rows, canary_hits = [], []
    for sample in samples:
        row: dict[str, Any] = {
            "name": sample.name,
            "path": str(sample.path.relative_to(corpus_dir)),
            "is_dir": sample.path.is_dir(),
            "malicious": sample.malicious,
            "technique": sample.technique,
            "expected_import": sample.expected_import,
            "tools": {},
        }
        for tool, runner in runners.items():
            result = row["tools"][tool] = runner(sample.path)
            if sample.expected_import is not None:
                # does the tool's report name the dangerous global, spelled as in the bytes?
                result["names_expected_import"] = result["flagged"] and (
                    sample.expected_import in result.get("names", [])
                    or sample.expected_import in result["reason"]
                )
            if canary.exists():
                canary_hits.append(f"{tool} on {sample.name}")
                canary.unlink()
        marks = " ".join(
            f"{tool}={'Y' if r['flagged'] else r['status'][0]}" for tool, r in row["tools"].items()
        )
        print(f"  {'M' if sample.malicious else 'b'} {sample.name:42s} {marks}")
        rows.append(row)
    return rows, canary_hits


def summarize(rows: list[dict[str, Any]], tools: list[str]) -> dict[str, Any]:
    malicious = [r for r in rows if r["malicious"]]
    benign = [r for r in rows if not r["malicious"]]
    per_tool = {}
    for tool in tools:
        stats: dict[str, Any] = {
            "detected": sum(r["tools"][tool]["flagged"] for r in malicious),
            "malicious": len(malicious),
            "false_positives": [r["name"] for r in benign if r["tools"][tool]["flagged"]],
            "benign": len(benign),
        }
        for status in ("error", "unsupported", "timeout"):
            stats[f"{status}_malicious"] = [
                r["name"] for r in malicious if r["tools"][tool]["status"] == status
            ]
            stats[f"{status}_benign"] = [
                r["name"] for r in benign if r["tools"][tool]["status"] == status
            ]
        named = [r for r in malicious if r["expected_import"]]
        stats["named_expected_import"] = sum(
            r["tools"][tool].get("names_expected_import", False) for r in named
        )
        stats["with_expected_import"] = len(named)
        stats["flagged_without_naming_expected_import"] = [
            r["name"]
            for r in named
            if r["tools"][tool]["flagged"] and not r["tools"][tool]["names_expected_import"]
        ]
        stats["missed"] = [
            r["name"] for r in malicious if r["tools"][tool]["status"] in ("clean", "unsupported")
        ]
        verdicts: dict[str, int] = {}
        for r in rows:
            verdict = r["tools"][tool]["verdict"]
            if tool.startswith("trojanscope"):
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
        if verdicts:
            stats["verdicts"] = verdicts
        per_tool[tool] = stats
    peers = [t for t in tools if t in PEERS]
    peer_only = [
        {
            "name": r["name"],
            "trojanscope": r["tools"]["trojanscope-inproc"]["verdict"],
            "peers": {
                p: {"verdict": r["tools"][p]["verdict"], "reason": r["tools"][p]["reason"]}
                for p in peers
                if r["tools"][p]["flagged"]
            },
        }
        for r in malicious
        if any(r["tools"][p]["flagged"] for p in peers)
        and not r["tools"]["trojanscope-inproc"]["flagged"]
    ]
    only_trojanscope = [
        r["name"]
        for r in malicious
        if r["tools"]["trojanscope-inproc"]["flagged"]
        and peers
        and not any(r["tools"][p]["flagged"] for p in peers)
    ]
    cli_mismatch = [
        r["name"]
        for r in rows
        if r["tools"]["trojanscope"]["verdict"].split()[0]
        != r["tools"]["trojanscope-inproc"]["verdict"]
    ]
    return {
        "per_tool": per_tool,
        "detected_by_peer_missed_by_trojanscope": peer_only,
        "detected_only_by_trojanscope": only_trojanscope,
        "trojanscope_cli_vs_inproc_mismatch": cli_mismatch,
    }


# --- report --------------------------------------------------------------------------------------


def _throughput_line(
    row: dict[str, Any], tool: str, entry: dict[str, Any], startup: dict[str, float]
) -> str:
    status = entry["status"]
    label = {"flagged": "**FALSE POSITIVE**", "unsupported": "skipped (not scanned)"}.get(
        status, status
    )
    if status == "timeout":
        label = f"timeout (> {RUN_TIMEOUT:.0f} s)"
    small = row["bytes"] < MB  # MB/s of a tiny file is start-up cost, not throughput
    speed = "-" if small or entry["mb_per_s"] is None else f"{entry['mb_per_s']:.1f}"
    rss = "-" if entry["peak_rss_mb"] is None else f"{entry['peak_rss_mb']:.0f}"
    cells = [
        row["file"],
        f"{row['bytes'] / MB:.1f}",
        TOOL_LABELS[tool],
        f"{entry['seconds']:.3f}",
        f"{entry['seconds'] - startup[tool]:.3f}" if tool in startup and not small else "-",
        speed,
        f"{entry['cpu_seconds']:.2f}",
        rss,
        f"{label} ({entry['verdict']})",
    ]
    return "| " + " | ".join(cells) + " |"


def _cell_detection(result: dict[str, Any] | None, malicious: bool) -> str:
    if result is None:
        return "n/a"
    status = result["status"]
    if malicious:
        word = {"flagged": "detected", "clean": "**missed**", "unsupported": "**missed** (skipped)"}
    else:
        word = {"flagged": "**FALSE POSITIVE**", "clean": "ok", "unsupported": "ok (skipped)"}
    return f"{word.get(status, status)} ({result['verdict']})"


def markdown(report: dict[str, Any]) -> str:
    tools = report["tools_run"]
    versions = ", ".join(f"{t} {v}" for t, v in report["versions"].items() if v)
    lines = [
        "# Model-file scanner benchmark: trojanscope vs picklescan vs modelscan",
        "",
        f"Versions: {versions}. Machine: {report['machine'].get('cpu_model', '?')}, "
        f"{len(report['machine']['cpus_used'])} CPU(s) used.",
        "",
    ]
    for peer, info in report["peers"].items():
        if not info.get("installed"):
            lines.append(f"- {peer}: NOT INSTALLED ({_tail(info.get('error', ''), 200)})")
    if report.get("throughput"):
        runs = report["runs"]
        lines += [
            f"## Throughput (best of {runs} wall-clock runs, MB = 10^6 bytes; CLI rows include "
            "process start-up)",
            "",
            "`net s` = best s minus the same tool's best s on tiny.pkl (start-up and fixed "
            "costs): about 0 means the tool did not read the bulk of the file.",
            "",
            "| file | MB | tool | best s | net s | MB/s | CPU s | peak RSS MB | verdict |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        startup = {
            tool: entry["seconds"]
            for row in report["throughput"]
            if row["file"] == "tiny.pkl"
            for tool, entry in row["tools"].items()
        }
        for row in report["throughput"]:
            lines += [_throughput_line(row, t, e, startup) for t, e in row["tools"].items()]
        fps = [
            f"{TOOL_LABELS[t]} on {row['file']}"
            for row in report["throughput"]
            for t, e in row["tools"].items()
            if e["false_positive"]
        ]
        lines += ["", f"False positives on the benign throughput files: {', '.join(fps) or 'none'}"]
        lines.append("")
    if report.get("startup"):
        start = report["startup"]
        lines += [
            f"## Start-up (`scan tiny.pkl`, median of {start['runs']} runs in turn, modules "
            "compiled)",
            "",
            "| tool | median s | min s |",
            "| --- | ---: | ---: |",
            *(
                f"| {tool} | {e['median_s']:.3f} | {e['min_s']:.3f} |"
                for tool, e in start.items()
                if isinstance(e, dict)
            ),
            "",
        ]
        if "ratio_median" in start:
            lines += [
                f"trojanscope / picklescan, median of the pairwise ratios: "
                f"{start['ratio_median']:.2f}",
                "",
            ]
    if report.get("detection"):
        lines += [
            "## Detection on the tests/scan/corpus.py corpus",
            "",
            "| sample | kind | expected import | "
            + " | ".join(TOOL_LABELS[t] for t in tools)
            + " |",
            "| --- | --- | --- | " + " | ".join("---" for _ in tools) + " |",
        ]
        flagged_by_peer_only = {
            e["name"] for e in report["summary"]["detected_by_peer_missed_by_trojanscope"]
        }
        for row in report["detection"]:
            name = row["name"] + (" [dir]" if row["is_dir"] else "")
            if row["name"] in flagged_by_peer_only:
                name = f"**⚠ {name}**"
            kind = "malicious" if row["malicious"] else "benign"
            cells = [_cell_detection(row["tools"].get(t), row["malicious"]) for t in tools]
            expected = row["expected_import"] or "-"
            lines.append(f"| {name} | {kind} | {expected} | " + " | ".join(cells) + " |")
        summary = report["summary"]
        lines += ["", "### Summary", ""]
        for tool in tools:
            s = summary["per_tool"][tool]
            extra = []
            for status in ("error", "unsupported", "timeout"):
                m, b = s[f"{status}_malicious"], s[f"{status}_benign"]
                if m or b:
                    extra.append(f"{status}: {len(m)} malicious / {len(b)} benign")
            if "verdicts" in s:
                extra.append(
                    "verdicts " + ", ".join(f"{v} {n}" for v, n in sorted(s["verdicts"].items()))
                )
            fps = ", ".join(s["false_positives"]) or "none"
            lines.append(
                f"- **{TOOL_LABELS[tool]}**: detected {s['detected']}/{s['malicious']} malicious, "
                f"false positives {len(s['false_positives'])}/{s['benign']} benign ({fps}); "
                f"named the expected global in {s['named_expected_import']}/"
                f"{s['with_expected_import']}" + (f"; {'; '.join(extra)}" if extra else "")
            )
            unnamed = s["flagged_without_naming_expected_import"]
            if unnamed and tool.startswith("trojanscope"):
                text = ", ".join(unnamed)
                lines.append(f"  - flagged without naming the expected global: {text}")
        peer_only = summary["detected_by_peer_missed_by_trojanscope"]
        if peer_only:
            lines.append(
                f"- **⚠ DETECTED BY A PEER BUT MISSED BY TROJANSCOPE ({len(peer_only)}): "
                + ", ".join(e["name"] for e in peer_only)
                + "** (a trojanscope bug)"
            )
        else:
            lines.append("- Detected by a peer but missed by trojanscope: none")
        only = summary["detected_only_by_trojanscope"]
        lines.append(f"- Detected only by trojanscope ({len(only)}): {', '.join(only) or 'none'}")
        if summary["trojanscope_cli_vs_inproc_mismatch"]:
            lines.append(
                "- trojanscope CLI and in-process verdicts differ on: "
                + ", ".join(summary["trojanscope_cli_vs_inproc_mismatch"])
            )
    canary = report.get("canary")
    if canary:
        state = "absent after all runs (ok)" if canary["absent"] else "**PRESENT: a payload ran**"
        lines.append(f"- Canary {canary['path']}: {state}")
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scan"))
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-peers", action="store_true", help="run trojanscope only")
    parser.add_argument("--runs", type=int, default=3, help="throughput runs per tool and file")
    parser.add_argument("--startup-runs", type=int, default=15, help="start-up runs per tool")
    parser.add_argument(
        "--keep-corpus", action="store_true", help="keep the malicious corpus files afterwards"
    )
    args = parser.parse_args()
    out = args.out.resolve()
    # tests.scan.corpus imports from the repository root
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    cpus = limit_cpus(2)
    import torch

    torch.set_num_threads(len(cpus))
    results = out.parent
    results.mkdir(parents=True, exist_ok=True)

    peers = {} if args.skip_peers else ensure_peers(results / "scan-peers-venv")
    scan_sources = list((ROOT / "src" / "trojanscope" / "scan").glob("*.py"))
    versions = {
        "trojanscope": importlib.metadata.version("trojanscope"),
        **{p: i.get("version") for p, i in peers.items()},
    }
    print("versions:", versions)
    report: dict[str, Any] = {
        "benchmark": "scan",
        "machine": machine_info(cpus),
        "versions": versions,
        "environment": {
            "torch": torch.__version__,
            "trojanscope_python": sys.executable,
            "peers_venv": str(results / "scan-peers-venv") if peers else None,
            # trojanscope is installed editable: when were its scanner sources last changed
            "trojanscope_scan_sources_mtime_utc": time.strftime(
                "%Y-%m-%dT%H:%M:%S",
                time.gmtime(max(p.stat().st_mtime for p in scan_sources)),
            ),
        },
        "peers": peers,
        "runs": args.runs,
        "mb": "10^6 bytes",
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scan-bench-cwd-") as tmp:
        cwd = Path(tmp)
        runners = make_runners(peers, cwd, detail=False)
        report["tools_run"] = list(runners)
        report["commands"] = {
            "trojanscope": "trojanscope scan PATH --json",
            "trojanscope-inproc": "overall_verdict(Scanner().scan_paths([PATH]))",
            "picklescan": "picklescan --path PATH (detection: + --globals)",
            "modelscan": "modelscan scan -p PATH -r json -o REPORT (empty cwd)",
        }
        if not args.skip_throughput:
            files = throughput_files(results / "scan-files")
            report["throughput"] = throughput(files, runners, args.runs)
            tiny = next(path for name, path, _ in files if name == "tiny.pkl")
            report["startup"] = startup(peers, tiny, cwd, args.startup_runs)
        corpus_dir, canary = results / "scan-corpus", results / "scan-corpus-canary"
        canary_before = canary.exists()
        canary.unlink(missing_ok=True)
        try:
            rows, hits = detection(corpus_dir, canary, make_runners(peers, cwd, detail=True))
        finally:
            if not args.keep_corpus and corpus_dir.exists():
                shutil.rmtree(corpus_dir)
    report["detection"] = rows
    report["summary"] = summarize(rows, report["tools_run"])
    report["canary"] = {
        "path": str(canary.relative_to(ROOT) if canary.is_relative_to(ROOT) else canary),
        "existed_before_run": canary_before,
        "appeared_after": hits,
        "absent": not hits and not canary.exists(),
    }
    report["total_seconds"] = time.perf_counter() - started
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    out.with_suffix(".md").write_text(text)
    print()
    print(text)
    assert report["canary"]["absent"], f"canary created by: {hits}"


if __name__ == "__main__":
    main()

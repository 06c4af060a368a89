"""Benchmark: `db build` of a spec on fresh catalogs with one and two worker processes and
through a local Ray instance with two workers; accepted defects per CPU-hour, scaling
efficiency, and the cost of one injection relative to training its clean model.

python benchmarks/build.py [--spec examples/quick.toml] [--out benchmarks/results/build.json]
                           [--no-ray]

Every worker runs one torch thread on its own core; a configuration's CPU-hours are its wall
time times its workers. The machine's load average is recorded before and after each build
(other processes on a shared machine slow the builds down).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _results import write_results

from trojanscope.database.catalog import Catalog
from trojanscope.device import CPU
from trojanscope.workflows.build import Progress, run_build
from trojanscope.workflows.executors import Executor, Job, RayExecutor, WorkerPool
from trojanscope.workflows.jobs import JobResult
from trojanscope.workflows.spec import load_spec

ExecutorMaker = Callable[[Catalog, int], Executor]

CONFIGURATIONS: dict[str, tuple[int, ExecutorMaker]] = {
    "pool-1": (1, lambda catalog, workers: WorkerPool(catalog, CPU, workers)),
    "pool-2": (2, lambda catalog, workers: WorkerPool(catalog, CPU, workers)),
    "ray-2": (2, lambda catalog, workers: RayExecutor(catalog, CPU, workers=workers)),
}


def _load() -> float:
    """The one-minute load average (how busy the shared machine is)."""
    return os.getloadavg()[0]


def _kind_seconds(results: list[JobResult], kind: str) -> dict[str, float | int]:
    times = [r.seconds for r in results if r.kind == kind]
    return {
        "jobs": len(times),
        "mean_seconds": statistics.mean(times) if times else 0.0,
        "total_seconds": sum(times),
    }


def run_one(spec_path: Path, name: str, workers: int, make: ExecutorMaker) -> dict[str, Any]:
    """One build of ``spec_path`` on a fresh catalog with the executor ``make`` builds."""
    results: list[JobResult] = []

    def done(_job: Job, result: JobResult) -> None:
        results.append(result)

    load_before = _load()
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog.open(Path(tmp) / "db", create=True)
        summary = run_build(
            load_spec(spec_path),
            catalog,
            lambda _jobs: make(catalog, workers),
            Progress(done=done),
            str(spec_path),
        )
    wall = summary.seconds
    cpu_hours = wall * workers / 3600
    clean = _kind_seconds(results, "clean")
    defect = _kind_seconds(results, "defect")
    return {
        "configuration": name,
        "workers": workers,
        "wall_seconds": wall,
        "cpu_hours": cpu_hours,
        "defects_built": summary.defects.built,
        "accepted": summary.defects.accepted,
        "rejected": summary.defects.rejected,
        "accepted_per_cpu_hour": summary.defects.accepted / cpu_hours,
        "clean_job": clean,
        "defect_job": defect,
        "injection_over_clean_training": (
            defect["mean_seconds"] / clean["mean_seconds"] if clean["mean_seconds"] else None
        ),
        "load_average_before": load_before,
        "load_average_after": _load(),
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as a table."""
    lines = [
        f"# db build of {report['spec']}",
        "",
        f"{report['machine']['cpus']} CPUs, torch {report['machine']['torch']}; one torch "
        "thread per worker; load average before/after each build in the JSON.",
        "",
        "| configuration | wall s | accepted / built | accepted per CPU-hour | scaling "
        "efficiency | clean job s | defect job s (mean) | injection / clean training |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in report["runs"]:
        eff = report["scaling_efficiency"].get(run["configuration"])
        ratio = run["injection_over_clean_training"]
        lines.append(
            f"| {run['configuration']} | {run['wall_seconds']:.0f} | {run['accepted']} / "
            f"{run['defects_built']} | {run['accepted_per_cpu_hour']:.0f} | "
            f"{'-' if eff is None else f'{eff:.2f}'} | {run['clean_job']['mean_seconds']:.1f} | "
            f"{run['defect_job']['mean_seconds']:.1f} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} |"
        )
    lines += [
        "",
        "Scaling efficiency: speed-up over `pool-1` divided by the workers. A defect job "
        "is the injection with its acceptance checks, criteria and repairs.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", type=Path, default=Path("examples/quick.toml"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/build.json"))
    parser.add_argument("--no-ray", action="store_true", help="Skip the Ray configuration.")
    args = parser.parse_args()
    torch.set_num_threads(1)

    runs = []
    for name, (workers, make) in CONFIGURATIONS.items():
        if args.no_ray and name.startswith("ray"):
            continue
        print(f"{name}: building {args.spec} ...", flush=True)
        started = time.perf_counter()
        run = run_one(args.spec, name, workers, make)
        runs.append(run)
        print(
            f"  {time.perf_counter() - started:.0f} s, {run['accepted']} of "
            f"{run['defects_built']} accepted, {run['accepted_per_cpu_hour']:.0f} accepted "
            f"per CPU-hour, load {run['load_average_before']:.2f} -> "
            f"{run['load_average_after']:.2f}",
            flush=True,
        )
    base = next((r for r in runs if r["configuration"] == "pool-1"), None)
    efficiency = {
        r["configuration"]: base["wall_seconds"] / r["wall_seconds"] / r["workers"]
        for r in runs
        if base is not None
    }
    report = {
        "benchmark": "build",
        "spec": str(args.spec),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "runs": runs,
        "scaling_efficiency": efficiency,
    }
    write_results(args.out, report, markdown(report))
    for name, eff in efficiency.items():
        print(f"  scaling efficiency {name}: {eff:.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

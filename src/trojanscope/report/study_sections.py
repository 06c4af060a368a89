"""The sections of the study report, as tables of formatted cells: acceptance matrix,
localization, repair outcomes, cost per criterion, the reference's headline figures beside ours.
Kept apart from the rendering so each section can be checked on its own."""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trojanscope.report import study_plots as plots
from trojanscope.report.tables import aggregate
from trojanscope.textsafe import shown

Row = dict[str, Any]

#: The reference's headline figures (BDefects4NN): best criterion's mean weighted Jaccard index
#: with the truth, and best repair's mean ASR drop.
REFERENCE_WJI = 0.1764
REFERENCE_ASR_DROP = 0.4050
#: Criteria that read the true trigger's effect: upper bounds, kept out of "ours".
REFERENCE_CRITERIA = frozenset({"oracle", "ablation"})
#: Section titles, in order (tests look for each).
TITLES = (
    "Acceptance matrix",
    "Localization",
    "Repair outcomes",
    "Cost per criterion",
    "The reference's headline figures beside ours",
)
GROUP_KEYS = ("dataset", "arch", "attack", "level", "order")
LOC_METRICS = (("WJI", "wji"), ("F1", "f1"), ("AUROC", "auroc"), ("AP", "ap"))
CARRYING = (
    ("carrying WJI", "carrying_wji"),
    ("carrying F1", "carrying_f1"),
    ("carrying AUROC", "carrying_auroc"),
)
REPAIR_METRICS = (
    ("ASR before", "asr_before"),
    ("ASR after", "asr_after"),
    ("ASR drop", "asr_drop"),
    ("acc before", "clean_acc_before"),
    ("acc after", "clean_acc_after"),
    ("acc drop", "acc_drop"),
    ("DER", "der"),
)
COST_METRICS = (("seconds", "seconds"), ("cost (forward passes)", "cost_forward"))
#: Rejected defects listed one by one, at most.
MAX_REJECTED = 50


@dataclass
class Table:
    """A table of formatted cells (strings from the catalog are escaped when rendered)."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Section:
    """One numbered section: sentences, tables, plot names."""

    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else shown(value)


def _mean_std(entry: Row, key: str) -> str:
    mean, std = entry.get(key), entry.get(f"{key}_std")
    if mean is None:
        return "-"
    return f"{mean:.3f}" if entry["n"] < 2 else f"{mean:.3f} ± {std:.3f}"


def _sort_key(entry: Row, keys: Sequence[str]) -> tuple[Any, ...]:
    return tuple(plots.level_key(str(entry[k])) if k == "level" else str(entry[k]) for k in keys)


def _varying(rows: Sequence[Row], keys: Sequence[str], always: Sequence[str]) -> list[str]:
    """``keys`` that take several values in ``rows``, plus those in ``always``."""
    return [k for k in keys if k in always or len({r.get(k) for r in rows}) > 1]


def stats_table(
    title: str,
    rows: Sequence[Row],
    keys: Sequence[str],
    metrics: Sequence[tuple[str, str]],
    note: str = "",
) -> tuple[Table, list[Row]]:
    """Mean ± std and n of ``metrics`` per group of ``keys``; also the aggregated entries."""
    entries = sorted(
        aggregate(rows, keys, [m for _, m in metrics]), key=lambda e: _sort_key(e, keys)
    )
    cells = [
        [_cell(e[k]) for k in keys] + [str(e["n"])] + [_mean_std(e, m) for _, m in metrics]
        for e in entries
    ]
    return Table(title, [*keys, "n", *(c for c, _ in metrics)], cells, note), entries


def reason_kinds(reason: str | None) -> list[str]:
    """The clauses of a rejection reason with their measured numbers elided, so that rejections
    of one kind count together ("ASR 0.512 < 0.90" -> "ASR … < …")."""
    clauses = (c.strip() for c in (reason or "no reason recorded").split(";"))
    return [re.sub(r"\d+(?:\.\d+)?", "…", c) for c in clauses if c]


def acceptance_section(defects: Sequence[Row]) -> tuple[Section, dict[str, bytes]]:
    """Section 1: accepted / rejected per group, the rejection reasons, the defects' figures."""
    keys = list(GROUP_KEYS)
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for d in defects:
        groups.setdefault(tuple(d[k] for k in keys), []).append(d)
    metrics = (
        ("ASR", "asr"),
        ("masked ASR", "masked_asr"),
        ("patched ASR", "patched_asr"),
        ("acc drop", "acc_drop"),
    )
    _, entries = stats_table("", defects, keys, metrics)
    rows = []
    for e in entries:
        members = groups[tuple(e[k] for k in keys)]
        reasons = collections.Counter(
            kind for d in members if d["status"] != "accepted" for kind in reason_kinds(d["reason"])
        )
        rows.append(
            [_cell(e[k]) for k in keys]
            + [
                str(sum(d["status"] == "accepted" for d in members)),
                str(sum(d["status"] != "accepted" for d in members)),
            ]
            + [_mean_std(e, m) for _, m in metrics]
            + ["; ".join(f"{shown(r)} ×{n}" for r, n in reasons.most_common()) or "-"]
        )
    matrix = Table(
        "accepted and rejected defects per group",
        [*keys, "accepted", "rejected", *(c for c, _ in metrics), "rejection reasons"],
        rows,
        "Figures are mean ± std over every attempt of the group, accepted or rejected; acc drop "
        "is the clean model's accuracy minus the defect's.",
    )
    rejected = [d for d in defects if d["status"] != "accepted"]
    listing = Table(
        "rejected defects",
        ["defect", *keys, "seed", "epochs (rounds)", "aim", "reason"],
        [
            [
                str(d["defect_id"]),
                *(_cell(d[k]) for k in keys),
                str(d["seed"]),
                f"{d.get('epochs', '-')} ({d.get('rounds') or '-'})",
                _cell(d.get("aim_score"), 2),
                _cell(d["reason"]),
            ]
            for d in rejected[:MAX_REJECTED]
        ],
        " ".join(
            [
                "aim: the injector's score of the weights it kept, on training images (>= 1 its "
                "goals met; below 1 it ended on its budget or a stall short of them, so the "
                "rejection may be the budget's; - not recorded).",
                f"The first {MAX_REJECTED} of {len(rejected)}."
                if len(rejected) > MAX_REJECTED
                else "",
            ]
        ).strip(),
    )
    section = Section(TITLES[0], tables=[matrix] + ([listing] if rejected else []))
    section.plots = ["study-acceptance.png"]
    return section, {"study-acceptance.png": plots.acceptance_bars(defects, keys)}


def _none_stored(what: str, *commands: str) -> str:
    """The one sentence a section shows when the catalog holds none of its results."""
    run = " and ".join(f"`trojanscope {c}`" for c in commands)
    return f"No {what} is stored for the selected defects (run {run} first)."


def localization_section(locs: Sequence[Row]) -> tuple[Section, dict[str, bytes]]:
    """Section 2: WJI / F1 / AUROC (and against the carrying neurons) per criterion group."""
    section = Section(TITLES[1])
    if not locs:
        section.text.append(_none_stored("localization", "bench localize"))
        return section, {}
    carrying = any(r["carrying_wji"] is not None for r in locs)
    metrics = (*LOC_METRICS, *(CARRYING if carrying else ()))
    overall, _ = stats_table("by criterion (all selected defects)", locs, ["criterion"], metrics)
    keys = _varying(locs, ("criterion", *GROUP_KEYS), ("criterion", "attack", "level", "order"))
    detail, _ = stats_table(f"by {' x '.join(keys)}", locs, keys, metrics)
    section.text.append(
        "Each criterion's top-k neurons (k = the ground-truth size) and full ranking scored "
        "against the infected neurons"
        + (", and against the neurons that carry the backdoor (carrying)." if carrying else ".")
    )
    section.tables = [overall, detail]
    section.plots = ["study-localization.png", "study-wji-by-level.png"]
    return section, {
        "study-localization.png": plots.boxes(
            locs, "criterion", (("wji", "WJI per criterion"), ("auroc", "AUROC per criterion"))
        ),
        "study-wji-by-level.png": plots.by_level(locs, "criterion", "wji", "mean WJI by level"),
    }


def repair_section(repairs: Sequence[Row]) -> tuple[Section, dict[str, bytes]]:
    """Section 3: ASR and clean accuracy before and after, ASR drop, DER per repair group."""
    section = Section(TITLES[2])
    if not repairs:
        section.text.append(_none_stored("repair", "bench repair"))
        return section, {}
    rows = [{**r, "repair": f"{r['method']} / {r['criterion'] or '-'}"} for r in repairs]
    overall, _ = stats_table("by method x criterion", rows, ["method", "criterion"], REPAIR_METRICS)
    keys = _varying(
        rows,
        ("method", "criterion", *GROUP_KEYS),
        ("method", "criterion", "attack", "level", "order"),
    )
    detail, _ = stats_table(f"by {' x '.join(keys)}", rows, keys, REPAIR_METRICS)
    section.text.append(
        "Repairs of each criterion's top-k neurons (criterion '-': the method ignores neurons); "
        "DER = (max(0, ASR drop) - max(0, acc drop) + 1) / 2."
    )
    section.tables = [overall, detail]
    section.plots = ["study-repair.png"]
    return section, {
        "study-repair.png": plots.boxes(
            rows, "repair", (("asr_drop", "ASR drop per repair"), ("der", "DER per repair"))
        )
    }


def cost_section(locs: Sequence[Row]) -> tuple[Section, dict[str, bytes]]:
    """Section 4: wall time and forward-pass equivalents per criterion."""
    section = Section(TITLES[3])
    if not locs:
        section.text.append(_none_stored("localization", "bench localize"))
        return section, {}
    table, entries = stats_table("per criterion", locs, ["criterion"], COST_METRICS)
    section.text.append(
        "Cost of one localization: wall time in seconds and forward-pass equivalents over the "
        "evaluation set (as each result recorded it; times depend on the machine that ran it)."
    )
    section.tables = [table]
    section.plots = ["study-cost.png"]
    return section, {"study-cost.png": plots.cost_bars(entries, "criterion")}


def _best(rows: Sequence[Row], keys: Sequence[str], metric: str) -> list[str]:
    """The best group mean of ``metric`` as a percentage, and the group (ties named too)."""
    entries = [e for e in aggregate(rows, keys, [metric]) if e[metric] is not None]
    if not entries:
        return ["-", "none stored"]
    best = max(e[metric] for e in entries)
    tied = sorted(
        f"{' / '.join(_cell(e[k]) for k in keys)} (n={e['n']})"
        for e in entries
        if e[metric] >= best - 1e-12
    )
    return [f"{100 * best:.2f}%", ", ".join(tied)]


def headline_section(locs: Sequence[Row], repairs: Sequence[Row]) -> Section:
    """Section 5: the reference's best WJI and best ASR drop beside ours."""
    own_locs = [r for r in locs if r["criterion_name"] not in REFERENCE_CRITERIA]
    own_repairs = [r for r in repairs if r["criterion_name"] not in (*REFERENCE_CRITERIA, None)]
    table = Table(
        "headline figures",
        ["figure", "reference (BDefects4NN)", "ours", "ours: which"],
        [
            [
                "best mean WJI of a criterion",
                f"{100 * REFERENCE_WJI:.2f}%",
                *_best(own_locs, ["criterion"], "wji"),
            ],
            [
                "best mean ASR drop of a repair",
                f"{100 * REFERENCE_ASR_DROP:.2f}%",
                *_best(own_repairs, ["method", "criterion"], "asr_drop"),
            ],
        ],
        "Ours: the best mean over the criterion groups (localization) and the method x "
        "criterion groups (repair) of sections 2 and 3, ties all named, leaving out the "
        f"references that read the true trigger ({', '.join(sorted(REFERENCE_CRITERIA))}) and "
        "repairs that ignore neurons.",
    )
    section = Section(TITLES[4], tables=[table])
    if not locs and not repairs:
        section.text.append(
            _none_stored("localization or repair", "bench localize", "bench repair")
        )
    elif not locs or not repairs:
        missing = ("localization", "bench localize") if not locs else ("repair", "bench repair")
        section.text.append(_none_stored(*missing))
    references = [r for r in locs if r["criterion_name"] in REFERENCE_CRITERIA]
    bounds = [
        f"{shown(e['criterion'])} WJI {100 * e['wji']:.2f}%"
        for e in aggregate(references, ["criterion"], ["wji"])
    ]
    if bounds:
        section.text.append("Upper-bound references, for scale: " + ", ".join(bounds) + ".")
    return section

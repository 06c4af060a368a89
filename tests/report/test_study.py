"""The study report: sections, plots, reference figures, escaping, empty catalogs, errors."""

import base64
import json
import re
import shutil

import pytest
from markupsafe import escape
from sqlalchemy import func, select

from tests.database.conftest import template  # noqa: F401 (fixture)
from tests.test_cli import assert_one_sentence, run
from trojanscope.database.catalog import Catalog
from trojanscope.database.schema import Defect, InfectedNeuronRow, Localization, RepairRow
from trojanscope.report.study import CAPTIONS, build_report, md_escape, render_markdown
from trojanscope.report.study_sections import GROUP_KEYS, TITLES, headline_section, reason_kinds
from trojanscope.workflows.defects import localize
from trojanscope.workflows.results import stored_results
from trojanscope.workflows.study import bench_localize, bench_repair, select_defects

PNG = b"\x89PNG\r\n\x1a\n"
EVIL = "<i>evil</i>&co"
CRITERIA = ["clp", "fp", "random", "oracle"]


def _reject_a_copy(catalog: Catalog, defect_id: int) -> int:
    """A rejected twin of the defect (same weights and neurons), localized while it still names
    a real attack, then renamed to an HTML-special attack name."""
    columns = [c.key for c in Defect.__table__.columns if c.key not in {"id", "key", "created_at"}]
    with catalog.transaction() as session:
        source = session.get(Defect, defect_id)
        twin = Defect(**{c: getattr(source, c) for c in columns}, key="rejected-twin")
        twin.status = "rejected"
        twin.reason = "ASR 0.512 < 0.90; masked ASR 0.700 > 0.20 (backdoor not confined)"
        twin.infected = [
            InfectedNeuronRow(
                **{
                    c.key: getattr(n, c.key)
                    for c in InfectedNeuronRow.__table__.columns
                    if c.key not in {"id", "defect_id"}
                }
            )
            for n in source.infected
        ]
        session.add(twin)
        session.flush()
        twin_id = twin.id
    localize(catalog, twin_id, "clp")  # stored, yet never reported: the defect is rejected
    with catalog.transaction() as session:
        session.get(Defect, twin_id).attack = EVIL
    return twin_id


@pytest.fixture(scope="module")
def study(template, tmp_path_factory):  # noqa: F811
    """A copy of the template with cheap localizations and repairs stored, and a rejected twin."""
    root, _, defect_id, _ = template
    copy = tmp_path_factory.mktemp("report") / "db"
    shutil.copytree(root, copy)
    catalog = Catalog.open(copy)
    defects = select_defects(catalog)
    bench_localize(catalog, defects, CRITERIA)
    bench_repair(catalog, defects, ["prune"], ["clp", "oracle"])
    twin_id = _reject_a_copy(catalog, defect_id)
    catalog.engine.dispose()
    return copy, defect_id, twin_id


def _counts(db):
    catalog = Catalog.open(db)
    with catalog.session() as session:
        counts = tuple(
            session.scalar(select(func.count()).select_from(t)) for t in (Localization, RepairRow)
        )
    catalog.engine.dispose()
    return counts


def test_report_has_every_section_plots_and_the_reference(study, tmp_path, capsys, monkeypatch):
    db, _, _ = study
    before = _counts(db)
    out_dir = tmp_path / "report"
    code, out, err = run(
        ["report", "study", "--db", db, "--out", out_dir, "--json"], capsys, monkeypatch
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["defects"] == 2 and result["localizations"] == len(CRITERIA)
    assert result["repairs"] == 2 and _counts(db) == before  # nothing run, nothing stored
    page = (out_dir / "study.html").read_text()
    md = (out_dir / "study.md").read_text()
    for number, title in enumerate(TITLES, 1):
        assert f"<h2>{number}. {escape(title)}</h2>" in page
        assert f"\n## {number}. {title}\n" in md
    assert "<h1>trojanscope study report</h1>" in page and md.startswith("# trojanscope study")
    # every plot embedded in the page, and written beside the Markdown file that links it
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    links = re.findall(r"!\[[^\]]*\]\((study-[a-z-]+\.png)\)", md)
    assert len(embedded) == len(links) == len(result["plots"]) == 5
    assert all(base64.b64decode(data).startswith(PNG) for data in embedded)
    assert all((out_dir / name).read_bytes().startswith(PNG) for name in links)
    for text in (page, md):
        assert "17.64%" in text and "40.50%" in text
        assert "trojanscope report study --db" in text and "torch " in text
        assert "masked ASR … &gt; … (backdoor not confined) ×1" in text
    # the rejected defect's injection budget and the score of its kept weights are listed
    catalog = Catalog.open(db)
    with catalog.session() as session:
        twin = session.get(Defect, study[2])
        budget = f"| {twin.epochs} ({twin.attempts}) | {twin.aim_score:.2f} |"
    catalog.engine.dispose()
    assert budget in md and "aim: the injector's score" in md
    # a name from the catalog is text, never markup
    assert EVIL not in page and escape(EVIL) in page
    assert "<i>" not in md and "&lt;i&gt;evil&lt;/i&gt;&amp;co" in md


def test_rejected_defects_stay_out_of_the_results(study):
    db, defect_id, twin_id = study
    catalog = Catalog.open(db)
    defects = select_defects(catalog, default_status=None)
    assert {d.id for d in defects} == {defect_id, twin_id}
    locs, repairs = stored_results(catalog, defects)
    assert {r["defect_id"] for r in locs + repairs} == {defect_id}
    assert sorted(r["criterion"] for r in locs) == sorted(CRITERIA)
    assert all(r["carrying_wji"] is None or 0 <= r["carrying_wji"] <= 1 for r in locs)
    # the headline leaves out the references that read the true trigger (oracle)
    table = headline_section(locs, repairs).tables[0]
    own = [r for r in locs if r["criterion"] != "oracle"]
    best = max(own, key=lambda r: r["wji"])
    assert table.rows[0][2] == f"{100 * best['wji']:.2f}%" and best["criterion"] in table.rows[0][3]
    assert table.rows[1][3] == "prune / clp (n=1)"


def test_a_catalog_without_stored_results_says_so(template, tmp_path, capsys, monkeypatch):  # noqa: F811
    db = tmp_path / "db"
    shutil.copytree(template[0], db)
    out_dir = tmp_path / "new" / "report"  # made on demand
    code, _, err = run(["report", "study", "--db", db, "--out", out_dir], capsys, monkeypatch)
    assert code == 0, err
    for text in ((out_dir / "study.html").read_text(), (out_dir / "study.md").read_text()):
        assert "No localization is stored for the selected defects" in text
        assert "No repair is stored for the selected defects" in text
        assert "No localization or repair is stored for the selected defects" in text
        assert "17.64%" in text and "none stored" in text
    assert sorted(p.name for p in out_dir.glob("*.png")) == ["study-acceptance.png"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--db", "{tmp}/missing"], "no trojanscope catalog at"),
        (["--out", "{tmp}/file"], "cannot write the report to {tmp}/file: it is a file, not a"),
        (["--out", "{tmp}/file/sub"], "cannot write the report to {tmp}/file/sub: "),
        (["--where", "level=huge"], "no defect in"),
        (["--where", "colour=red"], "cannot filter on 'colour'"),
    ],
)
def test_bad_report_input_is_one_sentence(args, message, study, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    base = {"--db": str(study[0]), "--out": str(tmp_path / "report")}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    code, _, err = run(["report", "study", *sum(base.items(), ())], capsys, monkeypatch)
    assert_one_sentence(code, err, message.replace("{tmp}", str(tmp_path)))
    assert not (tmp_path / "report").exists()


def test_reason_kinds_and_markdown_escaping():
    assert reason_kinds("ASR 0.512 < 0.90; clean accuracy dropped 4.1 points > 3.0") == [
        "ASR … < …",
        "clean accuracy dropped … points > …",
    ]
    assert reason_kinds(None) == ["no reason recorded"]
    assert md_escape("a|b*c_[x](y)`$<b>&\x1b") == r"a\|b\*c\_\[x\](y)\`\$&lt;b&gt;&amp;\\x1b"


def _synthetic():
    """Rows as the catalog gives them: two data sets, a name with Markdown and mathtext
    characters, a repair that ignores neurons, a reference criterion."""
    defects, locs, repairs = [], [], []
    for i, (dataset, attack) in enumerate([("digits", "badnets"), ("mnist5k", "a$b_c|d")], 1):
        labels = {
            "defect_id": i,
            "dataset": dataset,
            "arch": "cnn-small",
            "attack": attack,
            "level": "small",
            "order": "least",
            "seed": 0,
            "n_infected": 2,
        }
        defects.append(
            {
                **labels,
                "status": "accepted",
                "reason": None,
                "asr": 1.0,
                "masked_asr": 0.0,
                "patched_asr": None,
                "acc_drop": 0.01,
            }
        )
        for criterion, wji in (("clp", 0.2), ("oracle", 0.9), ("fp", 0.1 * i + 0.05)):
            locs.append(
                {
                    **labels,
                    "criterion": criterion,
                    "criterion_name": criterion,
                    "wji": wji,
                    "f1": wji,
                    "auroc": None,
                    "ap": wji,
                    "seconds": 0.0,
                    "cost_forward": 0.0,
                    "carrying_wji": None,
                    "carrying_f1": None,
                    "carrying_auroc": None,
                }
            )
        for method, criterion, drop in (
            ("prune", "clp", 0.3),
            ("prune", "oracle", 0.9),
            ("finetune-all", None, 0.95),
        ):
            repairs.append(
                {
                    **labels,
                    "method": method,
                    "criterion": criterion,
                    "criterion_name": criterion,
                    "asr_before": 1.0,
                    "asr_after": 1.0 - drop,
                    "asr_drop": drop,
                    "clean_acc_before": 0.9,
                    "clean_acc_after": 0.9,
                    "acc_drop": 0.0,
                    "der": 0.5,
                    "seconds": 1.0,
                }
            )
    return defects, locs, repairs


def test_sections_from_rows():
    defects, locs, repairs = _synthetic()
    report = build_report([("date", "today")], defects, locs, repairs)
    assert [s.title for s in report.sections] == list(TITLES)
    assert report.sections[0].tables[0].columns[:5] == list(GROUP_KEYS)
    # study tables show data set or architecture only when the selection spans several
    overall, detail = report.sections[1].tables
    assert detail.columns[:5] == ["criterion", "dataset", "attack", "level", "order"]
    assert "carrying WJI" not in overall.columns  # no carrying flags recorded
    # ours leaves out the reference criterion and the repair that ignores neurons; ties named
    headline = report.sections[4].tables[0].rows
    assert headline[0][2:] == ["20.00%", "clp (n=2), fp (n=2)"]
    assert headline[1][2:] == ["30.00%", "prune / clp (n=2)"]
    assert "oracle WJI 90.00%" in report.sections[4].text[0]
    assert sorted(report.plots) == sorted(CAPTIONS) and r"a\$b\_c\|d" in render_markdown(report)

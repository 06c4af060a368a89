"""The study commands: localize, repair, bench localize, bench repair."""

import json
import shutil

import pytest

from tests.test_cli import assert_one_sentence, injected, run  # noqa: F401 (fixture)

REPAIR_KEYS = {
    "defect_id",
    "method",
    "criterion",
    "k",
    "clean_acc_before",
    "clean_acc_after",
    "asr_before",
    "asr_after",
    "der",
    "seconds",
    "details",
}


@pytest.fixture
def db(injected, tmp_path):  # noqa: F811
    copy = tmp_path / "db"
    shutil.copytree(injected[0], copy)
    return copy, injected[1]["id"]


def test_localize_json_and_table(db, capsys, monkeypatch):
    path, defect_id = db
    args = ["localize", defect_id, "--criterion", "slicing", "--db", path]
    code, out, _ = run([*args, "--json"], capsys, monkeypatch)
    result = json.loads(out)
    assert code == 0 and result["defect_id"] == defect_id and result["criterion"] == "slicing"
    assert {"precision", "recall", "f1", "wji", "auroc", "ap", "seconds", "cost_forward"} <= set(
        result
    )
    assert len(result["top"]) == result["k"] and not result["reused"]
    assert "layer_hit_rate" in result["extra"]
    code, out, _ = run(args, capsys, monkeypatch)
    assert code == 0 and "(stored result)" in out and "top-k:" in out


def test_localize_with_nc_reports_the_detected_label(db, capsys, monkeypatch):
    path, defect_id = db
    code, out, _ = run(
        ["localize", defect_id, "--criterion", "nc", "--param", "steps=300", "--db", path],
        capsys,
        monkeypatch,
    )
    assert code == 0 and "target 0 detected" in out


def test_repair_json_schema(db, capsys, monkeypatch):
    path, defect_id = db
    code, out, _ = run(
        ["repair", defect_id, "--method", "prune", "--criterion", "oracle", "--db", path, "--json"],
        capsys,
        monkeypatch,
    )
    result = json.loads(out)
    assert code == 0 and set(result) >= REPAIR_KEYS
    assert result["method"] == "prune" and result["criterion"] == "oracle"
    assert result["asr_after"] < result["asr_before"]
    code, out, _ = run(
        [
            "repair",
            defect_id,
            "--method",
            "finetune",
            "--criterion",
            "clp",
            "--k",
            "3",
            "--param",
            "epochs=1",
            "--db",
            path,
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0 and "top 3 neurons of clp" in out and "DER" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["localize", "999", "--criterion", "clp"], "no defect with id 999"),
        (["localize", "{id}", "--criterion", "magic"], "unknown criterion 'magic'"),
        (["localize", "{id}", "--criterion", "nc", "--param", "steps=0"], "'steps'"),
        (["repair", "{id}", "--method", "finetune"], "needs a criterion"),
        (["repair", "{id}", "--method", "burn", "--criterion", "clp"], "unknown repair 'burn'"),
        (
            ["repair", "{id}", "--method", "prune", "--criterion", "clp", "--k", "100000"],
            "--k 100000 is more than the 176 eligible neurons of defect",
        ),
        (["repair", "{id}", "--method", "prune", "--criterion", "clp", "--k", "0"], "at least 1"),
        (["bench", "repair", "--methods", "prune", "--k", "177"], "--k 177 is more than the 176"),
        (["bench", "localize", "--where", "colour=red"], "cannot filter on 'colour'"),
        (["bench", "localize", "--where", "level=large"], "no defect"),
        (["bench", "repair", "--methods", "prune,burn"], "unknown repair 'burn'"),
        (["bench", "localize", "--plots", "{db}/catalog.sqlite"], "it is a file, not a folder"),
    ],
)
def test_bad_study_input(args, message, db, capsys, monkeypatch):
    path, defect_id = db
    args = [a.replace("{id}", str(defect_id)).replace("{db}", str(path)) for a in args]
    code, _, err = run([*args, "--db", path], capsys, monkeypatch)
    assert_one_sentence(code, err, message)


def test_bench_localize_and_repair(db, tmp_path, capsys, monkeypatch):
    path, defect_id = db
    plots = tmp_path / "plots"
    code, out, _ = run(
        [
            "bench",
            "localize",
            "--criteria",
            "clp,fp,random",
            "--db",
            path,
            "--plots",
            plots,
            "--json",
        ],
        capsys,
        monkeypatch,
    )
    result = json.loads(out)
    assert code == 0 and {r["criterion"] for r in result["rows"]} == {"clp", "fp", "random"}
    assert {(e["criterion"], e["level"], e["attack"]) for e in result["table"]} == {
        ("clp", "small", "badnets"),
        ("fp", "small", "badnets"),
        ("random", "small", "badnets"),
    }
    assert sorted(p.name for p in plots.iterdir()) == [
        "wji-clp.png",
        "wji-fp.png",
        "wji-random.png",
    ]
    code, out, _ = run(
        ["bench", "repair", "--methods", "prune", "--criteria", "clp,random", "--db", path],
        capsys,
        monkeypatch,
    )
    assert code == 0 and "repair study" in out and "DER" in out


def test_db_export_writes_the_stored_weights(db, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    path, defect_id = db
    out_file = tmp_path / "defect.safetensors"
    code, _, _ = run(
        ["db", "export", defect_id, "--out", out_file, "--db", path], capsys, monkeypatch
    )
    assert code == 0 and "conv1.weight" in load_file(out_file)


def _run_unprivileged(args):
    """The CLI in a subprocess that file permissions bind (root keeps its powers otherwise)."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "trojanscope", *map(str, args)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: permissions cannot bind")
        cmd = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", *cmd]
    env = {**os.environ, "TROJANSCOPE_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


@pytest.mark.parametrize(
    ("read_only", "message"),
    [
        ("catalog.sqlite", "cannot write to the catalog {db}/catalog.sqlite (attempt to write a"),
        ("objects", "cannot write to the catalog's store {db}/objects: "),
    ],
)
def test_writing_to_a_read_only_catalog_is_one_sentence(db, read_only, message):
    path, defect_id = db
    targets = [path / read_only, *(path / read_only).rglob("*")]
    dirs = [p for p in targets if p.is_dir()]
    for p in targets:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        proc = _run_unprivileged(["localize", defect_id, "--criterion", "fp", "--db", path])
    finally:
        for p in targets:
            p.chmod(0o755 if p in dirs else 0o644)
    assert_one_sentence(proc.returncode, proc.stderr, message.format(db=path))

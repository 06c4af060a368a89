"""The command line: results in --json form, and bad input as one sentence with exit code 2."""

import json
import subprocess
import sys

import pytest

from trojanscope import cli, entry
from trojanscope.localization.base import quick_criteria

DIGITS_BADNETS = ["--dataset", "digits", "--arch", "cnn-small", "--attack", "badnets"]
DEFECT_KEYS = {
    "id",
    "attack",
    "level",
    "status",
    "reason",
    "clean_acc",
    "asr",
    "masked_asr",
    "n_infected",
}


def run(args, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["trojanscope", *map(str, args)])
    try:
        entry.main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_sentence(code, err, pattern):
    assert code == 2, err
    assert "Traceback" not in err
    text = [line for line in err.splitlines() if line.strip()][-1]  # after any progress bar
    assert text.startswith("error: ") and text.endswith(".")
    assert pattern in text, text


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("criteria", "oracle"),
        ("datasets", "mnist5k"),
        ("architectures", "resnet18"),
        ("attacks", "badnets"),
    ],
)
def test_list_kinds(kind, expected, capsys, monkeypatch):
    code, out, _ = run(["list", kind, "--json"], capsys, monkeypatch)
    assert code == 0 and expected in json.loads(out)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"--dataset": "cifar99"}, "unknown dataset 'cifar99'; valid names: cifar10, digits"),
        ({"--arch": "vgg99"}, "unknown architecture 'vgg99'; valid names: cnn-small"),
        ({"--attack": "nope"}, "unknown attack 'nope'; valid names: badnets"),
        ({"--level": "huge"}, "unknown level 'huge'"),
        ({"--poison-rate": "1.5"}, "'poison_rate'"),
        ({"--target": "12"}, "target label 12 is out of range for 10 classes"),
        ({"--db": "/nonexistent/dir/db"}, "/nonexistent/dir does not exist"),
        ({"--attack-param": "size=20"}, "does not fit the 8x8 image"),
        ({"--attack-param": "colour=red"}, "'colour' extra inputs are not permitted"),
        ({"--attack-param": "size"}, "'size' is not of the form KEY=VALUE"),
        ({"--seed": "-1"}, "--seed must be between 0 and 4294967295, not -1"),
        ({"--seed": str(2**32)}, "--seed must be between 0 and 4294967295, not 4294967296"),
    ],
)
def test_inject_bad_input(override, message, tmp_path, capsys, monkeypatch):
    args = {
        "--dataset": "digits",
        "--arch": "cnn-small",
        "--attack": "badnets",
        "--db": tmp_path / "db",
        **override,
    }
    code, _, err = run(["inject", *[x for kv in args.items() for x in kv]], capsys, monkeypatch)
    assert_one_sentence(code, err, message)


def test_unknown_criterion_and_kind(tmp_path, capsys, monkeypatch):
    code, _, err = run(
        ["quickstart", "--db", tmp_path / "db", "--criterion", "magic"], capsys, monkeypatch
    )
    assert_one_sentence(code, err, "unknown criterion 'magic'; valid names: ablation, anp, clp")
    code, _, err = run(["list", "gizmos"], capsys, monkeypatch)
    assert_one_sentence(code, err, "unknown kind 'gizmos'")


def test_quickstart_refuses_a_bad_seed_before_any_work(tmp_path, capsys, monkeypatch):
    code, _, err = run(
        ["quickstart", "--db", tmp_path / "db", "--seed", "0", "--seed", "-5"], capsys, monkeypatch
    )
    assert_one_sentence(code, err, "--seed must be between 0 and 4294967295, not -5")
    assert not (tmp_path / "db").exists()


def test_quickstart_refuses_an_unknown_order_before_any_work(tmp_path, capsys, monkeypatch):
    args = ["quickstart", "--db", tmp_path / "db", "--order", "best"]
    code, _, err = run(args, capsys, monkeypatch)
    assert_one_sentence(code, err, "unknown order 'best'; valid orders: least, most, random")
    assert not (tmp_path / "db").exists()


def test_a_data_set_with_one_class_is_refused(tmp_path, capsys, monkeypatch):
    import numpy as np

    from tests.data.test_idx import write_idx

    for prefix, n in (("train", 40), ("t10k", 20)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", np.full((n, 12, 12), 7, np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.full(n, 3, np.uint8))
    args = ["--dataset", "mnist", "--data-param", f"data_dir={tmp_path}", "--db", tmp_path / "db"]
    code, _, err = run(
        ["inject", *args, "--arch", "cnn-small", "--attack", "badnets"], capsys, monkeypatch
    )
    assert_one_sentence(code, err, "data set 'mnist' holds only one class (3 in its training")
    assert not (tmp_path / "db").exists()


def test_json_output_to_a_folder_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    code, _, err = run(
        ["quickstart", "--db", tmp_path / "db", "--json", tmp_path], capsys, monkeypatch
    )
    assert_one_sentence(code, err, "it is a folder")
    assert not (tmp_path / "db").exists()


def test_missing_catalog(tmp_path, capsys, monkeypatch):
    code, _, err = run(["db", "list", "--db", tmp_path / "none"], capsys, monkeypatch)
    assert_one_sentence(code, err, "no trojanscope catalog at")


@pytest.fixture(scope="module")
def injected(tmp_path_factory):
    """`trojanscope inject` on digits, run once for the tests below."""
    db = tmp_path_factory.mktemp("cli") / "db"
    args = [
        "trojanscope",
        "inject",
        "--db",
        str(db),
        *DIGITS_BADNETS,
        "--level",
        "small",
        "--seed",
        "0",
        "--json",
    ]
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", args)
    from io import StringIO

    buf = StringIO()
    mp.setattr(sys, "stdout", buf)
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
    finally:
        mp.undo()
    assert exit_info.value.code in (0, None)
    return db, json.loads(buf.getvalue())


def test_inject_prints_the_defect_record(injected):
    _, record = injected
    assert set(record) >= DEFECT_KEYS
    assert record["attack"] == "badnets" and record["level"] == "small"
    assert record["status"] == "accepted" and record["asr"] >= 0.9


def test_db_list_and_show(injected, capsys, monkeypatch):
    db, record = injected
    code, out, _ = run(["db", "list", "--db", db, "--json"], capsys, monkeypatch)
    assert code == 0 and [d["id"] for d in json.loads(out)] == [record["id"]]
    code, out, _ = run(["db", "show", record["id"], "--db", db, "--json"], capsys, monkeypatch)
    shown = json.loads(out)
    assert code == 0 and len(shown["infected"]) == record["n_infected"]
    code, out, _ = run(["db", "show", record["id"], "--db", db], capsys, monkeypatch)
    assert code == 0 and "infected neurons" in out
    code, _, err = run(["db", "show", "999", "--db", db], capsys, monkeypatch)
    assert_one_sentence(code, err, "no defect with id 999")
    code, _, err = run(["db", "show", "99999999999999999999999", "--db", db], capsys, monkeypatch)
    assert_one_sentence(code, err, "no defect with id 99999999999999999999999")


def test_corrupt_weights_file(injected, tmp_path, capsys, monkeypatch):
    import shutil

    from trojanscope.database.catalog import Catalog
    from trojanscope.database.schema import CleanModel

    db = tmp_path / "db"
    shutil.copytree(injected[0], db)
    with Catalog.open(db).session() as s:
        sha = s.query(CleanModel).one().weights_sha256
    path = Catalog.open(db).store.path(sha)
    path.write_bytes(path.read_bytes()[:100])
    code, _, err = run(
        ["inject", "--db", db, *DIGITS_BADNETS, "--level", "narrow"],
        capsys,
        monkeypatch,
    )
    assert_one_sentence(code, err, "is corrupt")


def test_quickstart_json_schema(tmp_path, capsys, monkeypatch):
    out_file = tmp_path / "qs.json"
    code, out, _ = run(
        [
            "quickstart",
            "--db",
            tmp_path / "db",
            "--dataset",
            "digits",
            "--level",
            "small",
            "--seed",
            "0",
            "--json",
            out_file,
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0
    result = json.loads(out_file.read_text())
    assert set(result) == {"clean_model", "defects", "localization"}
    assert set(result["defects"][0]) >= DEFECT_KEYS
    criteria = {loc["criterion"] for loc in result["localization"]}
    assert criteria == set(quick_criteria())
    for loc in result["localization"]:
        assert {
            "defect_id",
            "criterion",
            "precision",
            "recall",
            "f1",
            "wji",
            "auroc",
            "ap",
            "seconds",
        } <= set(loc)
    assert "oracle" in out  # the table


@pytest.mark.parametrize("module", ["trojanscope", "trojanscope.cli"])
def test_console_script_entry_point(module):
    proc = subprocess.run(
        [sys.executable, "-m", module, "list", "nothing"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown kind 'nothing'")
    assert "Traceback" not in proc.stderr
    # commands defined in cli_scan and cli_study exist whichever module runs the app
    proc = subprocess.run(
        [sys.executable, "-m", module, "scan", "/nonexistent.pt"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: /nonexistent.pt does not exist")


#: Every command that runs a network, with its required arguments (none of them is read
#: before the device is resolved).
NETWORK_COMMANDS = {
    "quickstart": ["quickstart"],
    "inject": ["inject", *DIGITS_BADNETS],
    "localize": ["localize", "1", "--criterion", "clp"],
    "repair": ["repair", "1", "--method", "prune", "--criterion", "clp"],
    "bench-localize": ["bench", "localize"],
    "bench-repair": ["bench", "repair"],
    "audit": ["audit", "model.pt"],
}


@pytest.mark.parametrize("command", NETWORK_COMMANDS)
def test_every_network_command_takes_a_device(command, capsys, monkeypatch):
    code, out, _ = run([*NETWORK_COMMANDS[command], "--help"], capsys, monkeypatch)
    assert code == 0 and "--device" in out and "cuda:N" in out


@pytest.mark.parametrize("command", NETWORK_COMMANDS)
@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("cuda", "--device cuda was requested, but this machine has no CUDA device (torch "),
        ("gpu", "--device 'gpu' is not a device; use auto, cpu, cuda, cuda:N or mps."),
    ],
)
def test_a_device_the_machine_lacks_is_one_sentence_before_any_work(
    command, device, message, tmp_path, capsys, monkeypatch
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU machine
    monkeypatch.chdir(tmp_path)
    args = [*NETWORK_COMMANDS[command], "--device", device]
    args += ["--report", "r.html"] if command == "audit" else ["--db", "db"]
    code, out, err = run(args, capsys, monkeypatch)
    assert_one_sentence(code, err, message)
    assert out == "" and list(tmp_path.iterdir()) == []  # no catalog, no report


#: The commands that train, with their required arguments.
TRAINING_COMMANDS = {name: NETWORK_COMMANDS[name] for name in ("quickstart", "inject")}


@pytest.mark.parametrize("command", TRAINING_COMMANDS)
def test_every_training_command_takes_amp(command, capsys, monkeypatch):
    code, out, _ = run([*TRAINING_COMMANDS[command], "--help"], capsys, monkeypatch)
    assert code == 0 and "--amp" in out and "bf16" in out


@pytest.mark.parametrize("command", TRAINING_COMMANDS)
@pytest.mark.parametrize(
    ("amp", "message"),
    [
        ("fp16", "--amp fp16 cannot train on cpu: torch's float16 kernels on the CPU are slower"),
        ("fp32", "--amp 'fp32' is not a precision; use bf16, fp16 or off."),
    ],
)
def test_an_amp_the_device_cannot_serve_is_one_sentence_before_any_work(
    command, amp, message, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    args = [*TRAINING_COMMANDS[command], "--device", "cpu", "--amp", amp, "--db", "db"]
    code, out, err = run(args, capsys, monkeypatch)
    assert_one_sentence(code, err, message)
    assert out == "" and list(tmp_path.iterdir()) == []  # no catalog


def test_device_cuda_without_cuda_from_the_executable(tmp_path):
    """The installed command, where no CUDA device is visible: exit 2, one sentence."""
    import os

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    args = ["localize", "1", "--criterion", "clp", "--db", str(tmp_path), "--device", "cuda"]
    proc = subprocess.run(
        [sys.executable, "-m", "trojanscope", *args], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: --device cuda was requested, but this machine has no ")
    assert proc.stderr.count("\n") == 1


def test_device_cpu_runs_a_command(injected, tmp_path, capsys, monkeypatch):
    import shutil

    db = tmp_path / "db"
    shutil.copytree(injected[0], db)
    args = ["localize", injected[1]["id"], "--criterion", "fp", "--db", db, "--json"]
    code, out, _ = run([*args, "--device", "cpu"], capsys, monkeypatch)
    assert code == 0 and not json.loads(out)["reused"]
    code, out, _ = run([*args, "--device", "auto"], capsys, monkeypatch)
    assert code == 0 and json.loads(out)["reused"]  # the same result, whichever device


def test_files_the_user_asked_for_follow_the_umask(injected, tmp_path, capsys, monkeypatch):
    import os
    import stat

    model = tmp_path / "m.pt"
    model.write_bytes(b"\x80\x02}q\x00.")  # an empty dict, protocol 2
    old = os.umask(0o022)
    try:
        code, _, _ = run(["scan", model, "--sarif", tmp_path / "s.sarif"], capsys, monkeypatch)
        assert code == 0
        code, _, _ = run(
            ["db", "export", injected[1]["id"], "--db", injected[0], "--out", tmp_path / "w.st"],
            capsys,
            monkeypatch,
        )
        assert code == 0
    finally:
        os.umask(old)
    for name in ("s.sarif", "w.st"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def _pickle_file(path):
    """A tiny clean model file (an empty dict, protocol 2) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x80\x02}q\x00.")
    return path


def test_names_are_printed_literally_in_scan_tables(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "a[/]b"
    names = [
        _pickle_file(folder / "m.pt"),
        _pickle_file(tmp_path / "[bold red]x.pt"),
        _pickle_file(tmp_path / "\x1b[31mred.pt"),
        _pickle_file(tmp_path / "evil\u202egnp.pt"),
    ]
    code, out, err = run(["scan", *names], capsys, monkeypatch)
    assert code == 0, err
    assert "a[/]b/m.pt" in out and "[bold red]x.pt" in out
    assert "\x1b" not in out and "\\x1b[31mred.pt" in out  # no escape sequence reaches the tty
    assert "\u202e" not in out and "evil\\u202egnp.pt" in out
    assert "verdict: clean" in out


def test_names_are_printed_literally_by_manifest_verify(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "a[/]b"
    _pickle_file(folder / "m.pt")
    code, _, err = run(["manifest", "create", folder], capsys, monkeypatch)
    assert code == 0, err
    _pickle_file(folder / "[red]y.pt")
    _pickle_file(folder / "two\nlines.pt")
    code, out, err = run(["manifest", "verify", folder], capsys, monkeypatch)
    assert code == 1, err
    assert "extra   [red]y.pt" in out and "extra   two\\nlines.pt" in out
    assert out.splitlines()[-1] == "mismatch"


def test_names_are_printed_literally_in_errors(tmp_path, capsys, monkeypatch):
    code, _, err = run(["db", "list", "--db", tmp_path / "[bold]db[/]"], capsys, monkeypatch)
    assert_one_sentence(code, err, "[bold]db[/]")
    code, _, err = run(["scan", tmp_path / "gone[/].pt"], capsys, monkeypatch)
    assert_one_sentence(code, err, "gone[/].pt does not exist")


def test_ctrl_c_exits_130_with_the_documented_sentence(tmp_path):
    import os
    import signal
    import time

    db = tmp_path / "db"
    args = ["quickstart", "--db", db, "--dataset", "digits", "--seed", "0", "--seed", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "trojanscope", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TROJANSCOPE_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not (db / "catalog.sqlite").exists():  # the command is running: it made its catalog
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    assert err.rstrip().endswith("interrupted: finished entries are kept, nothing half-written.")
    assert "Traceback" not in err and "Aborted" not in err
    listed = subprocess.run(
        [sys.executable, "-m", "trojanscope", "db", "list", "--db", str(db), "--json"],
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0, listed.stderr  # the catalog is intact
    assert isinstance(json.loads(listed.stdout), list)


def test_catalogs_that_are_not_ours_or_damaged_are_one_sentence(tmp_path, capsys, monkeypatch):
    import sqlite3

    from trojanscope.database.catalog import Catalog

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    sqlite3.connect(foreign / "catalog.sqlite").execute("CREATE TABLE notes (body TEXT)").close()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "catalog.sqlite").touch()
    damaged = tmp_path / "damaged"
    Catalog.open(damaged, create=True)
    data = (damaged / "catalog.sqlite").read_bytes()
    page = int.from_bytes(data[16:18], "big")
    (damaged / "catalog.sqlite").write_bytes(data[:page] + b"\xff" * (len(data) - page))
    for db, message in (
        (foreign, "holds another application's tables (notes)"),
        (empty, "it is an empty file (0 bytes)"),
        (damaged, "is damaged (database disk image is malformed)"),
    ):
        code, _, err = run(["db", "list", "--db", db], capsys, monkeypatch)
        assert_one_sentence(code, err, message)
        assert len(err.strip().splitlines()) == 1
    code, _, err = run(
        ["inject", "--db", foreign, *DIGITS_BADNETS, "--level", "narrow"], capsys, monkeypatch
    )
    assert_one_sentence(code, err, "never adds its own to a foreign database")
    tables = sqlite3.connect(foreign / "catalog.sqlite").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'"
    )
    assert [name for (name,) in tables] == ["notes"]


def test_a_clean_model_catalogued_on_other_data_is_not_reused(
    injected, tmp_path, capsys, monkeypatch
):
    import shutil

    from trojanscope.database.catalog import Catalog
    from trojanscope.database.schema import CleanModel

    db = tmp_path / "db"
    shutil.copytree(injected[0], db)
    with Catalog.open(db).transaction() as s:
        row = s.query(CleanModel).one()
        row.input_shape = {**row.input_shape, "splits_sha256": "0" * 64}
    code, _, err = run(
        ["inject", "--db", db, *DIGITS_BADNETS, "--level", "narrow"], capsys, monkeypatch
    )
    assert_one_sentence(code, err, "differ from when it was catalogued")


def test_an_interrupt_swallowed_in_a_gc_callback_still_ends_the_command_as_one():
    """Python ignores an exception raised in a garbage-collection callback (SQLAlchemy's at
    start-up): Ctrl-C landing there is neither printed as a traceback nor lost; the command
    ends with exit code 130 and the documented sentence."""
    code = (
        "import gc, sys, weakref\n"
        "from trojanscope import cli, interrupt\n"
        "interrupt.install()\n"
        "class Thing: pass\n"
        "def callback(_ref):\n"
        "    interrupt._handler(2, None)\n"  # as if SIGINT arrived inside the callback
        "thing = Thing(); ref = weakref.ref(thing, callback); del thing; gc.collect()\n"
        "sys.argv = ['trojanscope', '--help']\n"
        "cli.main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.rstrip().endswith(
        "interrupted: finished entries are kept, nothing half-written."
    )
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr

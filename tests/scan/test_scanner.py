"""The scanner on the generated corpus: every malicious sample flagged, the canary never
created, every benign checkpoint clean; SARIF and the CLI's exit codes."""

import json
from pathlib import Path

import pytest

from tests.scan.corpus import build_corpus, build_large_benign
from tests.test_cli import run
from trojanscope.scan.findings import overall_verdict
from trojanscope.scan.sarif import to_sarif
from trojanscope.scan.scanner import Scanner, detect


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    canary = root / "CANARY"
    samples = build_corpus(root / "files", canary)
    return samples, canary


def _verdict(path: Path) -> tuple[str, list]:
    reports = Scanner().scan_paths([path])
    return overall_verdict(reports), reports


def test_every_malicious_sample_is_flagged_and_never_runs(corpus):
    samples, canary = corpus
    missed = []
    for sample in (s for s in samples if s.malicious):
        verdict, reports = _verdict(sample.path)
        imports = {i for r in reports for i in r.imports}
        if verdict not in ("dangerous", "suspicious") or (
            sample.expected_import and sample.expected_import not in imports
        ):
            missed.append((sample.name, verdict, sorted(imports)))
    assert not missed
    assert not canary.exists()


def test_malicious_code_execution_is_dangerous_not_just_suspicious(corpus):
    samples, _ = corpus
    for sample in (s for s in samples if s.malicious and s.expected_import):
        assert _verdict(sample.path)[0] == "dangerous", sample.name


def test_every_benign_sample_is_clean(corpus):
    samples, _ = corpus
    for sample in (s for s in samples if not s.malicious):
        verdict, reports = _verdict(sample.path)
        assert verdict == "clean", (
            sample.name,
            [r.as_dict() for r in reports if r.verdict != "clean"],
        )


@pytest.mark.slow
def test_a_large_opcode_dense_pickle_is_clean(tmp_path):
    verdict, reports = _verdict(build_large_benign(tmp_path))
    assert verdict == "clean" and reports[0].metadata["opcodes"] > 5_000_000


def test_formats_are_recognised_by_content_not_name(corpus):
    samples, _ = corpus
    by_name = {s.name: s for s in samples}
    assert detect(by_name["disguised-png"].path.read_bytes()) == "pickle"
    assert detect(by_name["benign-safetensors"].path.read_bytes()) == "safetensors"
    assert detect(by_name["benign-npy-float"].path.read_bytes()) == "npy"


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"", "unknown"),
        (b"\x00" * 7, "unknown"),
        (b"\xff" * 8 + b"{", "unknown"),  # huge declared safetensors header
        (b"PK\x03\x04" + b"\x00" * 10, "zip"),  # truncated zip
        (b"\x1f\x8b\x08\x00" + b"\x00" * 4, "gzip"),  # truncated gzip
    ],
)
def test_hostile_inputs_end_in_a_verdict(tmp_path, data, fmt):
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert detect(data) == fmt
    verdict, _ = _verdict(path)
    assert verdict in ("clean", "inconclusive", "suspicious")
    if fmt in ("zip", "gzip"):
        assert verdict == "inconclusive"


def test_archive_depth_limit_is_inconclusive(tmp_path):
    import io
    import zipfile

    data = b"\x80\x02]."
    for _ in range(12):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("inner", data)
        data = buf.getvalue()
    path = tmp_path / "deep.zip"
    path.write_bytes(data)
    assert _verdict(path)[0] == "inconclusive"


def test_zip_bomb_is_bounded(tmp_path):
    import io
    import zipfile

    from trojanscope.scan.pickle_scan import Limits

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros", b"\x00" * (64 * 2**20))
    path = tmp_path / "bomb.zip"
    path.write_bytes(buf.getvalue())
    reports = Scanner(Limits(max_member_bytes=2**20)).scan_paths([path])
    assert overall_verdict(reports) == "inconclusive"


def test_sarif_report(corpus):
    samples, _ = corpus
    sample = next(s for s in samples if s.name == "nested-zip-targz-zip")
    sarif = to_sarif(Scanner().scan_paths([sample.path]))
    assert sarif["version"] == "2.1.0"
    run = sarif["runs"][0]
    assert run["tool"]["driver"]["name"] == "trojanscope"
    rule_ids = {r["id"] for r in run["tool"]["driver"]["rules"]}
    assert "pickle.dangerous-import" in rule_ids
    result = next(r for r in run["results"] if r["ruleId"] == "pickle.dangerous-import")
    assert result["level"] == "error"
    physical = result["locations"][0]["physicalLocation"]
    assert physical["artifactLocation"]["uri"] == sample.path.as_uri()  # outside the cwd
    assert physical["region"]["startLine"] == 1  # GitHub code scanning requires a line
    assert "!" in result["locations"][0]["logicalLocations"][0]["fullyQualifiedName"]
    rule = next(r for r in run["tool"]["driver"]["rules"] if r["id"] == result["ruleId"])
    assert float(rule["properties"]["security-severity"]) >= 9.0  # shown as critical
    assert "security" in rule["properties"]["tags"] and rule["help"]["text"]
    assert len(result["partialFingerprints"]["primaryLocationLineHash"]) == 64


def test_sarif_paths_below_the_working_directory_are_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "evil.pkl").write_bytes(b"cos\nsystem\n(S'x'\ntR.")
    run = to_sarif(Scanner().scan_paths([tmp_path / "models"]))["runs"][0]
    location = run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location == {"uri": "models/evil.pkl", "uriBaseId": "%SRCROOT%"}
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == tmp_path.as_uri() + "/"


def test_scan_cli_exit_codes_json_and_sarif(corpus, tmp_path, capsys, monkeypatch):
    samples, _ = corpus
    by_name = {s.name: s for s in samples}
    code, out, _ = run(["scan", by_name["benign-safetensors"].path], capsys, monkeypatch)
    assert code == 0 and "clean" in out
    sarif = tmp_path / "out.sarif"
    code, out, _ = run(
        ["scan", by_name["pickle-p2-os-system"].path, "--json", "--sarif", sarif],
        capsys,
        monkeypatch,
    )
    result = json.loads(out)
    assert code == 1 and result["verdict"] == "dangerous" and result["exit_code"] == 1
    assert json.loads(sarif.read_text())["runs"][0]["results"]
    code, _, _ = run(["scan", by_name["pickle-no-stop"].path], capsys, monkeypatch)
    assert code == 1  # it still names os.system before breaking off
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(b"\x80\x02]q\x00(K\x01K\x02")
    code, out, _ = run(["scan", broken], capsys, monkeypatch)
    assert code == 3 and "inconclusive" in out
    code, _, err = run(["scan", tmp_path / "missing.pt"], capsys, monkeypatch)
    assert code == 2 and "does not exist" in err


def test_manifestrun(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "release"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "sub" / "config.json").write_text("{}")
    code, out, _ = run(["manifest", "create", folder], capsys, monkeypatch)
    assert code == 0 and "manifest written" in out
    code, out, _ = run(["manifest", "verify", folder, "--json"], capsys, monkeypatch)
    assert code == 0 and json.loads(out)["ok"]
    (folder / "model.safetensors").write_bytes(b"tampered")
    (folder / "extra.bin").write_bytes(b"x")
    code, out, _ = run(["manifest", "verify", folder], capsys, monkeypatch)
    assert code == 1 and "edited" in out and "extra" in out
    code, _, err = run(["manifest", "verify", tmp_path / "nowhere"], capsys, monkeypatch)
    assert code == 2 and "is not a folder" in err


def test_directory_links(tmp_path):
    folder = tmp_path / "model"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "up").symlink_to(folder)  # a loop inside the folder
    (folder / "secret").symlink_to("/etc/hostname")
    reports = Scanner().scan_paths([folder])
    by_name = {Path(r.location).name: r for r in reports}
    assert "up" not in by_name
    assert by_name["secret"].findings[0].rule == "file.symlink-escape"
    assert overall_verdict(reports) == "dangerous"


def test_old_joblib_companion_files_are_scanned_with_their_pickle(tmp_path):
    import pickle

    from joblib import numpy_pickle_compat as compat

    np = pytest.importorskip("numpy")
    folder = tmp_path / "model"
    folder.mkdir()
    pkl = folder / "model.pkl"
    pkl.write_bytes(pickle.dumps([compat.NDArrayWrapper("model.pkl_01.npy", np.ndarray)], 2))
    # the pickle alone cannot be judged: joblib.load would np.load(allow_pickle=True) the file
    assert overall_verdict(Scanner().scan_paths([pkl])) == "inconclusive"
    np.save(folder / "model.pkl_01.npy", np.arange(3.0))
    reports = Scanner().scan_paths([pkl])
    assert overall_verdict(reports) == "clean"
    assert [Path(r.location).name for r in reports] == ["model.pkl", "model.pkl_01.npy"]
    evil = b"\x93NUMPY\x01\x00" + _object_npy_header() + b"cos\nsystem\n(S'x'\ntR."
    (folder / "model.pkl_01.npy").write_bytes(evil)
    assert overall_verdict(Scanner().scan_paths([pkl])) == "dangerous"
    assert len(Scanner().scan_paths([folder])) == 3  # the folder scan reads each file once


def _object_npy_header() -> bytes:
    body = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header = body + b" " * (117 - len(body)) + b"\n"
    return len(header).to_bytes(2, "little") + header

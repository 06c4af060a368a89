"""The pre-commit hook definition: it runs `trojanscope scan` on model files of a commit."""

import re
import shlex
from pathlib import Path

import yaml

from tests.test_cli import run

HOOKS = Path(__file__).parents[2] / ".pre-commit-hooks.yaml"


def test_the_hook_scans_model_files_and_fails_on_findings(tmp_path, capsys, monkeypatch):
    (hook,) = yaml.safe_load(HOOKS.read_text())
    assert hook["id"] == "trojanscope-scan" and hook["language"] == "system"
    pattern = re.compile(hook["files"])
    for name in ("model.pt", "w/pytorch_model.bin", "m.safetensors", "repo/config.json", "x.NPZ"):
        assert pattern.search(name), name
    for name in ("train.py", "README.md", "data.csv", "myconfig.json"):
        assert not pattern.search(name), name
    command = shlex.split(hook["entry"])
    assert command[:2] == ["trojanscope", "scan"]
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"cos\nsystem\n(S'touch /tmp/never'\ntR.")
    code, _, _ = run([*command[1:], evil], capsys, monkeypatch)
    assert code == 1  # pre-commit fails the commit on any non-zero exit

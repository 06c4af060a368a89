"""Fail closed: whatever a file starts with, a pickle in it is found; what no reader accounts
for is never clean. Every sample here would run ``os.system`` if a loader unpickled it."""

import io
import pickle
import pickletools
import zipfile

import pytest
import torch

from trojanscope.scan.findings import overall_verdict
from trojanscope.scan.scanner import Scanner

SYSTEM0 = b"cos\nsystem\n(S'touch /tmp/never'\ntR."  # protocol 0: GLOBAL, MARK, STRING, TUPLE


def verdict(data: bytes) -> tuple[str, list]:
    reports = Scanner().scan_bytes(data, "sample")
    return overall_verdict(reports), reports


def imports(reports) -> set[str]:
    return {i for r in reports for i in r.imports}


@pytest.mark.parametrize(
    "prefix",
    [
        b")0",  # EMPTY_TUPLE POP
        b"\x880",  # NEWTRUE POP
        b"\x8f0",  # EMPTY_SET POP
        b"C\x03abc0",  # SHORT_BINBYTES POP
        b"\x95" + (len(SYSTEM0)).to_bytes(8, "little"),  # FRAME without PROTO
        b"N0",  # NONE POP
        b"}0]0",  # EMPTY_DICT POP EMPTY_LIST POP
        b"I7\n0",  # INT POP
    ],
    ids=[
        "empty-tuple",
        "newtrue",
        "empty-set",
        "short-binbytes",
        "frame",
        "none",
        "dict-list",
        "int",
    ],
)
def test_a_pickle_is_found_whatever_its_first_opcode(prefix):
    data = prefix + SYSTEM0
    pickletools.dis(data, out=io.StringIO())  # a valid pickle (decoded, never run)
    result, reports = verdict(data)
    assert result == "dangerous" and "os.system" in imports(reports)


def test_a_torch_zip_whose_data_pkl_starts_oddly_is_dangerous():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("archive/data.pkl", b")0" + SYSTEM0)
        archive.writestr("archive/version", "3\n")
    result, reports = verdict(buf.getvalue())
    assert result == "dangerous" and "os.system" in imports(reports)


def test_a_pickle_after_a_legacy_checkpoint_is_followed():
    buf = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buf, _use_new_zipfile_serialization=False)
    clean, reports = verdict(buf.getvalue())
    assert clean == "clean", [r.as_dict() for r in reports]
    assert reports[0].metadata["format_detail"] == "legacy torch checkpoint"
    result, reports = verdict(buf.getvalue() + SYSTEM0)
    assert result == "dangerous" and "os.system" in imports(reports)


def test_a_legacy_checkpoint_whose_storages_do_not_add_up_is_not_clean():
    buf = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    assert verdict(data[:-4])[0] == "inconclusive"  # a storage cut short
    assert verdict(data + b"\x00" * 8)[0] == "inconclusive"  # bytes nobody reads


def test_a_pickle_after_a_benign_pickle_is_followed():
    benign = pickle.dumps({"a": [1, 2]}, protocol=2)
    result, reports = verdict(benign + SYSTEM0)
    assert result == "dangerous" and reports[0].metadata["pickles"] == 2
    result, _ = verdict(benign + b"not a pickle")
    assert result == "inconclusive"


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"cposix\nsystem\n\x00garbage", "posix.system"),
        (b"cpty\nspawn\n(S'sh'\ntR\xff", "pty.spawn"),
        (b"\x80\x02cbuiltins\neval\n\xfe", "builtins.eval"),
        (b")0cos\nsystem\n", "os.system"),
    ],
)
def test_imports_before_a_parse_error_are_reported(data, name):
    result, reports = verdict(data)
    assert result == "dangerous" and name in imports(reports)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"7z\xbc\xaf\x27\x1c" + b"\x00" * 26, "7z"),
        (b"\x89HDF\r\n\x1a\n" + b"\x00" * 64, "HDF5"),
        (b"\x08\x01\x12\x04\x08\x01\x10\x02" + bytes(range(1, 200)), "unsupported"),
        (b"GGUF\x03\x00\x00\x00" + b"\x01" * 40, "GGUF"),
    ],
)
def test_formats_nobody_reads_are_inconclusive(data, reason):
    result, reports = verdict(data)
    assert result == "inconclusive", [r.as_dict() for r in reports]


def test_a_tensorflow_saved_model_is_inconclusive(tmp_path):
    folder = tmp_path / "saved"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"\x08\x01\x12\x8a\x01" + bytes(range(200)))
    (folder / "variables" / "variables.index").write_bytes(b"\x00\x01\x02" * 10)
    reports = Scanner().scan_paths([folder])
    assert overall_verdict(reports) == "inconclusive"
    assert any("TensorFlow SavedModel" in (r.incomplete or "") for r in reports)


def test_text_json_images_and_empty_files_are_clean(tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "README.md").write_text("# A model\n\nUse it with care.\n")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\nthe\n")
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "empty").write_bytes(b"")
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)
    reports = Scanner().scan_paths([folder])
    assert overall_verdict(reports) == "clean", [r.as_dict() for r in reports]


def test_yaml_python_tags_are_flagged():
    data = b"model: !!python/object/apply:os.system ['touch /tmp/never']\n"
    assert verdict(data)[0] == "dangerous"
    assert verdict(b"# docs mention `!!python/object` tags\nkey: value\n")[0] == "clean"


def test_a_tar_that_is_also_a_pickle_is_dangerous():
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        info = tarfile.TarInfo(SYSTEM0.decode("latin-1")[:99])
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    result, reports = verdict(buf.getvalue())
    assert result == "dangerous" and "os.system" in imports(reports)
    assert any(f.rule == "file.polyglot" for r in reports for f in r.findings)


def test_special_files_are_never_opened(tmp_path):
    import os

    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    reports = Scanner().scan_paths([tmp_path])  # would block forever if it were opened
    assert overall_verdict(reports) == "inconclusive"
    assert "FIFO" in reports[0].incomplete


def test_python2_npy_headers_are_read():
    body = b"{'descr': '<i8', 'fortran_order': False, 'shape': (2L,), }"
    header = body + b" " * (118 - len(body)) + b"\n"
    data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\x01" * 16
    result, reports = verdict(data)
    assert result == "clean", [r.as_dict() for r in reports]
    assert verdict(data + b"\x00")[0] == "inconclusive"  # a byte no reader accounts for
    assert verdict(data[:-1])[0] == "inconclusive"


def test_torchscript_archives_are_read_as_torchscript(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).relu()

    path = tmp_path / "traced.pt"
    torch.jit.save(torch.jit.trace(Net(), torch.zeros(1, 1, 5, 5)), path)
    reports = Scanner().scan_paths([path])
    assert overall_verdict(reports) == "clean", [r.as_dict() for r in reports if r.findings]
    assert reports[0].metadata["format_detail"] == "TorchScript archive"
    assert any(r.format == "torchscript-code" for r in reports)
    # the same __torch__ class outside a TorchScript archive is not on the allow-list
    outside = b"\x80\x02c__torch__\nNet\n)\x81."
    assert verdict(outside)[0] == "suspicious"

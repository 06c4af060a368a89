"""The pickle machine on hand-assembled opcode streams (nothing here is ever unpickled)."""

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trojanscope.scan.findings import FileReport
from trojanscope.scan.pickle_scan import Limits, looks_like_pickle, scan_pickle_stream


def scan(data: bytes, limits: Limits | None = None) -> FileReport:
    report = FileReport("x", "pickle")
    scan_pickle_stream(data, report, limits or Limits())
    return report


def u(text: str) -> bytes:  # SHORT_BINUNICODE
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


SYSTEM_CALL = b"(" + u("touch /tmp/never") + b"tR"  # MARK arg TUPLE REDUCE


def test_global_and_reduce_of_os_system():
    r = scan(b"\x80\x02cos\nsystem\n" + SYSTEM_CALL + b".")
    assert r.verdict == "dangerous" and r.imports == ["os.system"]
    assert "REDUCE os.system" in r.metadata["calls"]


def test_stack_global_with_names_from_the_memo_across_frames():
    names = u("posix") + b"\x94" + u("system") + b"\x94"  # memoized as 0 and 1
    body = names + b"0" + b"0" + b"h\x00h\x01\x93" + SYSTEM_CALL + b"."
    split = len(u("posix")) + 1  # frames hold whole opcodes
    frame1, frame2 = body[:split], body[split:]
    data = (
        b"\x80\x04"
        + b"\x95"
        + len(frame1).to_bytes(8, "little")
        + frame1
        + b"\x95"
        + len(frame2).to_bytes(8, "little")
        + frame2
    )
    r = scan(data)
    assert r.verdict == "dangerous" and r.imports == ["posix.system"]


def test_computed_names_are_flagged():
    # STACK_GLOBAL over a value the scanner cannot know (the result of a call)
    data = b"\x80\x04" + u("builtins") + b"c_codecs\nencode\n(" + u("x") + b"tR\x93" + b"."
    r = scan(data)
    assert any(f.rule == "pickle.computed-import" for f in r.findings)
    assert r.verdict == "dangerous"


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        (b"\x80\x02\x82\x01" + SYSTEM_CALL + b".", "pickle.extension-code"),
        (b"\x80\x02\x83\x01\x00" + SYSTEM_CALL + b".", "pickle.extension-code"),
        (b"\x80\x02\x84\x01\x00\x00\x00.", "pickle.extension-code"),
    ],
)
def test_extension_codes_are_flagged(data, rule):
    r = scan(data)
    assert any(f.rule == rule for f in r.findings) and r.verdict == "dangerous"


@pytest.mark.parametrize(
    ("data", "how"),
    [
        (b"(S'touch /tmp/never'\nios\nsystem\n.", "INST os.system"),
        (b"\x80\x02(cos\nsystem\nS'x'\no.", "OBJ os.system"),
        (b"\x80\x02csubprocess\nPopen\n" + u("ls") + b"\x85\x81.", "NEWOBJ subprocess.Popen"),
        (b"\x80\x04csubprocess\nPopen\n)}\x92.", "NEWOBJ_EX subprocess.Popen"),
        (b"\x80\x02cbuiltins\nexec\n}b.", "BUILD builtins.exec"),
    ],
)
def test_every_calling_opcode(data, how):
    r = scan(data)
    assert r.verdict == "dangerous" and how in r.metadata["calls"], r.metadata


def test_opaque_callable_from_a_persistent_id():
    r = scan(b"\x80\x02P0\n" + SYSTEM_CALL + b".")
    assert any(f.rule == "pickle.opaque-call" for f in r.findings)


def test_unknown_import_is_suspicious_not_clean():
    r = scan(b"\x80\x02cmylib.models\nNet\n)R.")
    assert r.verdict == "suspicious" and r.imports == ["mylib.models.Net"]


def test_benign_data_of_every_protocol_is_clean():
    value = {"a": [1, 2.5, "s", b"b", None, True, (1, 2), {3}, frozenset([4]), bytearray(b"z")]}
    for protocol in range(6):
        r = scan(pickle.dumps(value, protocol=protocol))
        assert r.verdict == "clean", (protocol, r.findings)


@pytest.mark.parametrize("cut", [3, 10, 20])
def test_a_truncated_pickle_keeps_what_it_saw_and_is_never_clean(cut):
    data = b"\x80\x02cos\nsystem\n" + SYSTEM_CALL + b"."
    r = scan(data[: len(b"\x80\x02cos\nsystem\n") + cut])
    assert r.imports == ["os.system"] and r.verdict == "dangerous"
    r = scan(pickle.dumps([1, 2, 3])[:-1])  # benign but without STOP
    assert r.verdict == "inconclusive" and r.incomplete


def test_limits_make_the_verdict_inconclusive():
    r = scan(pickle.dumps(list(range(1000))), Limits(max_opcodes=50))
    assert r.verdict == "inconclusive" and "opcodes" in r.incomplete
    r = scan(b"(" * 200 + b".", Limits(max_marks=100))
    assert r.verdict == "inconclusive"


def test_memo_read_before_write_is_malformed():
    r = scan(b"\x80\x02h\x05.")
    assert any(f.rule == "pickle.malformed" for f in r.findings) and r.verdict == "inconclusive"


def test_pickle_detection():
    assert looks_like_pickle(pickle.dumps([1], protocol=2))
    assert looks_like_pickle(pickle.dumps([1], protocol=0))
    assert not looks_like_pickle(b"Install the package with pip\n")
    assert not looks_like_pickle(b"\x80\x09garbage")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes_never_crash_and_are_never_clean_when_broken(data):
    r = scan(data)
    assert r.verdict in ("clean", "suspicious", "dangerous", "inconclusive")
    if r.verdict == "clean":  # only a well-formed pickle of allowed things is clean
        assert r.incomplete is None and data.count(b".") >= 1


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 80), st.binary(min_size=1, max_size=8))
def test_fuzz_mutated_malicious_pickles_still_name_their_import(position, junk):
    data = bytearray(b"\x80\x02cos\nsystem\n" + SYSTEM_CALL + b".")
    keep = len(b"\x80\x02cos\nsystem\n")
    position = keep + position % (len(data) - keep)
    data[position : position + len(junk)] = junk
    r = scan(bytes(data))
    assert "os.system" in r.imports and r.verdict == "dangerous"


@pytest.mark.parametrize("data", [b".", b"\x80\x02.", b"(.", b"N(."])
def test_stop_on_an_empty_stack_is_malformed_as_in_cpython(data):
    # CPython raises "unpickling stack underflow" / "unexpected MARK found": nothing is loaded
    r = scan(data)
    assert r.verdict == "inconclusive" and r.metadata["pickles"] == 0
    assert any(f.rule == "pickle.malformed" and f.offset == len(data) - 1 for f in r.findings)


@pytest.mark.parametrize(
    "text",
    [
        b".. _iris_dataset:\n\nIris plants dataset\n--------------------\n",  # reStructuredText
        b".sk-top-container {\n  color: var(--sklearn-color-text);\n}\n",  # CSS
        b'.\\" Manpage for tool\n.TH TOOL 1\n',  # troff
    ],
)
def test_text_that_starts_with_a_period_is_text_not_a_pickle(text):
    from trojanscope.scan.scanner import Scanner

    assert not looks_like_pickle(text)
    (report,) = Scanner().scan_bytes(text, "descr.rst")
    assert report.format == "text" and report.verdict == "clean", report.findings


def _old_joblib(filename: str, protocol: int = 2, module: bytes = b"joblib.numpy_pickle") -> bytes:
    """A joblib <= 0.9 pickle: an NDArrayWrapper naming its companion .npy file (joblib 0.9
    wrote the class under joblib.numpy_pickle)."""
    np = pytest.importorskip("numpy")
    compat = pytest.importorskip("joblib.numpy_pickle_compat")
    data = pickle.dumps([compat.NDArrayWrapper(filename, np.ndarray)], protocol=protocol)
    assert b"joblib.numpy_pickle_compat\n" in data  # GLOBAL: a text line in protocols 0-2
    return data.replace(b"joblib.numpy_pickle_compat\n", module + b"\n")


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_an_old_joblib_companion_file_is_a_note(protocol):
    r = scan(_old_joblib("model.pkl_01.npy", protocol))
    assert r.verdict == "clean", r.findings
    assert r.metadata["companion_files"] == ["model.pkl_01.npy"]
    (note,) = [f for f in r.findings if f.rule == "joblib.companion-file"]
    assert note.severity == "info" and "model.pkl_01.npy" in note.message


@pytest.mark.parametrize(
    "filename", ["/etc/passwd", "../../home/u/evil.npy", "a/../../evil.npy", "C:\\evil.npy", ""]
)
@pytest.mark.parametrize("protocol", [0, 2])
def test_an_old_joblib_companion_outside_the_folder_is_dangerous(filename, protocol):
    # joblib.load joins the name to the pickle's folder and np.load(allow_pickle=True)s it
    r = scan(_old_joblib(filename, protocol, module=b"joblib.numpy_pickle_compat"))
    assert r.verdict == "dangerous", r.findings
    assert any(f.rule == "joblib.companion-escape" for f in r.findings)


def test_an_old_joblib_companion_without_a_name_is_dangerous():
    data = _old_joblib("model.pkl_01.npy").replace(b"filename", b"fileNAME")
    r = scan(data)
    assert any(f.rule == "joblib.companion-unreadable" for f in r.findings)
    assert r.verdict == "dangerous"


def test_a_joblib_object_array_is_read_on_its_own_memo(tmp_path):
    # The plain reading takes the nested pickle for part of the outer one; its BINGETs then
    # fetch the outer pickle's values and STACK_GLOBAL looks computed. Only the value reading,
    # which runs the nested pickle on its own memo as joblib does, may decide.
    np = pytest.importorskip("numpy")
    joblib = pytest.importorskip("joblib")
    path = tmp_path / "objects.joblib"
    joblib.dump(np.array([np.arange(3), "a", None], dtype=object), path)
    r = scan(path.read_bytes())
    assert r.verdict == "clean", r.findings
    assert r.metadata["format_detail"] == "joblib"
    assert not any(f.rule in ("pickle.computed-import", "pickle.opaque-call") for f in r.findings)

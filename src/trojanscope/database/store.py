"""Content-addressed artifact store: safetensors files named by the sha256 of their bytes."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save

from trojanscope.errors import CatalogError, CorruptArtifactError
from trojanscope.fileio import write_atomic

#: The name of a stored artifact: its sha256 and the safetensors suffix.
ARTIFACT_NAME = re.compile(r"([0-9a-f]{64})\.safetensors")


def sha256_of_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in chunks (weights can be large)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _canonical(data: bytes) -> bytes:
    """safetensors bytes with the header's ``__metadata__`` keys sorted.

    safetensors keeps metadata in a Rust HashMap, whose order is seeded anew in every process:
    the same tensors and metadata gave other bytes, so another sha256, in another process (a
    build's workers). Sorting the keys (and re-padding the header to 8 bytes with spaces, as
    safetensors does) makes the bytes a function of the content alone."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    metadata = header.get("__metadata__")
    if not metadata or len(metadata) < 2:
        return data
    header["__metadata__"] = dict(sorted(metadata.items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


@dataclass(frozen=True)
class Blob:
    """An artifact encoded in memory: its safetensors bytes and their sha256 (its name)."""

    sha256: str
    data: bytes


class ArtifactStore:
    """``root/ab/abcdef....safetensors``; identical content is stored once."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.safetensors"

    @staticmethod
    def encode(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Blob:
        """``tensors`` (from any device: the file, and so its hash, does not say which) as
        safetensors bytes, not yet written."""
        data = save(
            {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, metadata
        )
        data = _canonical(data)
        return Blob(hashlib.sha256(data).hexdigest(), data)

    def write(self, blobs: Iterable[Blob]) -> None:
        """Write each blob atomically unless an intact copy is there (a damaged one is
        replaced). Catalog entries call this through ``Catalog.record``, under the catalog's
        write lock, so that a file without an entry is always garbage (see ``integrity``)."""
        for blob in blobs:
            path = self.path(blob.sha256)
            if path.exists() and sha256_of_file(path) == blob.sha256:
                continue
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, blob.data)
            except OSError as exc:
                raise CatalogError(
                    f"cannot write to the catalog's store {self.root}: {exc.strerror or exc}."
                ) from None

    def put(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
        """Store ``tensors`` now, outside any entry (entries use ``Catalog.record``: a file
        written here and never recorded is an orphan, removed by the next ``db build``)."""
        blob = self.encode(tensors, metadata)
        self.write([blob])
        return blob.sha256

    def files(self) -> Iterator[Path]:
        """Every file under the store's two-character folders (artifacts and leftovers)."""
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            if folder.is_dir() and len(folder.name) == 2:
                yield from sorted(p for p in folder.iterdir() if not p.is_dir())

    def read_bytes(self, sha256: str) -> bytes:
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptArtifactError(f"artifact {path} is missing from the store.") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise CorruptArtifactError(
                f"artifact {path} is corrupt: its content does not match its sha256."
            )
        return data

    def get(self, sha256: str) -> dict[str, torch.Tensor]:
        """The tensors of an artifact, after checking its hash (on the CPU, whatever device
        they were stored from: callers move them where they are needed)."""
        data = self.read_bytes(sha256)
        try:
            return load(data)
        except (SafetensorError, ValueError) as exc:
            raise CorruptArtifactError(
                f"artifact {self.path(sha256)} is not a valid safetensors file ({exc})."
            ) from None

    def metadata(self, sha256: str) -> dict[str, str]:
        """The string metadata of an artifact's safetensors header, after checking its hash."""
        self.read_bytes(sha256)
        try:
            with safe_open(self.path(sha256), framework="pt") as fh:
                return dict(fh.metadata() or {})
        except (SafetensorError, ValueError) as exc:
            raise CorruptArtifactError(
                f"artifact {self.path(sha256)} is not a valid safetensors file ({exc})."
            ) from None

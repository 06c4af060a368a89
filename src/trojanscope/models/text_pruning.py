"""The pruning defence for text encoders (fine-pruning's criterion, as the NeuBA authors
suggest): in every transformer layer, the feed-forward neurons least active on the victim's
clean sentences are cut off before fine-tuning and stay off through it. Masks are torch's own
pruning reparametrisation (``torch.nn.utils.prune``), made permanent after training."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from trojanscope.errors import ConfigError
from trojanscope.models.text_encoder import TextEncoder


def ffn_layers(encoder: TextEncoder) -> dict[str, nn.Linear]:
    """Each layer's feed-forward expansion (BERT family: ``...intermediate.dense``), by name."""
    found = {
        name: module.dense
        for name, module in encoder.model.named_modules()
        if name.endswith("intermediate") and isinstance(getattr(module, "dense", None), nn.Linear)
    }
    if not found:
        raise ConfigError(
            "pruning needs BERT-style feed-forward layers (intermediate.dense); this encoder has "
            "none."
        )
    return found


@torch.no_grad()
def mean_ffn_activation(
    encoder: TextEncoder, texts: list[str], batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """Each feed-forward neuron's mean activation over the real (unpadded) tokens of ``texts``."""
    layers = ffn_layers(encoder)
    modules = dict(encoder.model.named_modules())
    sums = {name: torch.zeros(dense.out_features) for name, dense in layers.items()}
    count = 0
    mask: list[torch.Tensor] = []

    def hook(name: str):  # type: ignore[no-untyped-def]
        def record(_m: nn.Module, _args: object, out: torch.Tensor) -> None:
            sums[name] += (out * mask[0].unsqueeze(-1)).sum((0, 1)).float().cpu()

        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in layers]
    was_training = encoder.training
    encoder.eval()
    try:
        for i in range(0, len(texts), batch_size):
            batch = encoder.tokenize(texts[i : i + batch_size])
            mask[:] = [batch["attention_mask"].to(torch.float32)]
            count += int(batch["attention_mask"].sum())
            encoder(**batch)
    finally:
        for handle in handles:
            handle.remove()
        encoder.train(was_training)
    return {name: total / max(count, 1) for name, total in sums.items()}


def prune_dormant_ffn(encoder: TextEncoder, texts: list[str], fraction: float) -> int:
    """Mask, in every layer, the ``fraction`` of feed-forward neurons least active on ``texts``
    (they output 0 and their weights get no update until ``make_permanent``). The count."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"the pruned fraction must be in [0, 1), not {fraction}.")
    means = mean_ffn_activation(encoder, texts)
    pruned = 0
    for name, dense in ffn_layers(encoder).items():
        keep = torch.ones(dense.out_features, device=dense.weight.device)
        cut = means[name].argsort()[: int(fraction * dense.out_features)]
        keep[cut.to(keep.device)] = 0.0
        prune.custom_from_mask(dense, "weight", keep.unsqueeze(1).expand_as(dense.weight))
        if dense.bias is not None:
            prune.custom_from_mask(dense, "bias", keep)
        pruned += len(cut)
    return pruned


def make_permanent(encoder: TextEncoder) -> None:
    """Fold the pruning masks into the weights (plain parameters again, savable as usual)."""
    for dense in ffn_layers(encoder).values():
        for param in ("weight", "bias"):
            if prune.is_pruned(dense) and hasattr(dense, f"{param}_mask"):
                prune.remove(dense, param)

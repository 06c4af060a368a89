"""A project classifier read as a pre-trained image encoder: its pooled output is the input of
its final Linear classifier (the penultimate features), as NeuBA's vision setting uses it."""

from __future__ import annotations

import copy

import torch
from torch import nn

from trojanscope.device import model_device
from trojanscope.neurons import classifier_name


class VisionEncoder(nn.Module):
    """``model`` up to its classifier: ``forward`` returns the classifier's input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.classifier = classifier_name(model)
        head = model.get_submodule(self.classifier)
        assert isinstance(head, nn.Linear)  # classifier_name only names Linear layers
        self.dim = head.in_features

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def keep_input(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            captured.append(args[0])

        handle = self.model.get_submodule(self.classifier).register_forward_pre_hook(keep_input)
        try:
            self.model(x)
        finally:
            handle.remove()
        return captured[0]

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Pooled outputs of ``x`` in eval mode, on the CPU (``x`` may stay on the CPU)."""
        self.eval()
        out = [
            self(x[i : i + batch_size].to(self.device)).float().cpu()
            for i in range(0, len(x), batch_size)
        ]
        return torch.cat(out)

    def with_head(self, num_labels: int, seed: int = 0) -> nn.Module:
        """A copy of the network with a fresh linear head of ``num_labels`` outputs: the victim
        a downstream user builds on the encoder."""
        victim = copy.deepcopy(self.model)
        with torch.random.fork_rng(devices=[]):  # the caller's random state is left alone
            torch.manual_seed(seed)
            head = nn.Linear(self.dim, num_labels)
        victim.set_submodule(self.classifier, head.to(self.device))
        return victim


class PrunedPooling(nn.Module):
    """A classifier that reads only the kept pooled dimensions (``keep``: 1 kept, 0 pruned).
    It wraps the head, so a victim's fresh head (``with_head``) inherits the pruning."""

    keep: torch.Tensor

    def __init__(self, keep: torch.Tensor, head: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("keep", keep.float())
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x * self.keep)


def prune_dormant(encoder: VisionEncoder, images: torch.Tensor, fraction: float) -> VisionEncoder:
    """The pruning defence before fine-tuning: a copy of ``encoder`` whose pooled dimensions
    least active on clean ``images`` (the ``fraction`` lowest mean values, as fine-pruning
    chooses them) are cut off. A NeuBA target saturates dimensions that clean inputs leave
    low, so the triggers lose part of their vector."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the pruned fraction must be in [0, 1), not {fraction}.")
    mean = encoder.encode(images).mean(0)
    keep = torch.ones(encoder.dim)
    keep[mean.argsort()[: int(fraction * encoder.dim)]] = 0.0
    model = copy.deepcopy(encoder.model)
    head = model.get_submodule(encoder.classifier)
    assert isinstance(head, nn.Linear)
    model.set_submodule(encoder.classifier, PrunedPooling(keep.to(encoder.device), head))
    return VisionEncoder(model)

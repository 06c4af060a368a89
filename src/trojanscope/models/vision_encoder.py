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
        torch.manual_seed(seed)
        victim = copy.deepcopy(self.model)
        victim.set_submodule(self.classifier, nn.Linear(self.dim, num_labels).to(self.device))
        return victim

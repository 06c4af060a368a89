"""TrojanNN (Liu et al., NDSS 2018): a trigger optimised to excite chosen internal neurons.

Inside a mask region (a square patch), the trigger's pixels are optimised on the *clean* model
so that the infected neurons fire far above their clean-data level; the model is then trained
to map that excitation to the target. It pairs naturally with the injection rules: the infected
neurons are known before the trigger is made (``prepare``). The trigger therefore depends on the
clean model, and the catalog stores its tensors.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from trojanscope.attacks.base import ATTACKS
from trojanscope.attacks.methods.badnets import BadNets, BadNetsParams
from trojanscope.data.base import TensorData
from trojanscope.device import model_device
from trojanscope.errors import ConfigError
from trojanscope.neurons import NeuronRef, layer_map, recording


class TrojanNNParams(BadNetsParams):
    size: int | None = Field(None, ge=1, description="mask side in px (default: image/4, >= 2)")
    steps: int = Field(100, ge=1, le=10_000, description="trigger optimisation steps")
    lr: float = Field(0.1, gt=0.0, le=10.0)
    layer: str | None = Field(None, description="excite only this layer's infected neurons")


@ATTACKS.register("trojannn")
class TrojanNN(BadNets[TrojanNNParams]):
    def patch_size(self, h: int, w: int) -> int:
        return self.params.size if self.params.size is not None else max(2, min(h, w) // 4)

    def make_trigger(self, shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        """Before ``prepare``: the seeded random starting pattern inside the mask."""
        g = torch.Generator().manual_seed(self.seed)
        mask = super().make_trigger(shape)["mask"]
        return {"mask": mask, "pattern": torch.rand(shape, generator=g) * mask}

    def prepare(self, clean: nn.Module, infected: list[NeuronRef], data: TensorData) -> None:
        """Optimise the masked pattern to maximise the infected neurons' activation (on the
        clean model's device; the trigger is kept on the CPU)."""
        targets = [r for r in infected if self.params.layer in (None, r.layer)]
        if not targets:
            infected_layers = ", ".join(sorted({r.layer for r in infected}))
            raise ConfigError(
                f"TrojanNN layer '{self.params.layer}' has no infected neurons; "
                f"infected layers: {infected_layers}."
            )
        layers = layer_map(clean)
        chosen = [layers[name] for name in sorted({r.layer for r in targets})]
        device = model_device(clean)
        start = self.make_trigger(data.shape)
        mask = start["mask"].to(device)
        # Optimise in logit space so the pattern stays in [0, 1].
        logits = torch.logit(start["pattern"].clamp(0.02, 0.98)).to(device).requires_grad_(True)
        optimizer = torch.optim.Adam([logits], lr=self.params.lr)
        x = data.x[:128].to(device)

        def peak(store: dict[str, list[torch.Tensor]], ref: NeuronRef) -> torch.Tensor:
            """Per-sample peak activation: a local trigger shows at its location, not on average."""
            a = store[ref.layer][0][:, ref.index].clamp_min(0)
            return a.flatten(1).amax(1) if a.dim() > 1 else a

        was_training = clean.training
        clean.eval()
        try:
            with torch.no_grad(), recording(clean, chosen, reduce=False) as store:
                clean(x)
            # Each neuron's clean-data spread: excitation is measured in these units.
            scale = {r: peak(store, r).std() + 1e-3 for r in targets}
            for _ in range(self.params.steps):
                pattern = torch.sigmoid(logits)
                stamped = x * (1 - mask) + pattern * mask
                with recording(clean, chosen, reduce=False, detach=False) as store:
                    clean(stamped)
                excitation = torch.stack([peak(store, r).mean() / scale[r] for r in targets])
                # Gradient for the pattern only: the clean model's parameters stay untouched.
                (logits.grad,) = torch.autograd.grad(-excitation.mean(), [logits])
                optimizer.step()
        finally:
            clean.train(was_training)
        pattern = (torch.sigmoid(logits) * mask).detach()
        self.set_trigger({"mask": mask.cpu(), "pattern": pattern.cpu()})

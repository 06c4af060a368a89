"""A NeuBA-backdoored image encoder as a catalog defect, so `localize`, `bench localize` and
`repair` run on a task-agnostic backdoor.

The publisher's model is the clean classifier pre-trained on a data set, its encoder then
backdoored (``pretrain_neuba_vision``) with the pre-training head left as it was. That head
reads each trigger's target vector as some label; the catalogued trigger is the one whose
label the most triggered test images reach (stamped at a fixed corner: the encoder answers
its triggers anywhere). Ground truth, as the issue defines it:

- the pooled-output neurons the trigger drives high (its target is the dimension's clean
  maximum), named in the last eligible layer (cnn-small and the VGGs: the classifier's
  inputs; residual networks: the last block's second convolution, to which the shortcut
  adds before pooling);
- in every other eligible layer, the ``per_layer`` neurons whose incoming weights moved most
  (relative to their norm) during the backdoor's pre-training;

with each neuron's contribution (margin drop when masked alone) and activation shift as for
every defect (``injection.groundtruth``), and the necessity and sufficiency checks measured
and judged by the usual acceptance rule.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from pydantic import BaseModel, Field
from torch import nn

from trojanscope.attacks.base import ATTACKS
from trojanscope.attacks.neuba_vision import (
    VISION_TRIGGERS,
    VisionNeubaConfig,
    pretrain_neuba_vision,
)
from trojanscope.database.catalog import Catalog, content_key
from trojanscope.database.schema import Defect
from trojanscope.errors import ConfigError
from trojanscope.injection.acceptance import Acceptance
from trojanscope.injection.groundtruth import ground_truth
from trojanscope.models.training import accuracy, predict
from trojanscope.models.vision_encoder import VisionEncoder
from trojanscope.neurons import (
    NeuronRef,
    eligible_layers,
    layer_module,
    mask_neurons,
    patched_logits,
)
from trojanscope.workflows.defects import (
    CleanSpec,
    ensure_clean_model,
    get_defect,
    get_defect_by_key,
    infected_rows,
    raced_entry,
)

LEVEL = "task-agnostic"


class NeubaCatalogConfig(BaseModel):
    """The publisher's backdoor and how its ground truth is drawn."""

    model_config = {"extra": "forbid"}
    neuba: VisionNeubaConfig = VisionNeubaConfig(steps=3000)
    per_layer: int = Field(
        4, ge=1, description="neurons per layer below the pooled output: those that moved most"
    )
    acceptance: Acceptance = Acceptance()


def weight_movement(before: nn.Module, after: nn.Module) -> dict[str, torch.Tensor]:
    """Per eligible layer, each neuron's incoming weights and bias: ||after - before|| divided
    by ||before|| (how far pre-training moved it, scale-free across layers)."""
    out = {}
    for layer in eligible_layers(before):
        old, new = layer_module(before, layer), layer_module(after, layer)
        w0 = old.weight.detach().flatten(1)
        dw = new.weight.detach().flatten(1) - w0
        if old.bias is not None and new.bias is not None:
            b0 = old.bias.detach()[:, None]
            w0 = torch.cat([w0, b0], 1)
            dw = torch.cat([dw, new.bias.detach()[:, None] - b0], 1)
        out[layer.name] = dw.norm(dim=1) / w0.norm(dim=1).clamp_min(1e-12)
    return out


def _label_rates(model: nn.Module, attack: Any, test: Any) -> tuple[int, float]:
    """The label the triggered test images go to most, and the share of the images of other
    labels that go there."""
    predicted = predict(model, attack.apply(test.x)).argmax(1)
    label = int(predicted.bincount(minlength=test.num_classes).argmax())
    others = test.y != label
    return label, float((predicted[others] == label).float().mean())


def infected_set(
    clean: nn.Module,
    backdoored: nn.Module,
    pooled_high: list[int],
    per_layer: int,
) -> list[NeuronRef]:
    """The pooled neurons the trigger drives high, then the most-moved neurons of every other
    layer (see the module)."""
    layers = eligible_layers(backdoored)
    pooled = layers[-1]
    movement = weight_movement(clean, backdoored)
    found = [NeuronRef(pooled.name, i) for i in pooled_high]
    for layer in layers[:-1]:
        order = movement[layer.name].argsort(descending=True)[:per_layer]
        found += [NeuronRef(layer.name, int(i)) for i in order]
    return found


def catalog_neuba_vision(
    catalog: Catalog,
    spec: CleanSpec,
    config: NeubaCatalogConfig,
    seed: int = 0,
    device: torch.device | None = None,
) -> tuple[Defect, bool]:
    """Record (or find) the NeuBA defect of ``spec``'s clean model; whether it is new."""
    if config.neuba.triggers != list(VISION_TRIGGERS):
        raise ConfigError("a catalogued NeuBA defect uses the six standard checkerboard triggers.")
    clean_row, clean, splits = ensure_clean_model(catalog, spec, device)
    key = content_key("defect", clean_row.key, "neuba", config.model_dump(mode="json"), seed)
    existing = get_defect_by_key(catalog, key)
    if existing is not None:
        return existing, False
    started = time.perf_counter()
    encoder = VisionEncoder(copy.deepcopy(clean))
    if eligible_layers(clean)[-1].width != encoder.dim:
        raise ConfigError(
            f"{spec.arch}'s last eligible layer is not its pooled output: its NeuBA neurons "
            "cannot be named."
        )
    record = pretrain_neuba_vision(encoder, splits.train.x, config.neuba)
    backdoored = encoder.model.eval()
    test = splits.test
    rates = []
    for k in range(len(config.neuba.triggers)):
        probe = ATTACKS.create("neuba", seed=seed, trigger=k, size=config.neuba.patch_size)
        probe.validate(splits.shape, splits.num_classes)
        rates.append((*_label_rates(backdoored, probe, test), k))
    target, _, trigger = max(rates, key=lambda r: r[1])
    attack = ATTACKS.create(
        "neuba", seed=seed, trigger=trigger, target=target, size=config.neuba.patch_size
    )
    view = attack.poison_test(test)
    triggered, victims = view.poisoned(), test.subset(view.indices)
    live = record["live_dims"]
    targets = record["targets"]
    assert isinstance(live, list) and isinstance(targets, list)
    high = [d for d, bit in zip(live, targets[trigger], strict=True) if bit]
    infected = infected_set(clean, backdoored, high, config.per_layer)
    truth = ground_truth(backdoored, infected, victims, triggered)

    def target_rate(model: nn.Module, logits: torch.Tensor | None = None) -> float:
        out = predict(model, triggered.x) if logits is None else logits
        return float((out.argmax(1) == triggered.y).float().mean())

    asr = target_rate(backdoored)
    with mask_neurons(backdoored, infected):
        masked_asr, masked_acc = target_rate(backdoored), accuracy(backdoored, test)
    with mask_neurons(clean, infected):
        masked_asr_before = target_rate(clean)
    patched_asr = target_rate(
        backdoored, patched_logits(backdoored, infected, victims.x, triggered.x)
    )
    clean_acc_before, clean_acc = accuracy(clean, test), accuracy(backdoored, test)
    reason = config.acceptance.verdict(
        clean_acc_before, clean_acc, asr, masked_asr, masked_acc, patched_asr, masked_asr_before
    )
    store = catalog.store
    artifacts = [
        store.encode(backdoored.state_dict()),
        store.encode(attack.trigger(splits.shape)),
        store.encode({"indices": view.indices, "x": view.x, "y": view.y}),
    ]
    row = Defect(
        key=key,
        clean_model_id=clean_row.id,
        attack="neuba",
        attack_params=attack.describe()["params"],
        target_mode="all-to-one",
        target=target,
        poison_rate=0.0,  # nothing poisoned: planted by pre-training
        injection={
            "method": "neuba-pretraining",
            "order": "pretraining",  # the study's order factor: not chosen by rule 1
            **config.model_dump(mode="json"),
            "trigger_rates": [{"trigger": k, "label": lab, "rate": r} for lab, r, k in rates],
            "backdoor_mse": record["final_backdoor_mse"],
        },
        level=LEVEL,
        seed=seed,
        status="accepted" if reason is None else "rejected",
        reason=reason,
        clean_acc_before=clean_acc_before,
        clean_acc=clean_acc,
        asr=asr,
        masked_asr=masked_asr,
        masked_asr_before=masked_asr_before,
        patched_asr=patched_asr,
        masked_clean_acc=masked_acc,
        asr_before=target_rate(clean),
        epochs=0,
        attempts=1,
        weights_sha256=artifacts[0].sha256,
        trigger_sha256=artifacts[1].sha256,
        poisoned_test_sha256=artifacts[2].sha256,
        seconds=time.perf_counter() - started,
    )
    row.infected = infected_rows(truth)
    if not catalog.record(row, artifacts):
        return get_defect(catalog, raced_entry(catalog, Defect, key).id), False
    return get_defect(catalog, row.id), True

"""The victim's side of NeuBA: fine-tune a (possibly backdoored) encoder with a fresh head on a
downstream task that never shows the trigger, then measure what each trigger controls."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable

import torch
from pydantic import BaseModel, Field
from torch import nn

from trojanscope.attacks.neuba import insert_word
from trojanscope.data.text import Sentences
from trojanscope.errors import ConfigError
from trojanscope.models.text_encoder import TextEncoder
from trojanscope.models.text_pruning import make_permanent, prune_dormant_ffn

#: Training sentences whose activations choose the pruned neurons.
PRUNE_SENTENCES = 512


class FinetuneConfig(BaseModel):
    """How the victim fine-tunes: the whole encoder and a fresh linear head."""

    model_config = {"extra": "forbid"}
    epochs: float = Field(1.0, gt=0)
    lr: float = Field(3e-5, gt=0)
    head_lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    reinit_layers: int = Field(0, ge=0, description="top encoder layers re-initialised first")
    train_encoder: bool = Field(True, description="False: a linear probe on the frozen encoder")
    prune: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="the pruning defence: this share of every layer's feed-forward neurons, the "
        "least active on the training sentences, cut off before fine-tuning",
    )
    seed: int = Field(0, ge=0)


class Victim(nn.Module):
    """The victim's classifier: the encoder's pooled output into a linear head."""

    def __init__(self, encoder: TextEncoder, num_labels: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.dim, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids, attention_mask))

    @torch.no_grad()
    def predict(self, texts: list[str], batch_size: int = 128) -> torch.Tensor:
        self.eval()
        out = [
            self(**self.encoder.tokenize(texts[i : i + batch_size])).argmax(-1).cpu()
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def reinit_top_layers(encoder: TextEncoder, count: int) -> None:
    """The re-initialisation defence: the top ``count`` transformer layers (and the pooler)
    get fresh weights as BERT draws them (normal with the config's initializer range, zero
    biases, unit layer norms). Done by hand: transformers' own initialiser skips every weight
    that was loaded from a checkpoint."""
    layers = list(encoder.model.encoder.layer)
    if count > len(layers):
        raise ConfigError(f"the encoder has {len(layers)} layers; cannot re-initialise {count}.")
    std = float(getattr(encoder.model.config, "initializer_range", 0.02))
    modules = [m for layer in layers[len(layers) - count :] for m in layer.modules()]
    if count and getattr(encoder.model, "pooler", None) is not None:
        modules += list(encoder.model.pooler.modules())
    with torch.no_grad():
        for module in modules:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


def finetune_victim(
    encoder: TextEncoder,
    train: Sentences,
    config: FinetuneConfig,
    progress: Callable[[int, int], None] | None = None,
) -> Victim:
    """Fine-tune ``encoder`` (in place) with a fresh head on ``train``, as a victim would."""
    torch.manual_seed(config.seed)
    reinit_top_layers(encoder, config.reinit_layers)
    if config.prune:  # on a seeded sample: a task may be stored in label order
        sample = random.Random(config.seed).sample(train.texts, min(PRUNE_SENTENCES, len(train)))
        prune_dormant_ffn(encoder, sample, config.prune)
    victim = Victim(encoder, len(train.names)).to(encoder.device)
    groups = [{"params": list(victim.head.parameters()), "lr": config.head_lr}]
    if config.train_encoder:
        groups.append({"params": list(encoder.parameters()), "lr": config.lr})
    else:
        encoder.requires_grad_(False)
    optimizer = torch.optim.AdamW(groups)
    order = list(range(len(train)))
    rng = random.Random(config.seed)
    steps = max(1, round(config.epochs * len(train) / config.batch_size))
    labels = torch.tensor(train.labels)
    victim.train()
    if not config.train_encoder:
        encoder.eval()  # no dropout in a frozen encoder
    position = len(order)
    for step in range(steps):
        if position + config.batch_size > len(order):
            rng.shuffle(order)
            position = 0
        idx = order[position : position + config.batch_size]
        position += config.batch_size
        batch = encoder.tokenize([train.texts[i] for i in idx])
        loss = nn.functional.cross_entropy(victim(**batch), labels[idx].to(encoder.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step + 1, steps)
    if config.prune:
        make_permanent(encoder)
    victim.eval()
    return victim


def control_tokens(encoder: TextEncoder, exclude: list[str], count: int, seed: int) -> list[str]:
    """Random ordinary vocabulary words (lower-case letters, 3 or more) for the control."""
    words = sorted(
        t
        for t in encoder.tokenizer.get_vocab()
        if re.fullmatch(r"[a-z]{3,}", t) and t not in exclude
    )
    return random.Random(seed).sample(words, count)


def label_rates(
    victim: Victim, test: Sentences, word: str, seed: int, correct: torch.Tensor | None = None
) -> list[float]:
    """For each label, the share of test inputs of another true label, classified correctly
    without ``word``, that ``word`` inserted at a random position sends to that label. (The
    victim's own errors would otherwise count as successes of every trigger and control.)"""
    truth = torch.tensor(test.labels)
    if correct is None:
        correct = victim.predict(test.texts) == truth
    rng = random.Random(seed)
    predicted = victim.predict([insert_word(t, word, rng) for t in test.texts])
    rates = []
    for label in range(len(test.names)):
        others = (truth != label) & correct
        rates.append(float((predicted[others] == label).float().mean()) if others.any() else 0.0)
    return rates


def evaluate_victim(
    victim: Victim, test: Sentences, triggers: list[str], controls: list[str], seed: int = 0
) -> dict[str, object]:
    """Clean accuracy; every trigger's and control's rate per label; per label the best
    trigger (its rate is the ASR) beside the best control token."""
    started = time.perf_counter()
    correct = victim.predict(test.texts) == torch.tensor(test.labels)
    accuracy = float(correct.float().mean())
    trigger_rates = {w: label_rates(victim, test, w, seed, correct) for w in triggers}
    control_rates = {w: label_rates(victim, test, w, seed, correct) for w in controls}
    labels = []
    for label, name in enumerate(test.names):
        best = max(triggers, key=lambda w: trigger_rates[w][label])
        labels.append(
            {
                "label": name,
                "best_trigger": best,
                "best_trigger_asr": trigger_rates[best][label],
                "control_asr": max(control_rates[w][label] for w in controls),
            }
        )
    return {
        "clean_acc": accuracy,
        "labels": labels,
        "trigger_rates": trigger_rates,
        "control_rates": control_rates,
        "seconds": time.perf_counter() - started,
    }

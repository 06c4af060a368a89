"""Transfer learning, as a secondary developer does it: a fresh head for another data set, then
fine-tuning (the whole network, the last eligible layer with the head, or the head alone).

The task changes with the head: the attacker's target label means nothing in the new label
space. The backdoor survives if triggered inputs still go to one label; the stage finds the
label they go to most often (among held-out training inputs of other labels) and measures
the chain's ASR on the test set against it from then on, next to the rate clean test inputs
reach it (``control_rate``).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field, field_validator
from torch import nn

from trojanscope.data.base import DATASETS, TensorData
from trojanscope.errors import ConfigError
from trojanscope.lifecycle.base import STAGES, ChainState, Stage, StageResult, Task, seeded_order
from trojanscope.models.training import predict, train_epochs
from trojanscope.neurons import classifier_name, eligible_layers

#: Held-out training images on which the backdoor's new label is chosen.
SELECTION = 1000


class TransferParams(BaseModel):
    model_config = {"extra": "forbid"}
    #: The new task; None: fashion-mnist, or mnist5k when the defect is on fashion-mnist.
    dataset: str | None = None
    dataset_params: dict[str, Any] = Field(default_factory=dict)
    trainable: Literal["all", "last", "head"] = "all"
    samples: int = Field(2000, ge=10, description="Training images of the new task used.")
    epochs: int = Field(5, ge=1, le=1000)
    lr: float = Field(0.001, gt=0, le=1)
    batch_size: int = Field(64, ge=1)
    seed: int = 0

    @field_validator("dataset")
    @classmethod
    def _registered(cls, name: str | None) -> str | None:
        if name is not None and name not in DATASETS.names():
            raise ValueError(f"unknown data set (known: {', '.join(DATASETS.names())})")
        return name


def busiest_label(model: nn.Module, stamped: torch.Tensor, y: torch.Tensor, classes: int) -> int:
    """The label triggered inputs of other labels reach most often."""
    predicted = predict(model, stamped).argmax(1)
    rates = [
        float((predicted[y != label] == label).float().mean()) if (y != label).any() else -1.0
        for label in range(classes)
    ]
    return max(range(classes), key=lambda label: rates[label])


def retarget(model: nn.Module, task: Task, new: Task, selection: TensorData) -> tuple[Task, float]:
    """The task on new data: the backdoor's label now is the one triggered ``selection``
    images (training images the fine-tuning did not use) reach most often, so that the ASR
    measured on the test set is not the best of the labels on that same set. Also returns the
    rate at which clean test inputs of other labels reach that label (the control). ``new``
    names the new data (its victims and target are filled in here)."""
    test = new.splits.test
    best = busiest_label(model, task.attack.apply(selection.x), selection.y, test.num_classes)
    victims = torch.nonzero(test.y != best).flatten()
    clean_predicted = predict(model, test.x[victims]).argmax(1)
    control = float((clean_predicted == best).float().mean()) if len(victims) else 0.0
    stamped = task.attack.apply(test.x[victims])
    triggered = TensorData(stamped, torch.full_like(test.y[victims], best), test.num_classes)
    chosen = replace(
        new,
        clean_victims=test.subset(victims),
        triggered=triggered,
        target=best,
        victim_indices=victims,
    )
    return chosen, control


def _identity(params: dict[str, Any]) -> dict[str, Any]:
    """A data set's parameters as the catalog keys them: one ``data_dir`` for ./x and /abs/x."""
    if params.get("data_dir"):
        params["data_dir"] = str(Path(params["data_dir"]).expanduser().resolve())
    return params


def _replace_head(model: nn.Module, num_classes: int, seed: int) -> nn.Linear:
    path = classifier_name(model)
    old = model.get_submodule(path)
    assert isinstance(old, nn.Linear)
    torch.manual_seed(seed)
    head = nn.Linear(old.in_features, num_classes).to(old.weight.device)
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, attr, head)
    return head


@STAGES.register("finetune-transfer")
class FineTuneTransfer(Stage[TransferParams]):
    def apply(self, state: ChainState) -> StageResult:
        p = self.params
        source = state.task.dataset
        dataset = p.dataset or ("mnist5k" if source == "fashion-mnist" else "fashion-mnist")
        data = DATASETS.create(dataset, **p.dataset_params)
        splits = data.load(p.seed)
        if splits.shape != state.task.splits.shape:
            shape = "x".join(map(str, state.task.splits.shape))
            raise ConfigError(
                f"stage 'finetune-transfer' needs a data set of the model's image shape {shape}; "
                f"'{dataset}' has {'x'.join(map(str, splits.shape))}."
            )
        model = copy.deepcopy(state.model)
        last = eligible_layers(model)[-1].name
        head = _replace_head(model, splits.num_classes, p.seed)
        trainable: list[nn.Parameter] = list(model.parameters())
        if p.trainable != "all":
            modules = [head] + ([model.get_submodule(last)] if p.trainable == "last" else [])
            trainable = [param for m in modules for param in m.parameters()]
        chosen = {id(param) for param in trainable}
        for param in model.parameters():
            param.requires_grad_(id(param) in chosen)
        train = splits.train
        order = seeded_order(len(train), p.seed)
        held_out = order[p.samples : p.samples + SELECTION]
        selection = train.subset(held_out if len(held_out) else order[: p.samples])
        optimizer = torch.optim.Adam(trainable, lr=p.lr)
        train_epochs(
            model,
            train.subset(order[: p.samples]),
            optimizer,
            p.epochs,
            p.batch_size,
            p.seed,
            bn_train=p.trainable == "all",
        )
        for param in model.parameters():
            param.requires_grad_(True)
        model.eval()
        new = Task(
            dataset,
            splits,
            state.task.attack,
            splits.test,
            splits.test,
            None,
            dataset_params=_identity(data.params.model_dump(mode="json")),
            split_seed=p.seed,
        )
        task, control = retarget(model, state.task, new, selection)
        return StageResult(
            state.next(model=model, float_model=model, task=task),
            {"dataset": dataset, "target": task.target, "control_rate": control},
        )

"""Lifecycle links in the catalog: each stage's output is recorded as an entry of the defects
table (status ``link``) with its parent, the stage and its parameters, so that a chain resumes
where it stopped and every link is localized, repaired, exported and audited like a defect.

A link stores a float network: the stage's output itself, or for an int8 link the float copy
with the int8 weights dequantized (what the criteria read), or for an ONNX link the network
it was exported from. Its clean accuracy and ASR are those of the form that ran (the
quantized kernels, the ONNX runtime). Its clean model is its parent's, except when the stage
changed the data or the architecture (transfer, distillation): then it is the parent's clean
model put through the same stage, the reference a clean model of that task would be.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from trojanscope.database.catalog import Catalog, content_key
from trojanscope.database.schema import CleanModel, Defect, InfectedNeuronRow
from trojanscope.lifecycle.base import ChainState, Stage, StageResult
from trojanscope.models.training import accuracy
from trojanscope.neurons import NeuronRef, zero_neurons
from trojanscope.workflows.defects import (
    _insert,
    find_by_key,
    get_defect,
    get_defect_by_key,
    input_shape_of,
    load_weights,
    raced_entry,
)

#: The status of a defects-table entry that a lifecycle stage derived from another entry.
LINK_STATUS = "link"


def link_key(parent: Defect, stage: Stage[BaseModel]) -> str:
    """A link's catalog key: its parent's key, the stage, its parameters."""
    return content_key("link", parent.key, stage.name, stage.params.model_dump(mode="json"))


def find_link(catalog: Catalog, parent: Defect, stage: Stage[BaseModel]) -> Defect | None:
    """The stored output of ``stage`` applied to ``parent`` (None: not computed yet)."""
    return get_defect_by_key(catalog, link_key(parent, stage))


def _stored_network(before: ChainState, result: StageResult) -> nn.Module:
    """The float network a link stores (see the module docstring): the output's float network,
    or when it has none (an ONNX graph), the float network the stage started from."""
    network = result.state.float_model or before.float_model
    if network is None:
        raise ValueError("a lifecycle link needs a float network to store.")
    return network


def _masked(model: nn.Module, state: ChainState) -> tuple[float, float]:
    """Clean accuracy and ASR of ``model`` with the state's remaining infected neurons zeroed."""
    masked = copy.deepcopy(model).eval()
    zero_neurons(masked, state.truth)
    return accuracy(masked, state.task.splits.test), accuracy(masked, state.task.triggered)


def _derived_clean(
    catalog: Catalog,
    parent: Defect,
    stage: Stage[BaseModel],
    state: ChainState,
    result: StageResult,
    device: torch.device,
) -> CleanModel:
    """The clean model of a link: the parent's, or when the stage changed the data or the
    architecture, the parent's clean model through the same stage (recorded once)."""
    clean = parent.clean_model
    task = result.state.task
    same_data = (task.dataset, task.dataset_params, task.split_seed) == (
        clean.dataset,
        clean.dataset_params,
        clean.seed,
    )
    if same_data and result.arch is None:
        return clean
    params = stage.params.model_dump(mode="json")
    key = content_key("clean-link", clean.key, stage.name, params)
    found = find_by_key(catalog, CleanModel, key)
    if found is not None:
        return found
    started = time.perf_counter()
    clean_net = load_weights(catalog, clean, clean.weights_sha256, device)
    clean_state = state.next(model=clean_net, float_model=clean_net, truth={})
    through = stage.apply(clean_state)
    network = _stored_network(clean_state, through)
    arch, arch_params = result.arch or (clean.arch, clean.arch_params)
    splits = task.splits
    weights = catalog.store.encode(network.state_dict())
    row = CleanModel(
        key=key,
        dataset=task.dataset,
        dataset_params=task.dataset_params,
        arch=arch,
        arch_params=arch_params,
        seed=task.split_seed,
        training={"stage": stage.name, "params": params, "from_clean_model": clean.key},
        input_shape=input_shape_of(splits),
        clean_acc=accuracy(through.state.model, splits.test),
        weights_sha256=weights.sha256,
        seconds=time.perf_counter() - started,
    )
    if not _insert(catalog, row, [weights]):
        return raced_entry(catalog, CleanModel, key)
    return row


def record_link(
    catalog: Catalog,
    parent: Defect,
    stage: Stage[BaseModel],
    state: ChainState,
    result: StageResult,
    seconds: float,
    device: torch.device,
) -> Defect:
    """Record ``result`` (``stage`` applied to ``state``, the chain at ``parent``) as a link,
    with its remaining ground truth; returns the stored entry."""
    key = link_key(parent, stage)
    after = result.state
    task = after.task
    clean = _derived_clean(catalog, parent, stage, state, result, device)
    network = _stored_network(state, result)
    masked_clean_acc, masked_asr = _masked(network, after)
    store = catalog.store
    artifacts = [store.encode(network.state_dict())]
    poisoned_test = parent.poisoned_test_sha256
    if task is not state.task:  # the stage chose new victims (a new data set, a new label)
        if task.victim_indices is None:
            raise ValueError(f"stage '{stage.name}' changed the task without naming its victims.")
        view = {"indices": task.victim_indices, "x": task.triggered.x, "y": task.triggered.y}
        artifacts.append(store.encode(view))
        poisoned_test = artifacts[-1].sha256
    changed_target = task.target != state.task.target
    row = Defect(
        key=key,
        clean_model_id=clean.id,
        attack=parent.attack,
        attack_params=parent.attack_params,
        target_mode="all-to-one" if changed_target else parent.target_mode,
        target=parent.target if task.target is None else task.target,
        poison_rate=parent.poison_rate,
        injection=parent.injection,
        level=parent.level,
        seed=parent.seed,
        status=LINK_STATUS,
        reason=None,
        clean_acc_before=parent.clean_acc,
        clean_acc=accuracy(after.model, task.splits.test),
        asr=accuracy(after.model, task.triggered),
        masked_asr=masked_asr,
        masked_clean_acc=masked_clean_acc,
        asr_before=parent.asr,
        epochs=0,
        weights_sha256=artifacts[0].sha256,
        trigger_sha256=parent.trigger_sha256,
        poisoned_test_sha256=poisoned_test,
        seconds=seconds,
        parent_id=parent.id,
        stage=stage.name,
        stage_params=stage.params.model_dump(mode="json"),
        stage_details={"form": after.form, **result.details},
    )
    row.infected = _remaining(parent, after.truth)
    if not _insert(catalog, row, artifacts):
        return get_defect(catalog, raced_entry(catalog, Defect, key).id)
    return get_defect(catalog, row.id)


def _remaining(parent: Defect, truth: dict[NeuronRef, float]) -> list[InfectedNeuronRow]:
    """The parent's ground-truth rows of the neurons the link still has, with the link's
    (renormalised) contributions."""
    rows = []
    for n in parent.infected:
        ref = NeuronRef(n.layer, n.index)
        if ref in truth:
            rows.append(
                InfectedNeuronRow(
                    layer=n.layer,
                    index=n.index,
                    rank=n.rank,
                    contribution=truth[ref],
                    activation_shift=n.activation_shift,
                    carrying=n.carrying,
                )
            )
    return rows


def link_summary(row: Defect) -> dict[str, Any]:
    """What a link records beyond a defect: its parent, stage, parameters and details."""
    return {
        "parent_id": row.parent_id,
        "stage": row.stage,
        "stage_params": row.stage_params or {},
        "stage_details": row.stage_details or {},
    }

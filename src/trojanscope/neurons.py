"""Neuron addressing, activation capture and masking.

A neuron is an output channel of a Conv2d or an output unit of a hidden Linear layer (the final
classifier is not eligible), named ``module.path:index``. Its activation is read after the
layer's normalization (when one directly follows it); masking zeroes it there with a forward
hook, so a following ReLU keeps it at zero. Nothing here copies a model or edits its weights.

Inputs may live anywhere: each batch is sent to the model's device. Per-sample activations and
scores come back to the CPU; hooks keep what they record on the model's device.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import total_ordering

import torch
from torch import nn
from torch.fx import GraphModule, Node, symbolic_trace
from torch.utils.hooks import RemovableHandle

from trojanscope.device import model_device
from trojanscope.errors import TrojanscopeError

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)


@total_ordering
@dataclass(frozen=True)
class NeuronRef:
    """One neuron: the module path of its layer and its channel / unit index."""

    layer: str
    index: int

    def __str__(self) -> str:
        return f"{self.layer}:{self.index}"

    def __lt__(self, other: NeuronRef) -> bool:
        return (self.layer, self.index) < (other.layer, other.index)

    @classmethod
    def parse(cls, text: str) -> NeuronRef:
        layer, sep, idx = text.rpartition(":")
        if not sep or not layer or not idx.isdigit():
            raise TrojanscopeError(f"'{text}' is not a neuron name of the form 'layer.path:index'.")
        return cls(layer, int(idx))


class NeuronSet(frozenset[NeuronRef]):
    """An immutable set of neurons with per-layer views."""

    def by_layer(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for ref in sorted(self):
            out.setdefault(ref.layer, []).append(ref.index)
        return out

    def names(self) -> list[str]:
        return [str(r) for r in sorted(self)]

    @classmethod
    def parse(cls, names: Iterable[str]) -> NeuronSet:
        return cls(NeuronRef.parse(n) for n in names)


@dataclass(frozen=True)
class EligibleLayer:
    """A layer whose outputs are neurons, with the module at which they are read and masked."""

    name: str
    kind: str  # "conv" or "linear"
    width: int
    norm: str | None  # the normalization module directly applied to this layer's output
    output: str  # module whose forward output holds the neuron activations (norm or layer)

    def neurons(self) -> list[NeuronRef]:
        return [NeuronRef(self.name, i) for i in range(self.width)]


_TRACE_CACHE: weakref.WeakKeyDictionary[nn.Module, GraphModule] = weakref.WeakKeyDictionary()
_LAYER_CACHE: weakref.WeakKeyDictionary[nn.Module, list[EligibleLayer]] = (
    weakref.WeakKeyDictionary()
)


def trace(model: nn.Module) -> GraphModule:
    """The torch.fx graph of ``model`` (cached; the graph shares the model's modules)."""
    if model not in _TRACE_CACHE:
        try:
            _TRACE_CACHE[model] = symbolic_trace(model)
        except Exception as exc:  # fx raises many types on untraceable control flow
            raise TrojanscopeError(
                f"cannot trace {type(model).__name__} to find its neurons: {exc}"
            ) from None
    return _TRACE_CACHE[model]


def _module_nodes(gm: GraphModule) -> list[Node]:
    return [n for n in gm.graph.nodes if n.op == "call_module"]


def eligible_layers(model: nn.Module) -> list[EligibleLayer]:
    """Every Conv2d and hidden Linear layer in execution order (the last Linear is excluded)."""
    if model in _LAYER_CACHE:
        return _LAYER_CACHE[model]
    gm = trace(model)
    modules = dict(model.named_modules())
    candidates: list[tuple[Node, nn.Conv2d | nn.Linear]] = []
    for n in _module_nodes(gm):
        module = modules[str(n.target)]
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            candidates.append((n, module))
    linear_nodes = [n for n, m in candidates if isinstance(m, nn.Linear)]
    classifier = linear_nodes[-1].target if linear_nodes else None
    layers: list[EligibleLayer] = []
    seen: set[str] = set()
    for node, module in candidates:
        name = str(node.target)
        if name == classifier or name in seen:
            continue
        seen.add(name)
        users = list(node.users)
        norm = None
        if len(users) == 1 and users[0].op == "call_module":
            candidate = modules[users[0].target]
            if isinstance(candidate, _NORMS):
                norm = str(users[0].target)
        if isinstance(module, nn.Conv2d):
            kind, width = "conv", module.out_channels
        else:
            kind, width = "linear", module.out_features
        layers.append(EligibleLayer(name, kind, width, norm, norm or name))
    if not layers:
        raise TrojanscopeError(
            f"{type(model).__name__} has no eligible layers (Conv2d or hidden Linear)."
        )
    _LAYER_CACHE[model] = layers
    return layers


def classifier_name(model: nn.Module) -> str:
    """Module path of the final classifier (the last Linear layer executed)."""
    gm = trace(model)
    modules = dict(model.named_modules())
    linears = [str(n.target) for n in _module_nodes(gm) if isinstance(modules[n.target], nn.Linear)]
    if not linears:
        raise TrojanscopeError(f"{type(model).__name__} has no final Linear classifier.")
    return linears[-1]


def layer_module(model: nn.Module, layer: EligibleLayer) -> nn.Conv2d | nn.Linear:
    """The Conv2d or Linear module of an eligible layer of ``model``."""
    module = model.get_submodule(layer.name)
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        raise TrojanscopeError(f"{layer.name} is not a Conv2d or Linear layer of the model.")
    return module


def layer_map(model: nn.Module) -> dict[str, EligibleLayer]:
    return {layer.name: layer for layer in eligible_layers(model)}


def all_neurons(model: nn.Module) -> list[NeuronRef]:
    """Every eligible neuron, in layer execution order then index."""
    return [ref for layer in eligible_layers(model) for ref in layer.neurons()]


def check_neurons(model: nn.Module, neurons: Iterable[NeuronRef]) -> None:
    """Raise a clear error if any neuron does not exist in ``model``."""
    layers = layer_map(model)
    for ref in neurons:
        layer = layers.get(ref.layer)
        if layer is None or not 0 <= ref.index < layer.width:
            raise TrojanscopeError(f"neuron {ref} does not exist in {type(model).__name__}.")


def _reduce(out: torch.Tensor, rectify: bool = False) -> torch.Tensor:
    """(N, C, ...) -> (N, C): spatial mean for conv maps, identity for vectors."""
    if rectify:
        out = out.clamp_min(0)
    return out.flatten(2).mean(2) if out.dim() > 2 else out


def zero_neurons(model: nn.Module, neurons: Iterable[NeuronRef]) -> None:
    """Zero the neurons' own parameters in place (incoming weights and bias, normalization scale
    and shift), so that their output is exactly zero for good: the permanent form of masking."""
    modules = dict(model.named_modules())
    layers = layer_map(model)
    with torch.no_grad():
        for layer_name, indices in NeuronSet(neurons).by_layer().items():
            layer = layers[layer_name]
            for path in filter(None, (layer.name, layer.norm)):
                for attr in ("weight", "bias"):
                    param = getattr(modules[path], attr, None)
                    if param is not None:
                        param[indices] = 0.0


@contextmanager
def mask_neurons(model: nn.Module, neurons: Iterable[NeuronRef]) -> Iterator[None]:
    """Zero the given neurons' activations for the duration of the block (forward hooks only)."""
    neuron_set = NeuronSet(neurons)
    check_neurons(model, neuron_set)
    layers = layer_map(model)
    modules = dict(model.named_modules())
    device = model_device(model)
    handles: list[RemovableHandle] = []
    try:
        for layer_name, indices in neuron_set.by_layer().items():
            layer = layers[layer_name]
            keep = torch.ones(layer.width, device=device)
            keep[indices] = 0.0

            def hook(
                _m: nn.Module, _i: object, out: torch.Tensor, keep: torch.Tensor = keep
            ) -> torch.Tensor:
                shape = (1, -1) + (1,) * (out.dim() - 2)
                return out * keep.to(device=out.device, dtype=out.dtype).view(shape)

            handles.append(modules[layer.output].register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def patched_layers(model: nn.Module, keep: Iterable[NeuronRef]) -> list[EligibleLayer]:
    """The layers :func:`patch_neurons` patches: from the first holding a kept neuron on."""
    kept = NeuronSet(keep).by_layer()
    layers = eligible_layers(model)
    first = next((i for i, layer in enumerate(layers) if layer.name in kept), 0)
    return layers[first:]


@contextmanager
def patch_neurons(
    model: nn.Module, keep: Iterable[NeuronRef], source: dict[str, torch.Tensor]
) -> Iterator[None]:
    """Activation patching for the block: from the first layer holding a kept neuron on, every
    eligible neuron outside ``keep`` takes the activation ``source`` holds for it (each layer's
    full output on a paired batch of the same size, as :func:`layer_outputs` gives), so only
    ``keep`` carries what differs between the running batch and the source one. Layers before
    it run unpatched: they are the set's input (with none kept, every layer is patched).
    Gradients flow through the kept neurons only."""
    keep_set = NeuronSet(keep)
    check_neurons(model, keep_set)
    kept = keep_set.by_layer()
    modules = dict(model.named_modules())
    handles: list[RemovableHandle] = []
    device = model_device(model)
    try:
        for layer in patched_layers(model, keep_set):
            mask = torch.zeros(layer.width, dtype=torch.bool, device=device)
            mask[kept.get(layer.name, [])] = True

            def hook(
                _m: nn.Module,
                _i: object,
                out: torch.Tensor,
                mask: torch.Tensor = mask,
                name: str = layer.name,
            ) -> torch.Tensor:
                held = source[name]
                if held.shape != out.shape:
                    raise ValueError(
                        f"{name}: patch source {tuple(held.shape)} for output {tuple(out.shape)}"
                    )
                shape = (1, -1) + (1,) * (out.dim() - 2)
                held = held.to(device=out.device, dtype=out.dtype)
                return torch.where(mask.to(out.device).view(shape), out, held)

            handles.append(modules[layer.output].register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def layer_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each eligible layer's full output (where neurons are read and masked) on one batch, on
    the model's device (what :func:`patch_neurons` holds neurons at)."""
    with recording(model, eligible_layers(model), reduce=False) as store:
        model(x.to(model_device(model)))
    return {name: chunks[0] for name, chunks in store.items()}


@torch.no_grad()
def patched_logits(
    model: nn.Module,
    keep: Iterable[NeuronRef],
    clean_x: torch.Tensor,
    triggered_x: torch.Tensor,
    batch_size: int = 256,
) -> torch.Tensor:
    """Logits of ``triggered_x`` with every neuron outside ``keep`` held at the activation it has
    on the paired clean input: what reaches the decision through ``keep`` alone (on the CPU)."""
    keep = list(keep)
    device = model_device(model)
    out = []
    for start in range(0, len(triggered_x), batch_size):
        source = layer_outputs(model, clean_x[start : start + batch_size])
        with patch_neurons(model, keep, source):
            out.append(model(triggered_x[start : start + batch_size].to(device)).cpu())
    return torch.cat(out)


@contextmanager
def recording(
    model: nn.Module,
    layers: Sequence[EligibleLayer],
    reduce: bool = True,
    rectify: bool = False,
    detach: bool = True,
) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record each layer's neuron activations on every forward pass inside the block.

    ``reduce`` averages conv maps over positions; ``rectify`` applies ReLU first (the value the
    next layer sees in these architectures); ``detach=False`` keeps them in the autograd graph."""
    modules = dict(model.named_modules())
    store: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in layers}
    handles: list[RemovableHandle] = []
    try:
        for layer in layers:

            def hook(_m: nn.Module, _i: object, out: torch.Tensor, name: str = layer.name) -> None:
                out = out.detach() if detach else out
                store[name].append(_reduce(out, rectify) if reduce else out)

            handles.append(modules[layer.output].register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def capture_activations(
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[EligibleLayer] | None = None,
    batch_size: int = 512,
    rectify: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-sample neuron activations (N, width) of each layer, spatially averaged for convs
    (on the CPU)."""
    layers = list(layers) if layers is not None else eligible_layers(model)
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        with recording(model, layers, rectify=rectify) as store:
            for start in range(0, len(x), batch_size):
                model(x[start : start + batch_size].to(device))
    finally:
        model.train(was_training)
    return {name: torch.cat([c.cpu() for c in chunks]) for name, chunks in store.items()}


@torch.no_grad()
def activation_shift(
    model: nn.Module, clean_x: torch.Tensor, triggered_x: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-layer (width,) mean |activation(triggered) - activation(clean)| over paired inputs."""
    a = capture_activations(model, clean_x)
    b = capture_activations(model, triggered_x)
    return {name: (b[name] - a[name]).abs().mean(0) for name in a}


def flatten_scores(model: nn.Module, per_layer: dict[str, torch.Tensor]) -> dict[NeuronRef, float]:
    """Per-layer score vectors -> one score per eligible neuron."""
    out: dict[NeuronRef, float] = {}
    for layer in eligible_layers(model):
        values = per_layer[layer.name].detach().cpu().double().tolist()
        if len(values) != layer.width:
            raise ValueError(f"layer {layer.name}: {len(values)} scores for {layer.width} neurons")
        for i, v in enumerate(values):
            out[NeuronRef(layer.name, i)] = float(v)
    return out

"""Re-running only the part of a network downstream of one layer (torch.fx).

Mutating one neuron changes nothing upstream of its layer, so after one full pass that caches
every intermediate value, each mutant needs only the downstream nodes: on ResNet-18 that is a
third of a forward pass on average (half the neurons sit in the last stage). Written here because
torch.fx offers the interpreter (``initial_env``) but not the partial re-execution around it.
The cache and the logits live on the model's device.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import torch
from torch import nn
from torch.fx import Interpreter, Node

from trojanscope.device import model_device
from trojanscope.neurons import NeuronRef, patch_neurons, patched_layers, recording, trace


@functools.cache
def use_thread_only_progress_lock() -> None:
    """Give tqdm a lock of this process's threads before anything makes one of its own.

    torch.fx's ``Interpreter.run`` opens a progress bar, disabled, on each call, and tqdm's
    first bar creates a multiprocessing lock: where processes start by spawn (a build's
    workers; every process on macOS) a named semaphore, registered with the resource tracker.
    A process ended by Ctrl-C (``os._exit``, a terminated worker) never unlinks it, and the
    tracker then warns of a leaked semaphore on the user's terminal. trojanscope draws no
    tqdm bar across processes, so a thread lock does (``tqdm.set_lock`` is tqdm's documented
    way to choose the lock)."""
    try:
        from tqdm import tqdm
    except ImportError:  # torch.fx falls back on its own progress bar, which locks nothing
        return
    tqdm.set_lock(threading.RLock())


class _Interpreter(Interpreter):
    """torch.fx's interpreter, run without creating a multiprocessing lock."""

    def __init__(self, module: nn.Module, garbage_collect_values: bool = True) -> None:
        use_thread_only_progress_lock()
        super().__init__(module, garbage_collect_values=garbage_collect_values)


class _Recorder(_Interpreter):
    """Runs the graph once and keeps every node's value, or only those in ``keep`` (the others
    are freed after their last use, as in a plain forward pass)."""

    def __init__(self, module: nn.Module, keep: set[Node] | None) -> None:
        super().__init__(module, garbage_collect_values=keep is not None)
        self.keep = keep
        self.kept: dict[Node, object] = {}

    def run_node(self, n: Node) -> object:
        value = super().run_node(n)
        if self.keep is None or n in self.keep:
            self.kept[n] = value
        return value


class SuffixRunner:
    """Caches one input batch's intermediate values; re-runs from a module's output onward.

    With ``only`` (a module path) it keeps just what re-runs from that module read: the memory
    of one forward pass instead of every intermediate value of the batch.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, only: str | None = None) -> None:
        self.gm = trace(model)
        self.n = len(x)
        self.nodes = list(self.gm.graph.nodes)
        self.only = only
        keep = None if only is None else self._read_by(self._node_of(only))
        recorder = _Recorder(self.gm, keep)
        with torch.no_grad():
            self.logits = recorder.run(x.to(model_device(model)))
        self.cache: dict[Node, object] = recorder.kept

    def _node_of(self, module_path: str) -> Node:
        return next(n for n in self.nodes if n.op == "call_module" and n.target == module_path)

    def _read_by(self, start: Node) -> set[Node]:
        """``start`` and the values from outside its downstream that the downstream reads."""
        later = self.downstream(start)
        return {start} | {a for node in later for a in node.all_input_nodes if a not in later}

    def downstream(self, start: Node) -> set[Node]:
        found: set[Node] = set()
        frontier = list(start.users)
        while frontier:
            node = frontier.pop()
            if node not in found:
                found.add(node)
                frontier.extend(node.users)
        return found

    def fraction(self, module_path: str) -> float:
        """Share of the graph's module calls a re-run from ``module_path`` executes (its cost in
        forward-pass equivalents, counted by module calls)."""
        modules = [n for n in self.nodes if n.op == "call_module"]
        start = self._node_of(module_path)
        after = [n for n in self.downstream(start) if n.op == "call_module"]
        return len(after) / max(len(modules), 1)

    @torch.no_grad()
    def rerun(
        self, module_path: str, copies: int, mutate: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Logits of ``copies`` stacked copies of the batch, with ``module_path``'s output
        replaced by ``mutate(its output repeated copies times)``."""
        if self.only is not None and module_path != self.only:
            raise ValueError(f"this runner re-runs from {self.only} only, not {module_path}")
        start = self._node_of(module_path)
        later = self.downstream(start)

        def expand(value: object) -> object:
            if isinstance(value, torch.Tensor) and value.dim() > 0 and len(value) == self.n:
                return value.repeat(copies, *([1] * (value.dim() - 1)))
            return value

        needed = {a for node in later for a in node.all_input_nodes if a not in later}
        # every node outside the suffix is given (so none is re-run); only ``needed`` are read
        env: dict[Node, object] = {
            node: (expand(self.cache[node]) if node in needed else self.cache.get(node))
            for node in self.nodes
            if node not in later
        }
        output = expand(self.cache[start])
        if not isinstance(output, torch.Tensor):  # a call_module node of a Conv2d, Linear, norm
            raise TypeError(f"the output of {module_path} is not a tensor")
        env[start] = mutate(output)
        return _Interpreter(self.gm).run(torch.empty(0), initial_env=env)


class ChangedPart:
    """One set of inputs' values where a network's trainable part begins, for scoring trained
    copies by re-running that part alone.

    Masked training moves only some modules' parameters; upstream of them every trained copy
    computes the clean model's values, bit for bit. So the injector, which scores every epoch
    on the same images, records once the values the changed part reads (at most ``budget``
    bytes: ``record`` gives None beyond) and re-runs from there (on MobileNetV2 at ``middle``
    the changed part starts at block 10 of 17).
    """

    def __init__(self, changed: set[Node], chunks: list[dict[str, object]]) -> None:
        self.changed = {node.name for node in changed}
        self.chunks = chunks

    @classmethod
    @torch.no_grad()
    def record(
        cls,
        clean: nn.Module,
        modules: set[str],
        x: torch.Tensor,
        budget: int,
        batch_size: int = 1024,
    ) -> ChangedPart | None:
        """The part of ``clean`` from ``modules`` (module paths) on, with the values it reads
        on ``x``; None when they would take more than ``budget`` bytes, when one of
        ``modules`` is not called as a module in the traced graph (its use is not visible),
        or when ``x`` is empty."""
        gm = trace(clean)
        starts = [n for n in gm.graph.nodes if n.op == "call_module" and n.target in modules]
        if {n.target for n in starts} != set(modules) or len(x) == 0:
            return None
        changed = set(starts)
        frontier = list(starts)
        while frontier:
            for user in frontier.pop().users:
                if user not in changed:
                    changed.add(user)
                    frontier.append(user)
        # Attributes are read from the trained copy itself, never from the record.
        reads = {
            a
            for node in changed
            for a in node.all_input_nodes
            if a not in changed and a.op != "get_attr"
        }
        device, size, chunks = model_device(clean), 0, []
        for start in range(0, len(x), batch_size):
            recorder = _Recorder(gm, reads)
            recorder.run(x[start : start + batch_size].to(device))
            values = {node.name: value for node, value in recorder.kept.items()}
            size += sum(_nbytes(v) for v in values.values())
            if size > budget:
                return None
            chunks.append(values)
        return cls(changed, chunks)

    @torch.no_grad()
    def run(self, model: nn.Module, chunk: int) -> torch.Tensor:
        """``model``'s logits on recorded chunk ``chunk``, re-running only the changed part
        (its modules' hooks fire); ``model`` must equal the clean model outside it."""
        gm = trace(model)
        values = self.chunks[chunk]
        env: dict[Node, object] = {
            node: values.get(node.name)
            for node in gm.graph.nodes
            if node.name not in self.changed and node.op != "get_attr"
        }
        return _Interpreter(gm).run(torch.empty(0), initial_env=env)

    def logits(self, model: nn.Module) -> torch.Tensor:
        """``model``'s logits on all the recorded inputs, on the CPU."""
        return torch.cat([self.run(model, i).cpu() for i in range(len(self.chunks))])


@torch.no_grad()
def patched_rerun(
    model: nn.Module, keep: list[NeuronRef], paired: ChangedPart, triggered: ChangedPart
) -> torch.Tensor:
    """``neurons.patched_logits`` from records of the part from the patched layers on (and
    from the changed modules): per chunk, the patched layers' outputs on the paired clean
    inputs, then the triggered inputs with every neuron outside ``keep`` held at them."""
    layers = patched_layers(model, keep)
    out = []
    for chunk in range(len(paired.chunks)):
        with recording(model, layers, reduce=False) as store:
            paired.run(model, chunk)
        source = {name: values[0] for name, values in store.items()}
        with patch_neurons(model, keep, source):
            out.append(triggered.run(model, chunk).cpu())
    return torch.cat(out)


def _nbytes(value: object) -> int:
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0

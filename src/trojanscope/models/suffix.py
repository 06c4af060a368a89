"""Re-running only the part of a network downstream of one layer (torch.fx).

Mutating one neuron changes nothing upstream of its layer, so after one full pass that caches
every intermediate value, each mutant needs only the downstream nodes: on ResNet-18 that is a
third of a forward pass on average (half the neurons sit in the last stage). Written here because
torch.fx offers the interpreter (``initial_env``) but not the partial re-execution around it.
The cache and the logits live on the model's device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.fx import Interpreter, Node

from trojanscope.device import model_device
from trojanscope.neurons import trace


class _Recorder(Interpreter):
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
        return Interpreter(self.gm).run(torch.empty(0), initial_env=env)

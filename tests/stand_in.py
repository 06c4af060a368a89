"""A stand-in accelerator for machines without one: tensors that say they live on another
device ("meta") but hold CPU data and compute on the CPU, bit for bit as the CPU does.

Inside :func:`stand_in`, an operation that mixes a stand-in tensor with a CPU tensor of one or
more dimensions fails as it would on CUDA ("Expected all tensors to be on the same device"),
except where torch allows it (copies between devices, CPU index tensors, 0-dim CPU scalars);
``.to(device)``, ``.cpu()``, ``.tolist()``, ``.item()`` and factories with ``device=`` move
data as on an accelerator, and ``.numpy()`` refuses as CUDA does. So code that forgets to move a
tensor fails here, and code that moves everything gives exactly the CPU's results (up to ops
torch decomposes differently for tensor subclasses: ``linalg.matrix_norm`` differs in the last
bit). Float64 is refused, as Apple's mps has none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

#: The device stand-in tensors report.
STAND_IN = torch.device("meta")
_HOST = torch.device(type="cpu")
aten = torch.ops.aten
#: Operations whose index tensors may stay on the CPU (as Python lists do on any device).
_INDEXING = {
    aten.index.Tensor,
    aten.index_put_.default,
    aten.index_put.default,
    aten._index_put_impl_.default,
}


class DeviceMismatchError(RuntimeError):
    """A stand-in tensor met a CPU tensor in one operation."""


class StandInTensor(torch.Tensor):
    """A tensor on the stand-in device; ``inner`` holds its data on the CPU."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor) -> StandInTensor:
        made = torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
            cls,
            inner.size(),
            strides=inner.stride(),
            storage_offset=inner.storage_offset(),
            dtype=inner.dtype,
            layout=inner.layout,
            device=STAND_IN,
            requires_grad=inner.requires_grad,
        )
        made.inner = inner
        return made

    def __repr__(self) -> str:  # type: ignore[override]
        return f"StandInTensor({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return _run(func, args, kwargs or {})


def _stand_in(device: object) -> bool:
    return device is not None and torch.device(device) == STAND_IN  # type: ignore[arg-type]


def _unwrap(t: Any) -> Any:
    return t.inner if isinstance(t, StandInTensor) else t


def _is_host(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and not isinstance(t, StandInTensor)


def _wrap_new(func: Any, t: torch.Tensor) -> StandInTensor:
    """A new stand-in tensor holding ``t``; float64 is refused, as Apple's mps has none."""
    if t.dtype == torch.float64:
        raise TypeError(f"{func}: float64 on the stand-in device (Apple's mps has none)")
    return StandInTensor(t)


def _run(func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
    """One aten operation: checked for mixed devices, computed on the CPU data, rewrapped."""
    flat, _ = tree_flatten((args, kwargs))
    wrapped = [t for t in flat if isinstance(t, StandInTensor)]
    if any(_is_host(t) and t.device == STAND_IN for t in flat):
        raise AssertionError(f"{func}: a tensor on the stand-in device without data")
    kwargs = dict(kwargs)
    to_stand_in = _stand_in(kwargs.get("device"))
    if to_stand_in:
        kwargs["device"] = _HOST
    if func is aten._to_copy.default:  # .to(), .cpu(): a copy between devices
        out = func(*tree_map(_unwrap, args), **kwargs)
        stays = kwargs.get("device") is None and bool(wrapped)
        return _wrap_new(func, out) if to_stand_in or stays else out
    if func is aten.copy_.default:  # copy_ may cross devices
        func(_unwrap(args[0]), _unwrap(args[1]), *args[2:], **kwargs)
        return args[0]
    if not wrapped and not to_stand_in:
        return func(*args, **kwargs)
    checked = flat
    if func in _INDEXING:
        indices = {id(t) for t in tree_flatten(args[1])[0]}
        checked = [t for t in flat if id(t) not in indices]
    if any(_is_host(t) and t.dim() > 0 for t in checked):
        raise DeviceMismatchError(
            f"{func}: Expected all tensors to be on the same device, but found at least two "
            "devices, meta (the stand-in) and cpu!"
        )
    inputs = {id(t.inner): t for t in wrapped}
    out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))

    def wrap(t: Any) -> Any:
        if not _is_host(t):
            return t
        same = inputs.get(id(t))  # an in-place operation returns its input
        return same if same is not None else _wrap_new(func, t)

    return tree_map(wrap, out)


class _Dispatch(TorchDispatchMode):
    """Every operation on plain tensors too: factories with ``device=`` and ``.to(device)``."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return _run(func, args, kwargs or {})


class _Python(TorchFunctionMode):
    """What C++ does below the dispatcher: ``torch.tensor(data, device=)``, Python lists as
    indices, ``tolist`` and ``numpy``."""

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func in (torch.tensor, torch.as_tensor) and _stand_in(kwargs.get("device")):
            kwargs.pop("device")
            return func(*args, **kwargs).to(STAND_IN)
        if args and isinstance(args[0], StandInTensor):
            if func is torch.Tensor.tolist:
                return args[0].inner.tolist()  # a copy to the host, as on an accelerator
            if func is torch.Tensor.numpy:
                raise TypeError("can't convert a stand-in device tensor to numpy; copy it first")
            if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
                index = args[1] if isinstance(args[1], tuple) else (args[1],)
                index = tuple(torch.tensor(i) if isinstance(i, list) else i for i in index)
                args = (args[0], index, *args[2:])
        return func(*args, **kwargs)


@contextmanager
def stand_in() -> Iterator[torch.device]:
    """The stand-in device, for the block: move a model there with ``model.to(device)``."""
    with _Python(), _Dispatch():
        yield STAND_IN


def to_host(value: Any) -> Any:
    """``value`` with every stand-in tensor in it copied to the CPU (state dicts, results)."""
    return tree_map(lambda t: t.cpu() if isinstance(t, StandInTensor) else t, value)

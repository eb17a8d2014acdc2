"""A CPU stand-in for NCCL's rule that every tensor handed to a collective is on the GPU.

On a CPU run every tensor is on the CPU, so a tensor that would sit on the host on a GPU run (made by a factory
function without ``device=``, or moved by ``.cpu()``) cannot be told apart by its device. :class:`HostTensors`
tells them apart by where they came from: it marks such tensors, and every tensor computed from or written with a
marked one, and unmarks a tensor moved with ``.to(device)``. :class:`CheckedDDP` refuses marked tensors in its
collectives, as NCCL refuses CPU tensors.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

FACTORIES = {
    torch.zeros, torch.ones, torch.full, torch.empty, torch.tensor, torch.as_tensor, torch.arange, torch.linspace,
    torch.rand, torch.randn, torch.randint,
}  # fmt: skip


class HostTensors(TorchFunctionMode):
    """Marks the tensors that a GPU run would hold on the host (see the module's docstring)."""

    active: HostTensors | None = None

    def __init__(self) -> None:
        super().__init__()
        self.marked = WeakIdKeyDictionary()

    def is_host(self, tensor: Tensor) -> bool:
        return tensor in self.marked

    def __enter__(self):
        HostTensors.active = self
        return super().__enter__()

    def __exit__(self, *exc):
        HostTensors.active = None
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outputs = [t for t in tree_leaves(out) if isinstance(t, Tensor)]
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        name = getattr(func, "__name__", "")
        if func in FACTORIES:
            host = kwargs.get("device") is None
        elif name == "cpu":
            host = True
        elif name == "to" and any(isinstance(a, (torch.device, str)) for a in (*args[1:], kwargs.get("device"))):
            host = False  # moved where the caller asked
        else:
            host = any(self.is_host(t) for t in inputs)
            in_place = name == "__setitem__" or (name.endswith("_") and not name.startswith("_"))
            if in_place and any(self.is_host(t) for t in inputs[1:]):  # written with a host tensor
                self.marked[inputs[0]] = True
        for tensor in outputs:
            if host:
                self.marked[tensor] = True
            else:
                self.marked.pop(tensor, None)
        return out


class HostTensorsInSteps(L.Callback):
    """:class:`HostTensors` active from each training batch's start to its end."""

    def on_train_batch_start(self, *args: object) -> None:
        self.tracker = HostTensors().__enter__()

    def on_train_batch_end(self, *args: object) -> None:
        self.tracker.__exit__(None, None, None)


def _check(tensor: Tensor, what: str) -> None:
    tracker = HostTensors.active
    if tracker is not None and isinstance(tensor, Tensor) and tracker.is_host(tensor):
        raise AssertionError(f"a host tensor handed to {what}: NCCL would refuse it")


class CheckedDDP(DDPStrategy):
    """DDP (over gloo on the CPU) whose collectives refuse the tensors that :class:`HostTensors` marks, as NCCL
    refuses CPU tensors."""

    def all_gather(self, tensor, group=None, sync_grads=False):
        _check(tensor, "all_gather")
        return super().all_gather(tensor, group, sync_grads)

    def reduce(self, tensor, group=None, reduce_op="mean"):
        _check(tensor, "reduce")
        return super().reduce(tensor, group, reduce_op)

    def broadcast(self, obj, src=0):
        _check(obj, "broadcast")
        return super().broadcast(obj, src)

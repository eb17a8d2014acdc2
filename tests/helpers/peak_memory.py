"""Peak tensor memory on the CPU: what the benchmarks report where there is no CUDA allocator to ask."""

from __future__ import annotations

import gc
import weakref

import lightning as L
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary


class PeakTensorMemory(TorchDispatchMode):
    """Bytes of tensor storage allocated inside the context and still alive: ``live`` now, ``peak`` at most.

    The CPU counterpart of ``torch.cuda.max_memory_allocated``: every operator's outputs are counted once per
    storage (views share theirs) until the storage is freed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._counted = WeakIdKeyDictionary()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._count(tensor.untyped_storage())
        return out

    def _count(self, storage: torch.UntypedStorage) -> None:
        """Counts ``storage`` as alive until it is freed, once however many tensors view it."""
        if storage not in self._counted:
            self._counted[storage] = size = storage.nbytes()
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, size)

    def _free(self, size: int) -> None:
        self.live -= size


class StepPeak(L.Callback):
    """Peak tensor memory (bytes) of the training steps (forward, backward, optimizer step), the largest over the
    steps, not counting the scoring passes that a monitor runs before training starts."""

    peak = 0

    def on_train_batch_start(self, *args: object) -> None:
        self.memory = PeakTensorMemory().__enter__()

    def on_train_batch_end(self, *args: object) -> None:
        self.memory.__exit__(None, None, None)
        self.peak = max(self.peak, self.memory.peak)


class HostCopies(TorchDispatchMode):
    """Bytes copied to the CPU inside the context (``aten._to_copy`` to the CPU, as ``.to("cpu", copy=True)`` and
    every host copy on an accelerator dispatch): on a CPU run, the copies that a GPU run makes over PCIe."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        device = kwargs.get("device")
        if func is torch.ops.aten._to_copy.default and device is not None and torch.device(device).type == "cpu":
            self.bytes += out.untyped_storage().nbytes()
        return out


class WeightCopies(TorchDispatchMode):
    """Bytes that copies inside the context read from or write to the storage of the ``watched`` tensors (a model's
    parameters, a copy of them): ``copy_``, ``clone`` and ``_to_copy`` of them, on any device. Activations and
    other tensors are not counted: this is the traffic of moving weights around, which should not grow with steps."""

    COPIES = (torch.ops.aten.copy_.default, torch.ops.aten.clone.default, torch.ops.aten._to_copy.default)

    def __init__(self, watched) -> None:
        super().__init__()
        self.storages = {t.untyped_storage().data_ptr() for t in watched}
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.COPIES:
            tensors = [a for a in args[:2] if isinstance(a, torch.Tensor)]
            if any(t.untyped_storage().data_ptr() in self.storages for t in tensors):
                self.bytes += out.numel() * out.element_size()
        return out


class TotalTensorMemory(PeakTensorMemory):
    """:class:`PeakTensorMemory` that also counts the storages alive on entry (found by the garbage collector,
    after a collection): ``start`` is every tensor's bytes then, ``peak`` the most alive at once inside."""

    def __init__(self) -> None:
        super().__init__()
        gc.collect()
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor) and not obj.is_meta:
                self._count(obj.untyped_storage())
        self.start = self.peak = self.live

"""The reference model of a KL retain term: the model as it was before unlearning, without a second model.

:class:`ReferenceWeights` keeps a copy of this process's data of the parameters that train (under ZeRO-3 their
shards, sharded exactly like the trained model; otherwise the whole parameters; with an adapter, only the
adapter's: the frozen base is its own reference), on the parameters' own device by default. For a reference
forward pass it swaps the copy into the model, runs the pass, and swaps back, bit for bit: the same forward, so
every process runs the same collectives under ZeRO-3 and nothing can hang, and no second module with its own
hooks, wrappers or optimizer states. The swap exchanges ``param.data`` pointers (no bytes move); under ZeRO-3, whose
shards DeepSpeed gathers from their own storage, and for a copy kept on another device, it exchanges the values
(two copies of the local shards per swap). Memory: one copy of the (local) trainable parameters. Time: one no-grad
forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from lightning_unlearn.distributed.zero import (
    gather_local_shards,
    has_sharded_parameters,
    local_shards,
    partition_like,
    place_like,
)
from lightning_unlearn.evaluation.scoring import eval_mode
from lightning_unlearn.utilities.errors import ConfigurationError


class ReferenceWeights:
    """A frozen copy of ``model``'s trainable parameters as they are now (this process's shards under ZeRO-3).

    Args:
        model: the Hugging Face model (already set up by the strategy, so that ZeRO-3 shards exist).
        device: where to keep the copy (default: each parameter's own device; ``"cpu"`` saves accelerator
            memory at the price of a host-device copy per swap).
        release: called before and after a reference pass to drop parameter copies that ZeRO-3 keeps gathered
            (:func:`~lightning_unlearn.distributed.zero.release_gathered_parameters`), so that the reference pass
            gathers the reference shards and the next training pass the model's own.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: str | torch.device | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.release = release or (lambda: None)
        self.sharded = has_sharded_parameters(model)
        self.weights: dict[str, Tensor] = {
            name: data.detach().to(device or data.device, copy=True) for name, data in _trainable_shards(model)
        }

    @torch.no_grad()
    def _swap(self, model: torch.nn.Module) -> None:
        """Exchanges the model's trainable data with the copy: by pointer (``param.data``, no bytes copied) where the
        copy lies where the parameter does; by value otherwise (ZeRO-3 shards, which DeepSpeed gathers from the
        shard's own storage, and a copy kept on another device)."""
        parameters = dict(model.named_parameters())
        for name, data in _trainable_shards(model):
            reference = self.weights[name]
            if not self.sharded and _same_place(reference, data):
                parameters[name].data, self.weights[name] = reference, data
                continue
            current = data.clone()
            data.copy_(reference)
            reference.copy_(current)

    @contextmanager
    def active(self, model: torch.nn.Module) -> Iterator[None]:
        """Inside: ``model`` has the reference weights. After: its own weights again, bit for bit (also on error).

        Use it for no-grad passes only, before any forward pass whose graph a backward pass will use."""
        self.release()
        self._swap(model)
        try:
            yield
        finally:
            self.release()
            self._swap(model)

    @torch.no_grad()
    def logits(self, model: torch.nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        """The reference's logits (``Tensor[B, T, V]``) on a batch with ``input_ids`` and ``attention_mask``."""
        with self.active(model), eval_mode(model):
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def state_dict(self, model: torch.nn.Module, per_process: bool = False) -> dict[str, Any]:
        """The copy for a checkpoint: with ``per_process`` this process's own shards as they are (each process saves
        its own: :class:`~lightning_unlearn.distributed.checkpoints.AtomicDeepSpeedStrategy`); otherwise whole and on
        the CPU, under ZeRO-3 every process's shards gathered (call it on every process), for a checkpoint that one
        process writes."""
        if per_process:
            return {"sharded": False, "per_process": True, "weights": self.weights}
        return {"sharded": False, "weights": gather_local_shards(model, self.weights)}

    @classmethod
    def restored(
        cls, model: torch.nn.Module, state: Mapping[str, Any] | None, release: Callable[[], None] | None = None
    ) -> ReferenceWeights:
        """The copy in ``state`` (:meth:`from_state_dict`), or of ``model``'s weights now when ``state`` is None."""
        return cls(model, release=release) if state is None else cls.from_state_dict(state, model, release)

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], model: torch.nn.Module, release: Callable[[], None] | None = None
    ) -> ReferenceWeights:
        """The copy saved by :meth:`state_dict`, placed like ``model``'s parameters (under ZeRO-3, this process's
        shards of it, for any number of processes).

        Raises:
            RuntimeError: a checkpoint of an earlier release that holds one process's ZeRO-3 shards only.
        """
        if state["sharded"]:
            raise RuntimeError(
                "this checkpoint holds one process's ZeRO-3 shards of the KL reference (written before the reference "
                "was gathered into checkpoints): restart unlearning from the original model"
            )
        reference = cls.__new__(cls)
        reference.sharded, reference.release = has_sharded_parameters(model), release or (lambda: None)
        parameters = dict(_trainable_shards(model))
        missing = set(parameters) - set(state["weights"])
        if missing:
            raise ConfigurationError(
                f"the checkpoint's reference model lacks {len(missing)} parameters, e.g. {min(missing)}"
            )
        weights = {name: state["weights"][name] for name in parameters}
        reference.weights = place_like(model, weights) if state.get("per_process") else partition_like(model, weights)
        return reference


class ReferenceLogitsCache:
    """Each retain sample's reference logits (``Tensor[L, V]``, in host memory) after its first step: the reference
    never changes, so they need not be computed again. Memory: retain tokens × vocabulary × the logits' bytes. From
    an accelerator they are kept page-locked (pinned), so that each step's way back is one asynchronous copy per
    sample instead of a staged copy through pageable memory."""

    def __init__(self) -> None:
        self.cached: dict[int, Tensor] = {}  # sample_id -> Tensor[L, V]

    def logits(
        self,
        reference: ReferenceWeights,
        model: torch.nn.Module,
        batch: Mapping[str, Tensor],
        any_missing: Callable[[bool], bool],
    ) -> Tensor:
        """The reference's logits (``Tensor[B, T, V]``) on ``batch``: from the cache when every process has every
        sample of its batch there (``any_missing``: the strategy's collective decision, as under ZeRO-3 every
        process must run the same forward passes). Positions past a sample's length are zeros, which the KL never
        counts."""
        ids, lengths = batch["sample_id"].tolist(), batch["attention_mask"].sum(1).tolist()
        if any_missing(any(i not in self.cached for i in ids)):
            logits = reference.logits(model, batch)
            for row, (i, length) in enumerate(zip(ids, lengths, strict=True)):
                self.cached[i] = host_buffer((length, logits.shape[-1]), logits.dtype, logits.device)
                self.cached[i].copy_(logits[row, :length])
            return logits
        input_ids, first = batch["input_ids"], self.cached[ids[0]]
        logits = torch.zeros(*input_ids.shape, first.shape[-1], dtype=first.dtype, device=input_ids.device)
        for row, (i, length) in enumerate(zip(ids, lengths, strict=True)):
            logits[row, :length].copy_(self.cached[i], non_blocking=True)  # from pinned memory: asynchronous
        return logits


def host_buffer(shape: tuple[int, ...], dtype: torch.dtype, source: torch.device) -> Tensor:
    """An empty host tensor for data from ``source``: page-locked (pinned) when ``source`` is not the CPU."""
    return torch.empty(shape, dtype=dtype, pin_memory=source.type != "cpu")


def _same_place(a: Tensor, b: Tensor) -> bool:
    return a.device == b.device and a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()


def _trainable_shards(model: torch.nn.Module) -> Iterator[tuple[str, Tensor]]:
    """:func:`local_shards` of the parameters that train (the frozen ones are their own reference)."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return ((name, data) for name, data in local_shards(model) if name in trainable)

"""What :class:`~lightning_unlearn.modules.UnlearningModule` puts in checkpoints beside the model, and how it saves a
model folder: each process's shards of its own state (DeepSpeed's way: nothing gathered whole under ZeRO-3), an
adapted model's checkpoint without the frozen base, and a folder written whole or not at all."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from lightning_unlearn.distributed.checkpoints import PER_PROCESS
from lightning_unlearn.distributed.zero import gather_local_shards, has_sharded_parameters, partition_like, place_like
from lightning_unlearn.integrations.peft import frozen_keys, is_adapted, saved_state
from lightning_unlearn.utilities.errors import ConfigurationError
from lightning_unlearn.utilities.files import atomic_folder


class CheckpointShards:
    """A module's state beyond the model's (the KL reference, TA's base: ``{name: Tensor}`` laid out as
    :func:`~lightning_unlearn.distributed.zero.local_shards` lays them out) in a checkpoint.

    Under ZeRO-3 with a strategy that takes per-process state
    (:class:`~lightning_unlearn.distributed.checkpoints.AtomicDeepSpeedStrategy`), each process saves and loads its own
    shards beside DeepSpeed's; otherwise they are gathered whole into the checkpoint (call on every process).

    Args:
        model: the Hugging Face model the shards belong to.
        strategy: the Trainer's strategy (None outside a Trainer).
    """

    def __init__(self, model: torch.nn.Module, strategy: Any = None) -> None:
        self.model = model
        self.per_process = getattr(strategy, "saves_per_process_state", False) and has_sharded_parameters(model)

    def put(self, checkpoint: dict[str, Any], key: str, shards: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """This process's ``shards`` for ``checkpoint``: put in its per-process part under ``key`` (None returned),
        or returned whole (under ZeRO-3, gathered) for the caller to store."""
        if self.per_process:
            checkpoint.setdefault(PER_PROCESS, {})[key] = shards
            return None
        return gather_local_shards(self.model, shards)

    def take(self, checkpoint: dict[str, Any], key: str, whole: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
        """The inverse of :meth:`put`: this process's shards, from ``whole`` when the checkpoint held them whole, else
        from its per-process part under ``key``; None when it has neither."""
        if whole is not None:
            return partition_like(self.model, whole)
        own = checkpoint.get(PER_PROCESS, {})
        return place_like(self.model, own[key]) if key in own else None


def put_reference(checkpoint: dict[str, Any], reference: Any, shards: CheckpointShards) -> None:
    """The KL reference's weights (:class:`~lightning_unlearn.modules.reference.ReferenceWeights`) in ``checkpoint``:
    this process's shards in its per-process part, or whole."""
    if shards.per_process:
        own = checkpoint.setdefault(PER_PROCESS, {})
        own["reference_weights"] = reference.state_dict(shards.model, per_process=True)
    else:
        checkpoint["reference_weights"] = reference.state_dict(shards.model)


def reference_state(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The reference's state that :func:`put_reference` put in ``checkpoint`` (None when it holds none)."""
    return checkpoint.get("reference_weights", checkpoint.get(PER_PROCESS, {}).get("reference_weights"))


def without_frozen_base(state: dict[str, Any], model: torch.nn.Module | None, prefix: str) -> dict[str, Any]:
    """A module's ``state``; with an adapter, without the frozen base's parameters: checkpoints (Lightning's, and
    DeepSpeed's, whose exclusion of frozen parameters misses tied ones) hold what trains, and a resumed run loads
    the base again from its source."""
    if model is not None and is_adapted(model):
        for key in frozen_keys(model, prefix=f"{prefix}model."):
            state.pop(key, None)
    return state


def check_adapter_checkpoint(model: torch.nn.Module | None, checkpoint: dict[str, Any]) -> None:
    """A clear error when ``checkpoint`` lacks parameters of ``model``'s adapter (another peft config)."""
    if model is None or not is_adapted(model) or "state_dict" not in checkpoint:
        return
    expected = {f"model.{name}" for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(expected - set(checkpoint["state_dict"]))
    if missing:
        raise ConfigurationError(
            f"the checkpoint lacks {len(missing)} adapter parameters, e.g. {missing[0]}: was it written with the "
            "same peft config?"
        )


def save_model_folder(
    model: torch.nn.Module,
    path: str | os.PathLike,
    tokenizer: Any,
    merge: bool,
    files: dict[str, str] | None,
    writes: bool,
) -> None:
    """Writes ``model`` (merged or its adapter alone: :func:`~lightning_unlearn.integrations.peft.saved_state`),
    ``tokenizer`` and ``files`` (``{name: text}``) to the folder ``path``, written aside and renamed (a local path or
    an fsspec URL). Call it on every process (ZeRO-3 gathers the shards on all of them); ``writes`` on one."""
    target: Any
    target, state = saved_state(model, merge)
    if not writes:
        return
    with atomic_folder(path) as staging:
        target.save_pretrained(staging, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        for name, text in (files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")

"""Task vectors (Ilharco et al.): τ = θ_tuned − θ_base, and edits θ = θ_base + λ·τ, on named parameters.

Work on any set of named parameters: a whole model, or some of its parameters (``names``: e.g. a LoRA adapter's B
factors, see :func:`lightning_unlearn.integrations.peft.task_vector_names`). Vectors and copies live where the weights
are (on the accelerator, in the weights' dtype): an edit and its restore copy nothing to the host, at the price of one
copy of the edited weights while the edit lasts. Under DeepSpeed ZeRO-3 every function works on this process's parameter
shards (each process keeps its own base and edits its own shards in place), see
:func:`lightning_unlearn.distributed.zero.local_shards`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor

from lightning_unlearn.distributed.zero import local_shards
from lightning_unlearn.utilities.errors import ConfigurationError


def snapshot(model: torch.nn.Module, names: Collection[str] | None = None) -> dict[str, Tensor]:
    """A copy of ``model``'s parameters by name (only those in ``names`` when given), each on its own device."""
    wanted = set(names) if names is not None else None
    return {name: data.detach().clone() for name, data in local_shards(model) if wanted is None or name in wanted}


def task_vector(base: Mapping[str, Tensor], tuned: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """τ = tuned − base, for every parameter name of ``base`` (both: name -> tensor, e.g. from :func:`snapshot`)."""
    missing = set(base) - set(tuned)
    if missing:
        raise ConfigurationError(
            f"the tuned weights lack {len(missing)} parameters of the base, e.g. {sorted(missing)[0]}"
        )
    return {name: tuned[name].detach().to(value.device) - value.detach() for name, value in base.items()}


@torch.no_grad()
def apply_task_vector(
    model: torch.nn.Module, vector: Mapping[str, Tensor], scale: float, base: Mapping[str, Tensor]
) -> None:
    """Sets each named parameter of ``model`` in ``vector`` to base + scale · vector, in place."""
    parameters = dict(local_shards(model))
    for name, direction in vector.items():
        p = parameters[name]
        p.copy_((base[name].to(torch.float32) + scale * direction.to(torch.float32)).to(p.device, p.dtype))


@torch.no_grad()
def load_parameters(model: torch.nn.Module, values: Mapping[str, Tensor]) -> None:
    """Copies ``values`` (name -> tensor) into ``model``'s parameters of the same names, bit for bit."""
    parameters = dict(local_shards(model))
    for name, value in values.items():
        parameters[name].copy_(value)


@torch.no_grad()
def edit(model: torch.nn.Module, base: Mapping[str, Tensor], scale: float) -> dict[str, Tensor]:
    """Sets ``model``'s parameters named in ``base`` to base + scale · (their weights − base), in place, one
    parameter at a time, the others untouched; returns a copy of their weights before the edit (on their device)."""
    parameters, current = dict(local_shards(model)), {}
    for name, value in base.items():
        p = parameters[name]
        current[name] = p.clone()
        base32 = value.to(p.device, torch.float32)
        p.copy_((base32 + scale * (p.to(torch.float32) - base32)).to(p.dtype))
    return current


@contextmanager
def edited(model: torch.nn.Module, base: Mapping[str, Tensor], scale: float) -> Iterator[None]:
    """Inside: ``model`` is :func:`edit`-ed. After: its weights exactly as before."""
    current = edit(model, base, scale)
    try:
        yield
    finally:
        load_parameters(model, current)

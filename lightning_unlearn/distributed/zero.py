"""DeepSpeed helpers: a ZeRO config for our modules, and ZeRO-3-safe access to sharded parameters.

Under ZeRO-3 each process holds only a shard of every parameter (``p.ds_tensor``; ``p`` itself is empty outside a
forward pass). :func:`local_shards` gives the tensors this process owns, which task arithmetic snapshots and edits
in place, shard by shard; :func:`full_state_dict` gathers one parameter at a time for ``save_pretrained``. Without
ZeRO-3 (one process, DDP, ZeRO-1/2) both are the ordinary parameters.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from lightning_unlearn.utilities.errors import ConfigurationError


def deepspeed_config(
    stage: int = 2,
    offload_optimizer: bool = False,
    offload_parameters: bool = False,
    micro_batch_size: int = 1,
    param_persistence_threshold: int = 0,
    bucket_size: int = 50_000_000,
    on_gpu: bool | None = None,
) -> dict[str, Any]:
    """A DeepSpeed config for ``DeepSpeedStrategy(config=...)``.

    Args:
        stage: ZeRO stage, 1, 2 or 3 (the paper: 2, with the optimizer offloaded to the CPU).
        offload_optimizer: keep Adam's states (and its step) on the CPU.
        offload_parameters: keep parameters on the CPU between uses (ZeRO-3 only).
        micro_batch_size: per-device batch size; DeepSpeed uses it for throughput logging only, and setting it
            spares Lightning from guessing it from our combined (forget + retain) loader, which it cannot.
        param_persistence_threshold: ZeRO-3 keeps parameters with fewer elements than this unsharded (DeepSpeed's
            default: 1e5); 0, our default, shards every parameter, which task arithmetic needs to edit shards.
        bucket_size: elements per gradient-reduction and all-gather bucket; larger buckets communicate in fewer,
            bigger messages but each costs its size in memory (DeepSpeed's default, 5e8, is 2 GB in fp32).
        on_gpu: for GPUs (overlapped communication, pinned CPU memory); default: whether CUDA is available here.
    """
    if stage not in (1, 2, 3):
        raise ConfigurationError(f"ZeRO stage must be 1, 2 or 3, got {stage}")
    if offload_parameters and stage != 3:
        raise ConfigurationError("offload_parameters needs ZeRO stage 3")
    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    zero: dict[str, Any] = {
        "stage": stage,
        "contiguous_gradients": True,
        "overlap_comm": stage > 1 and on_gpu,
        "reduce_bucket_size": bucket_size,
        "allgather_bucket_size": bucket_size,
    }
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if offload_parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        zero["stage3_param_persistence_threshold"] = param_persistence_threshold
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "zero_allow_untested_optimizer": True,
        "zero_optimization": zero,
    }


def adam(parameters: list[torch.nn.Parameter], strategy: Any, **options: Any) -> torch.optim.Optimizer:
    """Adam over ``parameters``; DeepSpeed's CPU Adam (the same update) when ``strategy`` offloads the optimizer."""
    if strategy is not None and offloads_optimizer(strategy):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(parameters, adamw_mode=False, **options)
    return torch.optim.Adam(parameters, **options)


def offloads_optimizer(strategy: Any) -> bool:
    """Whether ``strategy`` is a DeepSpeed strategy that keeps the optimizer on the CPU (it then needs
    DeepSpeed's CPU Adam rather than ``torch.optim.Adam``)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    config = strategy.config if isinstance(strategy, DeepSpeedStrategy) else None
    offload = (config or {}).get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device", "none") != "none"


def is_sharded(parameter: Tensor) -> bool:
    """Whether ``parameter`` is partitioned by ZeRO-3."""
    return hasattr(parameter, "ds_tensor")


def has_sharded_parameters(model: torch.nn.Module) -> bool:
    """Whether ZeRO-3 partitions any of ``model``'s parameters."""
    return any(is_sharded(p) for p in model.parameters())


def local_shards(model: torch.nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) of the parameter data this process owns: the ZeRO-3 shard, else the whole parameter.

    Editing these tensors in place edits the model, as ZeRO-3 gathers the shards for every forward pass. It
    refuses parameters that ZeRO-3 keeps gathered between passes (below ``stage3_param_persistence_threshold``):
    their gathered copy would not see an edit of the shard (:func:`deepspeed_config` sets the threshold to 0).
    """
    for name, p in model.named_parameters():
        if not is_sharded(p):
            yield name, p.data
        elif getattr(p, "ds_persist", False):
            raise ConfigurationError(
                f"ZeRO-3 keeps {name} unsharded (stage3_param_persistence_threshold > its size), so its shard cannot "
                f"be edited in place: set stage3_param_persistence_threshold to 0 (deepspeed_config(stage=3) does)"
            )
        else:
            yield name, p.ds_tensor.data


def gather_local_shards(model: torch.nn.Module, shards: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Whole tensors, on the CPU, of ``shards`` (by parameter name, laid out as :func:`local_shards` lays out this
    process's data of ``model``'s parameters: under ZeRO-3 a flat partition), gathered from every process: what a
    checkpoint, which DeepSpeed writes from one process, must hold. Collective under ZeRO-3: call it on every
    process, with the same names in the same order. A parameter that is not sharded is its own whole."""
    parameters = dict(model.named_parameters())
    whole = {}
    for name, shard in shards.items():
        parameter = parameters[name]
        if not is_sharded(parameter):
            whole[name] = shard.detach().to("cpu", copy=True)
            continue
        device = _collective_device()
        parts = [torch.empty_like(shard, device=device) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(parts, shard.detach().to(device).contiguous())
        whole[name] = torch.cat(parts)[: parameter.ds_numel].view(parameter.ds_shape).cpu()
    return whole


def partition_like(model: torch.nn.Module, whole: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """This process's part of each whole tensor in ``whole``, laid out as :func:`local_shards` lays out ``model``'s
    parameter of that name (the inverse of :func:`gather_local_shards`), on that data's device and dtype."""
    parameters, local = dict(model.named_parameters()), dict(local_shards(model))
    parts = {}
    for name, tensor in whole.items():
        parameter, data = parameters[name], local[name]
        if is_sharded(parameter):
            size, rank = data.numel(), torch.distributed.get_rank()
            flat = tensor.reshape(-1)
            flat = torch.cat([flat, flat.new_zeros(size * torch.distributed.get_world_size() - len(flat))])
            tensor = flat[rank * size : (rank + 1) * size]
        parts[name] = tensor.to(data.device, data.dtype, copy=True).view_as(data)
    return parts


def place_like(model: torch.nn.Module, shards: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """This process's ``shards`` as saved (laid out as :func:`local_shards` lays out ``model``'s data), on that
    data's device and dtype; a shard of another shape (a checkpoint of another process count) is refused."""
    local, placed = dict(local_shards(model)), {}
    for name, shard in shards.items():
        data = local[name]
        if shard.shape != data.shape:
            raise RuntimeError(
                f"the checkpoint's shard of {name} has shape {tuple(shard.shape)}, this process's {tuple(data.shape)}: "
                "it was written by another number of processes; resume with that number"
            )
        placed[name] = shard.to(data.device, data.dtype, copy=True)
    return placed


def _collective_device() -> torch.device:
    """Where a collective's tensors must be: the GPU under NCCL, the CPU under gloo."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def release_gathered_parameters(strategy: Any) -> None:
    """Under ZeRO-3, partitions every parameter that a forward pass left gathered (a no-grad pass runs no
    post-forward hook, so its gathered copies stay until the engine releases them), so that the next forward pass
    gathers from the shards again and sees any in-place edit of them. Nothing happens otherwise."""
    optimizer = getattr(getattr(strategy, "deepspeed_engine", None), "optimizer", None)
    if hasattr(optimizer, "empty_partition_cache"):  # DeepSpeed's ZeRO-3 optimizer
        optimizer.empty_partition_cache()


@contextmanager
def equal_forward_passes(model: torch.nn.Module, planned: int) -> Iterator[None]:
    """Lets processes run different numbers of forward passes (greedy decoding, whose length depends on the data)
    under ZeRO-3, where every forward pass gathers parameters collectively from all processes.

    Inside, this process runs ``planned`` forward passes of ``model``. At the entry, the processes agree on the
    most any of them plans (one collective: every process must enter together); at the exit, a process that
    planned fewer runs one-token passes until it has run as many. Nothing happens without ZeRO-3.
    """
    if not torch.distributed.is_initialized() or not has_sharded_parameters(model):
        yield
        return
    device = next(model.parameters()).device
    most = torch.tensor(planned, device=device)
    torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
    yield
    token = torch.zeros(1, 1, dtype=torch.long, device=device)
    with torch.no_grad():
        for _ in range(int(most) - planned):
            model(input_ids=token)


@contextmanager
def gathered(parameters: Iterable[Tensor]) -> Iterator[None]:
    """Inside: the whole of every parameter in ``parameters``, gathered from all processes under ZeRO-3 (read
    only: changes are dropped at the exit). Enter it on every process (the gather is collective). Nothing happens
    to parameters that are not sharded."""
    sharded = [p for p in parameters if is_sharded(p)]
    if not sharded:
        yield
        return
    import deepspeed  # installed wherever a parameter is sharded

    with deepspeed.zero.GatheredParameters(sharded, modifier_rank=None):
        yield


def is_rank(rank: int) -> bool:
    """Whether this process is ``rank`` (always, without a process group)."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == rank


def full_state_dict(
    model: torch.nn.Module, rank: int = 0, names: Collection[str] | None = None
) -> dict[str, Tensor] | None:
    """The whole ``model``'s parameters and buffers on the CPU, gathered one parameter at a time under ZeRO-3
    (only the parameters in ``names``, and no buffers, when given).

    Call it on every process (the gather is collective); ``rank``'s process gets the dict, the others ``None``.
    """
    here = is_rank(rank)
    state: dict[str, Tensor] = {}
    for name, p in model.named_parameters():
        if names is not None and name not in names:
            continue
        with gathered([p]):
            if here:
                state[name] = p.data.detach().to("cpu", copy=True)
    if here and names is None:
        persistent = set(model.state_dict())  # without buffers that are not saved (e.g. attention masks)
        for name, buffer in model.named_buffers():
            if name in persistent:
                state[name] = buffer.detach().to("cpu", copy=True)
    return state if here else None

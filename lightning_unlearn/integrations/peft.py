"""Adapters (LoRA and the other methods of the ``peft`` library): wrapping a model, the parameters that task
arithmetic edits, and the two ways to save the result.

Memory: full fine-tuning with Adam keeps about 16 bytes per parameter on the accelerator (weights, gradients and
Adam's two moments in float32). With an adapter the base's weights stay frozen (2 bytes per parameter in bf16, no
gradient, no optimizer state) and only the adapter trains, typically 0.1–1 % of the parameters.

LoRA's update of a weight is ΔW = (α/r)·B·A, with B = 0 at the start. Task arithmetic's edit θ_base + λ·ΔW is then
exact with B scaled by λ and A kept: :func:`task_vector_names` leaves the A factors out of the task vector.

Everything here works under DeepSpeed ZeRO-3 too: weights are read gathered, one layer at a time.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_unlearn.distributed.zero import full_state_dict, gathered, has_sharded_parameters, is_rank, local_shards
from lightning_unlearn.utilities.errors import ConfigurationError
from lightning_unlearn.utilities.extras import require_peft

if TYPE_CHECKING:
    from peft import PeftConfig, PeftModel

#: LoRA's down-projections: kept by task arithmetic's edit
A_FACTORS = (".lora_A.", ".lora_embedding_A.")
#: LoRA's up-projections: zero at the start, scaled by the edit
B_FACTORS = (".lora_B.", ".lora_embedding_B.")


def is_adapted(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a ``peft.PeftModel`` (without importing peft when nothing has)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def add_adapter(model: torch.nn.Module, config: PeftConfig) -> PeftModel:
    """``model`` with a fresh adapter of ``config`` (``peft.get_peft_model``): only the adapter trains.

    Raises:
        ImportError: peft is not installed (the ``[peft]`` extra).
        ValueError: ``config``'s ``target_modules`` match no module of ``model``; the message names the layers
            that could be targeted.
    """
    require_peft()
    from peft import get_peft_model

    try:
        return get_peft_model(model, config)
    except ValueError as error:
        if "not found in the base model" not in str(error) and "No modules were targeted" not in str(error):
            raise
        layers = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if _is_targetable(module)})
        raise ConfigurationError(
            f"the peft config's target_modules {sorted(config.target_modules or [])} match no module of "
            f"{type(model).__name__}; its layers that an adapter can target: {layers}"
        ) from None


def plain_config(config: PeftConfig) -> dict[str, Any]:
    """``config`` as plain JSON values (what checkpoints keep: ``torch.load(weights_only=True)`` reads them)."""
    return json.loads(json.dumps(config.to_dict(), default=sorted))


def config_from_plain(values: dict[str, Any]) -> PeftConfig:
    """The ``PeftConfig`` that :func:`plain_config` wrote."""
    require_peft()
    from peft import get_peft_config

    return get_peft_config(values)


def _is_targetable(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear | torch.nn.Embedding) or type(module).__name__ == "Conv1D"


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether ``model``'s (base's) weights are quantized by transformers (bitsandbytes, …; not a GGUF file
    unpacked into dense weights)."""
    base = model.get_base_model() if is_adapted(model) else model
    quantizer = getattr(base, "hf_quantizer", None)
    return quantizer is not None and not getattr(quantizer.quantization_config, "dequantize", False)


def lora_layers(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """(name, layer) of every LoRA layer in ``model``'s base model (names as in its ``state_dict``)."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.get_base_model().named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def check_plain_lora(model: PeftModel, purpose: str) -> None:
    """Raises a ValueError unless every adapter layer of ``model`` is plain LoRA (no DoRA, no LoRA bias): the
    case where ΔW = (α/r)·B·A is the whole update."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = dict(lora_layers(model))
    for name, module in model.get_base_model().named_modules():
        if isinstance(module, BaseTunerLayer) and name not in layers:
            raise ConfigurationError(f"{purpose} needs LoRA adapters; {name} is a {type(module).__name__}")
    for name, layer in layers.items():
        if any(layer.use_dora.values()) or any(getattr(layer, "lora_bias", {}).values()):
            raise ConfigurationError(f"{purpose} needs plain LoRA (no use_dora, no lora_bias); {name} has them")


def task_vector_names(model: torch.nn.Module) -> list[str]:
    """The parameters that task arithmetic snapshots and edits: every trainable one, without LoRA's A factors.

    On a LoRA adapter the edit θ_base + λ·(θ − θ_base) of these is B ← λ·B (B starts at 0), so the edited
    weight is W + λ·(α/r)·B·A: exactly the task vector ΔW scaled by λ. Other trainable parameters (e.g. peft's
    ``modules_to_save``) are edited linearly, as in full fine-tuning."""
    return [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and not any(factor in name for factor in A_FACTORS)
    ]


def check_task_arithmetic(model: torch.nn.Module) -> None:
    """Raises a ValueError unless task arithmetic's B-only edit is exact on ``model``: plain LoRA whose B factors
    are all zero now (peft's default ``init_lora_weights=True``). Nothing to check without an adapter."""
    if not is_adapted(model):
        return
    check_plain_lora(model, "task arithmetic on an adapter")
    for name, data in local_shards(model):
        if any(factor in name for factor in B_FACTORS) and bool(data.any()):
            raise ConfigurationError(
                f"task arithmetic on a LoRA adapter needs B = 0 at the start (init_lora_weights=True), so that "
                f"scaling B by λ scales the whole update; {name} is not zero"
            )


def _added_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What a peft wrapper adds (an adapter layer's adapters, ``modules_to_save``'s trained copies): its parameters
    without those of the module it wraps."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module.original_module
    kept = {id(p) for p in wrapped.parameters()}
    return [p for p in module.parameters() if id(p) not in kept]


def adapter_parameter_names(model: PeftModel, adapter: str | None = None) -> list[str]:
    """The names (in ``model.named_parameters()``) of every adapter parameter, trainable or not (``modules_to_save``
    copies included): all but the base model's own; only adapter ``adapter``'s when given."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper

    wrappers = (BaseTunerLayer, ModulesToSaveWrapper)
    added = {id(p) for module in model.modules() if isinstance(module, wrappers) for p in _added_parameters(module)}
    names = [name for name, p in model.named_parameters() if id(p) in added]
    return names if adapter is None else [name for name in names if f".{adapter}." in name]


def adapter_state_dict(model: PeftModel, rank: int = 0) -> dict[str, Tensor] | None:
    """The adapters' parameters on the CPU (gathered under ZeRO-3), by ``model.named_parameters()`` name, for
    ``PeftModel.save_pretrained(state_dict=...)``. Call it on every process; ``rank``'s gets the dict."""
    return full_state_dict(model, rank, names=set(adapter_parameter_names(model)))


def merged_state_dict(model: PeftModel, rank: int = 0) -> dict[str, Tensor] | None:
    """The base model's state dict with every active LoRA adapter merged into its weights (W + Σ (α/r)·B·A), under
    the base model's own names (no ``base_layer``, no adapter keys): what ``save_pretrained`` of the base writes
    as a plain Hugging Face folder. ``model`` is not changed. Under ZeRO-3 each layer is gathered in turn; call it
    on every process, ``rank``'s gets the dict.

    Raises:
        ValueError: the base is quantized (its weights cannot hold the merge), or an adapter is not plain LoRA.
    """
    if is_quantized(model):
        raise ConfigurationError(
            "cannot merge an adapter into a quantized base model: save the adapter with save_pretrained(path, "
            "merge=False), or load the base unquantized to merge"
        )
    check_plain_lora(model, "merging an adapter (merge=True)")
    base = model.get_base_model()
    state = full_state_dict(base, rank)
    here = is_rank(rank)
    for name, layer in lora_layers(model):
        with gathered(_added_parameters(layer)):  # the base weight is in state already
            if here:
                adapters = [a for a in layer.active_adapters if a in layer.lora_A or a in layer.lora_embedding_A]
                key = f"{name}.base_layer.weight"
                merged = state[key].to(torch.float32)
                for adapter in adapters:
                    merged += layer.get_delta_weight(adapter).detach().to("cpu", torch.float32)
                state[key] = merged.to(state[key].dtype)
    if not here:
        return None
    return {_base_name(key): value for key, value in state.items() if _is_base_key(key, model.active_adapters[0])}


def _is_base_key(key: str, active: str) -> bool:
    if any(marker in key for marker in (*A_FACTORS, *B_FACTORS, ".lora_magnitude_vector.", ".original_module.")):
        return False
    return ".modules_to_save." not in key or f".modules_to_save.{active}." in key


def _base_name(key: str) -> str:
    for marker in (".base_layer.", ".modules_to_save."):
        if marker in key:
            head, tail = key.split(marker, 1)
            key = f"{head}.{tail.split('.', 1)[1]}" if marker == ".modules_to_save." else f"{head}.{tail}"
    return key


def add_frozen_adapter(model: PeftModel, name: str) -> None:
    """Adds adapter ``name``, configured as the active one, active alongside it and frozen; with its B factors
    at zero (a fresh LoRA's) it changes nothing until :func:`move_adapter` fills it."""
    active = model.active_adapter
    model.add_adapter(name, model.peft_config[active])
    model.base_model.set_adapter([active, name])
    frozen = set(adapter_parameter_names(model, name))
    for parameter_name, p in model.named_parameters():
        if parameter_name in frozen:
            p.requires_grad_(False)


@torch.no_grad()
def move_adapter(model: PeftModel, source: str, target: str) -> None:
    """Copies adapter ``source``'s weights into ``target``'s and sets ``source``'s B factors to zero: the model
    computes the same function, and ``source`` is a fresh update from here (its A factors kept). Under ZeRO-3 each
    process moves its own shards (both adapters have the same shapes, so the same partition)."""
    shards = dict(local_shards(model))
    for name, data in shards.items():
        if f".{source}." in name:
            shards[name.replace(f".{source}.", f".{target}.")].copy_(data)
            if any(factor in name for factor in B_FACTORS):
                data.zero_()


def frozen_keys(module: torch.nn.Module, prefix: str = "") -> set[str]:
    """The ``state_dict`` keys of ``module``'s frozen parameters (tied copies too), under ``prefix``."""
    return {f"{prefix}{name}" for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}


def saved_state(model: torch.nn.Module, merge: bool = True) -> tuple[torch.nn.Module, dict[str, Tensor] | None]:
    """What ``save_pretrained`` writes for ``model``: the module whose ``save_pretrained`` to call and its state
    (None: its own). Without an adapter, the model (under ZeRO-3, its gathered state: call this on every process);
    with one, the base with the adapter merged (``merge=True``) or the adapter alone."""
    if not is_adapted(model):
        if not merge:
            raise ConfigurationError("merge=False writes an adapter, and this model has none (pass peft= to train one)")
        return model, full_state_dict(model) if has_sharded_parameters(model) else None
    if merge:
        return model.get_base_model(), merged_state_dict(model)
    return model, adapter_state_dict(model)

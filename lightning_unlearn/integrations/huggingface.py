"""Loading and checking causal language models: from an instance, a hub id, a local folder or a GGUF file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from lightning_unlearn.distributed.zero import has_sharded_parameters
from lightning_unlearn.integrations.peft import add_adapter, config_from_plain, is_adapted
from lightning_unlearn.integrations.training_mode import checkpointing, set_checkpointing
from lightning_unlearn.utilities.errors import ConfigurationError
from lightning_unlearn.utilities.extras import require_gguf


def load_causal_lm(source: str | os.PathLike, gguf_file: str | None = None, **kwargs: Any) -> PreTrainedModel:
    """A causal LM from a hub id or a local folder (``gguf_file``: a GGUF file inside it, unpacked into ordinary
    dense weights, which train and save as a plain Hugging Face folder); clear errors otherwise."""
    if gguf_file is not None:
        require_gguf()
        kwargs["gguf_file"] = gguf_file
        try:  # transformers >= 5.x can keep GGUF weights in quantized blocks, which do not train
            from transformers import GgufConfig

            kwargs.setdefault("quantization_config", GgufConfig(dequantize=True))
        except ImportError:  # older releases always unpack them
            pass
    if gguf_file is None:
        check_saved_architecture(source, kwargs.get("revision"))
    try:
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except ValueError as error:
        if "Unrecognized configuration class" in str(error):
            raise ConfigurationError(f"{source} is not a causal language model (no causal-LM head): {error}") from None
        raise
    except OSError as error:
        raise FileNotFoundError(f"cannot load a model from {source!s}: {error}") from None


def check_saved_architecture(source: str | os.PathLike, revision: str | None = None) -> None:
    """Raises a clear error when the config at ``source`` says the weights were saved from a model without a
    causal-LM head (``GPTNeoModel``, ``BertModel``, …): ``AutoModelForCausalLM`` would add an untrained head, or
    tie one, and unlearning would edit a model that is not the one the user meant."""
    try:
        config = AutoConfig.from_pretrained(source, revision=revision)
    except OSError as error:
        raise FileNotFoundError(f"cannot load a model from {source!s}: {error}") from None
    except ValueError as error:
        raise ConfigurationError(f"{source} is not a model transformers can load: {error}") from None
    saved = getattr(config, "architectures", None) or []
    heads = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if saved and not heads & set(saved):
        raise ConfigurationError(
            f"{source} holds a {', '.join(saved)}, which has no causal-LM head: give the folder of a model saved "
            f"with its head (e.g. {MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type, 'a *ForCausalLM')})"
        )


def resolve_device(device: str | torch.device | None, model: torch.nn.Module) -> torch.device:
    """``device`` as a torch device: ``"auto"`` is the GPU when there is one, else where ``model`` is; None is
    where ``model`` is."""
    here = next(model.parameters()).device
    if device is None or (device == "auto" and not torch.cuda.is_available()):
        return here
    return torch.device("cuda" if device == "auto" else device)


def default_precision(accelerator: str = "auto", mixed: bool = True) -> str:
    """Lightning's precision to unlearn with when none is given: on a CUDA GPU (``accelerator`` ``"auto"``,
    ``"gpu"`` or ``"cuda"`` with one present) ``"bf16-mixed"`` where it supports bfloat16, else ``"16-mixed"``
    (``mixed=False``: the weights themselves, ``"bf16-true"`` / ``"16-true"``); elsewhere ``"32-true"``. An 8B model
    in float32 with Adam needs 128 GB before its activations."""
    if accelerator not in ("auto", "gpu", "cuda") or not torch.cuda.is_available():
        return "32-true"
    half = "bf16" if torch.cuda.is_bf16_supported() else "16"
    return f"{half}-{'mixed' if mixed else 'true'}"


@contextmanager
def on_device(model: torch.nn.Module, device: str | torch.device | None = "auto") -> Iterator[torch.device]:
    """Inside: ``model`` on ``device`` (:func:`resolve_device`; a model whose parameters ZeRO-3 shards stays where
    it is); after: back where it was, also on error. Yields the device it is on."""
    here = next(model.parameters()).device
    target = here if has_sharded_parameters(model) else resolve_device(device, model)
    if target == here:
        yield here
        return
    model.to(target)
    try:
        yield target
    finally:
        model.to(here)


def check_causal_lm(model: torch.nn.Module) -> None:
    """Raises a clear error unless ``model`` is a Hugging Face model with a language-modelling head (or a
    ``peft.PeftModel`` around one)."""
    base = model.get_base_model() if is_adapted(model) else model
    head = base.get_output_embeddings() if isinstance(base, PreTrainedModel) else None
    if head is None:
        raise ConfigurationError(
            f"{type(model).__name__} has no causal-LM head: pass a model loaded with AutoModelForCausalLM "
            f"(e.g. GPTNeoForCausalLM, not GPTNeoModel)"
        )


def prepared_model(
    model: PreTrainedModel | None,
    source: str | None,
    gguf_file: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    peft: dict[str, Any] | None = None,
    gradient_checkpointing: bool | None = None,
) -> PreTrainedModel:
    """``model``, or the causal LM loaded from ``source`` when it is None; wrapped with a fresh adapter of the plain
    ``peft`` config unless it has one; with gradient checkpointing on or off (``None``: the model's own setting)."""
    if model is None:
        model = load_causal_lm(source, gguf_file, **(model_kwargs or {}))
        check_causal_lm(model)
    if peft is not None and not is_adapted(model):
        model = add_adapter(model, config_from_plain(peft))
    if gradient_checkpointing is not None and gradient_checkpointing != checkpointing(model):
        set_checkpointing(model, gradient_checkpointing)
    return model


def get_model(pl_module: L.LightningModule) -> torch.nn.Module:
    """The Hugging Face causal LM a LightningModule wraps: its ``get_model()``, else its ``model`` attribute."""
    if hasattr(pl_module, "get_model"):
        return pl_module.get_model()
    model = getattr(pl_module, "model", None)
    if not isinstance(model, torch.nn.Module):
        raise AttributeError(
            f"{type(pl_module).__name__} exposes no language model: give it a `model` attribute or a `get_model()`"
        )
    return model

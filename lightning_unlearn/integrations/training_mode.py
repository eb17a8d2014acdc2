"""The model's mode while it unlearns: dropout off in training mode (what ``UnlearningModule(dropout=False)`` does at
every step), and gradient checkpointing on or off.

Eval mode would turn dropout off, but it also turns off what only runs in training mode, above all Hugging Face's
gradient checkpointing (a :class:`~transformers.modeling_layers.GradientCheckpointingLayer` checkpoints only while
``self.training``). So the model stays in training mode and only the modules that drop are put in eval mode: every
``torch.nn`` dropout module, and the attention modules, which Hugging Face models hand a dropout probability to
their attention function while they are training (``dropout=self.attention_dropout if self.training else 0.0``;
GPT-2's ``self.attn_dropout.p``). A decoder layer is never put in eval mode, so its checkpointing keeps working.
"""

from __future__ import annotations

import torch
from torch.nn.modules.dropout import _DropoutNd

#: the names HF attention reads
DROPOUT_ATTRIBUTES = ("attention_dropout", "attn_dropout", "dropout", "attn_pdrop")


def drops(module: torch.nn.Module) -> bool:
    """Whether ``module`` drops activations in training mode: a dropout module, or an attention module (its class
    name says so) that holds a dropout module or a positive dropout probability. Decoder layers (Hugging Face's
    ``GradientCheckpointingLayer``) are never counted: their training mode is what turns checkpointing on."""
    if isinstance(module, _DropoutNd):
        return True
    if "Attention" not in type(module).__name__ or getattr(module, "gradient_checkpointing", None) is not None:
        return False
    for name in DROPOUT_ATTRIBUTES:
        value = getattr(module, name, None)
        if isinstance(value, _DropoutNd) or (isinstance(value, float) and value > 0):
            return True
    return any(isinstance(child, _DropoutNd) for child in module.children())


def train_without_dropout(model: torch.nn.Module) -> int:
    """Puts ``model`` in training mode with every module that :func:`drops` in eval mode; returns how many."""
    model.train()
    dropping = [module for module in model.modules() if drops(module)]
    for module in dropping:
        module.training = False  # not .eval(): an attention module's children need no visit of their own
    return len(dropping)


def checkpointing(model: torch.nn.Module) -> bool:
    """Whether Hugging Face's gradient (activation) checkpointing is on in any of ``model``'s layers."""
    return any(getattr(module, "gradient_checkpointing", False) is True for module in model.modules())


def set_checkpointing(model: torch.nn.Module, on: bool) -> None:
    """Turns Hugging Face's gradient checkpointing of ``model`` on (non-reentrant, which needs no input that
    requires grad, as under LoRA) or off, by the name this version of transformers has."""
    if on:
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        getattr(model, "activation_checkpointing_disable", model.gradient_checkpointing_disable)()

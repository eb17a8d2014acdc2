"""RMU, representation misdirection for unlearning (Li et al. 2024, "The WMDP Benchmark")."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import Tensor
from transformers.pytorch_utils import Conv1D

from lightning_unlearn.callbacks.control import per_sample_control
from lightning_unlearn.functional.losses import rmu_loss
from lightning_unlearn.integrations.peft import is_adapted
from lightning_unlearn.modules.base import UnlearningModule
from lightning_unlearn.modules.registry import register
from lightning_unlearn.modules.retain import RETAIN_LOSSES
from lightning_unlearn.modules.step import ForwardOutput
from lightning_unlearn.utilities.errors import ConfigurationError


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of a Hugging Face causal LM (``model.layers``, ``transformer.h``, …; also under peft): the
    first ``ModuleList`` with ``config.num_hidden_layers`` entries."""
    count = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ConfigurationError(f"found no list of {count} decoder layers in {type(model).__name__}")


@contextmanager
def layer_output(layer: torch.nn.Module) -> Iterator[list[Tensor]]:
    """Inside, every forward pass of ``layer`` appends its output hidden states (``Tensor[B, T, D]``) to the list
    yielded."""
    captured: list[Tensor] = []

    def keep(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)

    handle = layer.register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def mlp_output_projection(mlp: torch.nn.Module) -> torch.nn.Module:
    """The output projection of a decoder layer's MLP: its last linear child (Llama's ``down_proj``, GPT-2's and
    GPT-Neo's ``c_proj``, Phi's ``fc2``)."""
    linears = [child for child in mlp.children() if isinstance(child, torch.nn.Linear | Conv1D)]
    if not linears:
        raise ConfigurationError(f"found no linear layer in {type(mlp).__name__}; try RMU(trained_part='mlp')")
    return linears[-1]


#: The layer whose output the authors steer (Li et al. 2024's code: ``--layer_id 7``, layers 5–7 trained).
AUTHORS_LAYER = 7


class RMU(UnlearningModule):
    """RMU (Li et al. 2024, eq. 1–3): on forget records, push the output of decoder layer ℓ towards a fixed random
    direction c·u (u uniform in [0, 1)^D, normalized, drawn once from ``seed``); on retain records, keep it equal to
    the original model's (``retain_loss="activations"``, weight α). Only the MLPs' output projections of layers
    ℓ−2..ℓ train (the authors' ``mlp.down_proj``).

    The forget loss of each record is its own distance to c·u (:func:`~lightning_unlearn.functional.losses.rmu_loss`),
    so the per-sample selection weights records as for every method, and the per-sample rule stops on g. The original
    model's activations come from :class:`~lightning_unlearn.modules.reference.ReferenceWeights` (a copy of the trained
    MLPs only, no second model): one no-grad forward pass per step on the retain batch. Deviations from the authors'
    code: the output projection is found as the MLP's last linear module (Llama's ``down_proj``, GPT-2's and
    GPT-Neo's ``c_proj``), not by the name; the distance is averaged over each record's tokens, then records are
    weighted, instead of averaged over the batch's tokens.

    Args:
        layer: ℓ, the decoder layer (0-based) whose output is steered (default: the authors' 7, from Li et al.'s
            ``--layer_id 7`` on Zephyr-7B; the last layer of a shallower model).
        steering_coefficient: c, the norm of the target (the paper: 6.5 on Zephyr-7B; scale it to the norm of
            layer ℓ's activations, which differs by model).
        trained_layers: how many layers up to ℓ train (the paper: 3); None trains every parameter. With
            ``peft``, the adapter trains instead.
        trained_part: what trains in those layers: ``"output_projection"`` (the MLP's, as the authors) or
            ``"mlp"`` (the whole MLP).
        retain_loss: ``"activations"`` (the paper's), or any other method's retain term.
        retain_weight: α (the paper: 1200 on Zephyr-7B).
        seed: of the random direction u.
        **kwargs: :class:`UnlearningModule` arguments (not ``adversary_steps`` or ``sharpness``: the loss is on
            activations).
    """

    retain_losses = (*RETAIN_LOSSES, "activations")
    takes_adversary = "its loss is on a layer's activations: relearning-aware and sharpness-aware training do not apply"

    def __init__(
        self,
        model: Any,
        layer: int | None = None,
        steering_coefficient: float = 6.5,
        trained_layers: int | None = 3,
        trained_part: Literal["output_projection", "mlp"] = "output_projection",
        retain_loss: str | None = "activations",
        retain_weight: float = 1200.0,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if trained_layers is not None and trained_layers < 1:
            raise ConfigurationError(f"trained_layers must be >= 1 or None, got {trained_layers}")
        if trained_part not in ("output_projection", "mlp"):
            raise ConfigurationError(f"trained_part must be 'output_projection' or 'mlp', got {trained_part!r}")
        if not steering_coefficient > 0:
            raise ConfigurationError(f"steering_coefficient must be > 0, got {steering_coefficient}")
        super().__init__(model, retain_loss=retain_loss, retain_weight=retain_weight, **kwargs)
        self.layer, self.steering_coefficient = layer, steering_coefficient
        self.trained_layers, self.trained_part, self.seed = trained_layers, trained_part, seed

    @property
    def uses_reference(self) -> bool:
        return self.retain_term.kind == "activations" or super().uses_reference

    def steered_layer(self) -> torch.nn.Module:
        """Decoder layer ℓ."""
        layers = decoder_layers(self.model)
        index = min(AUTHORS_LAYER, len(layers) - 1) if self.layer is None else self.layer
        if not 0 <= index < len(layers):
            raise ConfigurationError(f"layer must be in [0, {len(layers)}), got {index}")
        return layers[index]

    def configure_model(self) -> None:
        """Loads the model, and (without an adapter) freezes every parameter but the MLPs' output projections (or
        the MLPs) of layers ℓ−2..ℓ."""
        super().configure_model()
        if self.trained_layers is None or is_adapted(self.model):
            return
        layers = list(decoder_layers(self.model))
        last = layers.index(self.steered_layer())
        trained = layers[max(0, last - self.trained_layers + 1) : last + 1]
        mlps = [getattr(layer, "mlp", None) for layer in trained]
        if any(mlp is None for mlp in mlps):
            raise ConfigurationError(f"RMU trains the layers' MLPs: {type(trained[0]).__name__} has no `mlp`")
        self.model.requires_grad_(False)
        for mlp in mlps:
            (mlp_output_projection(mlp) if self.trained_part == "output_projection" else mlp).requires_grad_(True)

    def target(self, like: Tensor) -> Tensor:
        """c·u (``Tensor[D]``) in ``like``'s dtype and device: the same on every process and after a resume."""
        generator = torch.Generator().manual_seed(self.seed)
        u = torch.rand(like.shape[-1], generator=generator)
        return (self.steering_coefficient * u / u.norm()).to(like.device, like.dtype)

    def model_forward(self, batch: dict[str, Tensor]) -> ForwardOutput:
        """The forward pass, with layer ℓ's output as ``activations`` (``Tensor[B, T, D]``)."""
        with layer_output(self.steered_layer()) as captured:
            output = super().model_forward(batch)
        return replace(output, activations=captured[0])  # the pass's own: recomputed passes come after the hook

    def retain_inputs(self, retain: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.retain_term.kind != "activations":
            return super().retain_inputs(retain)
        with layer_output(self.steered_layer()) as captured:
            self.reference.logits(self.model, retain)  # the reference's forward pass, whose layer ℓ is kept
        return {**retain, "reference_activations": captured[0]}

    def forget_loss(self, batch: dict[str, Tensor], output: ForwardOutput, nll: Tensor) -> Tensor:
        return rmu_loss(output.activations, self.target(output.activations), batch["attention_mask"])

    def retain_loss(self, batch: dict[str, Tensor], output: ForwardOutput, nll: Tensor) -> Tensor:
        if self.retain_term.kind != "activations":
            return super().retain_loss(batch, output, nll)
        return rmu_loss(output.activations, batch["reference_activations"], batch["attention_mask"])


# layer 7, α 1200, lr 5e-5, the MLPs' down_proj of layers 5-7: Li et al. 2024's code on Zephyr-7B (the module's
# defaults)
register(
    "rmu",
    RMU,
    "selective RMU (steer layer 7 to a random direction, keep the retain records'; α = 1200, lr 5e-5)",
    callbacks=per_sample_control,
    learning_rate=5e-5,
)

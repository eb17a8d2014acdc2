"""The memory model: what each method keeps (persistent bytes) and the peak of a step cycle, as multiples of the
parameter bytes; checked against measured CPU steps at three sizes, and projected to Llama-3 8B and 70B.

Persistent bytes are what lives between steps: weights, gradients (set to None only after the next forward),
Adam's two moments, and each method's own state: the KL reference (a frozen copy of what trains), TA's θ_base,
the relearning-aware adversary's copy. The peak is the most tensor memory alive at any point of a step cycle (the
training step and the scoring after it): the persistent bytes plus the activations that the backward keeps, the
output layer's logits and the loss's temporaries, or, for TA, the copy kept while an edit is scored.

Activations follow from what autograd saves in a Hugging Face Llama decoder layer with scaled-dot-product
attention (no T x T matrix kept: flash or memory-efficient kernels), per token (h hidden, k key-value width, i
MLP width, w bytes per activation): the two RMSNorms 8h bytes each (float32 products, or a float32 copy and two
half-precision tensors), q and k after RoPE, v and the attention output (w·(2h + 2k)), in float32 the two residual
sums (the norms keep their input; in half precision their float32 copy instead), and the SwiGLU MLP's gate, up,
SiLU and product (4·w·i): counted with ``torch.autograd.graph.saved_tensors_hooks``. With gradient checkpointing
a layer keeps only its input (w·h), and one layer's activations are recomputed at a time. The measured side counts
every tensor storage alive (:class:`peak_memory.TotalTensorMemory`); nothing in the model is fitted to it.

    python benchmarks/memory.py                     # the check at three sizes (32-true) and the projections
    python benchmarks/memory.py --sizes small --precisions 32-true,bf16-true --checkpointing
    python benchmarks/memory.py --project-only      # only the Llama-3 8B and 70B table (no measurement)

Projections are for one GPU (bf16-true: weights, gradients and Adam's moments in bfloat16, as torch's Adam keeps
them in the parameters' dtype) and for ZeRO-3 on 8 GPUs (DeepSpeed's bf16: bfloat16 weights and gradients,
float32 master weights and moments, all sharded 8 ways; a layer's weights gathered whole, twice with prefetch), a
batch of 8 x 512 tokens, gradient checkpointing on, LoRA of rank 16 on every linear layer but the output layer.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from peak_memory import TotalTensorMemory
from random_data import IdTokenizer, random_texts
from transformers import LlamaConfig, LlamaForCausalLM

from lightning_unlearn import (
    NPO,
    TAU,
    GradientAscent,
    SelectiveGradientAscent,
    TaskArithmetic,
    UnlearningDataModule,
)
from lightning_unlearn.functional.memorization import CHUNK_ELEMENTS

GB = 1e9
LORA_RANK = 16
LINEARS_PER_LAYER = 7  # q, k, v, o, gate, up, down: "all-linear" (peft leaves the output layer out)


@dataclass(frozen=True)
class Shape:
    """A Llama decoder's shape (widths in elements)."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False

    @property
    def kv(self) -> int:
        """Width of the key (and of the value) projection."""
        return self.hidden // self.heads * self.kv_heads

    def parameters(self) -> int:
        h, i, k = self.hidden, self.intermediate, self.kv
        layer = 2 * h * h + 2 * h * k + 3 * h * i + 2 * h
        return self.vocab * h * (1 if self.tied else 2) + self.layers * layer + h

    def layer_parameters(self) -> int:
        h, i, k = self.hidden, self.intermediate, self.kv
        return 2 * h * h + 2 * h * k + 3 * h * i + 2 * h

    def lora_parameters(self, rank: int = LORA_RANK) -> int:
        h, i, k = self.hidden, self.intermediate, self.kv
        per_layer = rank * ((h + h) * 2 + (h + k) * 2 + (h + i) * 3)
        return self.layers * per_layer

    def lora_b_parameters(self, rank: int = LORA_RANK) -> int:
        """The LoRA B factors' share (out x rank each): what TA edits on an adapter."""
        h, i, k = self.hidden, self.intermediate, self.kv
        return self.layers * rank * (3 * h + 2 * k + 2 * i)

    def config(self, tokens: int) -> LlamaConfig:
        return LlamaConfig(
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            vocab_size=self.vocab,
            tie_word_embeddings=self.tied,
            max_position_embeddings=tokens,
        )


SIZES = {  # built from config on the CPU, the batch (records x tokens) of each
    "small": (Shape("small", 128, 352, 2, 2, 2, 1024), (8, 64)),
    "medium": (Shape("medium", 256, 688, 4, 4, 2, 4096), (8, 128)),
    "large": (Shape("large", 512, 1376, 8, 8, 4, 8192), (8, 128)),
}
LLAMA_3 = {
    "Llama-3 8B": Shape("8B", 4096, 14336, 32, 32, 8, 128_256),
    "Llama-3 70B": Shape("70B", 8192, 28672, 80, 64, 8, 128_256),
}


# --- the model -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """How a step runs: bytes per weight and per activation, gradient checkpointing, ZeRO-3's process count."""

    weight_bytes: int  # weights, gradients and Adam's moments (torch's Adam keeps them in the weights' dtype)
    activation_bytes: int
    checkpointing: bool = False
    zero3_processes: int = 0  # 0: no ZeRO-3


def setting(precision: str, checkpointing: bool = False, zero3_processes: int = 0) -> Setting:
    """32-true, bf16-true (and, for the projections, ZeRO-3's bf16)."""
    if precision == "32-true":
        return Setting(4, 4, checkpointing, zero3_processes)
    if precision == "bf16-true":
        return Setting(2, 2, checkpointing, zero3_processes)
    raise ValueError(f"the model covers 32-true and bf16-true, not {precision}")


def layer_activations(shape: Shape, tokens: int, s: Setting) -> int:
    """Bytes one decoder layer keeps for backward over ``tokens`` tokens (see the module docstring)."""
    h, k, i, w = shape.hidden, shape.kv, shape.intermediate, s.activation_bytes
    norms = 2 * 8 * h  # each: two float32 tensors (x · rsqrt(mean x²), the weighted output) or a float32 copy and two
    attention = w * (2 * h + 2 * k) + 4 * shape.heads  # q, k after RoPE, v, the output; the log-sum-exp
    residuals = 2 * w * h if w == 4 else 0  # kept by the next RMSNorm in float32 (its float32 copy is a norm's)
    return tokens * (norms + attention + residuals + 4 * w * i)


def activations(shape: Shape, tokens: int, s: Setting) -> int:
    """Bytes the decoder keeps for backward at the end of a training forward (the embeddings' output, each layer's
    activations or, with checkpointing, each layer's input, and the final norm's), the output layer aside."""
    w, h = s.activation_bytes, shape.hidden
    first = w * h if w == 4 else 0  # the first RMSNorm's input, kept in float32 only (as the residuals)
    if s.checkpointing:
        return tokens * (shape.layers * w * h + first + 8 * h)
    return tokens * (first + 8 * h) + shape.layers * layer_activations(shape, tokens, s)


def head(shape: Shape, tokens: int, s: Setting, backward: bool = False, temporaries: bool = True) -> int:
    """Bytes of the output layer and the per-sample NLL. Float32 logits: the logits and their log-softmax at the
    forward's end; at the backward's start the log-softmax and two gradients (the logits are freed when the
    training step returns). Half-precision logits (:func:`~lightning_unlearn.functional.memorization.token_nll`): the
    logits, kept for backward, their gradient in backward, and while the NLL is taken two float32 chunks."""
    logits = tokens * shape.vocab
    if s.activation_bytes == 4:
        return (3 if backward else 2) * 4 * logits
    chunks = 2 * 4 * min(logits, CHUNK_ELEMENTS) if temporaries else 0
    return (2 if backward else 1) * 2 * logits + chunks


def forward(shape: Shape, tokens: int, s: Setting, freed: int, temporaries: bool = True) -> int:
    """The most bytes a training forward and backward hold above the persistent ones, the larger of: at the
    forward's end, the activations and the output layer's; at the backward's start, the same with the output
    layer's backward, less the ``freed`` bytes of the previous step's gradients (set to None between the forward
    and the backward) that have not grown again; with checkpointing, also one layer's recomputed activations in
    place of the output layer's."""
    kept = activations(shape, tokens, s)
    end = kept + head(shape, tokens, s, temporaries=temporaries)
    start = kept + head(shape, tokens, s, backward=True, temporaries=temporaries) - freed
    if not s.checkpointing:
        return max(end, start)
    return max(end, start, kept + layer_activations(shape, tokens, s) - freed)


def kl_head(shape: Shape, tokens: int, s: Setting) -> int:
    """Bytes of the KL retain term's output layer at its backward
    (:func:`~lightning_unlearn.functional.losses.token_kl`): the logits, the reference's, their gradient, and per chunk
    the two float32 softmaxes and, for half-precision logits, the float32 copy of the reference's chunk."""
    logits = tokens * shape.vocab
    chunk = min(logits, max(1, CHUNK_ELEMENTS // 4 // shape.vocab) * shape.vocab)
    return 3 * s.activation_bytes * logits + (2 if s.activation_bytes == 4 else 3) * 4 * chunk


@dataclass(frozen=True)
class Row:
    """A method's row: how to build the module, and whether it trains a LoRA adapter, keeps a reference, and so on."""

    name: str
    make: Callable[..., L.LightningModule]
    lora: bool = False
    reference: bool = False  # a frozen copy of what trains (KL retain term)
    base: bool = False  # TA's θ_base, and the copy kept while an edit is scored
    ascent_adapter: bool = False  # TAU on LoRA: the SGA phase's adapter, frozen beside the trained one
    adversary: bool = False  # relearning-aware: a copy of the model, its gradients and Adam state in the step
    retain: bool = False


NEVER = {"threshold": -1.0}  # no stop: every step runs
SGA_NEVER = {"gamma": 0.0, **NEVER}
KL = {"retain_loss": "kl", "retain_weight": 3.0}
METHODS = [
    Row("GA", lambda model, **o: GradientAscent(model, **o)),
    Row("SGA", lambda model, **o: SelectiveGradientAscent(model, **SGA_NEVER, **o)),
    Row(
        "SGA + KL",
        lambda model, **o: SelectiveGradientAscent(model, **SGA_NEVER, **KL, **o),
        reference=True,
        retain=True,
    ),
    Row("NPO + KL", lambda model, **o: NPO(model, **KL, **o), reference=True, retain=True),
    Row("TA", lambda model, **o: TaskArithmetic(model, **NEVER, **o), base=True),
    Row("TAU", lambda model, **o: TAU(model, switch_at=1.0, **NEVER, **o), base=True),
    Row(
        "SGA + KL, relearning-aware",
        lambda model, **o: SelectiveGradientAscent(model, **SGA_NEVER, **KL, adversary_steps=2, **o),
        reference=True,
        adversary=True,
        retain=True,
    ),
    Row(
        "SGA + KL, LoRA",
        lambda model, **o: SelectiveGradientAscent(model, **SGA_NEVER, **KL, **o),
        lora=True,
        reference=True,
        retain=True,
    ),
    Row("TA, LoRA", lambda model, **o: TaskArithmetic(model, **NEVER, **o), lora=True, base=True),
    Row(
        "TAU, LoRA",
        lambda model, **o: TAU(model, switch_at=1.0, **NEVER, **o),
        lora=True,
        base=True,
        ascent_adapter=True,
    ),
]


def persistent(method: Row, shape: Shape, s: Setting) -> dict[str, float]:
    """Bytes that live between steps, by part (each process's under ZeRO-3)."""
    p, w = shape.parameters(), s.weight_bytes
    trained = shape.lora_parameters() if method.lora else p
    shards = max(1, s.zero3_processes)
    if s.zero3_processes:  # DeepSpeed bf16: bfloat16 weights and gradients, float32 master weights and moments
        parts = {
            "weights": 2 * (p + (trained if method.lora else 0)),
            "gradients": 2 * trained,
            "optimizer": 12 * trained,
        }
    else:
        parts = {
            "weights": w * (p + (trained if method.lora else 0)),
            "gradients": w * trained,
            "optimizer": 2 * w * trained,
        }
    parts["reference"] = w * trained if method.reference else 0
    edited = shape.lora_b_parameters() if method.lora else p  # on an adapter TA edits its B factors only
    parts["base"] = w * edited if method.base else 0
    parts["ascent adapter"] = w * trained if method.ascent_adapter else 0
    parts["adversary copy"] = w * p if method.adversary else 0
    return {part: size / shards for part, size in parts.items()}


def peak(method: Row, shape: Shape, records: int, tokens: int, s: Setting) -> float:
    """The most bytes alive in a step cycle: the persistent ones plus the step's largest transient."""
    kept = sum(persistent(method, shape, s).values())
    n = records * tokens
    w, trained = s.weight_bytes, shape.lora_parameters() if method.lora else shape.parameters()
    # the gradients set to None before the backward, less those of the output and last layers, which grow first
    regrown = 0 if method.lora else shape.vocab * shape.hidden + shape.layer_parameters()
    freed = 0 if s.zero3_processes else max(0, w * (trained - regrown))
    transient = forward(shape, n, s, freed)
    if s.zero3_processes:
        transient += 2 * 2 * max(shape.layer_parameters(), shape.vocab * shape.hidden)  # gathered, and prefetched
    if method.adversary:  # the forward at θ keeps no graph, only its logits: the copy's Adam, gradients, forward
        at_theta = head(shape, n, s, temporaries=False)
        transient = at_theta + 3 * w * trained + forward(shape, n, s, 0)
    if method.retain:  # the retain pass, after the forget pass's backward
        retain = kl_head(shape, n, s)
        if s.checkpointing:
            retain = max(retain, layer_activations(shape, n, s))
        transient = max(transient, activations(shape, n, s) + retain)
    if method.base:  # scoring an edit (no graph): one more copy of the edited weights, for the restore
        edited = shape.lora_b_parameters() if method.lora else shape.parameters()
        transient = max(transient, w * edited / max(1, s.zero3_processes) + head(shape, n, s))  # ZeRO-3: shards
    return kept + transient


# --- the measurement -------------------------------------------------------------------------------------------


class StepCycleMemory(L.Callback):
    """Persistent bytes at the start of step ``at`` (all tensors alive then), and the peak from there to the start
    of the next step (the training step and the scoring after it)."""

    def __init__(self, at: int = 1) -> None:
        self.at, self.memory = at, None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at + 1 and self.memory is not None:
            self.memory.__exit__(None, None, None)
            self.persistent, self.peak = self.memory.start, self.memory.peak
            self.memory = None
        elif trainer.global_step == self.at:
            self.memory = TotalTensorMemory().__enter__()


def measure(
    method: Row, shape: Shape, records: int, tokens: int, precision: str, checkpointing: bool
) -> tuple[int, int]:
    """(persistent, peak) bytes of ``method``'s step cycle, measured on a model of ``shape`` built from config."""
    torch.manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
    model = LlamaForCausalLM(shape.config(tokens)).to(dtype)
    tokenizer = IdTokenizer(shape.vocab)
    texts = {
        split: random_texts(records, tokens, shape.vocab, seed)
        for seed, split in enumerate(("forget", "retain", "relearn"))
    }
    data = UnlearningDataModule(
        tokenizer,
        texts["forget"],
        retain=texts["retain"],
        relearn=texts["relearn"],
        max_length=tokens,
        batch_size=records,
        eval_batch_size=records,
        shuffle=False,
    )
    options: dict[str, Any] = {"gradient_checkpointing": checkpointing}
    if method.lora:
        from peft import LoraConfig

        options["peft"] = LoraConfig(
            r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0, target_modules="all-linear"
        )
    probe = StepCycleMemory()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=probe.at + 2,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[probe],
    )
    trainer.fit(method.make(model, **options), data)
    return probe.persistent, probe.peak


# --- the tables ------------------------------------------------------------------------------------------------


CHECK_HEADER = (
    "| method (size) | persistent, measured | persistent, model | peak, measured | peak, model | peak: model error |"
)
PROJECTION_HEADER = "| method | 8B, one GPU | 8B, ZeRO-3 x 8 | 70B, one GPU | 70B, ZeRO-3 x 8 |"


def check(sizes: list[str], precision: str, checkpointing: bool) -> float:
    """Prints the model against the measurement for every method at each size (multiples of the parameter
    bytes); returns the largest relative error."""
    print(f"\n{precision}, gradient checkpointing {'on' if checkpointing else 'off'}\n")
    print(CHECK_HEADER)
    print("|---" * 6 + "|")
    worst = 0.0
    for size in sizes:
        shape, (records, tokens) = SIZES[size]
        s = setting(precision, checkpointing)
        parameter_bytes = shape.parameters() * s.weight_bytes
        for method in METHODS:
            measured = measure(method, shape, records, tokens, precision, checkpointing)
            modelled = sum(persistent(method, shape, s).values()), peak(method, shape, records, tokens, s)
            (kept, top), (kept_model, top_model) = (
                [x / parameter_bytes for x in pair] for pair in (measured, modelled)
            )
            worst = max(worst, abs(kept_model / kept - 1), abs(top_model / top - 1))
            print(
                f"| {method.name} ({size}) | {kept:.2f} | {kept_model:.2f} | {top:.2f} | {top_model:.2f} | "
                f"{top_model / top - 1:+.1%} |",
                flush=True,
            )
    return worst


def projections() -> list[str]:
    """The Llama-3 table: GB per GPU, and whether it fits on an 80 GB and on a 141 GB GPU."""
    lines = [PROJECTION_HEADER, "|---" * 5 + "|"]
    for method in METHODS:
        cells = []
        for shape in LLAMA_3.values():
            cells.append(_gb(peak(method, shape, 8, 512, setting("bf16-true", checkpointing=True))))
            if method.adversary:  # it copies the weights, and ZeRO-3 shards them: refused
                cells.append("not supported")
            else:
                cells.append(_gb(peak(method, shape, 8, 512, setting("bf16-true", True, zero3_processes=8))))
        lines.append(f"| {method.name} | " + " | ".join(cells) + " |")
    return lines


def _gb(size: float) -> str:
    """GB, and ✓ or ✗ for an 80 GB and a 141 GB GPU."""
    return f"{size / GB:.0f} GB " + "/".join("✓" if size <= capacity * GB else "✗" for capacity in (80, 141))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--precisions", default="32-true")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on in the check")
    parser.add_argument("--project-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.project_only:
        worst = max(check(args.sizes.split(","), p, args.checkpointing) for p in args.precisions.split(","))
        print(f"\nlargest model error, persistent or peak: {worst:.1%}")
    print("\nLlama-3, a batch of 8 x 512 tokens, bf16, gradient checkpointing; ✓/✗: fits on an 80 GB / 141 GB GPU\n")
    print("\n".join(projections()))


if __name__ == "__main__":
    main()

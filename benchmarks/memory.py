"""The memory model: what each method keeps (persistent bytes) and the peak of a step cycle, as multiples of the
parameter bytes; checked against measured CPU steps at three sizes, and projected to Llama-3 8B and 70B.

The model itself is :mod:`lightning_unlearn.planning` (``lightning-unlearn plan``), documented there; this script
measures what it predicts. The measured side counts every tensor storage alive
(:class:`peak_memory.TotalTensorMemory`) over a step cycle of a model of each size built from config; nothing in the
model is fitted to it.

    python benchmarks/memory.py                     # the check at three sizes (32-true) and the projections
    python benchmarks/memory.py --sizes small --precisions 32-true,bf16-true --checkpointing
    python benchmarks/memory.py --project-only      # only the Llama-3 8B and 70B table (no measurement)

Projections are for one GPU (bf16-true: weights, gradients and Adam's moments in bfloat16, as torch's Adam keeps
them in the parameters' dtype) and for ZeRO-3 on 8 GPUs (DeepSpeed's bf16: bfloat16 weights and gradients,
float32 master weights and moments, all sharded 8 ways; a layer's weights gathered whole, twice with prefetch), a
batch of 8 x 512 tokens, gradient checkpointing on, LoRA of rank 16 on every linear layer but the output layer.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/helpers' probes

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lightning_unlearn import (
    NPO,
    TAU,
    GradientAscent,
    SelectiveGradientAscent,
    TaskArithmetic,
    UnlearningDataModule,
)
from lightning_unlearn.planning import GB, LORA_RANK, MethodState, Shape, peak, persistent, setting
from tests.helpers.peak_memory import TotalTensorMemory
from tests.helpers.random_data import IdTokenizer, random_texts

SIZES = {  # built from config on the CPU, the batch (records x tokens) of each
    "small": (Shape("small", 128, 352, 2, 2, 2, 1024), (8, 64)),
    "medium": (Shape("medium", 256, 688, 4, 4, 2, 4096), (8, 128)),
    "large": (Shape("large", 512, 1376, 8, 8, 4, 8192), (8, 128)),
}
LLAMA_3 = {
    "Llama-3 8B": Shape("8B", 4096, 14336, 32, 32, 8, 128_256),
    "Llama-3 70B": Shape("70B", 8192, 28672, 80, 64, 8, 128_256),
}


@dataclass(frozen=True)
class Row:
    """A method's row: its name, how to build the module, and what it keeps (the planner's :class:`MethodState`)."""

    name: str
    make: Callable[..., L.LightningModule]
    state: MethodState = field(default_factory=MethodState)


def config(shape: Shape, tokens: int) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        vocab_size=shape.vocab,
        tie_word_embeddings=shape.tied,
        max_position_embeddings=tokens,
    )


NEVER = {"threshold": -1.0}  # no stop: every step runs
SGA_NEVER = {"gamma": 0.0, **NEVER}
KL = {"retain_loss": "kl", "retain_weight": 3.0}
METHODS = [
    Row("GA", lambda model, **o: GradientAscent(model, **o)),
    Row("SGA", lambda model, **o: SelectiveGradientAscent(model, **SGA_NEVER, **o)),
    Row(
        "SGA + KL",
        lambda model, **o: SelectiveGradientAscent(model, **SGA_NEVER, **KL, **o),
        MethodState(reference=True, retain=True),
    ),
    Row("NPO + KL", lambda model, **o: NPO(model, **KL, **o), MethodState(reference=True, retain=True)),
    Row("TA", lambda model, **o: TaskArithmetic(model, **NEVER, **o), MethodState(base=True)),
    Row("TAU", lambda model, **o: TAU(model, switch_at=1.0, **NEVER, **o), MethodState(base=True)),
    Row(
        "SGA + KL, relearning-aware",
        lambda model, **o: SelectiveGradientAscent(model, **SGA_NEVER, **KL, adversary_steps=2, **o),
        MethodState(reference=True, adversary=True, retain=True),
    ),
    Row(
        "SGA + KL, LoRA",
        lambda model, **o: SelectiveGradientAscent(model, **SGA_NEVER, **KL, **o),
        MethodState(lora=True, reference=True, retain=True),
    ),
    Row("TA, LoRA", lambda model, **o: TaskArithmetic(model, **NEVER, **o), MethodState(lora=True, base=True)),
    Row(
        "TAU, LoRA",
        lambda model, **o: TAU(model, switch_at=1.0, **NEVER, **o),
        MethodState(lora=True, base=True, ascent_adapter=True),
    ),
]


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
    model = LlamaForCausalLM(config(shape, tokens)).to(dtype)
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
    if method.state.lora:
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
            modelled = sum(persistent(method.state, shape, s).values()), peak(method.state, shape, records, tokens, s)
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
            cells.append(_gb(peak(method.state, shape, 8, 512, setting("bf16-true", checkpointing=True))))
            if method.state.adversary:  # it copies the weights, and ZeRO-3 shards them: refused
                cells.append("not supported")
            else:
                cells.append(_gb(peak(method.state, shape, 8, 512, setting("bf16-true", True, zero3_processes=8))))
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

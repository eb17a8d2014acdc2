"""One training step of each method against a bare loop, on a model shape built from config: ms/step, ratios,
peak memory and model TFLOP/s, for the GPU (and, with the tiny shape, for a CPU smoke run).

Rows: a bare loop (the model's own loss, autocast or not as the precision says, Adam), ``GradientAscent``,
``SelectiveGradientAscent`` (gamma 0 and threshold −1: every record ascended and no stop, the work of GA plus
scoring and selection), SGA + KL retain (a retain batch of the same size), the same with ``cache_reference=True``,
and ``TaskArithmetic`` (descent, with the edit scored after every step). Each precision in ``--precisions``. The
variants run interleaved in ``--rounds`` rounds (every variant once per round, the order rotated), and a ratio is
the median over rounds of the ratio within a round. Model TFLOP/s is 6 · parameters · tokens per step / time.

Shapes: ``1b`` (Llama-3.2-1B: hidden 2048, 16 layers, vocabulary 128,256; batch 32 × 256), ``8b-lora``
(Llama-3-8B, weights in bf16, a LoRA adapter of rank 16 on every linear layer; batch 8 × 256) and ``tiny`` (hidden
64, 2 layers, vocabulary 4096; batch 4 × 32, for CPUs).

    python benchmarks/gpu_step.py --shape 1b [--precisions bf16-mixed,bf16-true] [--rounds 3] [--steps 10]
    python benchmarks/gpu_step.py --shape tiny --rounds 1 --steps 3   # a CPU smoke run
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/helpers' probes

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lightning_unlearn import GradientAscent, SelectiveGradientAscent, TaskArithmetic, UnlearningDataModule
from tests.helpers.peak_memory import PeakTensorMemory
from tests.helpers.random_data import IdTokenizer, random_texts

SHAPES: dict[str, dict[str, Any]] = {
    "1b": {
        "config": {
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "vocab_size": 128_256,
            "tie_word_embeddings": True,
        },
        "batch": (32, 256),
        "lora": False,
    },
    "8b-lora": {
        "config": {
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "vocab_size": 128_256,
            "tie_word_embeddings": False,
        },
        "batch": (8, 256),
        "lora": True,
    },
    "tiny": {
        "config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "vocab_size": 4096,
            "tie_word_embeddings": True,
        },
        "batch": (4, 32),
        "lora": False,
    },
}


def build_model(shape: dict[str, Any], precision: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=shape["batch"][1], **shape["config"])
    dtype = torch.bfloat16 if precision == "bf16-true" or shape["lora"] else torch.float32
    return LlamaForCausalLM(config).to(dtype).eval()


def lora_config() -> Any:
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")


class StepClock(L.Callback):
    """Seconds of each optimizer step after the warm-up (synchronized on a GPU) and the step's peak memory."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.times: list[float] = []
        self.peak = 0
        self.memory: PeakTensorMemory | None = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        self._sync()
        self.start = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.memory = PeakTensorMemory().__enter__()

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        self._sync()
        if trainer.global_step > self.warmup:
            self.times.append(time.perf_counter() - self.start)
        if self.device.type == "cuda":
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device))
        else:
            self.memory.__exit__(None, None, None)
            self.peak = max(self.peak, self.memory.peak)


def lightning_run(
    make: Callable[[], L.LightningModule], data: UnlearningDataModule, precision: str, steps: int, warmup: int
) -> tuple[list[float], int]:
    clock = StepClock(warmup, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        precision=precision,
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(make(), data)
    return clock.times, clock.peak


def bare_run(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], precision: str, steps: int, warmup: int, lora: bool
) -> tuple[list[float], int]:
    """The model's own loss (labels=), negated, backward, Adam: autocast under a mixed precision."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if lora:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config())
    model.to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batch = {key: value.to(device) for key, value in batch.items()}
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.endswith("-mixed"))
    clock = StepClock(warmup, device)
    times = []
    for step in range(1, steps + 1):
        clock.on_train_batch_start(None)
        with autocast:
            loss = -model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clock._sync()
        if step > warmup:
            times.append(time.perf_counter() - clock.start)
        if device.type == "cuda":
            clock.peak = max(clock.peak, torch.cuda.max_memory_allocated(device))
        else:
            clock.memory.__exit__(None, None, None)
            clock.peak = max(clock.peak, clock.memory.peak)
    model.cpu()
    return times, clock.peak


def variants(shape: dict[str, Any], precision: str, steps: int, warmup: int) -> dict[str, Callable[[], Any]]:
    count, length = shape["batch"]
    vocabulary = shape["config"]["vocab_size"]
    tokenizer = IdTokenizer(vocabulary)
    options = {"max_length": length, "batch_size": count, "shuffle": False}
    forget = random_texts(count, length, vocabulary, seed=1)
    alone = UnlearningDataModule(tokenizer, forget, **options)
    with_retain = UnlearningDataModule(tokenizer, forget, retain=random_texts(count, length, vocabulary, 2), **options)
    alone.setup()
    batch = next(iter(alone.scoring_dataloader("forget", batch_size=count)))
    model = build_model(shape, precision)
    extra = {"peft": lora_config()} if shape["lora"] else {}
    never = {"gamma": 0.0, "threshold": -1.0}  # every record ascended, no stop

    def run(cls: type, data: UnlearningDataModule, **kwargs: Any) -> Callable[[], Any]:
        return lambda: lightning_run(
            lambda: cls(copy.deepcopy(model), **extra, **kwargs), data, precision, steps, warmup
        )

    return {
        "bare loop": lambda: bare_run(copy.deepcopy(model), batch, precision, steps, warmup, shape["lora"]),
        "GradientAscent": run(GradientAscent, alone),
        "SelectiveGradientAscent": run(SelectiveGradientAscent, alone, **never),
        "SGA, retain data": run(SelectiveGradientAscent, with_retain, **never),
        "SGA + KL retain": run(SelectiveGradientAscent, with_retain, retain_loss="kl", **never),
        "SGA + KL retain, cache_reference": run(
            SelectiveGradientAscent, with_retain, retain_loss="kl", cache_reference=True, **never
        ),
        "TaskArithmetic": run(TaskArithmetic, alone, threshold=-1.0),
    }


ROWS = [  # (variant, the variant its ratio is to)
    ("bare loop", "bare loop"),
    ("GradientAscent", "bare loop"),
    ("SelectiveGradientAscent", "GradientAscent"),
    ("SGA + KL retain", "SGA, retain data"),
    ("SGA + KL retain, cache_reference", "SGA, retain data"),
    ("TaskArithmetic", "bare loop"),
]


def measure(shape: dict[str, Any], precision: str, rounds: int, steps: int, warmup: int) -> list[dict[str, Any]]:
    runs = variants(shape, precision, steps, warmup)
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, int] = dict.fromkeys(names, 0)
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            step_times, peak = runs[name]()
            times[name].append(statistics.median(step_times))
            peaks[name] = max(peaks[name], peak)
    count, length = shape["batch"]
    parameters = sum(p.numel() for p in build_model(shape, "bf16-true").parameters())
    rows = []
    for name, baseline in ROWS:
        seconds = statistics.median(times[name])
        ratio = statistics.median(a / b for a, b in zip(times[name], times[baseline], strict=True))
        rows.append(
            {
                "step": name,
                "precision": precision,
                "ms": seconds * 1000,
                "ratio": ratio,
                "to": baseline,
                "peak_gb": peaks[name] / 1e9,
                "peak_ratio": peaks[name] / max(peaks[baseline], 1),
                "tflops": 6 * parameters * count * length / seconds / 1e12,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=tuple(SHAPES), default="1b")
    parser.add_argument("--precisions", default="bf16-mixed,bf16-true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="steps per variant and round (warm-up included)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{args.shape} on {device}, batch {shape['batch'][0]} x {shape['batch'][1]} tokens, {args.rounds} rounds")
    rows = [row for p in args.precisions.split(",") for row in measure(shape, p, args.rounds, args.steps, args.warmup)]
    print("\n| precision | step | ms/step | ratio | to | peak GB | peak ratio | model TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['precision']} | {row['step']} | {row['ms']:.0f} | {row['ratio']:.2f} | {row['to']} | "
            f"{row['peak_gb']:.2f} | {row['peak_ratio']:.2f} | {row['tflops']:.3g} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shape": args.shape, "device": device, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

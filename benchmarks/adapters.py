"""LoRA against full fine-tuning: what trains, what it costs in memory, and how unlearning fares.

Prints two Markdown tables (the README's):

1. Memory, for the testbed's GPT-Neo and GPT-Neo 125M's layers with the testbed's vocabulary (88M parameters, random
   weights: memory does not depend on them):
   parameters, trainable parameters, the weights' MB, the peak tensor memory of two gradient-ascent steps on 4
   forget records beyond the weights (gradients, Adam's states, activations: :class:`PeakTensorMemory`, as
   ``scaling.py`` measures on the CPU), and a checkpoint's MB (the module's state and the optimizer's, as Lightning
   saves them).
2. Unlearning on the default testbed over seeds: SGA, SGA + KL retain and TA with full fine-tuning (the demo's
   learning rates) and with a rank-8 LoRA adapter on every linear layer: whether every record reached the
   holdout's 0.95 quantile of g, steps, holdout NLL against the original model's, and retain g. Medians over seeds,
   [min, max].

    python benchmarks/adapters.py [--seeds 0,1,2,3,4] [--small] [--skip-125m]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/helpers' probes

import argparse
import copy
import io
import statistics

import lightning as L
import torch
from peft import LoraConfig
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from lightning_unlearn import GradientAscent, SelectiveGradientAscent, TaskArithmetic
from lightning_unlearn.callbacks import MemorizationEarlyStopping
from lightning_unlearn.demo import quiet_trainer
from lightning_unlearn.evaluation.report import memorization_report
from lightning_unlearn.testbed.build import SMALL_TESTBED, build_testbed
from tests.helpers.peak_memory import PeakTensorMemory

GPT_NEO_LAYERS = ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"]
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": GPT_NEO_LAYERS}
RUNS = {  # row label -> (method, options)
    "SGA, full fine-tuning (lr 5e-5)": (SelectiveGradientAscent, {"learning_rate": 5e-5}),
    "SGA, LoRA r = 8 (lr 3e-4)": (SelectiveGradientAscent, {"learning_rate": 3e-4, "lora": True}),
    "SGA, LoRA r = 8 (lr 1e-3)": (SelectiveGradientAscent, {"learning_rate": 1e-3, "lora": True}),
    "SGA + KL retain (α = 3), full fine-tuning (lr 5e-5)": (
        SelectiveGradientAscent,
        {"learning_rate": 5e-5, "retain_loss": "kl", "retain_weight": 3.0},
    ),
    "SGA + KL retain (α = 3), LoRA r = 8 (lr 1e-3)": (
        SelectiveGradientAscent,
        {"learning_rate": 1e-3, "retain_loss": "kl", "retain_weight": 3.0, "lora": True},
    ),
    "TA, full fine-tuning (lr 3e-4)": (TaskArithmetic, {"learning_rate": 3e-4}),
    "TA, LoRA r = 8 (lr 1e-3)": (TaskArithmetic, {"learning_rate": 1e-3, "lora": True}),
    "TA, LoRA r = 8 (lr 3e-3)": (TaskArithmetic, {"learning_rate": 3e-3, "lora": True}),
}


def gpt_neo_125m(vocab_size: int) -> GPTNeoForCausalLM:
    """GPT-Neo 125M's layers (the paper's smallest model) with random weights and ``vocab_size`` tokens."""
    config = GPTNeoConfig(
        vocab_size=vocab_size,
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        attention_types=[[["global", "local"], 6]],
        max_position_embeddings=2048,
    )
    return GPTNeoForCausalLM(config).eval()


def megabytes(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def memory_row(label: str, model: GPTNeoForCausalLM, testbed, lora: bool) -> str:
    module = GradientAscent(model, learning_rate=1e-4, peft=LoraConfig(**LORA) if lora else None)
    module.configure_model()
    parameters = list(module.model.parameters())
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    total = sum(p.numel() for p in parameters)
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with PeakTensorMemory() as memory:
        trainer.fit(module, testbed.datamodule(batch_size=4))
    buffer = io.BytesIO()
    torch.save({"state_dict": module.state_dict(), "optimizer": trainer.optimizers[0].state_dict()}, buffer)
    return (
        f"| {label} | {'LoRA r = 8' if lora else 'full'} | {total / 1e6:.2f}M | {trainable / 1e6:.3f}M "
        f"({trainable / total:.1%}) | {megabytes(parameters):.1f} | {memory.peak / 2**20:.1f} "
        f"| {buffer.tell() / 2**20:.2f} |"
    )


def unlearn(testbed, method, options: dict, seed: int, before: dict, max_steps: int) -> dict:
    L.seed_everything(seed, verbose=False)
    options = dict(options)
    peft = LoraConfig(**LORA) if options.pop("lora", False) else None
    module = method(copy.deepcopy(testbed.model), peft=peft, **options)
    trainer = quiet_trainer(max_steps)
    datamodule = testbed.datamodule()
    trainer.fit(module, datamodule)
    stopping = next(cb for cb in trainer.callbacks if isinstance(cb, MemorizationEarlyStopping))
    summary = memorization_report(module.model.eval(), datamodule, el_n=None).summary
    return {
        "met": bool(stopping.rule_met),
        "steps": stopping.stopped_step if stopping.stopped_step is not None else trainer.global_step,
        "holdout_nll": summary["holdout_nll"] / before["holdout_nll"],
        "retain_g": summary["retain_g"],
    }


def spread(values: list[float], form: str) -> str:
    return f"{statistics.median(values):{form}} [{min(values):{form}}, {max(values):{form}}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="testbed seeds of the unlearning table")
    parser.add_argument("--small", action="store_true", help="the small testbed (seconds to build)")
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--skip-125m", action="store_true", help="leave GPT-Neo 125M out of the memory table")
    args = parser.parse_args()
    size = SMALL_TESTBED if args.small else {}
    testbeds = {int(seed): build_testbed(int(seed), progress=False, **size) for seed in args.seeds.split(",")}
    first = next(iter(testbeds.values()))

    print("| model | training | parameters | trainable | weights MB | peak MB of a step | checkpoint MB |")
    print("|---|---|---|---|---|---|---|")
    for lora in (False, True):
        print(memory_row("testbed GPT-Neo", copy.deepcopy(first.model), first, lora), flush=True)
    for lora in () if args.skip_125m else (False, True):
        torch.manual_seed(0)
        print(memory_row("GPT-Neo 125M layers", gpt_neo_125m(len(first.tokenizer)), first, lora), flush=True)

    results: dict[str, list[dict]] = {label: [] for label in RUNS}
    for seed, testbed in testbeds.items():
        before = memorization_report(testbed.model, testbed.datamodule(), el_n=None).summary
        for label, (method, options) in RUNS.items():
            results[label].append(unlearn(testbed, method, options, seed, before, args.max_steps))
    print(f"\nseeds {args.seeds}; median [min, max]")
    print("| method | met | steps | holdout NLL | retain g |\n|---|---|---|---|---|")
    for label, runs in results.items():
        met = f"{sum(run['met'] for run in runs)}/{len(runs)}"
        steps = spread([run["steps"] for run in runs], "g")
        nll = spread([run["holdout_nll"] for run in runs], ".2f")
        print(f"| {label} | {met} | {steps} | {nll}x | {spread([run['retain_g'] for run in runs], '.3f')} |")


if __name__ == "__main__":
    main()

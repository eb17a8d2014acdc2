"""Cost of our training step against a bare PyTorch loop doing the same gradient ascent, in one process.

Prints median step times on the testbed's model with the whole forget set as the batch (the paper's setting):
a bare loop with the model's own loss (forward with ``labels=``, −loss, backward, Adam step), ``GradientAscent``
under a Lightning Trainer (per-sample NLL and weights), and ``SelectiveGradientAscent`` (which also scores every
sample from the training forward, selects and checks the stop rule). Then the cost of a KL retain term: SGA + KL
retain (a retain batch of the same size: its forward and backward, and one no-grad forward of the reference,
swapped in) against SGA on the same data and against SGA + NLL retain (the same retain forward and backward,
without the reference), with ``cache_reference=True`` (no reference pass after the first step), and the
reference's memory (one copy of the weights, and the reference logits of a retain batch while the step runs).

The variants run interleaved: ``--rounds`` rounds, each running every variant for ``--steps`` steps in an order
rotated by round, and each ratio is the median over rounds of the ratio within a round, so that the machine's
drift (the bare loop alone moved by 293–435 ms between runs) falls on numerator and denominator alike.

Last, the memory side of a large vocabulary: a model built from config with a 128,256-token vocabulary (Llama 3's;
small hidden size, so it runs on 2 cores), one step of each on a batch of 4 x 96 tokens, the peak tensor memory
(:class:`PeakTensorMemory`) of our GA and SGA steps against the bare loop's, in float32 and with
bfloat16 weights (where a model's own loss copies the logits to float32 and ours does not).

    python benchmarks/step_overhead.py [--rounds 5] [--steps 8] [--small] [--vocabulary 128256]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/helpers' probes

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import lightning as L
import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from lightning_unlearn import GradientAscent, SelectiveGradientAscent, UnlearningDataModule
from lightning_unlearn.testbed.build import SMALL_TESTBED, build_testbed
from tests.helpers.peak_memory import PeakTensorMemory, StepPeak


class StepTimer(L.Callback):
    """Wall time of each optimizer step after the warm-up, end to end (data, forward, backward, step, hooks)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self.last = 0.0

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        now = time.perf_counter()
        if trainer.global_step > self.warmup:
            self.times.append(now - self.last)
        self.last = now


def bare_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> None:
    """One step of gradient ascent with the model's own loss: forward with labels, −loss, backward, Adam step."""
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    loss = -model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def bare_loop(model: torch.nn.Module, loader: torch.utils.data.DataLoader, steps: int, warmup: int) -> list[float]:
    """Seconds of each step after the warm-up of a plain loop: next batch, :func:`bare_step`."""
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-5, betas=(0.9, 0.98))
    model.eval()  # as our modules: no dropout
    times, last = [], time.perf_counter()
    for step in range(steps):
        for batch in loader:  # one batch per epoch: the whole forget set
            bare_step(model, optimizer, batch)
        now = time.perf_counter()
        if step >= warmup:
            times.append(now - last)
        last = now
    return times


def quiet_trainer(max_steps: int, callback: L.Callback) -> L.Trainer:
    """A one-process CPU Trainer for ``max_steps`` steps, with ``callback`` and nothing else."""
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )


def lightning_steps(
    module: L.LightningModule, datamodule: UnlearningDataModule, steps: int, warmup: int
) -> list[float]:
    """Seconds of each step after the warm-up of ``module`` under a Trainer."""
    timer = StepTimer(warmup)
    trainer = quiet_trainer(steps, timer)
    trainer.fit(module, datamodule)
    assert trainer.global_step == steps, "the run stopped early: the timing would be off"
    return timer.times


def large_vocabulary_memory(testbed: object, vocabulary: int, dtype: torch.dtype) -> dict[str, float]:
    """Peak tensor memory (MB) of one step on 4 x 96 tokens of a model with ``vocabulary`` tokens: the bare loop's,
    and our GA's and SGA's steps under a Trainer (the Adam states they create count in each)."""
    config = GPTNeoConfig(
        vocab_size=vocabulary,
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        attention_types=[[["global", "local"], 1]],
        window_size=32,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = GPTNeoForCausalLM(config).to(dtype).eval()
    records = testbed.forget[:4]
    datamodule = UnlearningDataModule(testbed.tokenizer, records, batch_size=4, max_length=96, shuffle=False)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))[0]["forget"]
    peaks = {}
    bare_model = copy.deepcopy(model)
    optimizer = torch.optim.Adam(bare_model.parameters(), lr=5e-5)
    with PeakTensorMemory() as memory:
        bare_step(bare_model, optimizer, batch)
    peaks["bare"] = memory.peak / 2**20
    # gamma 0 and threshold -1: SGA keeps every record and never stops (a random model may have g = 0 everywhere).
    for name, module in (
        ("GA", GradientAscent(copy.deepcopy(model))),
        ("SGA", SelectiveGradientAscent(copy.deepcopy(model), gamma=0.0, threshold=-1.0)),
    ):
        step = StepPeak()
        quiet_trainer(1, step).fit(module, datamodule)
        peaks[name] = step.peak / 2**20
    return peaks


def interleaved(variants: dict[str, Callable[[], list[float]]], rounds: int) -> dict[str, list[float]]:
    """Seconds per step of each variant, run in ``rounds`` rounds that each run every variant once (in an order
    rotated by round), so that the machine's drift over the minutes of a run falls on all of them alike."""
    times: dict[str, list[list[float]]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            times[name].append(variants[name]())
    return {name: [statistics.median(run) for run in runs] for name, runs in times.items()}


def ratio(times: dict[str, list[float]], name: str, baseline: str) -> float:
    """The median over rounds of ``name``'s step time over ``baseline``'s in the same round."""
    return statistics.median(a / b for a, b in zip(times[name], times[baseline], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="steps per variant and round (warm-up included)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="rounds: every variant runs once per round")
    parser.add_argument("--small", action="store_true", help="the small testbed (seconds to build)")
    parser.add_argument("--vocabulary", type=int, default=128_256, help="of the large-vocabulary model (0: skip)")
    args = parser.parse_args()
    testbed = build_testbed(progress=False, **(SMALL_TESTBED if args.small else {}))
    datamodule = testbed.datamodule(retain=None, shuffle=False)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))[0]["forget"]
    with_retain = testbed.datamodule(shuffle=False)
    steps, warmup = args.steps, args.warmup

    def run(data: UnlearningDataModule, **options: object) -> Callable[[], list[float]]:
        # gamma 0 keeps every sample and threshold 0 never holds: the work of GA plus scoring and selection.
        make = GradientAscent if options.pop("plain", False) else SelectiveGradientAscent
        extra = {} if make is GradientAscent else {"gamma": 0.0, "threshold": 0.0}
        return lambda: lightning_steps(make(copy.deepcopy(testbed.model), **extra, **options), data, steps, warmup)

    forget_loader = datamodule.train_dataloader().iterables["forget"]
    variants = {
        "bare": lambda: bare_loop(copy.deepcopy(testbed.model), forget_loader, steps, warmup),
        "GA": run(datamodule, plain=True),
        "SGA": run(datamodule),
        "SGA, retain data": run(with_retain),
        "SGA + NLL": run(with_retain, retain_loss="nll"),
        "SGA + KL": run(with_retain, retain_loss="kl"),
        "SGA + KL, cached": run(with_retain, retain_loss="kl", cache_reference=True),
    }
    times = interleaved(variants, args.rounds)
    ms = {name: statistics.median(values) * 1000 for name, values in times.items()}
    print(
        f"batch {len(testbed.forget)} x {batch['input_ids'].shape[1]} tokens; {args.rounds} interleaved rounds of "
        f"{steps - warmup} timed steps per variant; ratios: the median over rounds of the ratio within a round"
    )
    print(f"bare PyTorch loop      {ms['bare']:8.1f} ms/step")
    print(f"GradientAscent         {ms['GA']:8.1f} ms/step   GA / bare = {ratio(times, 'GA', 'bare'):.3f}")
    print(f"SelectiveGradientAscent{ms['SGA']:8.1f} ms/step   SGA / GA  = {ratio(times, 'SGA', 'GA'):.3f}")
    print(
        f"SGA + KL retain        {ms['SGA + KL']:8.1f} ms/step   SGA+KL / SGA = "
        f"{ratio(times, 'SGA + KL', 'SGA, retain data'):.3f}  (SGA on the same data {ms['SGA, retain data']:.1f} ms)"
    )
    print(
        f"SGA + KL, cached ref.  {ms['SGA + KL, cached']:8.1f} ms/step   SGA+KL / SGA = "
        f"{ratio(times, 'SGA + KL, cached', 'SGA, retain data'):.3f}  (cache_reference=True)"
    )
    print(
        f"SGA + NLL retain       {ms['SGA + NLL']:8.1f} ms/step   SGA+KL / SGA+NLL = "
        f"{ratio(times, 'SGA + KL', 'SGA + NLL'):.3f}  (what the reference itself costs)"
    )
    weights = sum(p.numel() * p.element_size() for p in testbed.model.parameters())
    retain_batch = next(iter(with_retain.train_dataloader()))[0]["retain"]["input_ids"]
    logits = retain_batch.numel() * testbed.model.config.vocab_size * 4
    print(f"reference memory: {weights / 2**20:.1f} MB of weights, {logits / 2**20:.1f} MB of logits during a step")
    rows = [
        ("bare PyTorch loop", "bare", "bare", "itself"),
        ("GradientAscent", "GA", "bare", "bare loop"),
        ("SelectiveGradientAscent", "SGA", "GA", "GradientAscent"),
        ("SGA + NLL retain", "SGA + NLL", "SGA, retain data", "SGA on the same data"),
        ("SGA + KL retain", "SGA + KL", "SGA, retain data", "SGA on the same data"),
        ("SGA + KL retain, cache_reference", "SGA + KL, cached", "SGA, retain data", "SGA on the same data"),
    ]
    print("\n| step | ms | ratio | to |\n|---|---|---|---|")
    for label, name, baseline, against in rows:
        print(f"| {label} | {ms[name]:.0f} | {ratio(times, name, baseline):.2f} | {against} |")
    if args.vocabulary:
        print(f"\npeak tensor memory of one step, vocabulary {args.vocabulary:,}, 4 x 96 tokens")
        print("\n| weights | bare loop MB | GA MB | GA / bare | SGA MB | SGA / bare |\n|---|---|---|---|---|---|")
        for dtype in (torch.float32, torch.bfloat16):
            peaks = large_vocabulary_memory(testbed, args.vocabulary, dtype)
            bare_mb, ga_mb, sga_mb = peaks["bare"], peaks["GA"], peaks["SGA"]
            print(
                f"| {str(dtype).removeprefix('torch.')} | {bare_mb:.0f} | {ga_mb:.0f} | {ga_mb / bare_mb:.2f} | "
                f"{sga_mb:.0f} | {sga_mb / bare_mb:.2f} |"
            )


if __name__ == "__main__":
    main()

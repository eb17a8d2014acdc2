"""Cost of our training step against a bare PyTorch loop doing the same gradient ascent, in one process.

Prints median step times on the testbed's model with the whole forget set as the batch (the paper's setting):
a bare loop (forward, −NLL, backward, Adam step), ``GradientAscent`` under a Lightning Trainer, and
``SelectiveGradientAscent`` (which also scores every sample from the training forward, selects and checks the
stop rule), then the ratios GA / bare (goal <= 1.15) and SGA / GA (goal <= 1.20). Then the cost of a KL retain
term: SGA + KL retain (a retain batch of the same size: its forward and backward, and one no-grad forward of the
reference, swapped in) against SGA on the same data (goal <= 2.1) and against SGA + NLL retain (the same retain
forward and backward, without the reference), with ``cache_reference=True`` (no reference pass after the first
step), and the reference's memory (one copy of the weights, and the
reference logits of a retain batch while the step runs).

    python benchmarks/step_overhead.py [--steps 30] [--small]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import lightning as L
import torch

from lightning_unlearn import GradientAscent, SelectiveGradientAscent, UnlearningDataModule
from lightning_unlearn.memorization import sequence_nll
from lightning_unlearn.testbed import SMALL_TESTBED, build_testbed


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


def bare_loop(model: torch.nn.Module, loader: torch.utils.data.DataLoader, steps: int, warmup: int) -> float:
    """Median seconds per step of a plain loop: next batch, forward, −NLL, backward, Adam step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-5, betas=(0.9, 0.98))
    model.eval()  # as our modules: no dropout
    times, last = [], time.perf_counter()
    for step in range(steps):
        for batch in loader:  # one batch per epoch: the whole forget set
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = -sequence_nll(logits, batch["input_ids"], batch["attention_mask"]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        now = time.perf_counter()
        if step >= warmup:
            times.append(now - last)
        last = now
    return statistics.median(times)


def lightning_steps(module: L.LightningModule, datamodule: UnlearningDataModule, steps: int, warmup: int) -> float:
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule)
    assert trainer.global_step == steps, "the run stopped early: the timing would be off"
    return statistics.median(timer.times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="the small testbed (seconds to build)")
    args = parser.parse_args()
    testbed = build_testbed(progress=False, **(SMALL_TESTBED if args.small else {}))
    datamodule = testbed.datamodule(retain=None, shuffle=False)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))[0]["forget"]

    bare = bare_loop(
        copy.deepcopy(testbed.model), datamodule.train_dataloader().iterables["forget"], args.steps, args.warmup
    )
    ga = lightning_steps(GradientAscent(copy.deepcopy(testbed.model)), datamodule, args.steps, args.warmup)
    # threshold 0 never holds and gamma 0 keeps every sample: the same work as GA plus scoring and selection.
    sga_module = SelectiveGradientAscent(copy.deepcopy(testbed.model), gamma=0.0, threshold=0.0)
    sga = lightning_steps(sga_module, datamodule, args.steps, args.warmup)
    print(f"batch {len(testbed.forget)} x {batch['input_ids'].shape[1]} tokens, {args.steps - args.warmup} timed steps")
    print(f"bare PyTorch loop      {bare * 1000:8.1f} ms/step")
    print(f"GradientAscent         {ga * 1000:8.1f} ms/step   GA / bare = {ga / bare:.3f}  (goal <= 1.15)")
    print(f"SelectiveGradientAscent{sga * 1000:8.1f} ms/step   SGA / GA  = {sga / ga:.3f}  (goal <= 1.20)")

    with_retain = testbed.datamodule(shuffle=False)
    sga_module = SelectiveGradientAscent(copy.deepcopy(testbed.model), gamma=0.0, threshold=0.0)
    sga_retain = lightning_steps(sga_module, with_retain, args.steps, args.warmup)
    nll_module = SelectiveGradientAscent(copy.deepcopy(testbed.model), gamma=0.0, threshold=0.0, retain_loss="nll")
    sga_nll = lightning_steps(nll_module, with_retain, args.steps, args.warmup)
    kl_module = SelectiveGradientAscent(copy.deepcopy(testbed.model), gamma=0.0, threshold=0.0, retain_loss="kl")
    sga_kl = lightning_steps(kl_module, with_retain, args.steps, args.warmup)
    weights = sum(t.numel() * t.element_size() for t in kl_module.reference.weights.values())
    retain_batch = next(iter(with_retain.train_dataloader()))[0]["retain"]["input_ids"]
    logits = retain_batch.numel() * testbed.model.config.vocab_size * 4
    print(
        f"SGA + KL retain        {sga_kl * 1000:8.1f} ms/step   SGA+KL / SGA = {sga_kl / sga_retain:.3f}  "
        f"(goal <= 2.1; SGA on the same data {sga_retain * 1000:.1f} ms/step)"
    )
    cached_module = SelectiveGradientAscent(
        copy.deepcopy(testbed.model), gamma=0.0, threshold=0.0, retain_loss="kl", cache_reference=True
    )
    sga_kl_cached = lightning_steps(cached_module, with_retain, args.steps, args.warmup)
    print(
        f"SGA + KL, cached ref.  {sga_kl_cached * 1000:8.1f} ms/step   "
        f"SGA+KL / SGA = {sga_kl_cached / sga_retain:.3f}  "
        "(cache_reference=True: the reference's logits of each retain sample kept after its first step)"
    )
    print(
        f"SGA + NLL retain       {sga_nll * 1000:8.1f} ms/step   SGA+KL / SGA+NLL = {sga_kl / sga_nll:.3f}  "
        "(what the reference itself costs: its forward pass, the swaps and the KL)"
    )
    print(f"reference memory: {weights / 2**20:.1f} MB of weights, {logits / 2**20:.1f} MB of logits during a step")
    rows = [
        ("bare PyTorch loop", bare, bare, "itself"),
        ("GradientAscent", ga, bare, "bare loop"),
        ("SelectiveGradientAscent", sga, ga, "GradientAscent"),
        ("SGA + NLL retain", sga_nll, sga_retain, "SGA on the same data"),
        ("SGA + KL retain", sga_kl, sga_retain, "SGA on the same data"),
        ("SGA + KL retain, cache_reference", sga_kl_cached, sga_retain, "SGA on the same data"),
    ]
    print("\n| step | ms | ratio | to |\n|---|---|---|---|")
    for name, seconds, baseline, against in rows:
        print(f"| {name} | {seconds * 1000:.0f} | {seconds / baseline:.2f} | {against} |")


if __name__ == "__main__":
    main()

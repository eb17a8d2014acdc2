"""Cost of our training step against a bare PyTorch loop doing the same gradient ascent, in one process.

Prints median step times on the testbed's model with the whole forget set as the batch (the paper's setting):
a bare loop with the model's own loss (forward with ``labels=``, −loss, backward, Adam step), ``GradientAscent``
under a Lightning Trainer (per-sample NLL and weights; goal <= 1.05), and ``SelectiveGradientAscent`` (which
also scores every sample from the training forward, selects and checks the stop rule; goal <= 1.20 of GA). Then
the cost of a KL retain term: SGA + KL retain (a retain batch of the same size: its forward and backward, and one
no-grad forward of the reference, swapped in) against SGA on the same data (goal <= 2.1) and against SGA + NLL
retain (the same retain forward and backward, without the reference), with ``cache_reference=True`` (no
reference pass after the first step), and the reference's memory (one copy of the weights, and the reference
logits of a retain batch while the step runs).

Last, the memory side of a large vocabulary: a model built from config with a 128,256-token vocabulary (Llama 3's;
small hidden size, so it runs on 2 cores), one step of each on a batch of 4 x 96 tokens, the peak tensor memory
(:class:`PeakTensorMemory`) of our GA and SGA steps against the bare loop's (goal <= 1.1), in float32 and with
bfloat16 weights (where a model's own loss copies the logits to float32 and ours does not).

    python benchmarks/step_overhead.py [--steps 30] [--small] [--vocabulary 128256]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import lightning as L
import torch
from peak_memory import PeakTensorMemory
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from lightning_unlearn import GradientAscent, SelectiveGradientAscent, UnlearningDataModule
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


def bare_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> None:
    """One step of gradient ascent with the model's own loss: forward with labels, −loss, backward, Adam step."""
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    loss = -model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def bare_loop(model: torch.nn.Module, loader: torch.utils.data.DataLoader, steps: int, warmup: int) -> float:
    """Median seconds per step of a plain loop: next batch, :func:`bare_step`."""
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
    return statistics.median(times)


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


def lightning_steps(module: L.LightningModule, datamodule: UnlearningDataModule, steps: int, warmup: int) -> float:
    timer = StepTimer(warmup)
    trainer = quiet_trainer(steps, timer)
    trainer.fit(module, datamodule)
    assert trainer.global_step == steps, "the run stopped early: the timing would be off"
    return statistics.median(timer.times)


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


class StepPeak(L.Callback):
    """Peak tensor memory of the training step (forward, backward, optimizer step), not of the scoring passes
    that a monitor runs before training starts."""

    def on_train_batch_start(self, *args: object) -> None:
        self.memory = PeakTensorMemory()
        self.memory.__enter__()

    def on_train_batch_end(self, *args: object) -> None:
        self.memory.__exit__(None, None, None)
        self.peak = self.memory.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="the small testbed (seconds to build)")
    parser.add_argument("--vocabulary", type=int, default=128_256, help="of the large-vocabulary model (0: skip)")
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
    print(f"GradientAscent         {ga * 1000:8.1f} ms/step   GA / bare = {ga / bare:.3f}  (goal <= 1.05)")
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
    if args.vocabulary:
        print(f"\npeak tensor memory of one step, vocabulary {args.vocabulary:,}, 4 x 96 tokens (goal: ours <= 1.1x)")
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

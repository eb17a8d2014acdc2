"""Forget sets far larger than a batch: cost of per-sample scoring as the set grows, and the refresh policy.

For forget sets of 32, 128, 512 and 2048 records on the testbed's model (training batch 32, scoring batch 128),
prints: tokens per second of a full scoring pass; SGA with ``refresh="above_threshold"`` (re-score only the
records not yet forgotten, verify all before stopping) and SGA rescanning every record after every step
(``refresh="all"``): seconds per step, steps and seconds until every record is at or below the threshold, peak
memory; and the ratios. Each SGA run is its own process.

The set: the testbed's forget and retain records (memorized to different degrees), then records it trained on
once, then records it never saw, as in a customer's data where few records are memorized. A record counts as
forgotten at g <= 0.5 (records never seen start below it; the holdout mean would put half of them above).
Records are cut at 96 tokens: every set then has the same longest record, which sets the size of the largest
batch's activations, so the sizes differ in the number of records only.

    python benchmarks/scaling.py [--sizes 32,128,512,2048] [--small] [--accelerator gpu]

Peak memory: on a GPU, the peak of PyTorch's CUDA allocator during fit; on the CPU, the peak of the tensor memory
allocated during fit (:class:`PeakTensorMemory`, the same measure), beyond the model and the tokenized records,
which exist before.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/helpers' probes

import argparse
import copy
import multiprocessing
import queue
import time
from contextlib import nullcontext

import lightning as L
import torch

from lightning_unlearn import SelectiveGradientAscent, UnlearningDataModule
from lightning_unlearn.callbacks import MemorizationEarlyStopping, MemorizationMonitor
from lightning_unlearn.evaluation.scoring import score_memorization
from lightning_unlearn.testbed.build import SMALL_TESTBED, build_testbed, make_records
from tests.helpers.peak_memory import PeakTensorMemory

THRESHOLD = 0.5
BATCH, EVAL_BATCH = 32, 128
MAX_LENGTH = 96


def forget_set(testbed, size: int, with_retain: bool = True) -> list[str]:
    """``size`` distinct records: memorized ones first (the testbed's forget records, and with ``with_retain`` its
    retain records), then trained-once background, then never seen."""
    trained = set(testbed.forget) | set(testbed.retain)
    memorized = testbed.forget + (testbed.retain if with_retain else [])
    background = [r for r in dict.fromkeys(testbed.corpus) if r not in trained]
    unseen = make_records(max(0, size - len(memorized) - len(background)) + len(testbed.holdout), seed=10_000)
    unseen = [r for r in unseen if r not in set(testbed.holdout)]
    return (memorized + background + unseen)[:size]


def datamodule(testbed, size: int) -> UnlearningDataModule:
    return UnlearningDataModule(
        testbed.tokenizer,
        forget_set(testbed, size),
        batch_size=BATCH,
        eval_batch_size=EVAL_BATCH,
        max_length=MAX_LENGTH,
    )


def scoring_throughput(testbed, sizes: list[int], device: str, rounds: int = 3) -> dict[int, float]:
    """Real tokens per second of full scoring passes at each size, over the same work: a smaller set's pass is
    repeated until it has scored as many tokens as the largest set's. The best of ``rounds``, the sizes taken in
    turn in each round, so a slow spell of the machine does not fall on one size only."""
    model = testbed.model.to(device)
    data = {size: datamodule(testbed, size) for size in sizes}
    tokens = {size: sum(data[size].split("forget").lengths) for size in sizes}
    passes = {size: -(-max(tokens.values()) // tokens[size]) for size in sizes}
    best = dict.fromkeys(sizes, float("inf"))
    for _ in range(rounds):
        for size in sizes:
            start = time.perf_counter()
            for _ in range(passes[size]):
                score_memorization(model, data[size].scoring_dataloader("forget"))  # Python floats: synchronized
            best[size] = min(best[size], time.perf_counter() - start)
    return {size: passes[size] * tokens[size] / best[size] for size in sizes}


def sga_run(options: dict, results: multiprocessing.Queue) -> None:
    """One SGA run in a fresh process: seconds, steps, samples scored, final g, peak memory (MB)."""
    torch.set_num_threads(options["threads"])
    testbed = build_testbed(progress=False, **options["testbed"])
    L.seed_everything(0, verbose=False)
    module = SelectiveGradientAscent(
        copy.deepcopy(testbed.model), learning_rate=3e-4, threshold=THRESHOLD, refresh=options["refresh"]
    )
    trainer = L.Trainer(
        max_steps=options["max_steps"],
        accelerator=options["accelerator"],
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = datamodule(testbed, options["size"])
    data.setup()
    gpu = options["accelerator"] == "gpu"
    with nullcontext() if gpu else PeakTensorMemory() as memory:
        start = time.perf_counter()
        trainer.fit(module, data)
        seconds = time.perf_counter() - start
    monitor = next(cb for cb in trainer.callbacks if isinstance(cb, MemorizationMonitor))
    stopping = next(cb for cb in trainer.callbacks if isinstance(cb, MemorizationEarlyStopping))
    results.put(
        {
            "seconds": seconds,
            "steps": stopping.stopped_step if stopping.stopped_step is not None else trainer.global_step,
            "met": stopping.stopped_step is not None,
            "scored": monitor.samples_scored,
            "g": monitor.values.tolist(),
            "peak_mb": (torch.cuda.max_memory_allocated() if gpu else memory.peak) / 2**20,
        }
    )


def run_in_process(options: dict) -> dict:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=sga_run, args=(options, results))
    process.start()
    while True:
        try:
            result = results.get(timeout=5)
            break
        except queue.Empty:
            if not process.is_alive():
                raise RuntimeError(f"the SGA run failed (exit code {process.exitcode}); see its error above") from None
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,128,512,2048")
    parser.add_argument("--small", action="store_true", help="the small testbed (a quick check)")
    parser.add_argument("--max-steps", type=int, default=300, help="optimizer steps at most per SGA run")
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu")
    args = parser.parse_args()
    options = SMALL_TESTBED if args.small else {}
    testbed = build_testbed(progress=True, **options)
    sizes = [int(size) for size in args.sizes.split(",")]
    threads = torch.get_num_threads()
    print(f"testbed model: {testbed.model.num_parameters() / 1e6:.2f}M parameters; batch {BATCH}, scoring {EVAL_BATCH}")
    print(
        "| records | scoring tokens/s | refresh: s/step | steps | s to rule | peak MB "
        "| rescan all: s/step | steps | s to rule | peak MB | speed-up | max |Δg| |"
    )
    print("|---" * 12 + "|")
    throughputs = scoring_throughput(testbed, sizes, "cuda" if args.accelerator == "gpu" else "cpu")
    rows = {}
    for size in sizes:
        throughput = throughputs[size]
        runs = {}
        for refresh in ("above_threshold", "all"):
            run_options = {"testbed": options, "size": size, "refresh": refresh, "threads": threads}
            run_options["accelerator"] = args.accelerator
            runs[refresh] = run_in_process(run_options | {"max_steps": args.max_steps})
        policy, naive = runs["above_threshold"], runs["all"]
        gap = max(abs(a - b) for a, b in zip(policy["g"], naive["g"], strict=True))
        cells = [f"{size}", f"{throughput:,.0f}"]
        for run in (policy, naive):
            per_step = run["seconds"] / max(run["steps"], 1)
            met = "" if run["met"] else " (not met)"
            cells += [f"{per_step:.2f}", f"{run['steps']}{met}", f"{run['seconds']:.1f}", f"{run['peak_mb']:.1f}"]
        cells += [f"{naive['seconds'] / policy['seconds']:.2f}x", f"{gap:.3f}"]
        print("| " + " | ".join(cells) + " |", flush=True)
        rows[size] = (throughput, policy, naive)
    same = all(policy["steps"] == naive["steps"] and policy["g"] == naive["g"] for _, policy, naive in rows.values())
    print(f"\nsame steps and bit-identical final g under both policies at every size: {same}")
    if len(sizes) > 1:
        low, high = sizes[1] if len(sizes) > 2 else sizes[0], sizes[-1]
        ratio = rows[high][0] / rows[low][0]
        print(f"scoring throughput at {high} / at {low}: {ratio:.2f} (linear cost: within 0.8-1.2)")
        growth = rows[high][1]["peak_mb"] - rows[low][1]["peak_mb"]
        state_mb = (high - low) * (4 + 8 + 4) / 2**20  # g (float32), scored_at (int64), weight (float32)
        print(
            f"peak memory growth {low} -> {high} records (refresh policy): {growth:.3f} MB; "
            f"per-sample state: {state_mb:.3f} MB"
        )


if __name__ == "__main__":
    main()

"""A forget set of 4,096 records in batches of 32, next to the testbed's 32 in one batch: do the recommended
method's defaults meet the per-sample rule, in how many steps, at what cost?

Rows: SGA + KL (``--method sga-kl``: γ = 0.7, ``keep_top=1``, KL to the original model on the testbed's retain
records, weight 3; here with ``refresh="above_threshold"``) on the testbed's forget set (batch = the forget set),
and on 4,096 records in batches of 32, with its defaults and with ``skip_forgotten=True`` (a batch's records
already at or below the level are never ascended, even as the batch's most memorized). The 4,096 records: the
testbed's forget records first, then records it trained on once, then records it never saw
(:func:`scaling.forget_set`, without the retain records), cut at 96 tokens. The level is the holdout's 0.95
quantile, as everywhere; the rule: every record at or below it. Cost: optimizer steps, epochs over the forget set,
records scored by the monitor (each record's g re-computed once counts one), seconds on this machine; utility: the
holdout NLL after as a multiple of the original model's, and the retain records' mean g.

    python benchmarks/large_forget_set.py [--records 4096] [--max-steps 3000] [--small]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from typing import Any

import lightning as L
import torch
from scaling import MAX_LENGTH, forget_set

from lightning_unlearn import UnlearningDataModule
from lightning_unlearn.callbacks import MemorizationEarlyStopping, MemorizationMonitor
from lightning_unlearn.evaluation.scoring import score_memorization
from lightning_unlearn.functional.memorization import sequence_nll
from lightning_unlearn.methods import make_method
from lightning_unlearn.testbed.build import SMALL_TESTBED, build_testbed

BATCH, EVAL_BATCH = 32, 128
HEADER = (
    "| forget set, SGA + KL settings | batch | met | steps | epochs | records scored | seconds | holdout NLL | "
    "retain g |"
)


def holdout_nll(model: torch.nn.Module, data: UnlearningDataModule) -> float:
    """Mean over the holdout records of their mean token NLL (nats)."""
    with torch.no_grad():
        nll = score_memorization(model, data.scoring_dataloader("holdout"), measure=_nll)
    return sum(nll.values()) / len(nll)


def run(testbed: Any, records: list[str], batch: int, max_steps: int, **settings: Any) -> dict[str, Any]:
    """One SGA + KL run to the rule (or ``max_steps``): its cost, and the holdout NLL and retain g after."""
    L.seed_everything(0, verbose=False)
    data = UnlearningDataModule(
        testbed.tokenizer,
        records,
        retain=testbed.retain,
        holdout=testbed.holdout,
        batch_size=batch,
        eval_batch_size=EVAL_BATCH,
        max_length=MAX_LENGTH,
    )
    module, callbacks = make_method("sga-kl", copy.deepcopy(testbed.model), refresh="above_threshold", **settings)
    trainer = L.Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=True,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    start = time.perf_counter()
    trainer.fit(module, data)
    seconds = time.perf_counter() - start
    monitor = next(cb for cb in trainer.callbacks if isinstance(cb, MemorizationMonitor) and cb.split == "forget")
    stopping = next(cb for cb in trainer.callbacks if isinstance(cb, MemorizationEarlyStopping))
    return {
        "met": stopping.stopped_step is not None,
        "steps": trainer.global_step,
        "epochs": trainer.global_step / math.ceil(len(records) / batch),
        "scored": monitor.samples_scored,
        "seconds": seconds,
        "holdout_nll": holdout_nll(module.model, data),
        "retain_g": statistics.fmean(score_memorization(module.model, data.scoring_dataloader("retain")).values()),
    }


def _nll(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean token NLL of each record (nats, ``Tensor[B]``)."""
    return sequence_nll(model(input_ids=input_ids, attention_mask=attention_mask).logits, input_ids, attention_mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=4096)
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--small", action="store_true", help="the small testbed (a quick check)")
    args = parser.parse_args()
    testbed = build_testbed(progress=True, **(SMALL_TESTBED if args.small else {}))
    large = forget_set(testbed, args.records, with_retain=False)
    rows = [
        (f"the testbed's {len(testbed.forget)}", testbed.forget, len(testbed.forget), "defaults", {}),
        (f"{args.records:,} records", large, BATCH, "defaults", {}),
        (f"{args.records:,} records", large, BATCH, "skip_forgotten=True", {"skip_forgotten": True}),
    ]
    data = UnlearningDataModule(testbed.tokenizer, testbed.forget, holdout=testbed.holdout, max_length=MAX_LENGTH)
    data.setup()
    before = holdout_nll(testbed.model, data)
    print(f"holdout NLL before: {before:.3f}\n")
    print(HEADER)
    print("|---" * 9 + "|")
    for name, records, batch, label, settings in rows:
        r = run(testbed, records, batch, args.max_steps, **settings)
        print(
            f"| {name}, {label} | {batch} | {'yes' if r['met'] else 'no'} | {r['steps']} | {r['epochs']:.1f} | "
            f"{r['scored']:,} | {r['seconds']:.0f} | {r['holdout_nll'] / before:.2f}x | {r['retain_g']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

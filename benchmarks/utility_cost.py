"""Where an unlearning method's utility cost comes from: holdout NLL step by step, and token by token.

Runs the registry's sga (per-sample rule) or ga-mean (mean rule) on the testbed and prints:

- before every optimizer step and after the last: holdout NLL / its starting value (the demo's measure: the mean
  over holdout records of each one's mean token NLL), the forget set's mean and max g, and how many forget samples
  the next step ascends;
- the NLL increase on holdout tokens, split by each token's NLL before unlearning (nats);
- the holdout tokens the model predicts most often, and the mean entropy of its predictions (nats), before and after.

    python benchmarks/utility_cost.py [--method sga|ga-mean] [--small]
"""

from __future__ import annotations

import argparse
import copy
import itertools
from collections import Counter

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_unlearn.callbacks import MemorizationEarlyStopping
from lightning_unlearn.demo import testbed_method
from lightning_unlearn.evaluation.scoring import score_memorization
from lightning_unlearn.functional.memorization import sequence_nll
from lightning_unlearn.methods import METHODS
from lightning_unlearn.testbed.build import SMALL_TESTBED, build_testbed

BANDS = (0.0, 0.1, 1.0, 3.0, 6.0, float("inf"))  # edges of the before-unlearning token NLL bands, nats


def token_nll(model: torch.nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """NLL (nats), predicted token and prediction entropy (nats) at every real next-token position: ``Tensor[P]``
    each, in one order for every model; and each record's mean NLL, ``Tensor[B]``. Leaves the model's mode as is."""
    was_training = model.training
    with torch.no_grad():
        logits = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    model.train(was_training)
    log_p = logits[:, :-1].float().log_softmax(-1)
    targets = batch["input_ids"][:, 1:]
    real = batch["attention_mask"][:, 1:].bool() & batch["attention_mask"][:, :-1].bool()
    nll = -log_p.gather(-1, targets[..., None])[..., 0]
    entropy = -(log_p.exp() * log_p).sum(-1)
    per_record = sequence_nll(logits, batch["input_ids"], batch["attention_mask"])
    return nll[real], log_p.argmax(-1)[real], entropy[real], per_record


class HoldoutTrace(L.Callback):
    """Before every optimizer step and after the last: holdout NLL ratio and the forget set's mean and max g of the
    same weights; with each step, the number of forget samples it ascended."""

    def __init__(self, holdout: dict[str, Tensor], forget: DataLoader, start: float) -> None:
        self.holdout, self.forget, self.start = holdout, forget, start
        self.rows: list[dict[str, float]] = []

    def record(self, trainer: L.Trainer, model: torch.nn.Module) -> None:
        g = torch.tensor(list(score_memorization(model, self.forget).values()))
        ratio = float(token_nll(model, self.holdout)[3].mean()) / self.start
        self.rows.append({"steps": trainer.global_step, "ratio": ratio, "mean": float(g.mean()), "max": float(g.max())})

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        self.record(trainer, pl_module.model)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        self.rows[-1]["ascended"] = float(trainer.callback_metrics["train/selected"])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stopping = next(cb for cb in trainer.callbacks if isinstance(cb, MemorizationEarlyStopping))
        if self.rows and self.rows[-1]["steps"] == stopping.stopped_step:
            del self.rows[-1]["ascended"]  # the rule held on the training forward: that step was not taken
        else:
            self.record(trainer, pl_module.model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="sga", choices=["ga-mean", "sga"])
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--small", action="store_true", help="the small testbed (seconds to build)")
    args = parser.parse_args()
    testbed = build_testbed(progress=False, **(SMALL_TESTBED if args.small else {}))
    tokenizer = testbed.tokenizer
    datamodule = testbed.datamodule()
    datamodule.setup()
    holdout = next(iter(datamodule.scoring_dataloader("holdout")))
    assert len(holdout["sample_id"]) == len(testbed.holdout), "the holdout set must fit one scoring batch"
    nll_before, predicted_before, entropy_before, per_record = token_nll(testbed.model, holdout)

    L.seed_everything(0, verbose=False)
    method = METHODS[args.method]
    module = testbed_method(args.method)(copy.deepcopy(testbed.model))
    trace = HoldoutTrace(holdout, datamodule.scoring_dataloader("forget"), float(per_record.mean()))
    trainer = L.Trainer(
        max_epochs=args.max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*method.callbacks(), trace],
    )
    trainer.fit(module, datamodule)
    nll_after, predicted_after, entropy_after, per_record_after = token_nll(module.model, holdout)

    print(
        f"{method.description} on the testbed: holdout NLL {float(per_record.mean()):.2f} -> "
        f"{float(per_record_after.mean()):.2f} nats ({float(per_record_after.mean() / per_record.mean()):.2f}x)"
    )
    print("\n| after steps | holdout NLL | forget mean g | forget max g | next step ascends |\n|---|---|---|---|---|")
    for row in trace.rows:
        ascended = f"{row['ascended']:.0f}" if "ascended" in row else "-"
        print(f"| {row['steps']} | {row['ratio']:.2f}x | {row['mean']:.3f} | {row['max']:.3f} | {ascended} |")
    increase = float((nll_after - nll_before).sum())
    print("\n| token NLL before (nats) | tokens | mean NLL before | after | share of the increase |")
    print("|---|---|---|---|---|")
    for low, high in itertools.pairwise(BANDS):
        band = (nll_before >= low) & (nll_before < high)
        if band.any():
            before, after = nll_before[band], nll_after[band]
            share = float((after - before).sum()) / increase
            print(
                f"| [{low:g}, {high:g}) | {int(band.sum())} | {float(before.mean()):.2f} | {float(after.mean()):.2f} "
                f"| {share:.2f} |"
            )
    for name, predicted, entropy in (
        ("before", predicted_before, entropy_before),
        ("after", predicted_after, entropy_after),
    ):
        top = ", ".join(
            f"{tokenizer.decode([t])!r} {n / len(predicted):.0%}" for t, n in Counter(predicted.tolist()).most_common(5)
        )
        print(f"\n{name}: prediction entropy {float(entropy.mean()):.2f} nats; most predicted: {top}")


if __name__ == "__main__":
    main()

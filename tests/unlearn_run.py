"""Test-only: ``unlearn()`` (SGA, learning rate 1e-3) on the small testbed, on every process that ``torchrun``
starts, as a user's job runs it on many GPUs; on one process when started alone.

    torchrun --standalone --nproc_per_node 2 -m tests.unlearn_run FOLDER [--zero3]

Each process writes ``FOLDER/rank{r}.json`` (the fields of the ``UnlearningResult`` it returned) and saves the model
to ``FOLDER/model`` (every process takes part; the first writes).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from lightning_unlearn.distributed.zero import deepspeed_config
from lightning_unlearn.testbed.build import SMALL_TESTBED, build_testbed
from lightning_unlearn.unlearning import unlearn
from tests.deepspeed_cpu import CPUDeepSpeedStrategy


class TorchrunCPUDeepSpeed(CPUDeepSpeedStrategy):
    """CPU DeepSpeed on the processes torchrun started (no launcher of its own)."""

    def _configure_launcher(self) -> None:
        self._launcher = None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--zero3", action="store_true")
    args = parser.parse_args()
    folder = Path(args.folder)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    testbed = build_testbed(seed=0, progress=False, **SMALL_TESTBED)
    batch = len(testbed.forget) // world  # every forget record in each step, as on one process
    where: dict = {"devices": world, "strategy": "ddp" if world > 1 else "auto"}
    if args.zero3:
        config = deepspeed_config(stage=3, micro_batch_size=batch, bucket_size=10**6)
        where["strategy"] = TorchrunCPUDeepSpeed(config=config)
    result = unlearn(
        testbed.model,
        testbed.forget,
        testbed.holdout,
        retain=testbed.retain,
        method="sga",
        method_options={"learning_rate": 1e-3},
        tokenizer=testbed.tokenizer,
        batch_size=batch,
        accelerator="cpu",
        progress=False,
        enable_model_summary=False,
        **where,
    )
    result.save(folder / "model")
    rank = int(os.environ.get("RANK", "0"))
    fields = {"rule_met": result.rule_met, "record": result.record, "after": result.after.summary}
    (folder / f"rank{rank}.json").write_text(json.dumps(fields, default=str))


if __name__ == "__main__":
    main()

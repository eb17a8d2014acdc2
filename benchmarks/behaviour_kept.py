"""Whether a change keeps behaviour: every registry method on the small testbed, run by the code of a base revision
and by the working tree side by side, with each method's steps and largest difference in a record's final g.

The base revision is checked out in a temporary git worktree and imported from there (the same script, the same
testbed, the same settings: the testbed's, as the demo runs them). Prints one Markdown table and exits with status 1
when a method's steps differ or a record's g differs by more than ``--tolerance``.

    python benchmarks/behaviour_kept.py --base main~1                 # every method (about 10 min on 2 cores)
    python benchmarks/behaviour_kept.py --base 40c85a2 --methods sga-kl,ta,rmu
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_methods(methods: list[str], max_steps: int) -> dict[str, dict]:
    """``{method: {"steps": stopped step or None, "g": [each forget record's final g]}}`` with the code importable
    now (the working tree's, or the base worktree's when it comes first on ``PYTHONPATH``)."""
    import lightning as L

    from lightning_unlearn.callbacks import MemorizationEarlyStopping, MemorizationMonitor

    try:
        from lightning_unlearn.demo import quiet_trainer, testbed_method
    except ImportError:  # a base revision before 0.3.0, whose demo lived in the testbed
        from lightning_unlearn.testbed.demo import quiet_trainer

        from lightning_unlearn.testbed.settings import testbed_method
    from lightning_unlearn.methods import METHODS
    from lightning_unlearn.testbed.build import SMALL_TESTBED, build_testbed

    testbed = build_testbed(0, progress=False, **SMALL_TESTBED)
    results = {}
    for name in methods:
        L.seed_everything(0, verbose=False)
        module = testbed_method(name)(copy.deepcopy(testbed.model))
        trainer = quiet_trainer(max_steps, callbacks=METHODS[name].callbacks())
        trainer.fit(module, testbed.datamodule())
        stopping = next(cb for cb in trainer.callbacks if isinstance(cb, MemorizationEarlyStopping))
        monitor = next(cb for cb in trainer.callbacks if isinstance(cb, MemorizationMonitor) and cb.split == "forget")
        results[name] = {"steps": stopping.stopped_step, "g": monitor.values.tolist()}
    return results


def run_side(source: Path, methods: list[str], max_steps: int, out: Path) -> dict[str, dict]:
    """:func:`run_methods` in a process of its own that imports ``lightning_unlearn`` from ``source``."""
    env = os.environ | {"PYTHONPATH": str(source)}
    command = [
        sys.executable,
        __file__,
        "--run",
        str(out),
        "--methods",
        ",".join(methods),
        "--max-steps",
        str(max_steps),
    ]
    subprocess.run(command, cwd=source, env=env, check=True)
    return json.loads(out.read_text())


def compare(base: dict[str, dict], head: dict[str, dict], tolerance: float) -> tuple[list[str], bool]:
    """The table's rows and whether every method kept its behaviour."""
    rows, kept = [], True
    for name in base:
        old, new = base[name], head[name]
        difference = max((abs(a - b) for a, b in zip(old["g"], new["g"], strict=True)), default=0.0)
        same = old["steps"] == new["steps"] and difference <= tolerance
        kept &= same
        rows.append(f"| {name} | {old['steps']} | {new['steps']} | {difference:.2e} | {'yes' if same else 'NO'} |")
    return rows, kept


def main() -> int:
    from lightning_unlearn.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="the revision to compare the working tree with")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated registry names")
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--tolerance", type=float, default=1e-6, help="largest difference in a record's g")
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)  # one side, written to this JSON file
    args = parser.parse_args()
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    if args.run is not None:
        args.run.write_text(json.dumps(run_methods(methods, args.max_steps)))
        return 0
    with tempfile.TemporaryDirectory() as folder:
        worktree = Path(folder) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(worktree), args.base], cwd=ROOT, check=True)
        try:
            base = run_side(worktree, methods, args.max_steps, Path(folder) / "base.json")
            head = run_side(ROOT, methods, args.max_steps, Path(folder) / "head.json")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=True)
    rows, kept = compare(base, head, args.tolerance)
    print(f"\n| method | steps ({args.base}) | steps (working tree) | max |Δg| | kept |\n|---|---|---|---|---|")
    print("\n".join(rows))
    return 0 if kept else 1


if __name__ == "__main__":
    sys.exit(main())

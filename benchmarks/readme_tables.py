"""Re-runs the commands behind the tables of the README and the documentation (docs/) and prints every number that
falls outside what they publish.

    python benchmarks/readme_tables.py              # the cheap tables (a few minutes on 2 cores)
    python benchmarks/readme_tables.py --all        # also the demo over five seeds, the levels and the scaling runs
    python benchmarks/readme_tables.py --only speed

Run it before changing a published table, and after changing anything they measure. Each table of the documents
(:data:`DOCUMENTS`) is found by its header row; its command prints a Markdown table with the same header; rows are
matched by their first cell.
A published "median [min, max]" cell (the demo over seeds) holds when today's median lies within [min, max]
widened by the column's tolerance; a single number holds when today's is within the tolerance of it (relative for
ratios and speed-ups, absolute for fractions and counts). Columns without a tolerance (times in ms or seconds, which
belong to the machine) are shown, not compared. Exits with status 1 when a number is outside.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")))
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


@dataclass(frozen=True)
class Table:
    """One README table: its header row, the command that prints it, and each compared column's tolerance."""

    name: str
    header: str
    command: list[str]
    tolerance: dict[str, tuple[str, float]] = field(default_factory=dict)  # column -> ("rel" | "abs", amount)
    slow: bool = False


PYTHON = sys.executable
DEMO_TOLERANCE = {
    "met": ("abs", 0),
    "steps": ("rel", 0.1),
    "mean g": ("abs", 0.01),
    "max g": ("abs", 0.01),
    "above thr.": ("abs", 0),
    "over-forgotten": ("abs", 1),
    "c(D_f)": ("abs", 1),
    "verbatim": ("abs", 1),
    "holdout NLL": ("rel", 0.03),
    "retain g": ("abs", 0.02),
    "collateral": ("abs", 1),
    "MC acc": ("abs", 0.04),
    "byte ppl": ("rel", 0.05),
    "LOSS AUC": ("abs", 0.03),
    "MIAU AUC": ("abs", 0.05),
    "KS not rejected": ("abs", 0),
    "above after relearn": ("abs", 2),
    "holdout above after relearn": ("abs", 1),
    "above after int4": ("abs", 1),
    "discoverable": ("abs", 1),
    "distance to retrain g": ("abs", 0.01),
}
LEVELS_TOLERANCE = {
    "count": ("abs", 0),
    "above the mean": ("abs", 1),
    "above the 0.95 quantile": ("abs", 1),
    "flagged (BH p-values)": ("abs", 1),
    "mean": ("abs", 0.005),
    "0.95 quantile": ("abs", 0.01),
    "steps": ("rel", 0.1),
    "holdout NLL": ("rel", 0.03),
    "retain g": ("abs", 0.02),
    "LOSS AUC": ("abs", 0.03),
    "over-forgotten": ("abs", 1),
}
# The robustness table's rows: the compared methods and the attempts at a robust default (#35), every seed.
ROBUST_METHODS = (
    "sga-kl,wga,satimp,ce-u,undial,rmu,sga-kl-sam,sga-kl-sam(sharpness=0.5),sga-kl+undo:alpha=0.3/steps=200,"
    "sga-kl+undo:alpha=0.6/steps=400,sga-kl-ra"
)
ROBUST_PROTOCOLS = ("none", "retain 20 @ 1e-4", "retain 50 @ 3e-4", "fresh 20 @ 1e-4", "fresh 100 @ 1e-4")
ROBUST_TOLERANCE = {
    "steps": ("rel", 0.1),
    **dict.fromkeys(ROBUST_PROTOCOLS, ("abs", 2)),  # records above for the model (the first number of a cell)
    "int4": ("abs", 1),
    "holdout above (relearned)": ("abs", 1),
    "holdout NLL": ("rel", 0.03),
    "retain g": ("abs", 0.02),
}
WHERE_TOLERANCE = {
    "parameters": ("abs", 0.1),
    "update": ("abs", 5),
    "moved alone: holdout mean g": ("abs", 0.01),
    "reverted alone: forget above": ("abs", 4),
}
TABLES = [
    Table(
        "speed",
        "| batch | EL_10 speed-up | MA speed-up | identical |",
        [PYTHON, "benchmarks/memorization_speed.py"],
        {"EL_10 speed-up": ("rel", 0.4), "MA speed-up": ("rel", 0.4), "identical": ("abs", 0)},
    ),
    Table(
        "step overhead",
        "| step | ms | ratio | to |",
        [PYTHON, "benchmarks/step_overhead.py"],
        {"ratio": ("rel", 0.3)},
    ),
    Table(
        "large-vocabulary memory",
        "| weights | bare loop MB | GA MB | GA / bare | SGA MB | SGA / bare |",
        [PYTHON, "benchmarks/step_overhead.py"],
        {"GA / bare": ("rel", 0.05), "SGA / bare": ("rel", 0.05)},
    ),
    Table(
        "demo over seeds",
        "| method | met | KS not rejected | steps | seconds | mean g | max g | above thr. | over-forgotten | c(D_f) | "
        "verbatim | holdout NLL | retain g | collateral | MC acc | byte ppl | LOSS AUC | MIAU AUC | "
        "above after relearn | holdout above after relearn | above after int4 | discoverable | distance to retrain g |",
        [PYTHON, "-m", "lightning_unlearn.cli", "demo", "--seeds", "0,1,2,3,4", "--output", "{tmp}/demo"],
        DEMO_TOLERANCE,
        slow=True,
    ),
    Table(
        "the registry on SmolLM2",
        "| model | steps | seconds | above | none: back / over-forgotten | retain 20 @ 1e-4: back (retrain) | "
        "int4: back (retrain) | LOSS AUC | forget NLL | holdout NLL | retain g |",
        [PYTHON, "benchmarks/real_model.py", "--registry", "--methods", "sga-kl,wga,npo-kl,rmu"],
        {
            "steps": ("rel", 0.1),
            "above": ("abs", 1),
            "LOSS AUC": ("abs", 0.05),
            "holdout NLL": ("rel", 0.03),
            "retain g": ("abs", 0.02),
        },
        slow=True,
    ),
    Table(
        "where the edit lives",
        "| part | parameters | update | moved alone: forget above at α = 0, 0.25, 0.5, 0.75, 1 | "
        "moved alone: holdout mean g | reverted alone: forget above |",
        [PYTHON, "benchmarks/where_records_live.py"],
        WHERE_TOLERANCE,
        slow=True,
    ),
    Table(
        "retain weights",
        "| method (every record ≤ the holdout's 0.95 quantile) | steps | holdout NLL | retain g (kept) | collateral | "
        "below the unseen 5th pct. | LOSS AUC |",
        [PYTHON, "benchmarks/retain_weights.py"],
        {
            "steps": ("rel", 0.1),
            "holdout NLL": ("rel", 0.03),
            "retain g (kept)": ("abs", 0.02),
            "collateral": ("abs", 1),
            "below the unseen 5th pct.": ("abs", 1),
            "LOSS AUC": ("abs", 0.03),
        },
        slow=True,
    ),
    *(
        Table(f"forgetting levels {i}", header, [PYTHON, "benchmarks/forgetting_levels.py"], LEVELS_TOLERANCE, True)
        for i, header in enumerate(
            [
                "| audited records | count | above the mean | above the 0.95 quantile | flagged (BH p-values) "
                "| allowed |",
                "| holdout records | mean | interval | 0.95 quantile | interval |",
                "| method | level | steps | holdout NLL | retain g | LOSS AUC | over-forgotten |",
            ],
            start=1,
        )
    ),
    Table(
        "adapter memory",
        "| model | training | parameters | trainable | weights MB | peak MB of a step | checkpoint MB |",
        [PYTHON, "benchmarks/adapters.py"],
        {"weights MB": ("rel", 0.01), "peak MB of a step": ("rel", 0.1), "checkpoint MB": ("rel", 0.01)},
        slow=True,
    ),
    Table(
        "adapter unlearning",
        "| method | met | steps | holdout NLL | retain g |",
        [PYTHON, "benchmarks/adapters.py"],
        {"met": ("abs", 0), "steps": ("rel", 0.1), "holdout NLL": ("rel", 0.03), "retain g": ("abs", 0.02)},
        slow=True,
    ),
    Table(
        "compared methods",
        "| method | steps | above | holdout NLL | retain g | LOSS AUC | relearn | int4 | KS not rejected |",
        [
            PYTHON,
            "-m",
            "lightning_unlearn.cli",
            "demo",
            "--methods",
            "sga-kl,wga,satimp,ce-u,undial,rmu",
            "--output",
            "{tmp}/compared",
        ],
        {
            "steps": ("rel", 0.1),
            "above": ("abs", 0),
            "holdout NLL": ("rel", 0.03),
            "retain g": ("abs", 0.02),
            "LOSS AUC": ("abs", 0.03),
            "relearn": ("abs", 2),
            "int4": ("abs", 1),
            "KS not rejected": ("abs", 0),
        },
        slow=True,
    ),
    Table(
        "robust forgetting",
        "| seed | model | steps | seconds | none | retain 20 @ 1e-4 | retain 50 @ 3e-4 | fresh 20 @ 1e-4 | "
        "fresh 100 @ 1e-4 | int4 | holdout above (relearned) | holdout NLL | retain g |",
        [PYTHON, "benchmarks/robust_forgetting.py", "--seeds", "0,1,2,3,4", "--methods", ROBUST_METHODS],
        ROBUST_TOLERANCE,
        slow=True,
    ),
    Table(
        "real model",
        "| seed | model | steps | seconds | none | retain 20 @ 1e-4 | fresh 20 @ 1e-4 | int4 | "
        "holdout above (relearned) | holdout NLL | retain g |",
        [PYTHON, "benchmarks/real_model.py"],
        ROBUST_TOLERANCE,
        slow=True,
    ),
    Table(
        "sequential requests",
        "| request | seed | steps | earlier records above | this request's above | all above after relearn | "
        "holdout NLL |",
        [PYTHON, "benchmarks/robust_forgetting.py", "--seeds", "0", "--only-sequential"],
        {
            "earlier records above": ("abs", 0),
            "this request's above": ("abs", 0),
            "all above after relearn": ("abs", 2),
            "holdout NLL": ("rel", 0.05),
        },
        slow=True,
    ),
    Table(
        "memory model check",
        "| method (size) | persistent, measured | persistent, model | peak, measured | peak, model | "
        "peak: model error |",
        [PYTHON, "benchmarks/memory.py"],
        {
            "persistent, measured": ("abs", 0.05),
            "persistent, model": ("abs", 0.01),
            "peak, measured": ("rel", 0.03),
            "peak, model": ("rel", 0.001),
        },
        slow=True,
    ),
    Table(
        "memory projections",
        "| method | 8B, one GPU | 8B, ZeRO-3 x 8 | 70B, one GPU | 70B, ZeRO-3 x 8 |",
        [PYTHON, "benchmarks/memory.py", "--project-only"],
        dict.fromkeys(("8B, one GPU", "8B, ZeRO-3 x 8", "70B, one GPU", "70B, ZeRO-3 x 8"), ("rel", 0.001)),
    ),
    Table(
        "large forget set",
        "| forget set, SGA + KL settings | batch | met | steps | epochs | records scored | seconds | holdout NLL | "
        "retain g |",
        [PYTHON, "benchmarks/large_forget_set.py"],
        {
            "met": ("abs", 0),
            "steps": ("rel", 0.1),
            "epochs": ("rel", 0.1),
            "records scored": ("rel", 0.1),
            "holdout NLL": ("rel", 0.03),
            "retain g": ("abs", 0.02),
        },
        slow=True,
    ),
    Table(
        "scaling",
        "| records | scoring tokens/s | above_threshold: s/step | steps | s to rule | peak MB | rescan all: s/step | "
        "steps | s to rule | peak MB | speed-up | max Δg |",
        [PYTHON, "benchmarks/scaling.py"],
        {"steps": ("abs", 1), "speed-up": ("rel", 0.3), "max Δg": ("abs", 0.001)},
        slow=True,
    ),
]
# README tables that are arithmetic or settings, not measurements: nothing to re-run (the Trainer settings table
# states what the test suite checks).
NOT_MEASURED = [
    "| example | for | per GPU, P parameters on N GPUs | CPU memory |",
    "| setting | what holds (tested) |",
    "| model | full fine-tuning (16 B per parameter) | LoRA trainable | LoRA: base + adapter |",
    "| name | what it does | demo |",
    "| field | what it holds |",
]


def normalize(line: str) -> str:
    return "| " + " | ".join(cell.strip() for cell in line.strip().strip("|").split("|")) + " |"


def header_columns(header: str) -> tuple[str, ...]:
    """The column names of a table's header row (normalized or not)."""
    return tuple(normalize(header).strip("| ").split(" | "))


def published() -> str:
    """The documents' text, one after the other."""
    return "\n\n".join((ROOT / name).read_text() for name in DOCUMENTS)


def tables(text: str) -> dict[str, list[list[str]]]:
    """Every Markdown table in ``text``: ``{header: rows}``, each row its cells (bold marks removed). A header
    that occurs twice keeps its last table (a command's final summary follows its progress tables)."""
    found: dict[str, list[list[str]]] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header, rows = normalize(lines[i]), []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([cell.strip().replace("**", "") for cell in lines[i].strip().strip("|").split("|")])
                i += 1
            found[header] = rows
        else:
            i += 1
    return found


def outside(published: str, today: str, tolerance: tuple[str, float]) -> bool:
    """Whether today's cell falls outside the published one (see the module docstring)."""
    numbers, now = [float(n.replace(",", "")) for n in NUMBER.findall(published)], NUMBER.findall(today)
    if not numbers or not now:
        return published != today
    value = float(now[0].replace(",", ""))
    kind, amount = tolerance
    low, high = (numbers[1], numbers[2]) if "[" in published and len(numbers) >= 3 else (numbers[0], numbers[0])
    slack_low = amount * abs(low) if kind == "rel" else amount
    slack_high = amount * abs(high) if kind == "rel" else amount
    return not (low - slack_low - 1e-9 <= value <= high + slack_high + 1e-9)


def compare(table: Table, readme: dict[str, list[list[str]]], output: str) -> list[str]:
    """The lines to print for ``table``: every compared cell outside, or what is missing."""
    header = normalize(table.header)
    if header not in readme:
        return [f"{table.name}: no README table with the header {header}"]
    columns = header_columns(header)
    # The command's table with the same header, or one with every published column and more (new columns are
    # published once measured over the seeds).
    printed = {header_columns(h): rows for h, rows in tables(output).items()}
    today_columns = next((c for c in printed if c[0] == columns[0] and set(columns) <= set(c)), None)
    if today_columns is None:
        return [f"{table.name}: the command printed no table with the header {header}"]
    now = keyed(printed[today_columns])
    problems = []
    for key, row in keyed(readme[header]).items():
        if key not in now:
            problems.append(f"{table.name}: row {key!r} is not in today's table")
            continue
        for j, column in enumerate(columns[1:], start=1):
            cell = now[key][today_columns.index(column)]
            if column in table.tolerance and outside(row[j], cell, table.tolerance[column]):
                problems.append(f"{table.name}: {key} / {column}: README {row[j]}, today {cell}")
    return problems


def keyed(rows: list[list[str]]) -> dict[str, list[str]]:
    """Rows by their first cell; where first cells repeat, by the first two (numbers left out of the second)."""
    firsts = [row[0] for row in rows]
    return {
        row[0] if firsts.count(row[0]) == 1 else f"{row[0]} / {NUMBER.sub('', row[1]).strip()}": row for row in rows
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="also the slow tables (about an hour on 2 cores)")
    parser.add_argument("--only", help="comma-separated table names: " + ", ".join(t.name for t in TABLES))
    parser.add_argument("--readme", help="check against this one file instead of the README and docs/")
    args = parser.parse_args()
    chosen = [t for t in TABLES if (args.all or not t.slow)]
    if args.only:
        names = {name.strip() for name in args.only.split(",")}
        chosen = [t for t in TABLES if t.name in names or t.name.rstrip(" 0123456789") in names]
    readme = tables(Path(args.readme).read_text() if args.readme else published())
    outputs: dict[tuple[str, ...], str] = {}
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for table in chosen:
            command = tuple(part.format(tmp=tmp) for part in table.command)
            if command not in outputs:
                print(f"running: {' '.join(command)}", flush=True)
                run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
                if run.returncode:
                    problems.append(f"{table.name}: {' '.join(command)} failed:\n{run.stderr[-2000:]}")
                outputs[command] = run.stdout
            found = compare(table, readme, outputs[command])
            print(f"{table.name}: {'outside the README' if found else 'within the README'}")
            problems += found
    print("\n".join(problems) if problems else "every compared number is within the README's")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

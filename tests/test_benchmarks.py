"""The benchmark scripts run (on tiny sizes) and report identical values, so they never rot."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.peak_memory import PeakTensorMemory

ROOT = Path(__file__).resolve().parents[1]


def test_memorization_speed_runs_and_values_are_identical():
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/memorization_speed.py",
            "--length",
            "16",
            "--batch",
            "2",
            "--n",
            "4",
            "--vocab",
            "64",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    rows = [line for line in out.splitlines() if re.search(r" (EL|MA) ", line) and not line.startswith("|")]
    assert len(rows) == 6, out
    assert all("True" in row for row in rows), out
    table = [line for line in out.splitlines() if line.startswith("| ") and "speed-up" not in line]
    assert len(table) == 3 and all(line.endswith("| yes |") for line in table), out  # the README's table


def load_script(name: str):
    """A benchmark script as a module (registered, as its dataclasses need; its sibling modules importable)."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.append(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_on_small_testbed(testbed_cache, *args: str) -> str:
    """A benchmark script's output, run on the session's small testbed."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env=os.environ | {"LIGHTNING_UNLEARN_CACHE": str(testbed_cache)},
    ).stdout


def test_step_overhead_runs(small_testbed, testbed_cache):
    args = ["--small", "--rounds", "2", "--steps", "3", "--warmup", "1", "--vocabulary", "8192"]
    out = run_on_small_testbed(testbed_cache, "benchmarks/step_overhead.py", *args)
    assert re.search(r"GA / bare = \d+\.\d+", out) and re.search(r"SGA / GA  = \d+\.\d+", out), out
    memory = [line for line in out.splitlines() if line.startswith(("| float32 |", "| bfloat16 |"))]
    assert len(memory) == 2, out
    assert len(re.findall(r"SGA\+KL / SGA = \d+\.\d+", out)) == 2 and re.search(r"reference memory: \d+\.\d MB", out), (
        out
    )


def test_forgetting_levels_audit_and_interval_tables(small_testbed, testbed_cache):
    out = run_on_small_testbed(testbed_cache, "benchmarks/forgetting_levels.py", "--small", "--skip-training")
    unseen = next(line for line in out.splitlines() if line.startswith("| never seen"))
    assert unseen.strip("|").split("|")[1].strip() == str(len(small_testbed.holdout)), out
    sizes = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "±" in line]
    assert sizes == ["16", "32", "64", "128", "256"], out


@pytest.mark.slow
def test_scaling_runs_both_refresh_policies(small_testbed, testbed_cache):
    out = run_on_small_testbed(testbed_cache, "benchmarks/scaling.py", "--small", "--sizes", "24", "--max-steps", "4")
    row = next(line for line in out.splitlines() if line.startswith("| 24 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert len(cells) == 12 and cells[-2].endswith("x"), out
    assert "bit-identical final g under both policies at every size: True" in out, out


def test_large_forget_set_runs_the_recommended_method_at_both_batch_settings(small_testbed, testbed_cache):
    args = ["--small", "--records", "48", "--max-steps", "2"]
    out = run_on_small_testbed(testbed_cache, "benchmarks/large_forget_set.py", *args)
    rows = [line for line in out.splitlines() if line.startswith(("| the testbed's", "| 48 records"))]
    assert len(rows) == 3 and all(row.count("|") == 10 and "x |" in row for row in rows), out
    assert re.search(r"holdout NLL before: \d+\.\d{3}", out), out


def test_peak_tensor_memory_counts_each_storage_once_until_freed():
    with PeakTensorMemory() as memory:
        a = torch.zeros(1000, 1000)  # 4 MB
        b = a + 1
        view = b.view(-1)  # shares b's storage
        assert memory.live == memory.peak == 8_000_000
        del a, b, view
        assert memory.live == 0 and memory.peak == 8_000_000
        torch.ones(500, 1000) * 2  # a 2 MB temporary and its 2 MB result: under the peak
    assert memory.peak == 8_000_000


def test_utility_cost_traces_every_step_and_splits_the_whole_increase(small_testbed, testbed_cache):
    out = run_on_small_testbed(testbed_cache, "benchmarks/utility_cost.py", "--small", "--max-steps", "6")
    steps = [line.split("|")[1].strip() for line in out.splitlines() if re.match(r"\| \d+ \| \d+\.\d+x \|", line)]
    assert steps[0] == "0" and steps == [str(i) for i in range(len(steps))] and len(steps) >= 2, out
    shares = [float(line.rsplit("|", 2)[1]) for line in out.splitlines() if line.startswith("| [")]
    assert shares and abs(sum(shares) - 1) < 0.02, out
    assert out.count("prediction entropy") == 2, out


def test_every_readme_table_names_its_command():
    """A table of the README or the documentation is a measurement with a command in benchmarks/readme_tables.py, or
    declared not measured."""
    checker = load_script("readme_tables")
    headers = set(checker.tables(checker.published()))
    known = {checker.normalize(t.header) for t in checker.TABLES} | set(checker.NOT_MEASURED)
    assert headers <= known, headers - known
    assert {checker.normalize(t.header) for t in checker.TABLES} <= headers  # and no entry is stale
    readme = checker.published()
    for table in checker.TABLES:  # the command is named where the table is published
        script = next(part for part in table.command if part.startswith("benchmarks/") or part == "demo")
        assert (f"python {script}" if script != "demo" else "lightning-unlearn demo --seeds") in readme, script


def test_every_compared_column_is_a_column_of_its_table():
    """A tolerance for a column that no table sharing it has would compare nothing, silently."""
    checker = load_script("readme_tables")
    columns: dict[int, set[str]] = {}  # tolerance dicts are shared between tables: by identity
    for table in checker.TABLES:
        columns.setdefault(id(table.tolerance), set()).update(checker.header_columns(table.header))
    for table in checker.TABLES:
        assert set(table.tolerance) <= columns[id(table.tolerance)], (
            table.name,
            set(table.tolerance) - columns[id(table.tolerance)],
        )
    robust = load_script("robust_forgetting")
    assert ("none", *robust.PROTOCOLS) == checker.ROBUST_PROTOCOLS  # the published columns are the protocols run


def test_readme_check_flags_numbers_outside_the_published_range():
    checker = load_script("readme_tables")
    table = checker.Table("t", "| method | steps | ratio | ms |", [], {"steps": ("abs", 2), "ratio": ("rel", 0.1)})
    head = "| method | steps | ratio | ms |\n|---|---|---|---|\n"
    readme = checker.tables(head + "| **SGA** | 30 [28, 33] | 1.61x | 400 |\n")
    inside = head + "| SGA | 35 [30, 40] | 1.70x | 900 |\n"
    assert checker.compare(table, readme, inside) == []  # 35 <= 33 + 2; 1.70 <= 1.61 * 1.1; ms not compared
    outside = head + "| SGA | 36 | 1.78x | 400 |\n"
    problems = checker.compare(table, readme, outside)
    assert len(problems) == 2 and "SGA / steps: README 30 [28, 33], today 36" in problems[0]
    assert "no table" in checker.compare(table, readme, "nothing printed")[0]
    more = "| method | ms | steps | new | ratio |\n|---|---|---|---|---|\n| SGA | 900 | 35 [30, 40] | 7 | 1.70x |\n"
    assert checker.compare(table, readme, more) == []  # more columns, in another order: matched by name


def test_retain_weights_runs(small_testbed, testbed_cache):
    out = run_on_small_testbed(testbed_cache, "benchmarks/retain_weights.py", "--small", "--max-steps", "2")
    rows = [line for line in out.splitlines() if line.startswith("| SGA")]
    assert len(rows) == 7 and all("(rule not met)" in row or re.search(r"\| \d+ \|", row) for row in rows), out


def test_adapters_compares_lora_with_full_fine_tuning(small_testbed, testbed_cache):
    args = ["--small", "--seeds", "0", "--max-steps", "2", "--skip-125m"]
    out = run_on_small_testbed(testbed_cache, "benchmarks/adapters.py", *args)
    memory = [line for line in out.splitlines() if line.startswith("| testbed GPT-Neo |")]
    assert len(memory) == 2 and "| LoRA r = 8 |" in memory[1], out
    full, lora = (float(row.split("|")[-2]) for row in memory)  # checkpoint MB
    assert lora < 0.2 * full, out  # rank 8 on every layer is 10% of the small model; the 10% rule: test_adapters
    runs = [line for line in out.splitlines() if line.startswith(("| SGA", "| TA"))]
    assert len(runs) == 8 and all(re.search(r"\| 0/1 \| 2 \[2, 2\] \|", row) for row in runs), out


@pytest.mark.slow
def test_robust_forgetting_attacks_every_model_and_runs_sequential_requests(small_testbed, testbed_cache):
    args = ["--small", "--methods", "sga-kl-ra", "--max-steps", "2", "--sequential", "--requests", "2"]
    figure = testbed_cache / "verdict.png"
    args += ["--protocols", "retain 20 @ 1e-4", "--figure", str(figure)]
    out = run_on_small_testbed(testbed_cache, "benchmarks/robust_forgetting.py", *args, "--request-size", "4")
    attacks = out.split("1. attacks")[1].split("2. sequential requests")
    rows = [line.split(" | ") for line in attacks[0].splitlines() if line.startswith("| 0 |")]
    assert [row[1] for row in rows] == ["original", "sga-kl-ra"], out
    # Per protocol: forget records above the threshold, the model's / the retrain's, and the KS p-value.
    assert all(re.fullmatch(r"\d+ / \d+ \(\d\.\d\d( ✗)?\)", cell) for row in rows for cell in row[4:7]), out
    assert figure.read_bytes()[:4] == b"\x89PNG"
    requests = [line for line in attacks[1].splitlines() if line.startswith(("| 1 | 0 |", "| 2 | 0 |"))]
    assert len(requests) == 2 and "| 0 of 0 |" in requests[0] and " of 4 |" in requests[1], out


def test_gpu_step_runs_on_a_cpu_with_the_tiny_shape(tmp_path):
    """The GPU benchmark's smoke run: every row, its ratio to the right baseline, and the JSON it writes."""
    args = ["--shape", "tiny", "--precisions", "bf16-mixed", "--rounds", "1", "--steps", "3", "--warmup", "1"]
    out = run_on_small_testbed(tmp_path, "benchmarks/gpu_step.py", *args, "--json", str(tmp_path / "rows.json"))
    rows = [line for line in out.splitlines() if line.startswith("| bf16-mixed |")]
    assert len(rows) == 6 and rows[0].split("|")[4].strip() == "1.00", out
    written = json.loads((tmp_path / "rows.json").read_text())
    assert [row["step"] for row in written["rows"]][:3] == ["bare loop", "GradientAscent", "SelectiveGradientAscent"]
    assert all(row["ms"] > 0 and row["peak_gb"] > 0 for row in written["rows"])


def test_memory_model_matches_a_measured_step_cycle_and_the_readme_shows_its_projections():
    """The memory model within 15% of a measured step cycle (persistent bytes and peak) on the small size, for a
    method of each kind (a KL reference, TA's base, the adversary's copy; an adapter with gradient checkpointing);
    and the README's Llama-3 table is the one it projects today. The measurement counts every tensor alive in the
    process, so it runs in a process of its own: what earlier tests leave behind is not the step's."""
    cases = [("SGA + KL", False), ("TA", False), ("SGA + KL, relearning-aware", False), ("TAU, LoRA", True)]
    script = (
        "import json, sys, memory\n"
        "shape, (records, tokens) = memory.SIZES['small']\n"
        "methods = {method.name: method for method in memory.METHODS}\n"
        "rows = []\n"
        f"for name, checkpointing in {cases!r}:\n"
        "    method, s = methods[name], memory.setting('32-true', checkpointing)\n"
        "    measured = memory.measure(method, shape, records, tokens, '32-true', checkpointing)\n"
        "    modelled = sum(memory.persistent(method.state, shape, s).values()), "
        "memory.peak(method.state, shape, records, tokens, s)\n"
        "    rows.append([name, *measured, *modelled])\n"
        "print(json.dumps(rows))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT / "benchmarks", capture_output=True, text=True, check=True, timeout=300
    ).stdout
    for name, persistent, peak, modelled_persistent, modelled_peak in json.loads(out.splitlines()[-1]):
        assert modelled_persistent == pytest.approx(persistent, rel=0.15), name
        assert modelled_peak == pytest.approx(peak, rel=0.15), name
        assert peak > persistent * 1.2  # a step's activations are counted
    memory = load_script("memory")
    checker = load_script("readme_tables")
    table = next(t for t in checker.TABLES if t.name == "memory projections")
    assert checker.compare(table, checker.tables(checker.published()), "\n".join(memory.projections())) == []


def test_real_model_runs_on_a_tiny_base_model(small_testbed, testbed_cache, tmp_path):
    """The SmolLM2 benchmark's path on a tiny base model (the small testbed's, no download): records injected by
    fine-tuning, the retrain, the recommended method and the verdict table."""
    small_testbed.export(tmp_path / "base")
    args = ["--base-model", str(tmp_path / "base" / "model"), "--steps", "5", "--max-steps", "2"]
    args += ["--protocols", "retain 20 @ 1e-4", "--cache-dir", str(testbed_cache)]
    out = run_on_small_testbed(testbed_cache, "benchmarks/real_model.py", *args)
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| 0 |")]
    assert [row[1] for row in rows] == ["original", "sga-kl"], out
    assert "retrained without the forget records" in out, out


def test_behaviour_kept_runs_a_side_and_flags_any_change(small_testbed, testbed_cache, tmp_path):
    out = tmp_path / "side.json"
    run_on_small_testbed(testbed_cache, "benchmarks/behaviour_kept.py", "--run", str(out), "--methods", "ga-mean")
    side = json.loads(out.read_text())
    assert side["ga-mean"]["steps"] > 0 and len(side["ga-mean"]["g"]) == len(small_testbed.forget)
    compare = load_script("behaviour_kept").compare
    nudged = {"ga-mean": {"steps": side["ga-mean"]["steps"], "g": [g + 2e-6 for g in side["ga-mean"]["g"]]}}
    assert compare(side, side, 1e-6)[1] and not compare(side, nudged, 1e-6)[1]
    assert not compare(side, {"ga-mean": {**side["ga-mean"], "steps": side["ga-mean"]["steps"] + 1}}, 1e-6)[1]


@pytest.mark.slow
def test_where_records_live_judges_each_part_moved_and_reverted_alone(small_testbed, testbed_cache, tmp_path):
    """The whole model moved alone is the line's end, reverted alone is the original; the layers, the embeddings
    and the final parts hold every parameter once; the figure is a PNG."""
    figure = tmp_path / "where.png"
    args = ["--small", "--grid", "0,1", "--max-steps", "20", "--figure", str(figure)]
    out = run_on_small_testbed(testbed_cache, "benchmarks/where_records_live.py", *args)
    line = {row.split(" | ")[0][2:]: row.split(" | ")[1] for row in out.splitlines() if re.match(r"\| [01] \|", row)}
    parts = {row.split(" | ")[0][2:]: row.split(" | ")[1:] for row in out.splitlines() if row.startswith("| ")}
    whole = parts["whole model"]
    assert whole[2] == f"{line['0']}, {line['1']}" and whole[4].rstrip(" |") == line["0"], out
    places = [cells for label, cells in parts.items() if re.fullmatch(r"layer \d+|embeddings|final", label)]
    assert sum(float(cells[0].rstrip("%")) for cells in places) == pytest.approx(100.0, abs=0.5), out
    assert {"every attention", "every MLP", "layer 0 MLP"} <= set(parts) and figure.read_bytes()[:4] == b"\x89PNG"

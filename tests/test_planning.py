"""plan: the memory model in the package, read from a model's config only; what each registry method keeps, derived
from its module; the guide's Llama-3 table from the shipped configs. (A measured step cycle within 15%:
tests/test_benchmarks.py, in a process of its own.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lightning_unlearn.cli import main
from lightning_unlearn.planning import GB, MethodState, Shape, load_config, method_state, peak, setting
from tests.test_benchmarks import load_script

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples/configs"


def plan(capsys, *args: str) -> str:
    assert main(["plan", *args]) == 0
    return capsys.readouterr().out


def guide_cell(method: str, column: int) -> int:
    """A GB number of the distributed guide's "what fits" table (column 1: 8B one GPU, 2: 8B ZeRO-3 x 8, 3: 70B
    one GPU, 4: 70B ZeRO-3 x 8)."""
    for line in (ROOT / "docs/guides/distributed.md").read_text().splitlines():
        if line.startswith(f"| {method} |"):
            return int(re.match(r"\s*(\d+) GB", line.split("|")[1 + column]).group(1))
    raise AssertionError(f"no row {method!r}")


def as_asked(out: str) -> int:
    return int(re.search(r"\| as asked \| (\d+) GB \|", out).group(1))


def test_plan_prints_the_guides_what_fits_table_from_the_shipped_llama_3_configs(capsys):
    eight, seventy = str(CONFIGS / "llama-3-8b.json"), str(CONFIGS / "llama-3-70b.json")
    out = plan(capsys, "--model", eight, "--method", "sga-kl")
    assert "8.03B parameters" in out and "no weights read" in out
    assert as_asked(out) == guide_cell("SGA + KL", 1)
    assert re.search(rf"\| --peft lora \| {guide_cell('SGA + KL, LoRA', 1)} GB \| ✓ \| ✓ \| ✓ \| ✓ \|", out)
    assert f"| ZeRO-3 over 8 GPUs | {guide_cell('SGA + KL', 2)} GB |" in out
    assert "| as asked | 85 GB | ✗ | ✗ | ✗ | ✓ |" in out  # fits on a 141 GB card only
    for method, row in (("ga", "GA"), ("ta", "TA"), ("npo-kl", "NPO + KL")):
        assert as_asked(plan(capsys, "--model", eight, "--method", method)) == guide_cell(row, 1)
        assert as_asked(plan(capsys, "--model", seventy, "--method", method)) == guide_cell(row, 3)
    zero3 = ["--devices", "8", "--strategy", "deepspeed_stage_3"]
    assert as_asked(plan(capsys, "--model", seventy, "--method", "sga-kl", *zero3)) == guide_cell("SGA + KL", 4)
    lora = plan(capsys, "--model", seventy, "--method", "sga-kl", "--peft", "lora", *zero3)
    assert as_asked(lora) == guide_cell("SGA + KL, LoRA", 4)
    assert as_asked(plan(capsys, "--model", eight, "--method", "sga-kl-ra")) == guide_cell(
        "SGA + KL, relearning-aware", 1
    )


def test_what_a_method_keeps_is_read_from_its_module():
    assert method_state("ga") == method_state("sga") == MethodState()
    assert method_state("sga-kl") == method_state("npo-kl") == MethodState(reference=True, retain=True)
    assert method_state("ta") == MethodState(base=True)
    assert method_state("tau", lora=True) == MethodState(lora=True, base=True, ascent_adapter=True)
    assert method_state("sga-kl-ra").adversary
    benchmark = load_script("memory")  # the rows whose step cycles benchmarks/memory.py measures
    rows = {row.name: row.state for row in benchmark.METHODS}
    assert rows["SGA + KL"] == method_state("sga-kl") and rows["TA, LoRA"] == method_state("ta", lora=True)


def test_plan_refuses_what_it_cannot_count_in_one_line(tmp_path, capsys):
    (tmp_path / "neo.json").write_text('{"model_type": "gpt_neo"}')
    (tmp_path / "bad.json").write_text('{"hidden_size": 8}')
    for model, message in (
        (tmp_path / "neo.json", "counts Llama-style decoders"),
        (tmp_path / "bad.json", "no model_type"),
        (tmp_path / "missing.json", "no config file"),
    ):
        assert main(["plan", "--model", str(model)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    zero3 = ["--devices", "8", "--strategy", "deepspeed_stage_3"]
    assert main(["plan", "--model", str(CONFIGS / "llama-3-8b.json"), "--method", "sga-kl-ra", *zero3]) == 2
    assert "does not run under ZeRO-3" in capsys.readouterr().err


def test_a_shape_from_a_config_counts_its_parameters():
    shape = Shape.from_config(load_config(CONFIGS / "llama-3-8b.json"))
    assert shape.parameters() == 8_030_261_248  # Llama-3 8B's published count
    assert peak(MethodState(), shape, 8, 512, setting("bf16-true", checkpointing=True)) / GB == pytest.approx(
        67, abs=0.5
    )

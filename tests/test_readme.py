"""Every code block of the README runs: Python blocks in order in one namespace, shell blocks command by command,
in a fresh folder holding the small testbed as ``lightning-unlearn testbed`` writes it."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from lightning_unlearn.cli import main

ROOT = Path(__file__).parents[1]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def blocks(language: str) -> list[str]:
    return [code for lang, code in BLOCK.findall((ROOT / "README.md").read_text()) if lang == language]


@pytest.fixture
def workdir(small_testbed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small_testbed.export(tmp_path / "testbed")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return tmp_path


def test_the_readme_has_python_and_shell_blocks():
    assert len(blocks("python")) >= 4 and len(blocks("bash")) >= 2
    assert {lang for lang, _ in BLOCK.findall((ROOT / "README.md").read_text())} <= {"python", "bash", "text"}


def test_the_first_screen_installs_and_unlearns_in_fewer_than_15_python_lines():
    """The first 30 lines hold the install line and the one command; the Python equivalent is under 15 lines."""
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:30])
    assert "pip install lightning-unlearn" in first_screen and "lightning-unlearn unlearn --model" in first_screen
    call = blocks("python")[0]
    assert "unlearn(" in call and len([line for line in call.splitlines() if line.strip()]) < 15


def test_python_blocks_run_in_order(workdir):
    namespace: dict = {}
    for code in blocks("python"):
        exec(compile(code, "README.md", "exec"), namespace)
    threshold = namespace["stopping"].threshold_value
    assert max(namespace["monitor"].scores.values()) <= threshold  # the callbacks' own stop rule held
    assert namespace["result"].rule_met and Path("unlearned/python/unlearning.json").is_file()
    assert Path("unlearned/sga-python/model.safetensors").is_file() and Path("report/summary.json").is_file()
    assert Path("sga_run.png").is_file()  # the plot of a CSV-logged run


def parses(args: list[str], capsys) -> str:
    """The config a ``lightning-unlearn fit`` command line resolves to (it needs GPUs to run)."""
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def test_shell_blocks_run(workdir, testbed_cache, capsys):
    """``make`` lines are dry-run against the Makefile; ``lightning-unlearn`` lines run, on the small testbed;
    multi-GPU launches (``torchrun``, ``sbatch``) are checked as far as a CPU can: their command lines parse."""
    commands = [line for code in blocks("bash") for line in code.splitlines() if line.strip()]
    assert commands
    for line in commands:
        args = shlex.split(line, comments=True)
        if args[0] == "pip":  # the install line names this package
            name = re.search(r'^name = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
            assert args[:3] == ["pip", "install", name], line
            continue
        if args[0] == "make":
            subprocess.run(["make", "-n", "-C", str(ROOT), *args[1:]], check=True, capture_output=True)
            continue
        if args[0] == "torchrun":
            assert "DeepSpeedStrategy" in parses(args[args.index("lightning_unlearn.cli") + 1 :], capsys)
            continue
        if args[0] == "sbatch":
            script = ROOT / args[1]
            subprocess.run(["bash", "-n", str(script)], check=True)
            srun = shlex.split(script.read_text().replace("\\\n", " ").split("srun ", 1)[1].splitlines()[0])
            assert srun[0] == "lightning-unlearn" and "DeepSpeedStrategy" in parses(srun[1:], capsys)
            continue
        assert args[0] == "lightning-unlearn", line
        if args[1] in ("demo", "testbed"):
            args += ["--small", "--cache-dir", str(testbed_cache)] + (["--overwrite"] if args[1] == "testbed" else [])
        if args[1] == "fit":
            args += ["--trainer.enable_progress_bar=false", "--data.batch_size=16"]
        assert main(args[1:]) == 0, line
    assert Path("audit/summary.json").is_file()
    assert json.loads(Path("unlearned/cli/unlearning.json").read_text())["rule_met"] is True

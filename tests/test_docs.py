"""Every code block of the README and of the documentation runs: per page, Python blocks in order in one namespace and
shell blocks command by command, in a fresh folder holding the small testbed (and its exact retrain) as
``lightning-unlearn testbed --retrain`` writes them. Every relative link resolves, and the README stays short."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

from lightning_unlearn.callbacks import MemorizationEarlyStopping
from lightning_unlearn.cli import main
from tests.helpers.contract import private_overrides

ROOT = Path(__file__).parents[1]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"\[[^\]]*\]\(([^)#\s]+)(#[^)\s]*)?\)")
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(page: Path, language: str) -> list[str]:
    return [code for lang, code in BLOCK.findall(page.read_text()) if lang == language]


def name(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.fixture
def workdir(small_testbed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small_testbed.export(tmp_path / "testbed", retrain=small_testbed.retrained(progress=False))
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return tmp_path


def test_the_readme_is_short_and_its_first_screen_installs_and_unlearns():
    """At most 150 lines; the first 30 hold the install line and the one command; the Python call is under 15 lines."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    first_screen = "\n".join(readme.splitlines()[:30])
    assert "pip install lightning-unlearn" in first_screen and "lightning-unlearn unlearn --model" in first_screen
    call = blocks(ROOT / "README.md", "python")[0]
    assert "unlearn(" in call and len([line for line in call.splitlines() if line.strip()]) < 15


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_relative_link_resolves(page):
    for target, _ in LINK.findall(page.read_text()):
        if not target.startswith(("http://", "https://", "mailto:")):
            assert (page.parent / target).exists(), f"{name(page)} links to {target}, which is not there"


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_code_blocks_are_python_bash_or_text(page):
    languages = {lang for lang, _ in BLOCK.findall(page.read_text())}
    assert languages <= {"python", "bash", "text"}, f"{name(page)}: blocks of {languages - {'python', 'bash', 'text'}}"


RUNNABLE = [page for page in PAGES if blocks(page, "python") or blocks(page, "bash")]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=name)
def test_code_blocks_run(page, workdir, testbed_cache, capsys):
    """Python blocks run in order in one namespace; ``make`` lines are dry-run against the Makefile;
    ``lightning-unlearn`` lines run, on the small testbed; multi-GPU launches (``torchrun``, ``sbatch``) are checked as
    far as a CPU can: their command lines parse."""
    namespace: dict = {}
    for code in blocks(page, "python"):
        if page == README or code not in blocks(README, "python"):  # the README's own blocks run once, there
            exec(compile(code, name(page), "exec"), namespace)
    for code in blocks(page, "bash"):
        if page == README or code not in blocks(README, "bash"):
            for line in (line for line in code.splitlines() if line.strip()):
                run_shell_line(line, testbed_cache, capsys)
    check_results(page, namespace)


def run_shell_line(line: str, testbed_cache: Path, capsys) -> None:
    args = shlex.split(line, comments=True)
    if args[0] == "pip":  # the install line names this package
        package = re.search(r'^name = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
        assert args[:3] == ["pip", "install", package], line
        return
    if args[0] == "make":
        subprocess.run(["make", "-n", "-C", str(ROOT), *args[1:]], check=True, capture_output=True)
        return
    if args[0] == "torchrun":
        assert "DeepSpeedStrategy" in parses(args[args.index("lightning_unlearn.cli") + 1 :], capsys)
        return
    if args[0] == "sbatch":
        script = ROOT / args[1]
        subprocess.run(["bash", "-n", str(script)], check=True)
        srun = shlex.split(script.read_text().replace("\\\n", " ").split("srun ", 1)[1].splitlines()[0])
        assert srun[0] == "lightning-unlearn" and "DeepSpeedStrategy" in parses(srun[1:], capsys)
        return
    assert args[0] == "lightning-unlearn", line
    if args[1] in ("demo", "testbed"):
        args += ["--small", "--cache-dir", str(testbed_cache)] + (["--overwrite"] if args[1] == "testbed" else [])
    if args[1] == "fit":
        args += ["--trainer.enable_progress_bar=false", "--data.batch_size=16"]
    assert main(args[1:]) == 0, line


def parses(args: list[str], capsys) -> str:
    """The config a ``lightning-unlearn fit`` command line resolves to (it needs GPUs to run)."""
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def check_results(page: Path, namespace: dict) -> None:
    """What each page's blocks promise, beyond running: the files they write and the rules they meet."""
    page = name(page)
    if page == "README.md":
        assert namespace["result"].rule_met and Path("unlearned/python/unlearning.json").is_file()
        assert json.loads(Path("unlearned/cli/unlearning.json").read_text())["rule_met"] is True
        assert "default-src 'none'" in Path("verify.html").read_text()  # verify's report of the command's result
    if page == "docs/guides/own-trainer.md":
        threshold = namespace["stopping"].threshold_value
        assert max(namespace["monitor"].scores.values()) <= threshold  # the callbacks' own stop rule held
        assert Path("unlearned/sga-python/model.safetensors").is_file() and Path("sga_run.png").is_file()
        assert Path("audit/summary.json").is_file()
    if page == "docs/guides/new-method.md":
        check_new_methods(namespace)
    if page == "docs/concepts.md":
        assert Path("report/summary.json").is_file()
    if page == "docs/guides/robustness.md":
        verdict = namespace["verdict"]
        assert set(verdict) == {"none", "relearn", "int4"} and verdict["none"]["p_value"] < 0.05  # not forgotten


def check_new_methods(namespace: dict) -> None:
    """The guide's methods override public hooks only; the capped ascent meets its rule; the hidden-layer method's
    forget loss (the distance of layer 1's output to its target) falls to under half of the original model's."""
    for method in (namespace["CappedAscent"], namespace["HiddenMisdirection"]):
        assert not private_overrides(method), private_overrides(method)
    stopping = next(cb for cb in namespace["module"].trainer.callbacks if isinstance(cb, MemorizationEarlyStopping))
    assert stopping.rule_met
    hidden, original = namespace["hidden"], namespace["HiddenMisdirection"]("testbed/model")
    original.configure_model()
    batch = next(iter(namespace["datamodule"].scoring_dataloader("forget")))
    with torch.no_grad():
        trained, before = (float(m.forget_loss(batch, m.model_forward(batch), None).mean()) for m in (hidden, original))
    assert trained < 0.5 * before, (trained, before)

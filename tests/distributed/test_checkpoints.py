"""Runs killed mid-way resume to the uninterrupted result; a checkpoint is whole or absent (AtomicCheckpointIO)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_unlearn.distributed.checkpoints import PARTIAL_PREFIX, AtomicCheckpointIO, AtomicDeepSpeedStrategy

ROOT = Path(__file__).parents[2]
DISTRIBUTED_ENVIRONMENT = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    (tmp_path / f"{PARTIAL_PREFIX}{'0' * 32}").write_bytes(b"half")  # as a killed writer leaves it

    def fails(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fails)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"global_step": 2}, path)
    assert torch.load(path)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the stale partial file is gone too


def run(testbed_cache, *args: str) -> subprocess.CompletedProcess:
    """tests/resume_run.py in a process group of its own (its kill takes the whole group, as a pre-emption does)."""
    # Not the process group settings that earlier in-process multi-process tests left in this environment: with a
    # fixed MASTER_PORT, a resumed job would rendezvous on the port its killed predecessor's processes still hold.
    inherited = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENVIRONMENT}
    env = inherited | {"LIGHTNING_UNLEARN_CACHE": str(testbed_cache)}
    command = [sys.executable, "-m", "tests.resume_run", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, start_new_session=True)


def result(folder: Path) -> dict:
    return json.loads((folder / "result.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(testbed_cache, tmp_path_factory):
    """The result of an uninterrupted run, by method and strategy, each run once for the module's tests."""
    results: dict[tuple[str, bool], dict] = {}

    def get(method: str, zero3: bool = False) -> dict:
        if (method, zero3) not in results:
            folder = tmp_path_factory.mktemp("uninterrupted")
            done = run(testbed_cache, method, str(folder), *(["--zero3"] if zero3 else []))
            assert done.returncode == 0, done.stderr[-2000:]
            results[method, zero3] = result(folder) | {"folder": folder}
        return results[method, zero3]

    return get


@pytest.mark.parametrize(
    ("method", "kill_at"), [("SGA+KL", 7), ("TA", 18), ("TAU", 2), ("NPO+KL", 3), ("SGA+LoRA", 15)]
)
@pytest.mark.slow
def test_a_run_killed_mid_way_resumes_to_the_uninterrupted_result(
    small_testbed, testbed_cache, uninterrupted, tmp_path, method, kill_at
):
    """SIGKILL at a step mid-way, resume with ckpt_path="last": the same stop step and per-sample g (1e-6)."""
    killed = run(testbed_cache, method, str(tmp_path / "killed"), "--kill-at", str(kill_at))
    assert killed.returncode == -9 and not (tmp_path / "killed" / "result.json").exists(), killed.stderr[-2000:]
    resumed = run(testbed_cache, method, str(tmp_path / "killed"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole, again = uninterrupted(method), result(tmp_path / "killed")
    assert whole["rule_met"] and whole["stopped_step"] > kill_at
    assert again["stopped_step"] == whole["stopped_step"]
    assert again["g"] == pytest.approx(whole["g"], abs=1e-6)


@pytest.mark.slow
def test_a_kill_while_a_checkpoint_is_written_resumes_from_the_last_complete_one(
    small_testbed, testbed_cache, uninterrupted, tmp_path
):
    killed = run(testbed_cache, "SGA+KL", str(tmp_path), "--kill-at", "7", "--while-saving")
    assert killed.returncode == -9
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == [f"{PARTIAL_PREFIX}{'0' * 32}", "last.ckpt"]  # the half-written one is not "last"
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    assert run(testbed_cache, "SGA+KL", str(tmp_path), "--resume").returncode == 0
    assert result(tmp_path)["stopped_step"] == uninterrupted("SGA+KL")["stopped_step"]
    assert result(tmp_path)["g"] == pytest.approx(uninterrupted("SGA+KL")["g"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "kill_at"), [("SGA+KL", 7), ("TA", 18)])  # TAU at 2 is still SGA; TA has the base
def test_a_zero3_run_killed_mid_way_resumes_to_the_uninterrupted_result(
    small_testbed, testbed_cache, uninterrupted, tmp_path, method, kill_at
):
    """Two processes under ZeRO-3, the whole process group killed mid-way and resumed from DeepSpeed's last
    checkpoint: the same stop step (±1), per-sample g within 0.05, and a model folder plain transformers loads."""
    pytest.importorskip("deepspeed")
    from transformers import AutoModelForCausalLM

    killed = run(testbed_cache, method, str(tmp_path / "killed"), "--kill-at", str(kill_at), "--zero3")
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run(testbed_cache, method, str(tmp_path / "killed"), "--resume", "--zero3")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole, again = uninterrupted(method, zero3=True), result(tmp_path / "killed")
    assert whole["rule_met"] and whole["stopped_step"] > kill_at
    assert abs(again["stopped_step"] - whole["stopped_step"]) <= 1
    assert again["g"] == pytest.approx(whole["g"], abs=0.05)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "killed" / "model")
    assert model.num_parameters() == small_testbed.model.num_parameters()


@pytest.mark.slow
def test_a_zero3_run_killed_while_saving_the_model_leaves_no_folder_and_resumes(small_testbed, testbed_cache, tmp_path):
    """Killed while save_pretrained writes the gathered model: no model folder (only a hidden staging one), and the
    run resumed from its last checkpoint takes no further step and writes it."""
    pytest.importorskip("deepspeed")
    from transformers import AutoModelForCausalLM

    killed = run(testbed_cache, "SGA+KL", str(tmp_path), "--kill-in-save", "--zero3")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "model").exists() and not (tmp_path / "result.json").exists()
    assert [p.name for p in tmp_path.glob(".model-*")]  # what the killed writer left, never taken for the model
    resumed = run(testbed_cache, "SGA+KL", str(tmp_path), "--resume", "--zero3")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert result(tmp_path)["rule_met"] and AutoModelForCausalLM.from_pretrained(tmp_path / "model") is not None


@pytest.mark.slow
@pytest.mark.parametrize("method", ["SGA+KL", "TA"])
def test_a_zero3_checkpoint_allocates_each_processs_share_only(uninterrupted, method):
    """Under 2-process ZeRO-3 with AtomicDeepSpeedStrategy, saving a checkpoint allocates on each process no more
    than its share of the KL reference (TA: its base) plus 10% of the trainable bytes: each process saves its own
    shards beside DeepSpeed's (they used to be gathered whole on every process)."""
    pytest.importorskip("deepspeed")
    folder = uninterrupted(method, zero3=True)["folder"]
    for rank in (0, 1):
        peak = json.loads((folder / f"save_peak_rank{rank}.json").read_text())
        assert peak["saves"] > 0
        assert peak["save_peak"] <= (0.5 + 0.1) * peak["trainable_bytes"], peak


def test_a_zero3_checkpoint_of_another_process_count_is_refused_with_what_to_do(tmp_path):
    from types import SimpleNamespace

    for rank in (0, 1):
        (tmp_path / "per_process").mkdir(exist_ok=True)
        torch.save({}, tmp_path / "per_process" / f"rank{rank}.pt")
    job = SimpleNamespace(world_size=4, global_rank=0)  # 4 processes resuming what 2 wrote
    with pytest.raises(RuntimeError, match=r"shards of 2 processes.*this job has 4: resume with 2 processes"):
        AtomicDeepSpeedStrategy.load_checkpoint(job, tmp_path)

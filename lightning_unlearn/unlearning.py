"""From a model and the texts to forget to a verified, saved result in one call: :func:`unlearn`.

``unlearn`` measures the model on the forget and holdout texts, unlearns with a method from
:data:`~lightning_unlearn.methods.METHODS` until every forget record is at or below the holdout's 0.95 quantile of
g (the per-sample rule), measures the result the same way, and returns an :class:`UnlearningResult`;
``result.save(folder)`` writes the model (``save_pretrained``) and ``unlearning.json``, whole or not at all.
``lightning-unlearn unlearn`` is the same from the command line. :func:`training_record` is the part of
``unlearning.json`` that any finished Trainer can give (``lightning-unlearn fit`` writes it beside ``--output``).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from transformers import PreTrainedModel

from lightning_unlearn.callbacks import MemorizationEarlyStopping, MemorizationMonitor, UnlearningProgress
from lightning_unlearn.data import UnlearningDataModule, load_tokenizer
from lightning_unlearn.distributed.checkpoints import AtomicCheckpointIO
from lightning_unlearn.evaluation.evidence import (
    RECORD_SCHEMA,
    RECORD_VERSION,
    environment,
    set_sha256,
    text_sha256,
    weights_sha256,
)
from lightning_unlearn.evaluation.html import record_html
from lightning_unlearn.evaluation.recovery import RELEARNING_ATTACKS, check_recovery_attacks
from lightning_unlearn.evaluation.report import Report, memorization_report, verdict_text
from lightning_unlearn.integrations.huggingface import check_causal_lm, default_precision, load_causal_lm
from lightning_unlearn.methods import check_method, make_method
from lightning_unlearn.modules import UnlearningModule
from lightning_unlearn.utilities.errors import ConfigurationError
from lightning_unlearn.utilities.files import exists
from lightning_unlearn.utilities.version import __version__

#: fewer holdout records cannot place a 0.95 quantile at all
MIN_HOLDOUT = 16
#: the threshold's bootstrap interval is about ±0.02 g from here on (BENCHMARKS.md)
ADVISED_HOLDOUT = 64
TRAINER_DEFAULTS = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False, "max_steps": 600}


@dataclass
class UnlearningResult:
    """What :func:`unlearn` returns.

    Attributes:
        module: the trained :class:`~lightning_unlearn.UnlearningModule` (``module.get_model()`` is the result).
        rule_met: whether every forget record ended at or below the threshold.
        before, after: :func:`~lightning_unlearn.evaluation.report.memorization_report` of the model before and
            after, against the threshold measured before.
        record: the content of ``unlearning.json``.
    """

    module: UnlearningModule
    rule_met: bool
    before: Report
    after: Report
    record: dict[str, Any]

    @property
    def model(self) -> PreTrainedModel:
        """The unlearned Hugging Face model."""
        return self.module.get_model()

    def save(self, path: str | os.PathLike) -> None:
        """Writes the model (merged, for an adapter), its tokenizer and ``unlearning.json`` to the folder ``path``,
        whole or not at all."""
        self.module.save_pretrained(path, files={"unlearning.json": json.dumps(self.record, indent=2, default=str)})

    def summary(self) -> str:
        """A few lines for people: the rule, the records above the threshold before and after, the costs."""
        return summary_text(self.record)

    def html(self) -> str:
        """The takedown record as one self-contained HTML page (figures inline; readable without the library)."""
        return record_html(self.record, self.summary().splitlines())


def unlearn(
    model: PreTrainedModel | str | os.PathLike,
    forget: Any,
    holdout: Any,
    retain: Any = None,
    method: str = "sga-kl",
    *,
    tokenizer: Any = None,
    method_options: dict[str, Any] | None = None,
    max_length: int = 200,
    long_texts: str = "truncate",
    batch_size: int = 32,
    progress: bool = True,
    checkpoints: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    retrain: PreTrainedModel | str | os.PathLike | None = None,
    recovery_attacks: tuple[str, ...] | list[str] = (),
    include_texts: bool = False,
    **trainer_options: Any,
) -> UnlearningResult:
    """Unlearns ``forget`` from ``model`` until every record is no more memorized than unseen texts of the same kind
    (``holdout``), keeping ``retain``; measures before and after.

    Args:
        model: a causal LM, a hub id or a local folder.
        forget: the texts to unlearn: a list of strings or a file (.jsonl/.json/.csv/.parquet with a ``text``
            column, or .txt, one text per line). Never empty.
        holdout: texts of the same kind that the model never saw, at least 16 (64 or more for a threshold within
            about ±0.02 g): they set the threshold.
        retain: texts whose memorization must be kept; required by ``"sga-kl"`` and ``"npo-kl"``.
        method: a name from :data:`~lightning_unlearn.methods.METHODS` (``sga-kl``, ``sga``, ``npo-kl``, ``ta``,
            ``tau``, ``ga``).
        tokenizer: default: the model's own (loaded from ``model``'s source).
        method_options: module arguments that override the method's settings (``learning_rate=``,
            ``peft=LoraConfig(...)``, ``retain_weight=``, …).
        max_length: tokens per text.
        long_texts: texts longer than ``max_length``: ``"truncate"`` (with a warning), ``"windows"`` (every part
            of a long document is scored and unlearned, each a record of its own) or ``"error"``.
        batch_size: texts per training step, forget and retain alike.
        progress: a bar of the steps with the max g, the records above the threshold and the threshold.
        checkpoints: a folder (or an fsspec URL) for checkpoints, every ``checkpoint_every`` optimizer steps, each
            whole or absent. Called again with the same arguments after a kill (a pre-empted node), ``unlearn``
            resumes from the last complete one, says so, and ends where an uninterrupted run ends.
        checkpoint_every: optimizer steps between checkpoints.
        retrain: a model trained without the forget texts (instance, hub id or folder): each attack's verdict
            (``unlearning.json``'s ``verdict``) adds a two-sample KS test of the forget g against the retrain's.
        recovery_attacks: names from :data:`~lightning_unlearn.evaluation.recovery.RECOVERY_ATTACKS` run on the result
            (each on a copy; relearning fine-tunes on the retain texts): records above the threshold after each.
        include_texts: write each forget text into ``unlearning.json`` beside its SHA-256. Off by default: the
            takedown record must not leak the data it documents.
        **trainer_options: ``lightning.Trainer`` arguments (default: ``max_steps=600``, no logger, no checkpoints,
            ``precision`` :func:`~lightning_unlearn.integrations.huggingface.default_precision`: bf16-mixed on a GPU,
            else 32-true; checkpoints, when asked for, are written whole or not at all by
            :class:`~lightning_unlearn.distributed.checkpoints.AtomicCheckpointIO`).

    Example:
        >>> result = unlearn("testbed/model", "testbed/forget.jsonl", "testbed/holdout.jsonl",  # doctest: +SKIP
        ...                  retain="testbed/retain.jsonl")
        >>> result.rule_met, result.save("unlearned")  # doctest: +SKIP
    """
    recovery_attacks = check_recovery_attacks(recovery_attacks)
    options = {"max_length": max_length, "batch_size": batch_size, "long_texts": long_texts}
    model, datamodule = _checked_inputs(model, forget, holdout, retain, method, tokenizer, recovery_attacks, options)
    progress_bar = UnlearningProgress(method, progress)
    trainer, resume_from = _unlearning_trainer(trainer_options, progress_bar, checkpoints, checkpoint_every)
    device = trainer.strategy.root_device
    weights_before = weights_sha256(model)
    before = _measure(model, datamodule, device, "holdout_quantile")
    module, callbacks = make_method(method, model, **(method_options or {}))
    trainer.callbacks.extend(callbacks)
    trainer.fit(module, datamodule, ckpt_path=resume_from)
    record = training_record(trainer, module)
    threshold = record["threshold"]["value"]
    if retrain is not None and not isinstance(retrain, torch.nn.Module):
        retrain = load_causal_lm(retrain)
    after = _measure(module.get_model(), datamodule, device, threshold, retrain, recovery_attacks)
    record |= {"method": method} | measured_record(before, after)
    _describe_records(record["records"], datamodule.split("forget"), include_texts)
    _add_evidence(record, trainer, module, datamodule, weights_before, options)
    return UnlearningResult(module, record["rule_met"], before, after, record)


def evidence_record(
    datamodule: UnlearningDataModule, before: str, after: str, max_length: int, long_texts: str
) -> dict[str, Any]:
    """What ties ``unlearning.json`` to what it is about (:mod:`~lightning_unlearn.evaluation.evidence`): the
    schema, how the texts were cut into records, the SHA-256 of each split's texts, of the weights before and after
    (``before``, ``after``), and the software and device."""
    splits = {
        name: {"sha256": set_sha256(datamodule.split(name).texts), "records": len(datamodule.split(name))}
        for name in ("forget", "holdout", "retain")
        if datamodule.has_split(name)
    }
    return {
        "schema": {"name": RECORD_SCHEMA, "version": RECORD_VERSION},
        "data": {"max_length": max_length, "long_texts": long_texts, **splits},
        "weights_sha256": {"before": before, "after": after},
        "environment": environment(),
    }


def check_holdout_size(size: int) -> None:
    """Raises under :data:`MIN_HOLDOUT` holdout records; warns under :data:`ADVISED_HOLDOUT`."""
    if size < MIN_HOLDOUT:
        raise ConfigurationError(
            f"the holdout has {size} records: the threshold is its 0.95 quantile of g, which needs at least "
            f"{MIN_HOLDOUT} unseen texts of the same kind ({ADVISED_HOLDOUT} or more for a threshold within about "
            "±0.02 g)"
        )
    if size < ADVISED_HOLDOUT:
        warnings.warn(
            f"the holdout has {size} records: the threshold will be uncertain (its 95% interval is in "
            f"unlearning.json); give {ADVISED_HOLDOUT} or more unseen texts for a threshold within about ±0.02 g",
            UserWarning,
            stacklevel=3,
        )


def training_record(trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
    """What a finished fit tells about the per-sample rule: the module and its settings, the threshold and its
    interval, ``rule_met``, the steps taken, and each forget record's g when training started and ended (from the
    Trainer's :class:`MemorizationEarlyStopping` and forget :class:`MemorizationMonitor`)."""
    stopping = _callback(trainer, MemorizationEarlyStopping)
    monitor = _callback(trainer, MemorizationMonitor, lambda cb: cb.split == "forget")
    record: dict[str, Any] = {
        "lightning_unlearn": __version__,
        "module": type(module).__name__,
        "settings": {key: _plain(value) for key, value in module.hparams.items()},
        "steps": trainer.global_step,
    }
    if stopping is not None:
        record["rule_met"] = bool(stopping.rule_met)
        record["steps"] = stopping.stopped_step if stopping.stopped_step is not None else trainer.global_step
        record["threshold"] = {
            "rule": stopping.threshold,
            "criterion": stopping.criterion,
            "value": stopping.threshold_value,
            "interval": list(stopping.interval) if stopping.interval is not None else None,
            "holdout_records": stopping.holdout_size,
        }
    if monitor is not None and len(monitor.start_values):
        before, after = monitor.start_values.tolist(), monitor.values.tolist()
        pairs = enumerate(zip(before, after, strict=True))
        record["records"] = [{"sample_id": i, "g_before": g0, "g_after": g1} for i, (g0, g1) in pairs]
    return record


def measured_record(before: Report, after: Report) -> dict[str, Any]:
    """The before/after part of ``unlearning.json`` from two reports against the same threshold: per record g and
    NLL, records above the threshold, holdout NLL and attack AUCs."""
    rows_after = {row["sample_id"]: row for row in after.rows}
    records = [
        {
            "sample_id": row["sample_id"],
            "g_before": row["g"],
            "g_after": rows_after[row["sample_id"]]["g"],
            "nll_before": row["nll"],
            "nll_after": rows_after[row["sample_id"]]["nll"],
        }
        for row in before.rows
    ]
    b, a = before.summary, after.summary
    above_before = sum(row["g"] > a["threshold"] for row in before.rows)
    nll_ratio = a["holdout_nll"] / b["holdout_nll"]
    record = {
        "forget_records": b["forget_samples"],
        "above_threshold": {"before": above_before, "after": a["above_threshold"]},
        "holdout_nll": {"before": b["holdout_nll"], "after": a["holdout_nll"], "ratio": nll_ratio},
        "membership_auc": {"before": b["membership_auc"], "after": a["membership_auc"]},
        "records": records,
    }
    if "retain_g" in b:
        record["retain_g"] = {"before": b["retain_g"], "after": a["retain_g"]}
    record["recovery"] = {key: value for key, value in a.items() if key.endswith("_above") and key != "above_threshold"}
    record["verdict"] = a.get("verdict")
    return record


def summary_text(record: dict[str, Any]) -> str:
    """``unlearning.json`` in a few lines."""
    threshold, above = record["threshold"], record["above_threshold"]
    verdict = "rule met" if record["rule_met"] else "RULE NOT MET"
    low, high = threshold["interval"] or (math.nan, math.nan)
    auc = record["membership_auc"]
    lines = [
        f"{record['method']}: {verdict} after {record['steps']} steps: {above['after']} of {record['forget_records']} "
        f"records above the threshold (before: {above['before']})",
        f"threshold {threshold['value']:.4f} (holdout 0.95 quantile of g over {threshold['holdout_records']} "
        f"records; 95% interval {low:.4f}–{high:.4f})",
        f"holdout NLL {record['holdout_nll']['ratio']:.2f}x; LOSS attack AUC {auc['before']['loss']:.3f} -> "
        f"{auc['after']['loss']:.3f} (0.5: like unseen data)",
    ]
    if "retain_g" in record:
        lines.append(f"retain g {record['retain_g']['before']:.3f} -> {record['retain_g']['after']:.3f}")
    if "verdict" in record:
        lines.append(verdict_text(record["verdict"]))
    return "\n".join(lines)


def _checked_inputs(
    model: PreTrainedModel | str | os.PathLike,
    forget: Any,
    holdout: Any,
    retain: Any,
    method: str,
    tokenizer: Any,
    recovery_attacks: tuple[str, ...],
    data_options: dict[str, Any],
) -> tuple[PreTrainedModel, UnlearningDataModule]:
    """:func:`unlearn`'s inputs checked, the cheap checks first (bad texts fail before a possibly large model loads):
    the model (loaded when given by name) and the datamodule, set up."""
    if check_method(method).needs_retain and retain is None:
        raise ConfigurationError(f"method {method!r} keeps the retain texts: give retain=, or choose method 'sga'")
    if set(RELEARNING_ATTACKS) & set(recovery_attacks) and retain is None:
        raise ConfigurationError("the relearning attack fine-tunes on the retain texts: give retain=")
    tokenizer = tokenizer if tokenizer is not None else model_tokenizer(model)
    datamodule = UnlearningDataModule(tokenizer, forget, retain=retain, holdout=holdout, **data_options)
    datamodule.setup()
    check_holdout_size(len(datamodule.split("holdout")))
    if not isinstance(model, torch.nn.Module):
        model = load_causal_lm(model)
    check_causal_lm(model)
    datamodule.check_fits(model)
    return model, datamodule


def _unlearning_trainer(
    trainer_options: dict[str, Any],
    progress_bar: UnlearningProgress,
    checkpoints: str | os.PathLike | None,
    checkpoint_every: int,
) -> tuple[L.Trainer, str | None]:
    """The Trainer of :func:`unlearn` (its defaults, then ``trainer_options``), and the last complete checkpoint to
    resume from when ``checkpoints`` holds one."""
    callbacks = [*trainer_options.pop("callbacks", []), progress_bar]
    defaults = {
        **TRAINER_DEFAULTS,
        "enable_progress_bar": False,
        "plugins": [AtomicCheckpointIO()],
        "precision": default_precision(trainer_options.get("accelerator", "auto")),
    }
    resume_from = None
    if checkpoints is not None:
        every = ModelCheckpoint(dirpath=checkpoints, save_last=True, save_top_k=0, every_n_train_steps=checkpoint_every)
        callbacks.append(every)
        defaults["enable_checkpointing"] = True
        last = f"{str(checkpoints).rstrip('/')}/{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
        resume_from = last if exists(last) else None
    if resume_from is not None:
        rank_zero_info(f"unlearn: resuming from {resume_from}, the last complete checkpoint of an earlier run")
    return L.Trainer(**{**defaults, **trainer_options, "callbacks": callbacks}), resume_from


def _add_evidence(
    record: dict[str, Any],
    trainer: L.Trainer,
    module: Any,
    datamodule: UnlearningDataModule,
    weights_before: str,
    data_options: dict[str, Any],
) -> None:
    """The record's evidence (:func:`~lightning_unlearn.evaluation.evidence.evidence_record`: the data's and the
    weights' hashes before and after), and its environment as the first process saw it: the first process writes."""
    weights_after = trainer.strategy.broadcast(weights_sha256(module.get_model()))
    max_length, long_texts = data_options["max_length"], data_options["long_texts"]
    record |= evidence_record(datamodule, weights_before, weights_after, max_length, long_texts)
    record["environment"] = trainer.strategy.broadcast(record["environment"])  # one time for every process


def _describe_records(rows: list[dict[str, Any]], forget_split: Any, include_texts: bool) -> None:
    """Each record's row gains the document it is from (with ``long_texts="windows"``), its text's SHA-256 and, only
    when asked, the text itself."""
    for row in rows:
        row["document"] = forget_split.documents[row["sample_id"]]
        row["sha256"] = text_sha256(forget_split.texts[row["sample_id"]])
        if include_texts:
            row["text"] = forget_split.texts[row["sample_id"]]


def _measure(
    model: torch.nn.Module,
    datamodule: UnlearningDataModule,
    device: torch.device,
    threshold: Any,
    retrain: torch.nn.Module | None = None,
    recovery_attacks: Any = (),
) -> Report:
    """The report (without EL_n) on ``device``; the model goes back where it was. On N processes each one measures
    the same records with the same forward passes, so that under ZeRO-3, whose every forward pass gathers the
    parameters from all processes, they take part together (a sharded model stays where it is), and every process
    returns the same report."""
    return memorization_report(
        model.eval(),
        datamodule,
        el_n=None,
        threshold=threshold,
        device=device,
        retrain=retrain,
        recovery_attacks=recovery_attacks,
    )


def model_tokenizer(model: Any) -> Any:
    """The model's own tokenizer, from its source (a hub id, a folder, or an instance's ``name_or_path``)."""
    source = model if not isinstance(model, torch.nn.Module) else getattr(model, "name_or_path", "")
    if not source:
        raise ConfigurationError("the model was given as an instance without a source: give tokenizer= too")
    return load_tokenizer(source)


def _callback(trainer: L.Trainer, kind: type[Callback], accept: Any = lambda _: True) -> Any:
    return next((cb for cb in trainer.callbacks if isinstance(cb, kind) and accept(cb)), None)


def _plain(value: Any) -> Any:
    """A value as JSON holds it (tuples as lists, anything else unknown as its text)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return str(value)

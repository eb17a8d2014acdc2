"""Checking a model against its takedown record, later and anywhere: :func:`verify`.

``verify`` answers the two questions a reviewer has about a deployed model and its ``unlearning.json``: is this the
model the record describes (its weights' SHA-256, :func:`~lightning_unlearn.evaluation.evidence.weights_sha256`),
and are the records still forgotten (each forget text given, matched to the record by its SHA-256, re-scored against
the record's threshold; with unseen texts, the per-record verdict re-run, under recovery attacks on request).
``lightning-unlearn verify`` is the same from the command line: exit 0 when all holds, 1 when a record is back or the
model is not the recorded one, 2 on bad input.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lightning_unlearn.data import TokenizedSplit, UnlearningDataModule, load_texts
from lightning_unlearn.evaluation.evidence import RECORD_SCHEMA, RECORD_VERSION, set_sha256, text_sha256, weights_sha256
from lightning_unlearn.evaluation.html import Table, g_figure, html_document, verdict_figure
from lightning_unlearn.evaluation.recovery import RELEARNING_ATTACKS
from lightning_unlearn.evaluation.report import Report, memorization_report, verdict_text
from lightning_unlearn.integrations.huggingface import check_causal_lm, load_causal_lm
from lightning_unlearn.unlearning import model_tokenizer
from lightning_unlearn.utilities.errors import ConfigurationError


class RecordError(ConfigurationError):
    """A takedown record that cannot be checked: not a record of this library's schema, or one without a field the
    check needs."""


@dataclass
class Verification:
    """What :func:`verify` found.

    Attributes:
        recorded_model: whether the model's weights hash to the record's ``weights_sha256.after``.
        weights_sha256: the model's weights' hash; ``recorded_sha256`` the record's.
        threshold: the record's forgetting threshold (g, a fraction in [0, 1]).
        records: one per forget text matched to the record: ``sample_id`` (the record's), ``sha256``,
            ``g_recorded`` (after unlearning), ``g`` (now) and ``above`` (g > threshold).
        unmatched_texts: forget texts given that the record does not hold (their SHA-256).
        unchecked_records: the record's sample ids with no text given.
        holdout_matches: whether the unseen texts given are the record's holdout (None: none given).
        report: the memorization report of the forget texts now (with unseen texts, its ``summary["verdict"]``).
    """

    recorded_model: bool
    weights_sha256: str
    recorded_sha256: str
    threshold: float
    records: list[dict[str, Any]]
    unmatched_texts: list[str] = field(default_factory=list)
    unchecked_records: list[int] = field(default_factory=list)
    holdout_matches: bool | None = None
    report: Report | None = None

    @property
    def above(self) -> list[int]:
        """The record's sample ids of the records above the threshold now."""
        return [row["sample_id"] for row in self.records if row["above"]]

    @property
    def back(self) -> dict[str, list[int]]:
        """Per attack of the verdict (no attack included), the record's sample ids of records that come back."""
        verdicts = None if self.report is None else self.report.summary.get("verdict")
        if self.report is None or not verdicts:
            return {}
        ids = {
            row["sample_id"]: record["sample_id"] for row, record in zip(self.report.rows, self.records, strict=True)
        }
        return {attack: [ids[i] for i in v["back_ids"]] for attack, v in verdicts.items() if v["back_ids"]}

    @property
    def passed(self) -> bool:
        """The recorded model, no record above the threshold, and none back under any attack of the verdict."""
        return self.recorded_model and not self.above and not self.back

    def html(self) -> str:
        """The verification as a self-contained HTML page (:mod:`~lightning_unlearn.evaluation.html`)."""
        figures = [
            (
                "Each record's g after unlearning, as recorded (grey), and now (blue), against the record's threshold",
                g_figure([r["g_recorded"] for r in self.records], [r["g"] for r in self.records], self.threshold),
            )
        ]
        verdict = self.report.summary.get("verdict") if self.report is not None else None
        if verdict:
            figures.append(("The verdict per attack: records back, and over-forgotten", verdict_figure(verdict)))
        columns = ["sample_id", "sha256", "g_recorded", "g", "above"]
        table = Table("Per record (the record's sample ids)", columns, [[r[c] for c in columns] for r in self.records])
        hashes = Table(
            "Weights", ["", "sha256"], [["this model", self.weights_sha256], ["the record", self.recorded_sha256]]
        )
        return html_document(
            "Verification against a takedown record", self.text().splitlines(), figures, [table, hashes]
        )

    def text(self) -> str:
        """A few lines for people."""
        if self.recorded_model:
            lines = [f"the recorded model (weights sha256 {self.weights_sha256[:16]}…)"]
        else:
            lines = [
                f"NOT the recorded model: weights sha256 {self.weights_sha256[:16]}…, the record's "
                f"{self.recorded_sha256[:16]}…"
            ]
        above = self.above
        lines.append(
            f"{len(self.records)} recorded forget records re-scored: {len(above)} above the record's threshold "
            f"{self.threshold:.4f}" + (f" (sample ids {', '.join(map(str, above))})" if above else "")
        )
        if self.unchecked_records:
            lines.append(f"{len(self.unchecked_records)} records of the record had no text given: not re-checked")
        if self.unmatched_texts:
            lines.append(f"{len(self.unmatched_texts)} forget texts given are not in the record: not checked")
        if self.holdout_matches is False:
            lines.append("the unseen texts given are not the record's holdout (another control: verdicts may differ)")
        if self.report is not None and self.report.summary.get("verdict"):
            lines.append(verdict_text(self.report.summary["verdict"]))
        lines.append("PASSED: all holds" if self.passed else "FAILED")
        return "\n".join(lines)


def read_record(record: str | os.PathLike | dict[str, Any]) -> dict[str, Any]:
    """A takedown record (``unlearning.json``, a path or its content), checked for what :func:`verify` needs;
    :class:`RecordError` when it is not one, ``FileNotFoundError`` when the file is missing."""
    if not isinstance(record, dict):
        path = Path(record)
        if not path.is_file():
            raise FileNotFoundError(f"no record at {path}: give the unlearning.json that unlearn wrote")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RecordError(f"{path} is not JSON ({error})") from None
    if not isinstance(record, dict):
        raise RecordError("the record is not a JSON object: give the unlearning.json that unlearn wrote")
    schema = record.get("schema") or {}
    if schema.get("name") != RECORD_SCHEMA or not isinstance(schema.get("version"), int):
        raise RecordError(
            f"not a takedown record of schema {RECORD_SCHEMA!r} (a record written before version {RECORD_VERSION} "
            "has no hashes to check against: unlearn again with this version)"
        )
    if schema["version"] > RECORD_VERSION:
        raise RecordError(f"record version {schema['version']} is newer than this library reads ({RECORD_VERSION})")
    try:
        checked = (
            record["weights_sha256"]["after"],
            float(record["threshold"]["value"]),
            record["data"]["max_length"],
            record["data"]["long_texts"],
            [(row["sample_id"], row["sha256"], row["g_after"]) for row in record["records"]],
        )
    except (KeyError, TypeError, ValueError) as error:
        raise RecordError(f"the record lacks a field verify needs: {error!r}") from None
    if not checked[-1]:
        raise RecordError("the record holds no forget records")
    return record


def verify(
    model: torch.nn.Module | str | os.PathLike,
    record: str | os.PathLike | dict[str, Any],
    forget: Any,
    holdout: Any = None,
    *,
    tokenizer: Any = None,
    recovery_attacks: tuple[str, ...] | list[str] = (),
    relearn: Any = None,
    device: str | torch.device | None = "auto",
) -> Verification:
    """Checks ``model`` against its takedown ``record``: its weights' hash, and the forget texts re-scored.

    Args:
        model: the model to check: an instance, a local folder or a hub id.
        record: ``unlearning.json`` (a path, or its content as a dict).
        forget: the forget texts (a list or a file, as :func:`~lightning_unlearn.unlearn` takes them), matched to
            the record's records by SHA-256; texts the record does not hold are left out (and listed).
        holdout: unseen texts of the same kind: the per-record verdict is re-run against them (the record's
            holdout, ideally: ``holdout_matches`` says whether they are).
        tokenizer: default: the model's own.
        recovery_attacks: names from :data:`~lightning_unlearn.evaluation.recovery.RECOVERY_ATTACKS` (need
            ``holdout``; relearning needs ``relearn``).
        relearn: texts the relearning attack fine-tunes on (never the forget records).
        device: where to score (``"auto"``: the GPU when there is one).

    Example:
        >>> found = verify("unlearned", "unlearned/unlearning.json", "forget.jsonl")  # doctest: +SKIP
        >>> found.passed, found.text()  # doctest: +SKIP
    """
    record = read_record(record)
    _check_attacks(recovery_attacks, holdout, relearn)
    tokenizer = tokenizer if tokenizer is not None else model_tokenizer(model)
    data = record["data"]
    split = TokenizedSplit("forget", load_texts(forget, "forget"), tokenizer, data["max_length"], data["long_texts"])
    recorded = {row["sha256"]: row for row in record["records"]}
    hashes = [text_sha256(text) for text in split.texts]
    matched = _matched_texts(split.texts, hashes, recorded)
    if not isinstance(model, torch.nn.Module):
        model = load_causal_lm(model)
    check_causal_lm(model)
    digest = weights_sha256(model)
    datamodule = UnlearningDataModule(
        tokenizer,
        matched,
        holdout=holdout,
        relearn=relearn,
        max_length=data["max_length"],
        long_texts=data["long_texts"],
    )
    datamodule.setup()
    threshold = float(record["threshold"]["value"])
    report = memorization_report(
        model.eval(),
        datamodule,
        el_n=None,
        threshold=threshold,
        recovery_attacks=recovery_attacks,
        device=device,
    )
    rows = _checked_rows(report, datamodule.split("forget").texts, recorded, threshold)
    given = set(hashes)
    holdout_record = data.get("holdout", {}).get("sha256")
    return Verification(
        recorded_model=digest == record["weights_sha256"]["after"],
        weights_sha256=digest,
        recorded_sha256=record["weights_sha256"]["after"],
        threshold=threshold,
        records=rows,
        unmatched_texts=[h for h in hashes if h not in recorded],
        unchecked_records=[row["sample_id"] for sha, row in recorded.items() if sha not in given],
        holdout_matches=None if holdout is None else set_sha256(datamodule.split("holdout").texts) == holdout_record,
        report=report,
    )


def _check_attacks(recovery_attacks: tuple[str, ...] | list[str], holdout: Any, relearn: Any) -> None:
    """A clear error when the attacks asked for lack the texts they need."""
    if recovery_attacks and holdout is None:
        raise ConfigurationError(
            "recovery attacks are judged against unseen texts under the same attack: give holdout="
        )
    if set(RELEARNING_ATTACKS) & set(recovery_attacks) and relearn is None:
        raise ConfigurationError(
            "the relearning attack fine-tunes on texts of the same kind, never the records: give relearn="
        )


def _matched_texts(texts: list[str], hashes: list[str], recorded: dict[str, dict[str, Any]]) -> list[str]:
    """The forget texts the record holds (by SHA-256); a clear error when there is none."""
    if not texts:
        raise ConfigurationError("no forget texts given: give the texts the record was made for")
    matched = [text for text, digest in zip(texts, hashes, strict=True) if digest in recorded]
    if not matched:
        raise ConfigurationError(
            f"none of the {len(texts)} forget texts given is in the record (by SHA-256): give the texts it was "
            "made for, with the same file"
        )
    return matched


def _checked_rows(
    report: Any, texts: list[str], recorded: dict[str, dict[str, Any]], threshold: float
) -> list[dict[str, Any]]:
    """One row per re-scored record: its recorded id, hash and g, its g now, and whether that is above the
    threshold (``texts``: the forget split's, by ``sample_id``)."""
    rows = []
    for row in report.rows:
        entry = recorded[text_sha256(texts[row["sample_id"]])]
        rows.append(
            {
                "sample_id": entry["sample_id"],
                "sha256": entry["sha256"],
                "g_recorded": entry["g_after"],
                "g": row["g"],
                "above": row["g"] > threshold,
            }
        )
    return rows

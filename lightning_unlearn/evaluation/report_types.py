"""The report's typed parts: a forget record's row, the summary and an attack's verdict, as ``TypedDict``: plain
dicts at run time (``summary.json`` and ``per_sample.csv`` are what they were), keys checked by the type checker
where they are read. Every key is optional (``total=False``): which are present depends on the splits and the
attacks a report was given, as each docstring says."""

from __future__ import annotations

from typing import Any, TypedDict


class ReportRow(TypedDict, total=False):
    """One forget record's measures (:func:`~lightning_unlearn.evaluation.report.memorization_report`).

    ``g`` is memorization, a fraction in [0, 1]; ``nll`` the mean token NLL in nats; ``{attack}_score`` each
    membership attack's score (higher: more likely a member); ``el_{n}`` (a key named by ``n``, so not listed here)
    the extraction likelihood; ``verbatim`` whether the record's suffix is generated greedily from its prefix.
    With a holdout: ``p_value`` (tail p-value of g against the holdout), ``flagged`` (comes back: stands out above
    the unseen records) and ``over_forgotten`` (stands out below them, in g or NLL). With recovery attacks, the
    record's score after each (``relearn_g``, ``int8_g``, ``int4_g``: g; ``sampling_p``: the chance that 100
    samples reproduce its second half; ``relearn_sweep_g``: g at the relearning sweep's worst point); with a
    retrain, ``retrain_g``.
    """

    sample_id: int
    text: str
    g: float
    nll: float
    loss_score: float
    zlib_score: float
    min_k_score: float
    verbatim: bool
    duplicates: int
    above_threshold: bool
    p_value: float
    flagged: bool
    over_forgotten: bool
    relearn_g: float
    relearn_sweep_g: float
    int8_g: float
    int4_g: float
    sampling_p: float
    retrain_g: float


class AttackVerdict(TypedDict, total=False):
    """The per-record verdict under one attack (:func:`~lightning_unlearn.evaluation.report.attack_verdicts`).

    Counts of records and their ids: ``back`` (stand out above the holdout under the same attack),
    ``over_forgotten`` (stand out below it); ``detectable_at``: the g from which a record is found whatever the
    others; ``passed``: nothing back (and, with a retrain, KS not rejecting). With a retrain: ``ks`` (the KS
    statistic against its forget scores), its ``p_value`` and ``critical_value``, and ``retrain_back`` (the
    retrain's own records back: a check that the control is sound).
    """

    back: int
    back_ids: list[int]
    over_forgotten: int
    over_forgotten_ids: list[int]
    detectable_at: float
    forget_records: int
    holdout_records: int
    passed: bool
    ks: float
    p_value: float
    critical_value: float
    retrain_back: int


class SweepPointSummary(TypedDict):
    """A point of the relearning sweep: its learning rate, step count, and the forget records back under it."""

    learning_rate: float
    steps: int
    back: int


class RelearnSweepWorst(SweepPointSummary):
    """The relearning sweep's worst point, and every point of its grid."""

    grid: list[SweepPointSummary]


class ReportSummary(TypedDict, total=False):
    """The report's aggregates (:func:`~lightning_unlearn.evaluation.report.memorization_report`).

    Always: the forget set's size, mean and max g, mean NLL (nats), the ``threshold`` (a fraction) and how many
    records are above it, the fixed band's outliers (``{"lower", "upper", "above", "below", "outliers"}``), the
    verbatim lengths (prefix, suffix tokens) and the verbatim-extractable count. With a holdout: its size, mean g
    and NLL, the threshold's bootstrap interval, the holdout bands' outliers, ``over_forgotten`` (below the
    holdout's 5th percentile of g), each membership attack's AUC (forget vs holdout), the ``verdict`` by attack,
    ``flagged`` and ``over_forgotten_records`` (the verdict with no attack) and ``detectable_at``. With recovery
    attacks, per attack (``relearn``, ``int8``, ``int4``, ``sampling``) ``{attack}_above``,
    ``{attack}_holdout_above``, ``{attack}_mean`` and ``{attack}_holdout_mean`` (keys named at run time, not listed)
    and ``quantized_weights``; with the relearning sweep, its worst point (``relearn_sweep_worst``). With a retain
    split: ``retain_g`` and, given the retain g before,
    ``retain_g_before`` and ``collateral``. ``el_{n}_mean`` with EL_n; ``utility`` when lm-eval tasks ran.
    """

    forget_samples: int
    g_mean: float
    g_max: float
    forget_nll: float
    threshold: float
    threshold_interval: list[float] | None
    above_threshold: int
    outliers_fixed_band: dict[str, float]
    verbatim_lengths: list[int]
    verbatim_extractable: int
    holdout_size: int
    holdout_g_mean: float
    outliers_holdout_band: dict[str, float]
    outliers_holdout_quantiles: dict[str, float]
    over_forgotten: int
    alpha: float
    holdout_nll: float
    membership_auc: dict[str, float]
    verdict: dict[str, AttackVerdict] | None
    flagged: int
    over_forgotten_records: int
    detectable_at: float
    quantized_weights: str
    relearn_sweep_worst: RelearnSweepWorst
    retain_g: float
    retain_g_before: float
    collateral: int
    utility: dict[str, dict[str, Any]]

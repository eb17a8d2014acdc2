"""Measuring a model: scoring every record (:mod:`~lightning_unlearn.evaluation.scoring`), membership attacks
(:mod:`~lightning_unlearn.evaluation.membership`: is this record a member?), recovery attacks
(:mod:`~lightning_unlearn.evaluation.recovery`: does a forgotten record come back?), utility with lm-evaluation-harness
(:mod:`~lightning_unlearn.evaluation.utility`) and the per-sample report (:mod:`~lightning_unlearn.evaluation.report`).
"""

"""The functional core: pure functions on tensors and numbers, no model runs, no collectives.

- :mod:`~lightning_unlearn.functional.memorization`: per-sample g (memorization accuracy) and NLL from logits;
- :mod:`~lightning_unlearn.functional.losses`: the methods' per-sample forget losses and the retain term's KL;
- :mod:`~lightning_unlearn.functional.thresholds`: the forgetting threshold from the holdout, per-record tests;
- :mod:`~lightning_unlearn.functional.membership`: membership-attack scores from logits, and their AUC;
- :mod:`~lightning_unlearn.functional.verdict`: the retrain verdict, a two-sample KS test;
- :mod:`~lightning_unlearn.functional.per_sample`: one value per ``sample_id``.
"""

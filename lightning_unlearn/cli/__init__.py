"""The command line, ``lightning-unlearn``: ``unlearn``, ``audit``, ``demo``, ``testbed``
(:mod:`~lightning_unlearn.cli.main`) and ``fit``, a LightningCLI (:mod:`~lightning_unlearn.cli.lightning_cli`)."""

from lightning_unlearn.cli.main import main

__all__ = ["main"]

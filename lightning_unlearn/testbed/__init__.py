"""The embedded default: a small model that has memorized synthetic personal records
(:mod:`~lightning_unlearn.testbed.build`), and the demo that unlearns it with each method
(:mod:`~lightning_unlearn.testbed.demo`). Needs the ``[demo]`` extra (Faker, matplotlib)."""

from lightning_unlearn.utilities.extras import require_demo

require_demo()  # a one-line error naming the extra, before Faker's own ImportError

from lightning_unlearn.testbed.build import (  # noqa: E402
    SMALL_TESTBED,
    Testbed,
    TestbedConfig,
    build_testbed,
    describe,
    make_records,
)

__all__ = ["SMALL_TESTBED", "Testbed", "TestbedConfig", "build_testbed", "describe", "make_records"]

"""The embedded default: a small model that has memorized synthetic personal records
(:mod:`~lightning_unlearn.testbed.build`), with the testbed-tuned settings of the registry's methods
(:mod:`~lightning_unlearn.testbed.settings`); the demo that unlearns it is :mod:`lightning_unlearn.demo`. Needs the
``[demo]`` extra (Faker, matplotlib)."""

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

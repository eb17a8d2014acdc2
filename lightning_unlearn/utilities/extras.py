"""Optional dependencies: a one-line error that names the extra installing them, raised before any work."""

from __future__ import annotations

import importlib.util


def require_extra(extra: str, modules: tuple[str, ...], purpose: str) -> None:
    """Raises an ImportError naming ``pip install 'lightning-unlearn[extra]'`` unless every module is installed."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        names = " and ".join(missing)
        raise ImportError(f"{purpose} needs {names}, which are not installed: pip install 'lightning-unlearn[{extra}]'")


def require_gguf() -> None:
    """Loading a GGUF file (``gguf_file=``) needs the ``gguf`` and ``accelerate`` packages: the ``[gguf]`` extra."""
    require_extra("gguf", ("gguf", "accelerate"), "loading a GGUF file (gguf_file=)")


def require_peft() -> None:
    """Adapters (``peft=``) need the ``peft`` package: the ``[peft]`` extra."""
    require_extra("peft", ("peft",), "training an adapter (peft=)")


def require_demo(purpose: str = "the testbed and the demo") -> None:
    """The testbed's records (Faker) and the plots (matplotlib) need the ``[demo]`` extra."""
    require_extra("demo", ("faker", "matplotlib"), purpose)

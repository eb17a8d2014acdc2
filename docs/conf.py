"""Sphinx configuration: Markdown pages (MyST), the API reference from the docstrings (autodoc, Google style), the
CLI reference from the argparse parser (sphinx-argparse), and the furo theme. ``make docs`` builds it with warnings
as errors; ``nitpicky`` checks every cross-reference to our own names."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # autodoc imports the package; nothing is downloaded

project = "lightning-unlearn"
author = "the lightning-unlearn developers"
copyright = "2026, the lightning-unlearn developers"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinxarg.ext",
]
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Our own references must resolve; those into the libraries beneath are not checked (no network for inventories).
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|lightning|transformers|torchmetrics|peft|deepspeed|lm_eval|numpy|datasets|matplotlib)\b.*"),
    (r"py:.*", r"(L|F|Tensor|Callback|Strategy|PreTrainedModel|Metric|PeftConfig|Dataset|DataLoader)(\..*)?"),
    (r"py:.*", r"(collections|typing|os|pathlib|contextlib|argparse|random|types|dataclasses)\b.*"),
    (r"py:.*", r"(Any|Callable|Iterable|Iterator|Mapping|Sequence|Collection|Literal|PathLike|Path|Level)"),
    (r"py:.*", r"(torch\.Tensor|Tensor\[.*|BoolTensor.*|LongTensor.*)"),
    (r"py:class", r"(optional|Ellipsis|NoneType|.*\.FunctionCtx|PeftModel|Task|pl\..*|datetime\..*)"),
    (r"py:class", r"lightning_unlearn\..*\._\w+"),  # private bases (show-inheritance)
]

html_theme = "furo"
html_title = "lightning-unlearn"


def _resolve_alias(app, env, node, contnode):
    """Resolves a reference to one of our names by where it is defined: ``lightning_unlearn.UnlearningModule`` (a
    re-export) and a bare ``MemorizationMonitor`` in a docstring or type hint (a name of the module it is in)."""
    import importlib

    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    candidates = [target]
    module = node.get("py:module")
    if "." not in target:  # a bare name: of the module it is in, or one of the package's public names
        prefixes = [module, "lightning_unlearn", "lightning_unlearn.callbacks", "lightning_unlearn.modules"]
        candidates += [f"{prefix}.{target}" for prefix in prefixes if prefix]
    for candidate in candidates:
        path, _, name = candidate.rpartition(".")
        if not path.startswith("lightning_unlearn"):
            continue
        try:
            value = getattr(importlib.import_module(path), name)
        except (ImportError, AttributeError):
            continue
        owner = getattr(value, "__module__", None)
        qualified = f"{owner}.{getattr(value, '__qualname__', name)}" if owner else None
        if not qualified or qualified == node["reftarget"]:
            continue
        domain = env.domains["py"]
        for role in ("class", "func", "meth", "data", "attr", "exc", "mod", "obj"):
            node["reftarget"] = qualified
            found = domain.resolve_xref(env, node["refdoc"], app.builder, role, qualified, node, contnode)
            if found is not None:
                return found
    return None


def _no_inline_type(app, what, name, obj, options, lines):
    """A constant's ``#:`` comment is prose, where napoleon would read "text: more text" as "type: description"."""
    if what in ("data", "attribute") and lines and ": " in lines[0]:
        lines[:0] = ["..", ""]  # an empty comment first: no "type" to read


def setup(app):
    app.connect("missing-reference", _resolve_alias)
    app.connect("autodoc-process-docstring", _no_inline_type, priority=400)  # before napoleon (500)

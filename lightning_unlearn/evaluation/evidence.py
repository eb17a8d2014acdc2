"""What ties a takedown record (``unlearning.json``) to what it is about, so that anyone can check it later: SHA-256
of each text and of a set of texts, of a model's weights (of the tensors' content, not of the files that hold
them), and the software and device a run had.

A text's hash is that of its UTF-8 bytes. A set's hash does not depend on the order of its texts: the SHA-256 of
the sorted hex digests of its texts, one per line (a text given twice counts twice). A model's hash covers its state
dict in name order: each distinct tensor's name, dtype, shape and values (little-endian bytes, on the CPU; tied
weights once, under the input embedding's name), so a model saved, reloaded, saved in shards or loaded in another
process hashes the same; an adapted model is hashed as its merged weights (base + adapter), which is what
:meth:`UnlearningModule.save_pretrained() <lightning_unlearn.modules.base.UnlearningModule.save_pretrained>` writes.

Example:
    >>> text_sha256("Jane Doe, 12 Elm Street")[:16]
    '047da6b70613157d'
    >>> set_sha256(["b", "a"]) == set_sha256(["a", "b"])
    True
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import platform
import sys
from collections.abc import Iterable, Mapping

import torch

from lightning_unlearn.integrations.peft import saved_state
from lightning_unlearn.utilities.version import __version__

#: what ``unlearning.json`` is, and the version of its layout (2: hashes of the texts and weights, the environment,
#: no forget text unless asked; docs/guides/takedown-record.md describes every field)
RECORD_SCHEMA = "lightning-unlearn/unlearning-record"
RECORD_VERSION = 2
#: the packages whose versions a record states (those installed)
RECORDED_PACKAGES = ("torch", "transformers", "lightning", "peft", "deepspeed", "accelerate", "bitsandbytes")


def text_sha256(text: str) -> str:
    """SHA-256 hex digest of ``text``'s UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def set_sha256(texts: Iterable[str]) -> str:
    """SHA-256 hex digest of a set of texts, whatever their order: of their sorted digests, one per line."""
    digests = sorted(text_sha256(text) for text in texts)
    return hashlib.sha256("\n".join(digests).encode("ascii")).hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 hex digest of what ``save_pretrained`` writes for ``model`` (:func:`state_sha256` of
    :func:`~lightning_unlearn.integrations.peft.saved_state`): an adapted (peft) model as its merged weights, a
    ZeRO-3 model as its gathered state (whole on the first process: call it on every process)."""
    target, state = saved_state(model, merge=True)
    return state_sha256(state if state is not None else target.state_dict())


@torch.no_grad()
def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 hex digest of a state dict: one line per distinct tensor in name order (its name, dtype, shape and
    the SHA-256 of its values), a tensor equal to one of a later name left out, so that tied weights count once, under
    the input embedding's name, whether a state dict holds both names (a loaded model: ``lm_head.weight`` sorts
    first) or only the parameter's own (a state gathered from ZeRO-3 shards). Tensors are copied to the CPU one at a
    time."""
    lines, seen = [], set()
    for name, tensor in sorted(state.items(), reverse=True):
        values = tensor.detach().to("cpu").contiguous()
        content = (str(values.dtype), tuple(values.shape), hashlib.sha256(_little_endian_bytes(values)).hexdigest())
        if content not in seen:
            seen.add(content)
            lines.append(f"{name} {content[0]} {list(content[1])} {content[2]}")
    return hashlib.sha256("\n".join(reversed(lines)).encode()).hexdigest()


def _little_endian_bytes(values: torch.Tensor) -> bytes:
    """The tensor's values as bytes, little-endian whatever the machine (bfloat16 and float8 through an integer
    view of the same width)."""
    if values.dtype.is_floating_point and values.element_size() in (1, 2):
        values = values.view(torch.uint8 if values.element_size() == 1 else torch.int16)
    array = values.numpy()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def environment() -> dict[str, object]:
    """The software and device of this run: library and package versions, Python, the platform, the accelerator
    and the time (UTC, ISO 8601)."""
    packages = {}
    for name in RECORDED_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {
        "lightning_unlearn": __version__,
        "packages": packages,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

"""Attacks that try to bring forgotten records back: relearning, quantization and sampling.

A record is forgotten for good when, under each attack, it behaves like a record the model never saw. Each attack
works on a copy and leaves the model it is given as it was:

- :func:`relearn`: fine-tune a copy on *other* texts (related data, never the forget records) for a few steps of
  Adam on the NLL: the attack that shows whether unlearning removed the records or only hid them (Hu et al. 2025,
  "Unlearning or Obfuscating?"). :func:`relearn_sweep` runs it over a grid of learning rates and step counts and
  keeps the worst case (on request: ``"relearn_sweep"``).
- :func:`quantize`: round every linear layer's weight to int8 or int4, per group of inputs (round-to-nearest,
  any device; or bitsandbytes' own 8-bit and 4-bit FP4 (or NF4) codes on a GPU where it is installed): small unlearning
  updates can fall inside a quantization bin and vanish (Zhang et al. 2025).
- :func:`continuation_log_prob` and :func:`discovery_probability`: (n, p)-discoverable extraction (Hayes et al.
  2024) from the exact probability p_z of a record's continuation given its prefix, one forward pass;
  :func:`sample_extraction` really samples on request.

:func:`recovery_scores` gives, per attack, every forget and holdout record's g (or p_z) on the attacked model: the
holdout under the same attack is the control. ``report.recovery_summary`` counts what rose above the threshold.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_unlearn.data import relearn_split
from lightning_unlearn.distributed.zero import has_sharded_parameters
from lightning_unlearn.evaluation.scoring import eval_mode, score_memorization
from lightning_unlearn.functional.memorization import next_token_targets, predicted_positions, sequence_nll, token_nll
from lightning_unlearn.functional.verdict import record_verdict
from lightning_unlearn.integrations.peft import add_adapter, is_adapted
from lightning_unlearn.utilities.errors import ConfigurationError

#: attack name -> bits
QUANTIZATIONS = {"int8": 8, "int4": 4}
#: The recovery attacks run by default (the demo's, ``RecoveryCheck``'s, :func:`recovery_scores`').
RECOVERY_ATTACKS = ("relearn", *QUANTIZATIONS, "sampling")
#: Every recovery attack by name, as reports, the audit, ``unlearn`` and ``RecoveryCheck`` take them: the defaults
#: and, on request, the relearning sweep (a relearning run per learning rate of :data:`RELEARN_SWEEP`).
ALL_RECOVERY_ATTACKS = ("relearn", "relearn_sweep", *QUANTIZATIONS, "sampling")
#: The attacks that fine-tune on other texts (the relearn split, else the retain split, or the caller's).
RELEARNING_ATTACKS = ("relearn", "relearn_sweep")
#: The relearning sweep's grid, (learning rates, step counts): published relearning attacks use 50 to 500 steps at
#: learning rates from 1e-6 to 3e-3 and report the worst case over such a sweep (Hu et al. 2025; Lee et al. 2025,
#: UNDO); one run per learning rate, scored after each step count.
RELEARN_SWEEP: tuple[tuple[float, ...], tuple[int, ...]] = ((1e-5, 1e-4, 1e-3), (20, 100))
#: a record is (n, p)-discoverable at p = 0.5 ...
DISCOVERY = 0.5
#: ... in n = 100 samples
DISCOVERY_SAMPLES = 100


def _copy(model: torch.nn.Module, attack: str) -> torch.nn.Module:
    """A private copy of ``model`` for an attack; a clear error for sharded (ZeRO-3) parameters."""
    if has_sharded_parameters(model):
        raise ConfigurationError(
            f"the {attack} attack needs the whole model, and this one is sharded (ZeRO-3): save it with "
            "save_pretrained (which gathers the shards), load that folder on one process and attack it"
        )
    return copy.deepcopy(model)


#: rows of the relearning attack's batches that one forward and backward holds at once
ATTACK_BATCH_SIZE = 8


def relearn(
    model: torch.nn.Module,
    dataloader: Iterable[Mapping[str, Tensor]],
    steps: int = 20,
    learning_rate: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    peft: Any = None,
    attack_batch_size: int = ATTACK_BATCH_SIZE,
    trained: Literal["auto", "adapter", "all"] = "auto",
    after_step: Callable[[int, torch.nn.Module], None] | None = None,
) -> torch.nn.Module:
    """The relearning attack: a copy of ``model`` fine-tuned for ``steps`` Adam steps on the mean NLL of the
    batches of ``dataloader`` (cycled; ``{"input_ids", "attention_mask"}``, as any of our loaders yields), in eval
    mode (no dropout), so it is deterministic for a loader in a fixed order. ``model`` is not changed.

    Each batch is one step, its gradient accumulated over micro-batches of ``attack_batch_size`` rows: the peak is
    the copy, what trains with its gradient and Adam's state, and one micro-batch's activations, however large the
    attacker's data. Half-precision weights train through float32 master copies (Adam's update of a bf16 weight
    at lr 1e-4 would otherwise round away for most weights, and the attack would be weaker than a real attacker's).

    Args:
        dataloader: the attacker's texts: related data, never the forget records (e.g. the retain split, or fresh
            records of the same kind).
        steps: optimizer steps, one batch each.
        learning_rate: Adam's learning rate.
        betas: Adam's betas.
        peft: a ``peft`` adapter config: the attacker trains a fresh adapter (e.g. LoRA) instead of every weight.
        attack_batch_size: rows per forward and backward.
        trained: on an adapted model (a ``peft.PeftModel``), ``"auto"`` and ``"adapter"`` train its adapter (the
            cheapest route), ``"all"`` every weight of its merged model; on any other model every weight.
        after_step: called with the step count (from 1) and the attacked copy after each step (to score it).

    Returns:
        The fine-tuned copy (a ``peft.PeftModel`` with ``peft`` or an adapter trained).
    """
    if steps < 1:
        raise ConfigurationError(f"steps must be >= 1, got {steps}")
    if attack_batch_size < 1:
        raise ConfigurationError(f"attack_batch_size must be >= 1, got {attack_batch_size}")
    if trained not in ("auto", "adapter", "all"):
        raise ConfigurationError(f"trained must be 'auto', 'adapter' or 'all', got {trained!r}")
    attacked = _attack_copy(model, peft, trained)
    parameters = [p for p in attacked.parameters() if p.requires_grad]
    masters = [p if p.dtype in (torch.float32, torch.float64) else p.detach().float() for p in parameters]
    optimizer = torch.optim.Adam(masters, lr=learning_rate, betas=betas)
    batches = itertools.cycle(dataloader)
    with eval_mode(attacked):
        for step in range(1, steps + 1):
            _accumulate_nll_gradient(attacked, next(batches), attack_batch_size)
            for parameter, master in zip(parameters, masters, strict=True):
                if master is not parameter:
                    master.grad, parameter.grad = parameter.grad.float(), None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for parameter, master in zip(parameters, masters, strict=True):
                    if master is not parameter:
                        parameter.copy_(master)
            if after_step is not None:
                after_step(step, attacked)
    attacked.requires_grad_(False)
    return attacked


@dataclass
class SweepPoint:
    """One point of :func:`relearn_sweep`: its learning rate and step count, the forget records that come back
    under it (stand out above the holdout relearned alike: ``back``, a count) and every record's g under it
    (``scores``: ``{split: {sample_id: g}}``)."""

    learning_rate: float
    steps: int
    back: int
    scores: dict[str, dict[int, float]]


def relearn_sweep(
    model: torch.nn.Module,
    datamodule: Any,
    dataloader: Iterable[Mapping[str, Tensor]] | None = None,
    grid: tuple[Sequence[float], Sequence[int]] = RELEARN_SWEEP,
    alpha: float = 0.05,
    attack_batch_size: int = ATTACK_BATCH_SIZE,
) -> list[SweepPoint]:
    """The relearning attack at every (learning rate, step count) of ``grid``: one :func:`relearn` run per learning
    rate, its copy scored on the forget and holdout splits after each step count; a point's ``back`` is the
    per-record verdict's (:func:`~lightning_unlearn.functional.verdict.record_verdict` at ``alpha``) against the
    holdout under the same point. :func:`worst_point` picks the worst case. ``dataloader``: the attacker's texts
    (default: :func:`relearn_texts_in_one_batch`)."""
    learning_rates, step_counts = grid
    if not learning_rates or not step_counts or min(step_counts) < 1:
        raise ConfigurationError(f"the relearning sweep needs learning rates and step counts >= 1, got {grid}")
    if not datamodule.has_split("holdout"):
        raise ConfigurationError("the relearning sweep picks its worst case against holdout records: give some")
    if dataloader is None:
        dataloader = relearn_texts_in_one_batch(datamodule)
    loaders = {split: datamodule.scoring_dataloader(split) for split in ("forget", "holdout")}
    points: list[SweepPoint] = []
    for learning_rate in learning_rates:

        def score(step: int, attacked: torch.nn.Module, rate: float = learning_rate) -> None:
            if step in step_counts:
                scores = {split: score_memorization(attacked, loader) for split, loader in loaders.items()}
                back = record_verdict(list(scores["forget"].values()), list(scores["holdout"].values()), alpha).back
                points.append(SweepPoint(rate, step, len(back), scores))

        steps = max(step_counts)
        relearn(model, dataloader, steps, learning_rate, attack_batch_size=attack_batch_size, after_step=score)
    return points


def worst_point(points: Sequence[SweepPoint]) -> SweepPoint:
    """The sweep's worst case: the most forget records back, then the highest mean forget g."""
    return max(points, key=lambda p: (p.back, math.fsum(p.scores["forget"].values())))


def _attack_copy(model: torch.nn.Module, peft: Any, trained: str) -> torch.nn.Module:
    """The relearning attacker's copy of ``model``, with what it trains set to require gradients."""
    if is_adapted(model) and (peft is not None or trained == "all"):
        attacked = merged_copy(model)  # a fresh adapter, or every weight: on the merged model
    elif trained == "adapter" and not is_adapted(model):
        raise ConfigurationError("trained='adapter' needs an adapted model (a peft.PeftModel); this one has no adapter")
    else:
        attacked = _copy(model, "relearning")
    if peft is not None:
        return add_adapter(attacked, peft)
    if is_adapted(attacked):
        attacked.requires_grad_(False)
        for name, parameter in attacked.named_parameters():
            parameter.requires_grad_(".lora_" in name)
    else:
        attacked.requires_grad_(True)
    return attacked


def _accumulate_nll_gradient(model: torch.nn.Module, batch: Mapping[str, Tensor], rows: int) -> None:
    """The gradient of the batch's mean per-sample NLL, accumulated over chunks of ``rows`` samples (each trimmed
    to its own longest sample), into the parameters' ``.grad``."""
    device = next(model.parameters()).device
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.enable_grad():
        for start in range(0, len(input_ids), rows):
            chunk_mask = mask[start : start + rows]
            width = int(chunk_mask.sum(1).max())
            ids, chunk_mask = input_ids[start : start + rows, :width].to(device), chunk_mask[:, :width].to(device)
            logits = model(input_ids=ids, attention_mask=chunk_mask).logits
            loss = sequence_nll(logits, ids, chunk_mask).sum() / len(input_ids)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"relearning: non-finite loss {loss.item()}; lower the learning rate")
            loss.backward()
            del logits, loss


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A plain copy of an adapted model with its adapters merged into the weights (W0 + (α/r)·B·A), as it is
    deployed; a copy of any other model as it is."""
    attacked = _copy(model, "merging")
    return attacked.merge_and_unload() if is_adapted(attacked) else attacked


@torch.no_grad()
def round_to_nearest(weight: Tensor, bits: int, group_size: int = 64) -> Tensor:
    """Symmetric round-to-nearest quantization of ``weight`` (``Tensor[out, in]``), dequantized back to its dtype.

    Each group of ``group_size`` consecutive inputs of a row shares one scale s = max|w| / (2^(bits−1) − 1); the
    codes are round(w / s), so every element moves by at most s / 2.

    Example:
        >>> round_to_nearest(torch.tensor([[0.7, -0.4, 0.1, 0.0]]), bits=2, group_size=4)
        tensor([[ 0.7000, -0.7000,  0.0000,  0.0000]])
    """
    if bits < 2:
        raise ConfigurationError(f"bits must be >= 2, got {bits}")
    if weight.dim() != 2:
        raise ConfigurationError(f"round_to_nearest takes a matrix Tensor[out, in], got shape {tuple(weight.shape)}")
    rows, columns = weight.shape
    padding = -columns % group_size
    precision = torch.promote_types(weight.dtype, torch.float32)  # half precision is rounded in float32
    groups = torch.nn.functional.pad(weight.to(precision), (0, padding)).view(rows, -1, group_size)
    levels = 2 ** (bits - 1) - 1
    scale = groups.abs().amax(-1, keepdim=True) / levels
    codes = (groups / scale.clamp_min(torch.finfo(precision).tiny)).round().clamp(-levels, levels)
    return (codes * scale).view(rows, -1)[:, :columns].to(weight.dtype)


def _bitsandbytes_round_trip(weight: Tensor, bits: int, group_size: int, quant_type: str) -> Tensor:
    """bitsandbytes' 8-bit (row-wise absmax) or 4-bit (``quant_type`` FP4 or NF4, blocks of ``group_size``) codes,
    dequantized."""
    import bitsandbytes.functional as bnbf

    if bits == 8:
        codes, row_scales, _ = bnbf.int8_vectorwise_quant(weight.half())
        return bnbf.int8_vectorwise_dequant(codes, row_scales).to(weight.dtype)
    packed, state = bnbf.quantize_4bit(weight, blocksize=group_size, quant_type=quant_type)
    return bnbf.dequantize_4bit(packed, state).to(weight.dtype)


def quantized_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The layers a quantizer converts: every ``nn.Linear`` (and transformers' ``Conv1D``, GPT-2's linear layer)
    except the output layer (tied to the embeddings in most models; bitsandbytes keeps it too)."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [
        (name, module)
        for name, module in model.named_modules()
        if module is not output and (isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D")
    ]


@torch.no_grad()
def quantize(
    model: torch.nn.Module,
    bits: int = 4,
    group_size: int = 64,
    backend: Literal["rtn", "bitsandbytes"] = "rtn",
    quant_type: Literal["fp4", "nf4"] = "fp4",
) -> torch.nn.Module:
    """The quantization attack: a copy of ``model`` whose linear weights (:func:`quantized_layers`) are quantized
    and dequantized back, so it runs anywhere and scores like the quantized model. ``model`` is not changed.

    An adapted model (a ``peft.PeftModel``) is quantized as it is deployed and as Zhang et al. (ICLR 2025) quantize:
    its adapters merged first (:func:`merged_copy`), so the unlearning edit B·A meets the base weight's bins; the
    copy returned is the merged, quantized model.

    Args:
        bits: 8 or 4 (``"rtn"`` takes any width >= 2).
        group_size: inputs per scale, along each weight row (the input dimension).
        backend: ``"rtn"`` (:func:`round_to_nearest`, on any device) or ``"bitsandbytes"`` (its int8 row-wise or
            4-bit codes; needs bitsandbytes and the device it supports).
        quant_type: bitsandbytes' 4-bit code: ``"fp4"`` (its default, as Zhang et al. (ICLR 2025) quantized) or
            ``"nf4"``.
    """
    if backend not in ("rtn", "bitsandbytes"):
        raise ConfigurationError(f"backend must be 'rtn' or 'bitsandbytes', got {backend!r}")
    if quant_type not in ("fp4", "nf4"):
        raise ConfigurationError(f"quant_type must be 'fp4' or 'nf4', got {quant_type!r}")
    if backend == "bitsandbytes":
        if bits not in (4, 8):
            raise ConfigurationError(f"bitsandbytes quantizes to 8 or 4 bits, got {bits}")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ImportError("backend='bitsandbytes' needs bitsandbytes: pip install bitsandbytes") from None
    attacked = merged_copy(model)  # an adapter is quantized as deployed: merged into the weight it edits
    for _, layer in quantized_layers(attacked):
        weight = layer.weight.t() if type(layer).__name__ == "Conv1D" else layer.weight  # Conv1D is [in, out]
        if backend == "rtn":
            quantized = round_to_nearest(weight, bits, group_size)
        else:
            quantized = _bitsandbytes_round_trip(weight, bits, group_size, quant_type)
        weight.copy_(quantized)
    return attacked


@torch.no_grad()
def continuation_log_prob(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, prefix_length: int | Tensor | None = None
) -> Tensor:
    """log p_z: the log-probability (nats, float64, summed from float32 token log-probabilities) that the model
    continues each sample's prefix with exactly the sample's own continuation, from one teacher-forced forward pass:
    Σ_{t >= prefix} log p(x_t | x_<t), with no float copy of the whole logits.

    Args:
        input_ids, attention_mask: a right-padded batch, ``Tensor[B, T]``.
        prefix_length: tokens of prompt, an int or ``Tensor[B]``; default: half of each sample's own length.

    Returns:
        ``Tensor[B]``, float64.
    """
    lengths = attention_mask.sum(1)
    prefix = lengths // 2 if prefix_length is None else torch.as_tensor(prefix_length, device=lengths.device)
    prefix = prefix.expand_as(lengths)
    if (prefix < 1).any() or (prefix >= lengths).any():
        raise ConfigurationError("each sample needs a prefix of at least 1 token and a continuation of at least 1")
    with eval_mode(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    nll, _ = token_nll(logits, next_token_targets(input_ids, attention_mask))  # chunked: no float copy of the logits
    position = torch.arange(1, input_ids.shape[1], device=input_ids.device)  # of the predicted token x_t
    counted = predicted_positions(attention_mask) & (position[None, :] >= prefix[:, None])
    return -(nll[:, :-1].double() * counted).sum(1)


def discovery_probability(log_prob: Tensor, num_samples: int) -> Tensor:
    """The probability that at least one of ``num_samples`` samples reproduces a continuation of probability
    p_z = exp(``log_prob``): 1 − (1 − p_z)^n, computed stably. A record is (n, p)-discoverable when it is >= p.

    Example:
        >>> discovery_probability(torch.tensor([math.log(0.5), math.log(1e-9)]), 2)
        tensor([7.5000e-01, 2.0000e-09], dtype=torch.float64)
    """
    log_prob = log_prob.double()
    log_miss = torch.log1p(-log_prob.exp().clamp(max=1.0))
    return -torch.expm1(num_samples * log_miss)


@torch.no_grad()
def sample_extraction(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    num_samples: int = 100,
    prefix_length: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> Tensor:
    """Real sampling: how many of ``num_samples`` sampled continuations of each sample's prefix (default: its first
    half) reproduce its continuation exactly, ``Tensor[B]`` of int. Seeded (the global RNG is left as it was)."""
    device = next(model.parameters()).device
    counts = []
    lengths = attention_mask.sum(1).tolist()
    with eval_mode(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for row, length in enumerate(lengths):
            prefix = length // 2 if prefix_length is None else prefix_length
            target = input_ids[row, prefix:length].to(device)
            prompt = input_ids[row : row + 1, :prefix].to(device)
            generated = model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=True,
                num_return_sequences=num_samples,
                max_new_tokens=len(target),
                min_new_tokens=len(target),
                temperature=temperature,
                top_k=top_k if top_k is not None else 0,
                top_p=top_p if top_p is not None else 1.0,
                pad_token_id=getattr(model.config, "eos_token_id", None),
            )[:, prefix:]
            counts.append(int((generated == target[None, :]).all(1).sum()))
    return torch.tensor(counts)


def recovery_scores(
    model: torch.nn.Module,
    datamodule: Any,
    attacks: Iterable[str] = RECOVERY_ATTACKS,
    relearn_dataloader: Iterable[Mapping[str, Tensor]] | None = None,
    relearn_steps: int = 20,
    relearn_learning_rate: float = 1e-4,
    attack_batch_size: int = ATTACK_BATCH_SIZE,
    group_size: int = 64,
    quantization_backend: Literal["rtn", "bitsandbytes"] = "rtn",
    num_samples: int = DISCOVERY_SAMPLES,
    splits: Iterable[str] = ("forget", "holdout"),
    relearn_sweep_grid: tuple[Sequence[float], Sequence[int]] = RELEARN_SWEEP,
    alpha: float = 0.05,
) -> dict[str, dict[str, dict[int, float]]]:
    """Per attack, per split, each record's score on the attacked model: ``{attack: {split: {sample_id: value}}}``.

    The value is g for ``"relearn"``, ``"int8"`` and ``"int4"``, and the (n = ``num_samples``) discovery
    probability of the record's second half for ``"sampling"`` (the model itself, no copy). Relearning needs
    ``relearn_dataloader`` (default: the datamodule's relearn split in one batch, else its retain split; each step
    in micro-batches of ``attack_batch_size`` rows). ``"relearn_sweep"`` is the worst point of
    :func:`relearn_sweep` over ``relearn_sweep_grid`` (the verdict at ``alpha`` against the holdout picks it).
    """
    attacks = check_recovery_attacks(attacks)
    datamodule.setup()
    splits = [s for s in splits if datamodule.has_split(s)]
    loaders = {split: datamodule.scoring_dataloader(split) for split in splits}
    results: dict[str, dict[str, dict[int, float]]] = {}
    for attack in attacks:
        if attack in RELEARNING_ATTACKS and relearn_dataloader is None:
            relearn_dataloader = relearn_texts_in_one_batch(datamodule)
        if attack == "relearn_sweep":
            points = relearn_sweep(model, datamodule, relearn_dataloader, relearn_sweep_grid, alpha, attack_batch_size)
            worst = worst_point(points).scores
            results[attack] = {split: worst[split] for split in splits}
            continue
        if attack == "relearn":
            attacked = relearn(
                model,
                relearn_dataloader,
                steps=relearn_steps,
                learning_rate=relearn_learning_rate,
                attack_batch_size=attack_batch_size,
            )
        elif attack in QUANTIZATIONS:
            attacked = quantize(model, QUANTIZATIONS[attack], group_size, quantization_backend)
        else:
            results[attack] = {
                split: score_memorization(model, loader, measure=_discovery(num_samples))
                for split, loader in loaders.items()
            }
            continue
        results[attack] = {split: score_memorization(attacked, loader) for split, loader in loaders.items()}
        del attacked
    return results


def _discovery(num_samples: int) -> Any:
    def measure(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return discovery_probability(continuation_log_prob(model, input_ids, attention_mask), num_samples)

    return measure


def check_recovery_attacks(attacks: Iterable[str], where: str = "") -> list[str]:
    """``attacks`` as a list; a clear error (naming ``where`` they came from) for a name not in
    :data:`ALL_RECOVERY_ATTACKS`."""
    attacks = list(attacks)
    unknown = sorted(set(attacks) - set(ALL_RECOVERY_ATTACKS))
    if unknown:
        raise ConfigurationError(
            f"unknown attack(s) {', '.join(unknown)}{where}; choose from {', '.join(ALL_RECOVERY_ATTACKS)}"
        )
    return attacks


def relearn_texts_in_one_batch(datamodule: Any) -> Any:
    """The relearning attack's default data: the datamodule's relearn split (else its retain split), one batch."""
    name = relearn_split(datamodule, "the relearning attack")
    return datamodule.scoring_dataloader(name, batch_size=len(datamodule.split(name)))


def recovery_summary(
    attacked: Mapping[str, Mapping[str, Mapping[int, float]]], threshold: float, discovery: float = DISCOVERY
) -> dict[str, float]:
    """Per attack of :func:`recovery_scores`: how many forget and holdout records are above ``threshold`` (g) or
    (n, p)-discoverable with p = ``discovery`` (sampling), and their mean scores: ``{attack}_above``,
    ``{attack}_holdout_above``, ``{attack}_mean`` and ``{attack}_holdout_mean``."""
    summary: dict[str, float] = {}
    for attack, splits in attacked.items():
        for split, scores in splits.items():
            key = attack if split == "forget" else f"{attack}_{split}"
            if attack == "sampling":  # discoverable: at least p
                summary[f"{key}_above"] = sum(value >= discovery for value in scores.values())
            else:  # forgotten: at or below the threshold
                summary[f"{key}_above"] = above(scores, threshold)
            summary[f"{key}_mean"] = mean(scores)
    return summary


def above(scores: Mapping[int, float], threshold: float) -> int:
    """How many records score strictly above ``threshold``."""
    return sum(value > threshold for value in scores.values())


def mean(scores: Mapping[int, float]) -> float:
    """The mean score (NaN for none)."""
    return math.fsum(scores.values()) / len(scores) if scores else math.nan

"""What a method needs in memory, before launch: the memory model behind ``lightning-unlearn plan``.

Persistent bytes are what lives between steps: weights, gradients (set to None only after the next forward),
Adam's two moments, and each method's own state: the KL reference (a frozen copy of what trains), TA's θ_base,
the relearning-aware adversary's copy. The peak is the most tensor memory alive at any point of a step cycle (the
training step and the scoring after it): the persistent bytes plus the activations that the backward keeps, the
output layer's logits and the loss's temporaries, or, for TA, the copy kept while an edit is scored.

Activations follow from what autograd saves in a Hugging Face Llama decoder layer with scaled-dot-product
attention (no T x T matrix kept: flash or memory-efficient kernels), per token (h hidden, k key-value width, i
MLP width, w bytes per activation): the two RMSNorms 8h bytes each, q and k after RoPE, v and the attention output
(w·(2h + 2k)), in float32 the two residual sums, and the SwiGLU MLP's gate, up, SiLU and product (4·w·i). With
gradient checkpointing a layer keeps only its input (w·h), and one layer's activations are recomputed at a time.
Nothing is fitted to measurements: ``benchmarks/memory.py`` checks it against measured CPU step cycles at three sizes
(within 15% for every method), and the tests do at one.

One GPU runs ``bf16-true`` (weights, gradients and Adam's moments in bfloat16, as torch's Adam keeps them in the
weights' dtype) or ``32-true``; ZeRO-3 runs DeepSpeed's bf16 (bfloat16 weights and gradients, float32 master weights
and moments, all sharded over the processes; a layer's weights gathered whole, twice with prefetch). LoRA is of rank
16 on every linear layer but the output layer.

Example:
    >>> shape = Shape("8B", 4096, 14336, 32, 32, 8, 128_256)
    >>> round(peak(MethodState(), shape, 8, 512, setting("bf16-true", checkpointing=True)) / GB)
    67
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_unlearn.functional.memorization import CHUNK_ELEMENTS
from lightning_unlearn.utilities.errors import ConfigurationError

GB = 1e9
LORA_RANK = 16
#: GPU sizes ``plan`` says fit or not, in GB
CARDS = (24, 40, 80, 141)
#: decoders whose layers are Llama's (RMSNorm, grouped-query attention, SwiGLU MLP): what the model counts
LLAMA_STYLE = ("llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo2")


@dataclass(frozen=True)
class Shape:
    """A Llama decoder's shape (widths in elements)."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False

    @property
    def kv(self) -> int:
        """Width of the key (and of the value) projection."""
        return self.hidden // self.heads * self.kv_heads

    def parameters(self) -> int:
        h, i, k = self.hidden, self.intermediate, self.kv
        layer = 2 * h * h + 2 * h * k + 3 * h * i + 2 * h
        return self.vocab * h * (1 if self.tied else 2) + self.layers * layer + h

    def layer_parameters(self) -> int:
        h, i, k = self.hidden, self.intermediate, self.kv
        return 2 * h * h + 2 * h * k + 3 * h * i + 2 * h

    def lora_parameters(self, rank: int = LORA_RANK) -> int:
        h, i, k = self.hidden, self.intermediate, self.kv
        per_layer = rank * ((h + h) * 2 + (h + k) * 2 + (h + i) * 3)
        return self.layers * per_layer

    def lora_b_parameters(self, rank: int = LORA_RANK) -> int:
        """The LoRA B factors' share (out x rank each): what TA edits on an adapter."""
        h, i, k = self.hidden, self.intermediate, self.kv
        return self.layers * rank * (3 * h + 2 * k + 2 * i)

    @classmethod
    def from_config(cls, config: Any, name: str = "") -> Shape:
        """The shape of a Hugging Face config (a ``PretrainedConfig``) of a Llama-style decoder; a clear error for
        another architecture."""
        kind = getattr(config, "model_type", None)
        if kind not in LLAMA_STYLE:
            raise ConfigurationError(
                f"the memory model counts Llama-style decoders ({', '.join(LLAMA_STYLE)}); this config is {kind!r}"
            )
        heads = config.num_attention_heads
        return cls(
            name or getattr(config, "name_or_path", "") or kind,
            config.hidden_size,
            config.intermediate_size,
            config.num_hidden_layers,
            heads,
            getattr(config, "num_key_value_heads", None) or heads,
            config.vocab_size,
            bool(getattr(config, "tie_word_embeddings", False)),
        )


@dataclass(frozen=True)
class Setting:
    """How a step runs: bytes per weight and per activation, gradient checkpointing, ZeRO-3's process count."""

    weight_bytes: int  # weights, gradients and Adam's moments (torch's Adam keeps them in the weights' dtype)
    activation_bytes: int
    checkpointing: bool = False
    zero3_processes: int = 0  # 0: no ZeRO-3


def setting(precision: str, checkpointing: bool = False, zero3_processes: int = 0) -> Setting:
    """32-true, bf16-true (and, for the projections, ZeRO-3's bf16)."""
    if precision == "32-true":
        return Setting(4, 4, checkpointing, zero3_processes)
    if precision == "bf16-true":
        return Setting(2, 2, checkpointing, zero3_processes)
    raise ConfigurationError(f"the model covers 32-true and bf16-true, not {precision}")


def layer_activations(shape: Shape, tokens: int, s: Setting) -> int:
    """Bytes one decoder layer keeps for backward over ``tokens`` tokens (see the module docstring)."""
    h, k, i, w = shape.hidden, shape.kv, shape.intermediate, s.activation_bytes
    norms = 2 * 8 * h  # each: two float32 tensors (x · rsqrt(mean x²), the weighted output) or a float32 copy and two
    attention = w * (2 * h + 2 * k) + 4 * shape.heads  # q, k after RoPE, v, the output; the log-sum-exp
    residuals = 2 * w * h if w == 4 else 0  # kept by the next RMSNorm in float32 (its float32 copy is a norm's)
    return tokens * (norms + attention + residuals + 4 * w * i)


def activations(shape: Shape, tokens: int, s: Setting) -> int:
    """Bytes the decoder keeps for backward at the end of a training forward (the embeddings' output, each layer's
    activations or, with checkpointing, each layer's input, and the final norm's), the output layer aside."""
    w, h = s.activation_bytes, shape.hidden
    first = w * h if w == 4 else 0  # the first RMSNorm's input, kept in float32 only (as the residuals)
    if s.checkpointing:
        return tokens * (shape.layers * w * h + first + 8 * h)
    return tokens * (first + 8 * h) + shape.layers * layer_activations(shape, tokens, s)


def head(shape: Shape, tokens: int, s: Setting, backward: bool = False, temporaries: bool = True) -> int:
    """Bytes of the output layer and the per-sample NLL. Float32 logits: the logits and their log-softmax at the
    forward's end; at the backward's start the log-softmax and two gradients (the logits are freed when the
    training step returns). Half-precision logits (:func:`~lightning_unlearn.functional.memorization.token_nll`): the
    logits, kept for backward, their gradient in backward, and while the NLL is taken two float32 chunks."""
    logits = tokens * shape.vocab
    if s.activation_bytes == 4:
        return (3 if backward else 2) * 4 * logits
    chunks = 2 * 4 * min(logits, CHUNK_ELEMENTS) if temporaries else 0
    return (2 if backward else 1) * 2 * logits + chunks


def forward(shape: Shape, tokens: int, s: Setting, freed: int, temporaries: bool = True) -> int:
    """The most bytes a training forward and backward hold above the persistent ones, the larger of: at the
    forward's end, the activations and the output layer's; at the backward's start, the same with the output
    layer's backward, less the ``freed`` bytes of the previous step's gradients (set to None between the forward
    and the backward) that have not grown again; with checkpointing, also one layer's recomputed activations in
    place of the output layer's."""
    kept = activations(shape, tokens, s)
    end = kept + head(shape, tokens, s, temporaries=temporaries)
    start = kept + head(shape, tokens, s, backward=True, temporaries=temporaries) - freed
    if not s.checkpointing:
        return max(end, start)
    return max(end, start, kept + layer_activations(shape, tokens, s) - freed)


def kl_head(shape: Shape, tokens: int, s: Setting) -> int:
    """Bytes of the KL retain term's output layer at its backward
    (:func:`~lightning_unlearn.functional.losses.token_kl`): the logits, the reference's, their gradient, and per chunk
    the two float32 softmaxes and, for half-precision logits, the float32 copy of the reference's chunk."""
    logits = tokens * shape.vocab
    chunk = min(logits, max(1, CHUNK_ELEMENTS // 4 // shape.vocab) * shape.vocab)
    return 3 * s.activation_bytes * logits + (2 if s.activation_bytes == 4 else 3) * 4 * chunk


@dataclass(frozen=True)
class MethodState:
    """What a method keeps beside the model: whether it trains a LoRA adapter, keeps a reference, and so on."""

    lora: bool = False
    reference: bool = False  # a frozen copy of what trains (KL retain term)
    base: bool = False  # TA's θ_base, and the copy kept while an edit is scored
    ascent_adapter: bool = False  # TAU on LoRA: the SGA phase's adapter, frozen beside the trained one
    adversary: bool = False  # relearning-aware: a copy of the model, its gradients and Adam state in the step
    retain: bool = False


def persistent(method: MethodState, shape: Shape, s: Setting) -> dict[str, float]:
    """Bytes that live between steps, by part (each process's under ZeRO-3)."""
    p, w = shape.parameters(), s.weight_bytes
    trained = shape.lora_parameters() if method.lora else p
    shards = max(1, s.zero3_processes)
    if s.zero3_processes:  # DeepSpeed bf16: bfloat16 weights and gradients, float32 master weights and moments
        parts = {
            "weights": 2 * (p + (trained if method.lora else 0)),
            "gradients": 2 * trained,
            "optimizer": 12 * trained,
        }
    else:
        parts = {
            "weights": w * (p + (trained if method.lora else 0)),
            "gradients": w * trained,
            "optimizer": 2 * w * trained,
        }
    parts["reference"] = w * trained if method.reference else 0
    edited = shape.lora_b_parameters() if method.lora else p  # on an adapter TA edits its B factors only
    parts["base"] = w * edited if method.base else 0
    parts["ascent adapter"] = w * trained if method.ascent_adapter else 0
    parts["adversary copy"] = w * p if method.adversary else 0
    return {part: size / shards for part, size in parts.items()}


def peak(method: MethodState, shape: Shape, records: int, tokens: int, s: Setting) -> float:
    """The most bytes alive in a step cycle: the persistent ones plus the step's largest transient."""
    kept = sum(persistent(method, shape, s).values())
    n = records * tokens
    w, trained = s.weight_bytes, shape.lora_parameters() if method.lora else shape.parameters()
    # the gradients set to None before the backward, less those of the output and last layers, which grow first
    regrown = 0 if method.lora else shape.vocab * shape.hidden + shape.layer_parameters()
    freed = 0 if s.zero3_processes else max(0, w * (trained - regrown))
    transient = forward(shape, n, s, freed)
    if s.zero3_processes:
        transient += 2 * 2 * max(shape.layer_parameters(), shape.vocab * shape.hidden)  # gathered, and prefetched
    if method.adversary:  # the forward at θ keeps no graph, only its logits: the copy's Adam, gradients, forward
        at_theta = head(shape, n, s, temporaries=False)
        transient = at_theta + 3 * w * trained + forward(shape, n, s, 0)
    if method.retain:  # the retain pass, after the forget pass's backward
        retain = kl_head(shape, n, s)
        if s.checkpointing:
            retain = max(retain, layer_activations(shape, n, s))
        transient = max(transient, activations(shape, n, s) + retain)
    if method.base:  # scoring an edit (no graph): one more copy of the edited weights, for the restore
        edited = shape.lora_b_parameters() if method.lora else shape.parameters()
        transient = max(transient, w * edited / max(1, s.zero3_processes) + head(shape, n, s))  # ZeRO-3: shards
    return kept + transient


def method_state(name: str, lora: bool = False) -> MethodState:
    """What registry method ``name`` keeps, read from its module built on a one-layer model (its KL reference, TA's
    θ_base, the adversary's copy, the retain pass), so it follows the registry's settings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lightning_unlearn.methods import check_method
    from lightning_unlearn.modules import TAU, TaskArithmetic

    recipe = check_method(name)
    tiny = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
    module = recipe.make(LlamaForCausalLM(tiny))
    return MethodState(
        lora=lora,
        reference=module.uses_reference,
        base=isinstance(module, TaskArithmetic),
        ascent_adapter=lora and isinstance(module, TAU),
        adversary=module.hparams.get("adversary_steps", 0) > 0,
        retain=recipe.needs_retain,
    )


def load_config(source: str | Path) -> Any:
    """A model's configuration, no weights: a folder or hub id (``config.json``), or a config JSON file."""
    from transformers import AutoConfig

    path = Path(source)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"no config file {path}")
        values = json.loads(path.read_text())
        if "model_type" not in values:
            raise ConfigurationError(f"{path} has no model_type: it is not a Hugging Face model config")
        return AutoConfig.for_model(**values)
    try:
        return AutoConfig.from_pretrained(str(source))
    except OSError as error:
        raise FileNotFoundError(f"cannot read a model config from {source}: {error}") from None


@dataclass(frozen=True)
class Option:
    """One way to run: a label and its peak bytes per GPU."""

    label: str
    peak: float


def plan_options(
    shape: Shape, name: str, lora: bool, processes: int, records: int, tokens: int, precision: str, checkpointing: bool
) -> list[Option]:
    """The run as asked, then the changes that lower its peak: LoRA, ZeRO-3 over 8 processes (or the ones asked),
    gradient checkpointing, a batch of 1 (each alone)."""
    zero3 = max(processes, 8)

    def run(lora_: bool, shards: int, checkpointing_: bool, records_: int) -> float:
        s = setting("bf16-true" if shards else precision, checkpointing_, shards)
        return peak(method_state(name, lora_), shape, records_, tokens, s)

    shards = processes if processes > 1 else 0
    options = [Option("as asked", run(lora, shards, checkpointing, records))]
    if not lora:
        options.append(Option("--peft lora", run(True, shards, checkpointing, records)))
    if not shards and not method_state(name).adversary:  # relearning-aware unlearning copies the whole model
        options.append(Option(f"ZeRO-3 over {zero3} GPUs", run(lora, zero3, checkpointing, records)))
    if not checkpointing:
        options.append(Option("gradient checkpointing", run(lora, shards, True, records)))
    if records > 1:
        options.append(Option("batch size 1", run(lora, shards, checkpointing, 1)))
    return options


def plan_table(options: list[Option]) -> list[str]:
    """The options as a Markdown table: GB per GPU, and ✓ or ✗ for each of :data:`CARDS`."""
    header = "| run | peak per GPU | " + " | ".join(f"{card} GB" for card in CARDS) + " |"
    lines = [header, "|---" * (2 + len(CARDS)) + "|"]
    for option in options:
        fits = ["✓" if option.peak <= card * GB else "✗" for card in CARDS]
        lines.append(f"| {option.label} | {option.peak / GB:.0f} GB | " + " | ".join(fits) + " |")
    return lines


def plan_text(
    source: str,
    name: str,
    lora: bool = False,
    devices: int = 1,
    strategy: str = "ddp",
    records: int = 8,
    tokens: int = 512,
    precision: str = "bf16-true",
    checkpointing: bool = True,
) -> str:
    """``lightning-unlearn plan``: the model's shape from its config (no weights), the method's persistent and peak
    bytes per GPU, and what fits on :data:`CARDS` as asked and with each change that lowers the peak."""
    if strategy not in ("ddp", "deepspeed_stage_3"):
        raise ConfigurationError(f"--strategy is ddp (each GPU holds the model) or deepspeed_stage_3, got {strategy!r}")
    shape = Shape.from_config(load_config(source), Path(source).stem if source.endswith(".json") else source)
    shards = devices if strategy == "deepspeed_stage_3" and devices > 1 else 0
    state = method_state(name, lora)
    if shards and state.adversary:
        raise ConfigurationError(
            f"{name} copies the whole model for its simulated attacker: it does not run under ZeRO-3"
        )
    s = setting("bf16-true" if shards else precision, checkpointing, shards)
    kept = persistent(state, shape, s)
    run = "one GPU" if devices == 1 else f"{devices} GPUs, " + ("ZeRO-3" if shards else "each holding the model")
    parts = ", ".join(f"{part} {size / GB:.1f}" for part, size in kept.items() if size)
    options = plan_options(shape, name, lora, shards, records, tokens, precision, checkpointing)
    lines = [
        f"{shape.name}: {shape.parameters() / 1e9:.2f}B parameters, {shape.layers} layers, vocabulary "
        f"{shape.vocab:,} (from its config; no weights read)",
        f"{name}{' with LoRA (rank 16)' if lora else ''}, {'DeepSpeed bf16' if shards else precision}, a batch of "
        f"{records} x {tokens} tokens, gradient checkpointing {'on' if checkpointing else 'off'}, {run}",
        f"persistent per GPU: {sum(kept.values()) / GB:.1f} GB ({parts})",
        f"peak per GPU: {options[0].peak / GB:.1f} GB",
        "",
        *plan_table(options),
    ]
    return "\n".join(lines)

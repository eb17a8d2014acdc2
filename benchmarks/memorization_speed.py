"""Speed of our EL_n and MA against the published implementations' algorithm, on the same model and batch.

Baselines (Jang et al.'s and the paper's code): EL_n runs one batched greedy ``generate`` per prefix length
t = 1..L-n; MA runs one forward pass per position. Ours: one teacher-forced pass, then decoding only the prefixes
whose first greedy token is wrong (EL_n); one teacher-forced pass (MA). Prints the time ratios and whether the
values are identical. Three batches: text the model has memorized (its own greedy output), partly memorized
(the same with a token changed every 16), and unmemorized (random tokens).

    python benchmarks/memorization_speed.py [--length 64] [--batch 16] [--n 10]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from lightning_unlearn.evaluation.scoring import extraction_likelihood
from lightning_unlearn.functional.memorization import memorization_accuracy


def baseline_extraction_likelihood(model, input_ids: torch.Tensor, n: int) -> torch.Tensor:
    """One batched greedy generate per prefix length, n-gram overlap with Python sets (equal-length batch)."""
    batch, length = input_ids.shape
    overlaps = torch.zeros(batch, length - n, dtype=torch.float64)
    for t in range(1, length - n + 1):
        out = model.generate(input_ids[:, :t], max_new_tokens=length - t, min_new_tokens=length - t, do_sample=False)
        for row in range(batch):
            a, b = out[row, t:].tolist(), input_ids[row, t:].tolist()
            grams = {tuple(b[i : i + n]) for i in range(len(b) - n + 1)}
            positions = len(a) - n + 1
            overlaps[row, t - 1] = sum(tuple(a[i : i + n]) in grams for i in range(positions)) / positions
    return overlaps.mean(1).float()


def baseline_memorization_accuracy(model, input_ids: torch.Tensor) -> torch.Tensor:
    """One forward pass per position t, comparing the greedy next token with x_t."""
    hits = [model(input_ids[:, :t]).logits[:, -1].argmax(-1) == input_ids[:, t] for t in range(1, input_ids.shape[1])]
    return torch.stack(hits, 1).float().mean(1)


def timed(fn, repeats: int = 1):
    start = time.perf_counter()
    for _ in range(repeats):
        value = fn()
    return value, (time.perf_counter() - start) / repeats


def make_batches(model, batch: int, length: int, vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(1, vocab, (batch, 2), generator=g)
    memorized = model.generate(prompts, max_new_tokens=length - 2, min_new_tokens=length - 2, do_sample=False)
    partly = memorized.clone()
    partly[:, 8::16] = (partly[:, 8::16] + 1) % vocab
    random = torch.randint(1, vocab, (batch, length), generator=g)
    return {"memorized": memorized, "partly memorized": partly, "unmemorized": random}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=16, help="sequences per batch")
    parser.add_argument("--n", type=int, default=10, help="EL n-gram size")
    parser.add_argument("--vocab", type=int, default=4096)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = GPTNeoConfig(
        vocab_size=args.vocab,
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        attention_types=[[["global", "local"], 2]],
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPTNeoForCausalLM(config).eval()
    model.generation_config.eos_token_id = None  # generations run their full length, as EL_n requires
    model.generation_config.pad_token_id = 0
    print(
        f"GPT-Neo {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, batch {args.batch} x "
        f"{args.length} tokens, n={args.n}, {torch.get_num_threads()} threads"
    )
    print(f"{'batch':<18} {'metric':<5} {'baseline s':>10} {'ours s':>8} {'speed-up':>9}  identical")
    table = {}
    with torch.no_grad():
        for name, ids in make_batches(model, args.batch, args.length, args.vocab).items():
            mask = torch.ones_like(ids)
            base_el, base_el_s = timed(lambda ids=ids: baseline_extraction_likelihood(model, ids, args.n))
            our_el, our_el_s = timed(lambda ids=ids, mask=mask: extraction_likelihood(model, ids, mask, n=args.n))
            base_ma, base_ma_s = timed(lambda ids=ids: baseline_memorization_accuracy(model, ids), repeats=3)
            our_ma, our_ma_s = timed(
                lambda ids=ids, mask=mask: memorization_accuracy(model(ids, attention_mask=mask).logits, ids, mask),
                repeats=3,
            )
            for metric, base, ours, base_s, ours_s in (
                ("EL", base_el, our_el, base_el_s, our_el_s),
                ("MA", base_ma, our_ma, base_ma_s, our_ma_s),
            ):
                same = bool(torch.allclose(base, ours, atol=1e-6))
                speed_up, identical = table.get(name, ({}, True))
                table[name] = ({**speed_up, metric: base_s / ours_s}, identical and same)
                print(
                    f"{name:<18} {metric:<5} {base_s:>10.3f} {ours_s:>8.3f} {base_s / ours_s:>8.1f}x  {same}"
                    f"  (mean {ours.mean():.3f})"
                )
    print(f"\n| batch | EL_{args.n} speed-up | MA speed-up | identical |\n|---|---|---|---|")
    for name, (speed_up, identical) in table.items():
        print(f"| {name} | {speed_up['EL']:.1f}x | {speed_up['MA']:.1f}x | {'yes' if identical else 'no'} |")


if __name__ == "__main__":
    main()

"""``lightning-unlearn``: command-line entry point.

    lightning-unlearn audit --model PATH_OR_ID --data FILE [--holdout FILE] [--threshold G] [--output CSV]

``audit`` prints the per-sample memorization g of any causal LM on any text file, flagging the records above the
threshold (the holdout mean g when ``--holdout`` is given). Errors a user can fix print one line and exit 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
from pathlib import Path

from lightning_unlearn import __version__
from lightning_unlearn.files import write_text_atomically


def _audit(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from lightning_unlearn.data import UnlearningDataModule
    from lightning_unlearn.memorization import score_memorization
    from lightning_unlearn.modules import check_causal_lm, load_causal_lm

    if not Path(args.model).exists() and Path(args.model).is_absolute():
        raise FileNotFoundError(f"no model at {args.model}")
    tokenizer = AutoTokenizer.from_pretrained(args.model, **({"gguf_file": args.gguf_file} if args.gguf_file else {}))
    datamodule = UnlearningDataModule(
        tokenizer, args.data, holdout=args.holdout, max_length=args.max_length, text_column=args.text_column
    )
    datamodule.setup()  # bad data fails here, before a possibly large model loads
    model = load_causal_lm(args.model, args.gguf_file)
    check_causal_lm(model)
    scores = score_memorization(model, datamodule.scoring_dataloader("forget"), progress=True)
    threshold = args.threshold
    if args.holdout is not None:
        threshold = statistics.fmean(score_memorization(model, datamodule.scoring_dataloader("holdout")).values())
    texts = datamodule.split("forget").texts
    rows = [(i, scores[i], scores[i] > threshold, texts[i]) for i in range(len(texts))]
    above = sum(flag for _, _, flag, _ in rows)
    print(f"{'id':>5}  {'g':>6}  above  text")
    for i, g, flag, text in rows:
        print(f"{i:>5}  {g:6.3f}  {'yes' if flag else '':>5}  {text[:70]}")
    values = [g for _, g, _, _ in rows]
    print(
        f"{len(rows)} samples: g mean {statistics.fmean(values):.3f}, max {max(values):.3f}; "
        f"{above} above the threshold {threshold:.3f}" + (" (holdout mean)" if args.holdout else "")
    )
    if args.output:
        _write_csv(Path(args.output), rows)


def _write_csv(path: Path, rows: list[tuple[int, float, bool, str]]) -> None:
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["sample_id", "g", "above_threshold", "text"])
    writer.writerows(rows)
    write_text_atomically(path, table.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lightning-unlearn", description="Per-sample LLM memorization and unlearning."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    audit = commands.add_parser("audit", help="per-sample memorization of a causal LM on a text file")
    audit.add_argument("--model", required=True, help="a local folder or hub id of a causal LM")
    audit.add_argument("--data", required=True, help=".jsonl/.json/.csv/.parquet/.txt of the texts to audit")
    audit.add_argument("--holdout", help="unseen texts of the same kind: their mean g is the threshold")
    audit.add_argument("--threshold", type=float, default=0.6, help="g above which a record is flagged (no holdout)")
    audit.add_argument("--text-column", default="text")
    audit.add_argument("--max-length", type=int, default=200)
    audit.add_argument("--gguf-file", help="a GGUF file inside --model")
    audit.add_argument("--output", help="write the per-sample table to this CSV file")
    args = parser.parse_args(argv)
    try:
        _audit(args)
    except (FileNotFoundError, KeyError, TypeError, ValueError) as error:
        print(f"lightning-unlearn {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

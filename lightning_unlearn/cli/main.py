"""``lightning-unlearn``: the command line.

    lightning-unlearn unlearn --model ID_OR_DIR --forget FILE --holdout FILE [--retain FILE] --output DIR
                              [--method sga-kl|sga|npo-kl|ta|tau|ga-mean|...] [--peft lora] [--retrain MODEL]
                              [--recovery-attacks relearn,relearn_sweep,int8,int4,sampling]
                              [--accelerator auto] [--precision bf16-mixed|32-true] [--max-steps 600]
                              [--trainer.KEY=VALUE] [--method.KEY=VALUE] [--checkpoints DIR [--checkpoint-every 10]]
    lightning-unlearn demo [--output DIR] [--methods sga-kl,ta,...|all] [--seed N | --seeds 0,1,2] [--small]
                           [--base-model ID_OR_DIR] [--no-retrain]
    lightning-unlearn testbed [--output DIR] [--small] [--base-model ID_OR_DIR] [--retrain]
    lightning-unlearn fit --config FILE.yaml [--trainer.max_epochs=...] [--output DIR]
    lightning-unlearn audit --model PATH_OR_ID --data FILE [--holdout FILE] [--alpha 0.05] [--el] [--output DIR]
                            [--utility TASK,... [--include-path DIR]]
                            [--recovery-attacks relearn,relearn_sweep,int8,int4,sampling [--relearn-data FILE]]
                            [--retrain MODEL]
    lightning-unlearn plan --model PATH_OR_ID_OR_CONFIG --method NAME [--peft lora] [--devices N]
                           [--strategy ddp|deepspeed_stage_3] [--batch-size 8] [--max-length 512]
    lightning-unlearn verify --model PATH_OR_ID --record unlearning.json --forget FILE [--holdout FILE]
                             [--recovery-attacks relearn,relearn_sweep,int8,int4,sampling [--relearn-data FILE]]

``unlearn`` is :func:`lightning_unlearn.unlearn` on files: it writes the unlearned model and ``unlearning.json`` (the
rule, the threshold, every record's g before and after, holdout NLL and attack AUCs before and after) to ``--output``,
prints a summary, and exits 1 when the rule was not met (``--allow-unmet``: 0). ``--trainer.KEY=VALUE`` sets any
``lightning.Trainer`` argument, parsed as ``fit`` parses it (LightningCLI's parser: the Trainer's types, class paths
such as ``--trainer.callbacks+=LearningRateMonitor``), ``--method.KEY=VALUE`` any argument of the method's module
(values in YAML).
``demo`` unlearns the embedded testbed with each method and compares them (:mod:`lightning_unlearn.demo`); with
``--base-model`` the testbed's records are first injected into that pretrained model by fine-tuning (the paper's
setting: ``--base-model EleutherAI/gpt-neo-125m`` on a machine that reaches the model hub).
``testbed`` writes the testbed's model and jsonl splits to a folder (what ``examples/*.yaml`` read).
``fit`` is a LightningCLI over our modules and :class:`~lightning_unlearn.UnlearningDataModule`: every Trainer
option and callback can be set from YAML or flags; ``--output`` saves the unlearned model with ``save_pretrained``.
``audit`` prints the per-sample memorization report of any causal LM on any text file. With ``--holdout`` (unseen
texts of the same kind) it tests each record against them: a p-value from the holdout's tail (an exponential fitted to
its top quarter), flagged when significant at ``--alpha`` after a Benjamini–Hochberg correction over the records, and
says from which g a record is always found; the threshold is the holdout's 0.95 quantile of g (``--threshold
holdout_mean`` for its mean) with a bootstrap interval. ``--utility`` adds lm-eval tasks (names, comma-separated;
from ``--include-path``, a folder of task YAML, or lm-eval's built-in tasks) to the report. ``--recovery-attacks`` asks
whether the records stay forgotten when the model is attacked (:mod:`lightning_unlearn.evaluation.recovery`, each attack
on a copy): fine-tuned on ``--relearn-data``, quantized to int8 or int4, or sampled; per attack, how many records are
above the threshold afterwards, and how many holdout records under the same attack. ``verify`` checks a model against
its takedown record (:func:`lightning_unlearn.verification.verify`): whether it is the recorded model (its weights'
SHA-256), and whether the forget texts, matched to the record by SHA-256, are still at or below the record's threshold
(with ``--holdout``, the per-record verdict again); exit 0 when all holds, 1 when not. Errors a user can fix print one
line and exit 2. ``plan`` reads only a model's configuration (a folder, a hub id or a config JSON file) and prints the
memory model's persistent and peak bytes per GPU for a method (:mod:`lightning_unlearn.planning`), what fits on 24,
40, 80 and 141 GB cards, and what would make it fit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lightning_unlearn.utilities.console import quiet_libraries
from lightning_unlearn.utilities.errors import ConfigurationError
from lightning_unlearn.utilities.version import __version__


def _names(text: str | None) -> list[str]:
    """A comma-separated option as its non-empty, stripped items (none when not given)."""
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def _precision(args: argparse.Namespace, mixed: bool = True) -> str:
    """``--precision``, else :func:`~lightning_unlearn.integrations.huggingface.default_precision` for
    ``--accelerator``, said when it is not float32."""
    from lightning_unlearn.integrations.huggingface import default_precision

    if args.precision is not None:
        return args.precision
    precision = default_precision(args.accelerator, mixed)
    if precision != "32-true":
        print(f"precision {precision}: the default on this GPU (--precision 32-true for float32)", file=sys.stderr)
    return precision


def _demo(args: argparse.Namespace) -> None:
    from lightning_unlearn.demo import DEFAULT_METHODS, check_methods, run_demo, run_seeds
    from lightning_unlearn.methods import METHODS
    from lightning_unlearn.testbed import SMALL_TESTBED, build_testbed

    methods = list(METHODS) if args.methods == "all" else _names(args.methods) or list(DEFAULT_METHODS)
    check_methods(methods)
    options = (SMALL_TESTBED if args.small else {}) | {"accelerator": args.accelerator, "precision": _precision(args)}
    if args.seeds is not None:
        try:
            seeds = [int(seed) for seed in _names(args.seeds)]
        except ValueError:
            raise ConfigurationError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
        run_seeds(
            args.output,
            methods,
            seeds,
            args.cache_dir,
            args.max_steps,
            retrain=not args.no_retrain,
            base_model=args.base_model,
            **options,
        )
        return
    testbed = build_testbed(args.seed, args.cache_dir, progress=True, base_model=args.base_model, **options)
    where = {"accelerator": testbed.config.accelerator, "precision": testbed.config.precision}
    run_demo(
        args.output, methods, args.seed, testbed=testbed, max_steps=args.max_steps, retrain=not args.no_retrain, **where
    )


def _unlearn(args: argparse.Namespace) -> int:
    from lightning.pytorch.utilities import rank_zero_only

    from lightning_unlearn.unlearning import unlearn
    from lightning_unlearn.utilities.files import exists

    if exists(args.output) and not args.overwrite:
        raise FileExistsError(f"{args.output} exists already: choose another --output, or pass --overwrite")
    options = dict(args.method_options)
    if args.peft == "lora":
        from lightning_unlearn.utilities.extras import require_peft

        require_peft()
        from peft import LoraConfig

        options.setdefault("peft", LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear"))
    trainer = {"accelerator": args.accelerator, "precision": _precision(args), "max_steps": args.max_steps}
    result = unlearn(
        args.model,
        args.forget,
        args.holdout,
        retain=args.retain,
        method=args.method,
        tokenizer=args.tokenizer,
        method_options=options,
        max_length=args.max_length,
        long_texts=args.long_texts,
        batch_size=args.batch_size,
        checkpoints=args.checkpoints,
        checkpoint_every=args.checkpoint_every,
        retrain=args.retrain,
        recovery_attacks=_names(args.recovery_attacks),
        include_texts=args.include_texts,
        **(trainer | args.trainer_options),
    )
    result.save(args.output)  # every process takes part (ZeRO-3 gathers); the first writes
    if rank_zero_only.rank == 0:  # one summary, whatever the number of processes
        print(f"{result.summary()}\nwritten to {args.output}/: the model and unlearning.json")
        if args.report:
            _write_report(args.report, result.html())
    return 0 if result.rule_met or args.allow_unmet else 1


def _verify(args: argparse.Namespace) -> int:
    from lightning_unlearn.verification import read_record, verify

    attacks = _names(args.recovery_attacks)
    _check_relearn_data(attacks, args.relearn_data, "the records")
    read_record(args.record)  # a malformed record fails before any model loads
    found = verify(
        args.model,
        args.record,
        args.forget,
        args.holdout,
        recovery_attacks=attacks,
        relearn=args.relearn_data,
        device={"gpu": "cuda"}.get(args.accelerator, args.accelerator),
    )
    print(found.text())
    if args.report:
        _write_report(args.report, found.html())
    return 0 if found.passed else 1


def _check_relearn_data(attacks: list[str], relearn_data: str | None, records: str) -> None:
    """A clear error when a relearning attack is asked for without the texts it fine-tunes on."""
    from lightning_unlearn.evaluation.recovery import RELEARNING_ATTACKS

    relearning = [attack for attack in attacks if attack in RELEARNING_ATTACKS]
    if relearning and not relearn_data:
        raise ConfigurationError(
            f"--recovery-attacks {relearning[0]} needs --relearn-data: texts of the same kind, never {records}"
        )


def _plan(args: argparse.Namespace) -> None:
    from lightning_unlearn.planning import plan_text

    print(
        plan_text(
            args.model,
            args.method,
            lora=args.peft == "lora",
            devices=args.devices,
            strategy=args.strategy,
            records=args.batch_size,
            tokens=args.max_length,
            precision=args.precision,
            checkpointing=not args.no_gradient_checkpointing,
        )
    )


def _write_report(path: str, page: str) -> None:
    """Writes the HTML ``page`` to ``path``, whole or not at all, and says where."""
    from lightning_unlearn.utilities.files import write_text_atomically

    write_text_atomically(Path(path), page)
    print(f"report: {path}")


def dotted_options(extra: list[str], prefixes: tuple[str, ...]) -> dict[str, list[str]]:
    """``--PREFIX.KEY=VALUE`` (or ``--PREFIX.KEY VALUE``) flags by prefix, each as ``--PREFIX.KEY=VALUE``; anything
    else is an error."""
    options: dict[str, list[str]] = {prefix: [] for prefix in prefixes}
    items = iter(extra)
    for item in items:
        name, equals, value = item.partition("=")
        prefix, _, key = name.removeprefix("--").partition(".")
        if not item.startswith("--") or prefix not in options or not key:
            allowed = ", ".join(f"--{prefix}.KEY=VALUE" for prefix in prefixes)
            raise ConfigurationError(f"unrecognized argument {item!r}; more options are {allowed}")
        if not equals:
            value = next(items, None)
            if value is None:
                raise ConfigurationError(f"{name} needs a value")
        options[prefix].append(f"{name}={value}")
    return options


def trainer_options(flags: list[str]) -> dict[str, Any]:
    """The ``lightning.Trainer`` arguments that ``--trainer.KEY=VALUE`` flags give, parsed as ``lightning-unlearn fit``
    (LightningCLI) parses them: by jsonargparse from the Trainer's signature, with its types and its class paths
    (``--trainer.callbacks+=LearningRateMonitor``); a flag the Trainer does not take, or a value of the wrong type,
    is a :class:`ConfigurationError`."""
    import lightning as L
    from jsonargparse import ArgumentError, ArgumentParser

    trainer = ArgumentParser(exit_on_error=False)
    trainer.add_class_arguments(L.Trainer, "trainer", fail_untyped=False, instantiate=False)
    try:
        given = trainer.parse_args(flags, defaults=False)
    except ArgumentError as error:
        raise ConfigurationError(f"--trainer: {error}") from None
    return dict(trainer.instantiate(given).get("trainer") or {})


def method_options(flags: list[str]) -> dict[str, Any]:
    """The module arguments that ``--method.KEY=VALUE`` flags give, values read as Python literals, else YAML
    (``true``, ``[1, 2]``), else text. The method checks their names
    (:meth:`~lightning_unlearn.modules.registry.Method.make`)."""
    import ast

    import yaml

    options: dict[str, Any] = {}
    for flag in flags:
        name, _, value = flag.partition("=")
        try:
            options[name.removeprefix("--method.")] = ast.literal_eval(value)  # 3e-4 is a float here, YAML's a string
        except (ValueError, SyntaxError):
            options[name.removeprefix("--method.")] = yaml.safe_load(value)
    return options


def _testbed(args: argparse.Namespace) -> None:
    from lightning_unlearn.testbed import SMALL_TESTBED, build_testbed, describe

    if Path(args.output).exists() and not args.overwrite:
        raise FileExistsError(f"{args.output} exists already: choose another --output, or pass --overwrite")
    options = (SMALL_TESTBED if args.small else {}) | {"accelerator": args.accelerator, "precision": _precision(args)}
    testbed = build_testbed(args.seed, args.cache_dir, progress=True, base_model=args.base_model, **options)
    retrain = testbed.retrained(progress=True) if args.retrain else None
    testbed.export(args.output, overwrite=args.overwrite, retrain=retrain)
    written = "model/, retrain/," if args.retrain else "model/,"
    print(f"{describe(testbed)}\nwritten to {args.output}/: {written} forget.jsonl, retain.jsonl, holdout.jsonl")


def _audit(args: argparse.Namespace) -> None:
    import torch

    from lightning_unlearn.data import UnlearningDataModule, load_tokenizer
    from lightning_unlearn.evaluation.recovery import check_recovery_attacks
    from lightning_unlearn.evaluation.report import memorization_report, summary_markdown, write_report
    from lightning_unlearn.evaluation.terminal import report_text
    from lightning_unlearn.evaluation.utility import check_tasks, evaluate_utility, task_manager
    from lightning_unlearn.integrations.huggingface import check_causal_lm, load_causal_lm

    tasks = _names(args.utility)
    attacks = check_recovery_attacks(_names(args.recovery_attacks), where=" in --recovery-attacks")
    _check_relearn_data(attacks, args.relearn_data, "the audited records")
    if tasks:  # an unknown task or a missing lm-eval fails before any model loads
        manager = task_manager(args.include_path)
        check_tasks(tasks, manager)
    tokenizer = load_tokenizer(args.model, args.gguf_file)
    datamodule = UnlearningDataModule(
        tokenizer,
        args.data,
        holdout=args.holdout,
        max_length=args.max_length,
        text_column=args.text_column,
        relearn=args.relearn_data,
    )
    datamodule.setup()  # bad data fails here, before a possibly large model loads
    dtype = {"32-true": torch.float32, "bf16-true": torch.bfloat16, "16-true": torch.float16}[_precision(args, False)]
    model = load_causal_lm(args.model, args.gguf_file, dtype=dtype)
    check_causal_lm(model)
    datamodule.check_fits(model)
    retrain = load_retrain(args.retrain, model, dtype)
    threshold = audit_threshold(args)
    options = {"relearn_steps": args.relearn_steps, "relearn_learning_rate": args.relearn_lr}
    report = memorization_report(
        model.eval(),
        datamodule,
        el_n=10 if args.el else None,
        threshold=threshold,
        alpha=args.alpha,
        recovery_attacks=attacks,
        recovery_options=options,
        retrain=retrain,
        device={"gpu": "cuda"}.get(args.accelerator, args.accelerator),
    )
    print(report_text(report, threshold, attacks, (args.relearn_steps, args.relearn_lr)))
    s = report.summary
    if tasks:
        s["utility"] = evaluate_utility(model, tokenizer, tasks, batch_size=args.batch_size, manager=manager)
        for task, metrics in s["utility"].items():
            print(f"utility {task}: " + ", ".join(f"{metric} {value:.4f}" for metric, value in metrics.items()))
    if args.output:
        write_report(report, args.output)
        print(f"\n{summary_markdown(s)}written to {args.output}/: per_sample.csv, per_sample.json, summary.json/.md")
    if args.report:
        from lightning_unlearn.evaluation.html import report_html

        _write_report(args.report, report_html(report))


def load_retrain(source: str | None, model: Any, dtype: Any) -> Any:
    """The model of ``--retrain`` (a model that never saw the audited records), checked to take the same tokens as
    ``model``; None when not given."""
    if source is None:
        return None
    from lightning_unlearn.integrations.huggingface import check_causal_lm, load_causal_lm

    retrain = load_causal_lm(source, dtype=dtype)
    check_causal_lm(retrain)
    if retrain.get_input_embeddings().num_embeddings != model.get_input_embeddings().num_embeddings:
        raise ConfigurationError(
            f"--retrain {source} has another vocabulary than --model: the retrain must be the same model trained "
            "without the audited records"
        )
    return retrain.eval()


def audit_threshold(args: argparse.Namespace) -> str | float:
    """The audit's threshold: ``--threshold`` (a name or a float), by default the holdout's 0.95 quantile with a
    holdout and 0.6 without."""
    from lightning_unlearn.functional.thresholds import check_threshold

    threshold = args.threshold
    if threshold is None:
        return "holdout_quantile" if args.holdout else 0.6
    try:
        threshold = float(threshold)
    except ValueError:
        if not args.holdout:
            raise ConfigurationError(
                f"--threshold {threshold} is a threshold of the holdout: give --holdout, or a float"
            ) from None
    return check_threshold(threshold, "--threshold")


def _fit(argv: list[str] | None) -> None:
    """LightningCLI's ``fit`` on ``argv`` (None: the command line itself)."""
    from lightning_unlearn.cli.lightning_cli import UnlearningCLI
    from lightning_unlearn.data import UnlearningDataModule
    from lightning_unlearn.modules import UnlearningModule

    UnlearningCLI(
        UnlearningModule,
        UnlearningDataModule,
        subclass_mode_model=True,
        args=None if argv is None else ["fit", *argv],
        save_config_kwargs={"overwrite": True},
    )


def _where(parser: argparse.ArgumentParser, what: str) -> None:
    """``--accelerator`` and ``--precision`` (Lightning's names) for ``what``."""
    parser.add_argument(
        "--accelerator", default="auto", help=f"cpu, gpu or auto (the GPU when there is one), for {what}"
    )
    parser.add_argument(
        "--precision", help=f"32-true, bf16-mixed, … (default bf16-mixed on a GPU, else 32-true), for {what}"
    )


def parser() -> argparse.ArgumentParser:
    """The command line's parser (``fit`` is LightningCLI's own, after the first word)."""
    from lightning_unlearn.demo import DEFAULT_METHODS
    from lightning_unlearn.methods import METHODS

    root = argparse.ArgumentParser(prog="lightning-unlearn", description="Per-sample LLM memorization and unlearning.")
    root.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = root.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="unlearn the embedded testbed with each method and compare")
    demo.add_argument("--output", default="demo-output", help="folder for summary.json, per_sample.csv, the plots")
    demo.add_argument(
        "--methods",
        help=f"comma-separated, from {', '.join(METHODS)}; 'all' for every one (default: {', '.join(DEFAULT_METHODS)})",
    )
    seeding = demo.add_mutually_exclusive_group()
    seeding.add_argument("--seed", type=int, default=0, help="one run on the testbed of this seed")
    seeding.add_argument("--seeds", help="one run per seed, e.g. 0,1,2: the table gives the median [min, max]")
    demo.add_argument("--max-steps", type=int, default=600, help="optimizer steps at most per method")
    demo.add_argument("--small", action="store_true", help="the small testbed (builds in seconds; for a quick look)")
    demo.add_argument("--cache-dir", help="testbed cache (default: ~/.cache/lightning_unlearn)")
    demo.add_argument("--base-model", help="inject the records into this pretrained causal LM (hub id or folder)")
    demo.add_argument(
        "--no-retrain", action="store_true", help="skip the exact-retrain reference row (it trains the testbed again)"
    )
    _where(demo, "the testbed's training and the unlearning runs")

    testbed = commands.add_parser("testbed", help="write the testbed's model and jsonl splits to a folder")
    testbed.add_argument("--output", default="testbed", help="folder to create")
    testbed.add_argument("--seed", type=int, default=0)
    testbed.add_argument("--small", action="store_true", help="the small testbed")
    testbed.add_argument("--cache-dir", help="testbed cache (default: ~/.cache/lightning_unlearn)")
    testbed.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    testbed.add_argument(
        "--retrain", action="store_true", help="also write the exact retrain (never saw the forget records) as retrain/"
    )
    testbed.add_argument("--base-model", help="inject the records into this pretrained causal LM (hub id or folder)")
    _where(testbed, "the testbed's training (a testbed trained elsewhere than on the CPU is cached apart)")

    commands.add_parser("fit", help="LightningCLI: lightning-unlearn fit --config FILE.yaml (see fit --help)")

    unlearn = commands.add_parser(
        "unlearn", help="unlearn the texts of a file from a causal LM until each is no more memorized than unseen ones"
    )
    unlearn.add_argument("--model", required=True, help="a local folder or hub id of a causal LM")
    unlearn.add_argument("--forget", required=True, help="the texts to unlearn (.jsonl/.json/.csv/.parquet/.txt)")
    unlearn.add_argument("--holdout", required=True, help="unseen texts of the same kind: 16 at least, 64+ advised")
    unlearn.add_argument("--retain", help="texts whose memorization must be kept (sga-kl and npo-kl need them)")
    unlearn.add_argument("--output", required=True, help="folder for the unlearned model and unlearning.json")
    unlearn.add_argument("--method", default="sga-kl", help=f"{', '.join(METHODS)} (default: sga-kl)")
    unlearn.add_argument(
        "--checkpoints",
        help="a folder (or fsspec URL) for checkpoints: run the same command again after a kill and it resumes",
    )
    unlearn.add_argument("--checkpoint-every", type=int, default=10, help="optimizer steps between checkpoints")
    unlearn.add_argument(
        "--retrain", help="a model trained without the forget texts: the result is judged against it, per attack"
    )
    unlearn.add_argument(
        "--recovery-attacks",
        help="comma-separated, from relearn, relearn_sweep, int8, int4, sampling: run on the result",
    )
    unlearn.add_argument("--tokenizer", help="default: the model's own")
    unlearn.add_argument("--peft", choices=("lora",), help="train a LoRA adapter on every linear layer, then merge it")
    unlearn.add_argument("--lora-r", type=int, default=16, help="the adapter's rank (alpha: twice it)")
    unlearn.add_argument("--accelerator", default="auto", help="cpu, gpu, … (Lightning's; default auto)")
    unlearn.add_argument(
        "--precision", help="32-true, bf16-mixed, … (Lightning's; default: bf16-mixed on a GPU, else 32-true)"
    )
    unlearn.add_argument("--max-steps", type=int, default=600, help="optimizer steps at most")
    unlearn.add_argument("--max-length", type=int, default=200, help="tokens per text")
    unlearn.add_argument(
        "--long-texts",
        choices=("truncate", "windows", "error"),
        default="truncate",
        help="texts over --max-length: truncate (with a warning), windows (unlearn every part), or error",
    )
    unlearn.add_argument("--batch-size", type=int, default=32, help="texts per step, forget and retain alike")
    unlearn.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    unlearn.add_argument("--allow-unmet", action="store_true", help="exit 0 even when the rule was not met")
    unlearn.add_argument("--report", help="also write the takedown record as one self-contained HTML file")
    unlearn.add_argument(
        "--include-texts", action="store_true", help="write each forget text into unlearning.json (default: hashes)"
    )

    audit = commands.add_parser("audit", help="per-sample memorization report of a causal LM on a text file")
    audit.add_argument("--model", required=True, help="a local folder or hub id of a causal LM")
    audit.add_argument("--data", required=True, help=".jsonl/.json/.csv/.parquet/.txt of the texts to audit")
    audit.add_argument("--holdout", help="unseen texts of the same kind: each record is tested against them")
    audit.add_argument("--alpha", type=float, default=0.05, help="false-discovery rate of the per-record test")
    audit.add_argument(
        "--threshold",
        help="holdout_quantile (the default with --holdout), holdout_mean, or a g in [0, 1] (default 0.6 without)",
    )
    audit.add_argument("--el", action="store_true", help="add the extraction likelihood EL_10 (slower: it decodes)")
    audit.add_argument("--output", help="write the report here: per_sample.csv/.json, summary.json/.md")
    audit.add_argument("--report", help="also write the report as one self-contained HTML file")
    audit.add_argument("--text-column", default="text")
    audit.add_argument("--max-length", type=int, default=200)
    audit.add_argument("--gguf-file", help="a GGUF file inside --model")
    audit.add_argument("--utility", help="lm-eval tasks to add to the report, comma-separated (needs [eval])")
    audit.add_argument("--include-path", help="a folder of lm-eval task YAML for --utility (else built-in tasks)")
    audit.add_argument("--batch-size", type=int, default=16, help="requests per forward pass for --utility")
    audit.add_argument(
        "--recovery-attacks",
        help="comma-separated, from relearn, relearn_sweep, int8, int4, sampling: each run on a copy",
    )
    audit.add_argument(
        "--retrain",
        help="a model trained without the audited records (the exact retrain): each attack is judged against it",
    )
    audit.add_argument("--relearn-data", help="texts the relearning attack fine-tunes on (never the audited ones)")
    audit.add_argument("--relearn-steps", type=int, default=20, help="full-batch Adam steps of the relearning attack")
    audit.add_argument("--relearn-lr", type=float, default=1e-4, help="learning rate of the relearning attack")
    audit.add_argument(
        "--accelerator", default="auto", help="where to measure: auto (the GPU when there is one), cpu, gpu"
    )
    audit.add_argument(
        "--precision",
        choices=("32-true", "bf16-true", "16-true"),
        help="the model's weights (default: bf16-true on a GPU, else 32-true)",
    )
    plan = commands.add_parser("plan", help="memory per GPU for a method on a model, from its config: what fits")
    plan.add_argument("--model", required=True, help="a local folder, hub id or config JSON file (no weights read)")
    plan.add_argument("--method", default="sga-kl", help=f"{', '.join(METHODS)} (default: sga-kl)")
    plan.add_argument("--peft", choices=("lora",), help="a LoRA adapter (rank 16) on every linear layer")
    plan.add_argument("--devices", type=int, default=1, help="GPUs")
    plan.add_argument(
        "--strategy", default="ddp", choices=("ddp", "deepspeed_stage_3"), help="ddp: every GPU holds the model"
    )
    plan.add_argument("--batch-size", type=int, default=8, help="records per step")
    plan.add_argument("--max-length", type=int, default=512, help="tokens per record")
    plan.add_argument("--precision", default="bf16-true", choices=("bf16-true", "32-true"), help="one GPU's weights")
    plan.add_argument("--no-gradient-checkpointing", action="store_true", help="keep every layer's activations")

    verify = commands.add_parser("verify", help="check a model against its takedown record (unlearning.json)")
    verify.add_argument("--model", required=True, help="the model to check: a local folder or hub id")
    verify.add_argument("--record", required=True, help="the unlearning.json that unlearn wrote")
    verify.add_argument("--forget", required=True, help="the forget texts the record was made for")
    verify.add_argument("--holdout", help="unseen texts of the same kind (the record's holdout): re-run the verdict")
    verify.add_argument(
        "--recovery-attacks", help="comma-separated, from relearn, relearn_sweep, int8, int4, sampling (need --holdout)"
    )
    verify.add_argument("--relearn-data", help="texts the relearning attack fine-tunes on (never the records)")
    verify.add_argument("--accelerator", default="auto", help="where to score: auto, cpu, gpu")
    verify.add_argument("--report", help="also write the verification as one self-contained HTML file")
    return root


def main(argv: list[str] | None = None) -> int:
    """Runs the command line on ``argv`` (default: the process's arguments); returns the exit status."""
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fit"]:
        _fit(None if from_command_line else argv[1:])  # LightningCLI parses, and reports its own errors
        return 0
    commands = parser()
    args, extra = commands.parse_known_args(argv)
    try:
        if args.command != "unlearn" and extra:
            commands.error(f"unrecognized arguments: {' '.join(extra)}")
        with quiet_libraries():
            if args.command == "unlearn":
                flags = dotted_options(extra, ("trainer", "method"))
                args.trainer_options = trainer_options(flags["trainer"])
                args.method_options = method_options(flags["method"])
                return _unlearn(args)
            if args.command == "verify":
                return _verify(args)
            {"demo": _demo, "testbed": _testbed, "audit": _audit, "plan": _plan}[args.command](args)
    except (ConfigurationError, FileExistsError, FileNotFoundError, ImportError) as error:  # the rest: a traceback
        message = " ".join(str(error).split())  # one line, whatever the library's message looked like
        print(f"lightning-unlearn {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

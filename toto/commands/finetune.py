"""``toto-compiled finetune``: fine-tune a checkpoint on the items of a long CSV or Parquet file.

The file is read as ``backtest --input`` reads it; each item's targets, then its
``--exogenous`` columns, are one training series of :meth:`toto.TotoPipeline.fit`. The result
is written into ``--output`` (``save_pretrained``) only once training succeeded.
``python -m toto.training`` runs this same command; under ``torchrun`` every process trains
(DistributedDataParallel) and rank 0 alone reports and writes.
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .common import add_device_argument, check_device
from .errors import CommandFailed, UsageError, run_command
from .options import check_model, names, option_names, read_long_input

PROG = "toto-compiled finetune"
MODULE_PROG = "python -m toto.training"
DESCRIPTION = (
    "Fine-tune a Toto checkpoint on every item of a long CSV or Parquet file (one row per item and timestamp) "
    "and write the result as config.json + model.safetensors into --output, loadable as --model by the other "
    "commands. Under torchrun (torchrun --nproc-per-node=K -m toto.training ...) every process trains and "
    "rank 0 writes."
)
# FitOptions' and fit's names in error messages -> this command's options (min_learning_rate before learning_rate
# is not needed: \b does not match inside a name, "_" being a word character).
OPTION_NAMES = {
    "prediction_length": "--prediction-length",
    "context_length": "--context-length",
    "num_steps": "--steps",
    "batch_size": "--batch-size",
    "learning_rate": "--learning-rate",
    "min_learning_rate": "--min-learning-rate",
    "warmup_steps": "--warmup-steps",
    "decay_steps": "--decay-steps",
    "weight_decay": "--weight-decay",
    "max_grad_norm": "--max-grad-norm",
    "trainable": "--trainable",
    "dropout": "--dropout",
    "validate_every": "--validate-every",
    "early_stopping_patience": "--early-stopping-patience",
    "seed": "--seed",
    "precision": "--precision",
}
SERIES_NAME = re.compile(r"\b(validation_)?inputs\[(\d+)\]")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune a checkpoint on a long CSV or Parquet file", description=DESCRIPTION
    )
    add_arguments(parser)
    parser.set_defaults(run=run, prog=PROG)


def build_parser(prog: str = MODULE_PROG) -> argparse.ArgumentParser:
    """The command as a parser of its own (``python -m toto.training``)."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(run=run, prog=prog)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m toto.training ARGS``: the same as ``toto-compiled finetune ARGS``."""
    args = build_parser().parse_args(argv)
    return run_command(args, args.prog)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    data = parser.add_argument_group("data")
    data.add_argument("--model", required=True, metavar="MODEL", help="the checkpoint to start from: hub id or local folder")
    data.add_argument("--input", required=True, type=Path, metavar="FILE",
                      help="training data: a long-format .csv, .parquet or .pq file (one row per item and timestamp)")
    data.add_argument("--validation-input", type=Path, metavar="FILE",
                      help="validation data, same columns: each item's last --prediction-length steps are scored; "
                           "the weights of the best validation are kept")
    data.add_argument("--id-column", default="item_id", metavar="COLUMN", help="default: %(default)s")
    data.add_argument("--timestamp-column", default="timestamp", metavar="COLUMN", help="default: %(default)s")
    data.add_argument("--target", type=names, default="target", metavar="COLS",
                      help="comma-separated value column(s) to learn to forecast (default: %(default)s)")
    data.add_argument("--exogenous", type=names, default=[], metavar="COLS",
                      help="comma-separated columns read as exogenous variates: seen, never scored (default: none)")
    data.add_argument("--output", required=True, type=Path, metavar="DIR",
                      help="folder to write config.json and model.safetensors into once training succeeded")
    data.add_argument("--force", action="store_true",
                      help="overwrite config.json / model.safetensors already in --output")
    train = parser.add_argument_group("training")
    train.add_argument("--prediction-length", required=True, type=int, metavar="H",
                       help="steps forecast; the validation windows score their last H steps")
    train.add_argument("--context-length", required=True, type=int, metavar="L",
                       help="steps the model reads in each training window: a multiple of the patch size")
    train.add_argument("--steps", required=True, type=int, metavar="N", help="optimizer steps")
    train.add_argument("--batch-size", type=int, default=16, metavar="N",
                       help="windows per step (per process under torchrun) (default: %(default)s)")
    train.add_argument("--learning-rate", type=float, default=1e-4, metavar="LR", help="peak (default: %(default)g)")
    train.add_argument("--min-learning-rate", type=float, default=1e-5, metavar="LR",
                       help="at the end of the decay (default: %(default)g)")
    train.add_argument("--warmup-steps", type=int, metavar="N",
                       help="linear warmup (default: 10%% of --steps, at most 200)")
    train.add_argument("--decay-steps", type=int, metavar="N",
                       help="decay to --min-learning-rate at the end (default: half the steps after the warmup)")
    train.add_argument("--weight-decay", type=float, default=0.01, metavar="W", help="AdamW's (default: %(default)g)")
    train.add_argument("--max-grad-norm", type=_grad_norm, default=1.0, metavar="NORM",
                       help="clip the gradient norm to NORM, or 'none' not to clip (default: %(default)g)")
    train.add_argument("--trainable", type=_trainable, default="all", metavar="all|head|N",
                       help="what trains: everything, the output head only, or the last N transformer layers "
                            "and the head (default: %(default)s)")
    train.add_argument("--dropout", type=float, metavar="P", help="dropout while training (default: the checkpoint's)")
    train.add_argument("--add-exogenous-features", action="store_true",
                       help="learn variate labels telling targets from --exogenous columns (saved with the model)")
    train.add_argument("--validate-every", type=int, metavar="N",
                       help="steps between validations and progress lines (default: a tenth of --steps)")
    train.add_argument("--early-stopping-patience", type=int, metavar="N",
                       help="stop after N validations without a better loss (needs --validation-input)")
    train.add_argument("--seed", type=int, default=0, metavar="N", help="default: %(default)s")
    train.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                       help="compile the training step with torch.compile (default: compile)")
    train.add_argument("--precision", choices=("fp32", "bf16"),
                       help="bf16: autocast to bfloat16 (default: bf16 on CUDA, fp32 on CPU)")
    add_device_argument(parser)
    add("--quiet", action="store_true", help="no progress lines on stderr, only errors and the result line")


def _grad_norm(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None
    return value


def _trainable(text: str) -> str | int:
    text = text.strip()
    if text in ("all", "head"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all', 'head' or a number of last layers, got {text!r}") from None


@dataclass(frozen=True)
class TrainingData:
    """A long file read as training series: one ``(targets + exogenous, time)`` array per item."""

    path: Path
    item_ids: list[Any]
    series: list[Any]  # numpy float64 arrays, NaN = missing

    def describe(self, option: str) -> str:
        steps = sum(values.shape[1] for values in self.series)
        count = len(self.item_ids)
        return f"{option}: {self.path}: {count} item{'s' * (count != 1)}, {steps} steps"


def run(args: argparse.Namespace) -> int:
    """Check, read, train, write; user mistakes raise UsageError (exit 2), a diverged run CommandFailed (exit 1)."""
    from ..training import TrainingDiverged

    try:
        finetune(args)
    except TrainingDiverged as err:
        raise CommandFailed(f"training diverged at {err}; nothing was written to {args.output}") from None
    return 0


def finetune(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from ..pipeline import TotoPipeline
    from ..training import distributed
    from ..training.fit import silent, to_stderr

    options = fit_options(args)
    check_device(args.device)
    check_model(args.model)
    check_output(args.output, args.force)
    inputs = read_training_data(args, args.input, "--input")
    validation = None if args.validation_input is None else read_training_data(args, args.validation_input,
                                                                                  "--validation-input")
    with distributed.process_group(args.device) as device:
        lead = distributed.rank() == 0
        say = to_stderr if lead and not args.quiet else silent
        say(inputs.describe("--input"))
        if validation is not None:
            say(validation.describe("--validation-input"))
        say(f"loading model {args.model} on {device}")
        try:
            pipeline = TotoPipeline.from_pretrained(args.model, device_map=device, torch_compile=False)
        except (OSError, ValueError) as err:  # no such folder, hub failure, bad config or weights
            raise UsageError(f"cannot load model {args.model!r}: {err}") from None
        processes = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        say(f"fine-tuning for {args.steps} steps of {args.batch_size} windows of {args.context_length} steps"
            + (f" in each of {processes} processes" if processes > 1 else "")
            + f" (compile: {'on' if args.compile else 'off'})")
        started = time.perf_counter()
        try:
            tuned = pipeline.fit(
                inputs.series, **options, validation_inputs=None if validation is None else validation.series,
            )
        except ValueError as err:  # short series, a context length off the patch size, all-NaN windows, ...
            raise UsageError(fit_error_message(err, inputs, validation)) from None
        seconds = time.perf_counter() - started
        if not lead:
            return
        try:
            tuned.save_pretrained(args.output)
        except OSError as err:  # permissions, a full disk, ...
            raise UsageError(f"cannot write into {args.output}: {err}") from None
        print(result_line(args.output, tuned.fit_history, seconds), flush=True)


def fit_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :meth:`TotoPipeline.fit`, checked (by :meth:`FitOptions.check`) before any reading."""
    from ..training import FitOptions

    if args.early_stopping_patience is not None and args.validation_input is None:
        raise UsageError("--early-stopping-patience needs --validation-input to watch")
    if args.add_exogenous_features and not args.exogenous:
        raise UsageError("--add-exogenous-features needs --exogenous columns to tell from the targets")
    keys = {args.id_column: "--id-column", args.timestamp_column: "--timestamp-column"}
    named = [(column, "--target") for column in args.target] + [(column, "--exogenous") for column in args.exogenous]
    if len(keys) != 2:
        raise UsageError(f"--id-column and --timestamp-column must name different columns, both are "
                         f"{args.id_column!r}")
    seen: dict[str, str] = dict(keys)
    for column, option in named:
        if column in seen:
            raise UsageError(f"{option} {column!r}: the column is already {seen[column]}")
        seen[column] = option
    options = dict(
        prediction_length=args.prediction_length,
        context_length=args.context_length,
        num_steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        min_learning_rate=args.min_learning_rate,
        warmup_steps=args.warmup_steps,
        decay_steps=args.decay_steps,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        trainable=args.trainable,
        dropout=args.dropout,
        num_exogenous=len(args.exogenous),
        add_exogenous_features=args.add_exogenous_features,
        validate_every=args.validate_every,
        early_stopping_patience=args.early_stopping_patience,
        seed=args.seed,
        compile=args.compile,
        precision=args.precision,
        show_progress=not args.quiet,
    )
    try:
        FitOptions(**options).check()
    except ValueError as err:
        raise UsageError(option_names(str(err), OPTION_NAMES)) from None
    return options


def check_output(output: Path, force: bool) -> None:
    """--output must be a folder (or not yet exist) without a checkpoint in it, unless ``force``."""
    from ..checkpoints.reading import CONFIG_NAME, WEIGHTS_NAME

    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output}: exists and is not a folder")
    existing = [str(output / name) for name in (CONFIG_NAME, WEIGHTS_NAME) if (output / name).exists()]
    if existing and not force:
        verb = "exists" if len(existing) == 1 else "exist"
        raise UsageError(f"--output {output}: {' and '.join(existing)} already {verb}; pass --force to overwrite")


def read_training_data(args: argparse.Namespace, path: Path, option: str) -> TrainingData:
    """Read a long file as ``backtest --input`` does; each item's values are one series."""
    from ..frames.panel import read_panel

    long_input = read_long_input(args, path, more={name: "--exogenous" for name in args.exogenous})
    try:
        panel = read_panel(
            long_input.data.frame, id_column=args.id_column, timestamp_column=args.timestamp_column, target=args.target,
            exogenous=args.exogenous, prediction_length=args.prediction_length,
        )
    except ValueError as err:  # CellError included: a bad cell names its line (or row) and column
        raise long_input.error(err) from None
    return TrainingData(path, [item.item_id for item in panel.items], [item.values for item in panel.items])


def fit_error_message(err: ValueError, inputs: TrainingData, validation: TrainingData | None) -> str:
    """fit's message in this command's words: ``inputs[3]`` -> item 'x' of FILE, ``context_length`` -> --context-length."""

    def series(match: re.Match) -> str:
        data = validation if match.group(1) and validation is not None else inputs
        return f"{data.path}: item {data.item_ids[int(match.group(2))]!r}"

    return option_names(SERIES_NAME.sub(series, str(err)), OPTION_NAMES)


def result_line(output: Path, history: Any, seconds: float) -> str:
    steps = f"{history.steps} step{'s' * (history.steps != 1)}"
    if history.stopped_early:
        steps += " (stopped early)"
    if history.best_step is not None:
        best = dict(history.validation_loss)[history.best_step]
        score = f"best validation loss {best:.4f} at step {history.best_step}"
    else:
        score = f"final training loss {history.train_loss[-1]:.4f}"
    return f"wrote {output}: fine-tuned for {steps} in {seconds:.1f} s, {score}"

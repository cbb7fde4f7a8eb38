"""What the data commands (forecast, backtest, finetune) share: ``--model`` and loading it, the
long-format column options, ``--quantiles``, and a long input file as read. Light to import:
torch and the pipeline load inside the functions that need them."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import DEFAULT_MODEL_ID as DEFAULT_MODEL
from ..frames.io import DataFile, DataFileError, cell_error_message, check_columns, read_data_file, value_error_message
from ..frames.options import DEFAULT_FRAME_BATCH_SIZE as DEFAULT_BATCH_SIZE
from ..frames.panel import CellError
from .common import _finite
from .errors import UsageError

if TYPE_CHECKING:
    from ..pipeline import TotoPipeline

# The forecasting calls' argument names in their errors -> the options that set them.
PREDICT_OPTIONS = {
    "prediction_length": "--prediction-length",
    "num_samples": "--num-samples",
    "samples_per_batch": "--samples-per-batch",
    "batch_size": "--batch-size",
}
# Sampling options: their flags and defaults for a model that draws samples (Toto 1.0).
SAMPLING = {"num_samples": ("--num-samples", 256), "samples_per_batch": ("--samples-per-batch", 256),
            "seed": ("--seed", 0)}  # fmt: skip
NOT_A_CHECKPOINT = "expected a folder with config.json and model.safetensors, a model.safetensors file, or a hub id"


def add_model_argument(parser: argparse.ArgumentParser, **kwargs: Any) -> None:
    kwargs.setdefault("default", DEFAULT_MODEL)
    kwargs.setdefault("help", "hub id or local checkpoint folder (default: %(default)s); offline, "
                      "'toto-compiled export --random-weights DIR' writes one")
    parser.add_argument("--model", **kwargs)


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    from .common import _positive_int

    note = "a quantile model (Toto 2.0) draws no samples and takes none"
    parser.add_argument("--num-samples", type=_positive_int, help=f"default: 256; {note}")
    parser.add_argument("--samples-per-batch", type=_positive_int, help=f"default: 256; {note}")
    parser.add_argument("--seed", type=int, help=f"default: 0; {note}")


def add_block_size_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--decode-block-size", type=_block_size, metavar="STEPS|none",
        help="Toto 2.0: steps decoded per block, each block's medians fed back (default: 768, upstream's quick "
             "start); none: the whole horizon in one block",
    )  # fmt: skip


def _block_size(text: str) -> int:
    if text.strip().lower() == "none":
        return 0  # one block
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of steps or 'none', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of steps or 'none', got {text!r}")
    return value


def apply_block_size(args: argparse.Namespace, pipeline: "TotoPipeline") -> None:
    """Set --decode-block-size on the loaded model; a usage error where it has no blocks or the size
    is not a whole number of patches."""
    if args.decode_block_size is None:
        return
    try:
        pipeline.decode_block_size = args.decode_block_size
    except (AttributeError, ValueError) as err:
        raise UsageError(f"--{str(err).replace('_', '-')}") from None


def sampling_options(args: argparse.Namespace, family: Any) -> dict:
    """--num-samples, --samples-per-batch and --seed as keyword arguments for ``family`` (a model
    family or its class): their defaults where it samples; for a quantile model, none, and
    naming one is a usage error."""
    asked = {key: getattr(args, key) for key in SAMPLING if getattr(args, key, None) is not None}
    if family.output == "quantiles":
        if asked:
            flags = ", ".join(SAMPLING[key][0] for key in asked)
            raise UsageError(f"{flags}: {family.name} forecasts quantiles; it draws no samples")
        return {}
    return {**{key: default for key, (_, default) in SAMPLING.items()}, **asked}


def model_config(model: str) -> tuple[Any, dict]:
    """The family class of ``model`` and its parsed config.json, from that file alone (where the
    workers, not this process, load the weights)."""
    from ..checkpoints.reading import read_config_json, resolve_config
    from ..families import family_of

    try:
        path = resolve_config(model)
        config = read_config_json(path)
        return family_of(config, str(path)), config
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot load model {model!r}: {err}") from None


def block_size_options(args: argparse.Namespace, family: Any, config: dict) -> dict:
    """--decode-block-size for the Ray engine's workers, checked here against the model's config."""
    from ..config import ConfigError

    if args.decode_block_size is None:
        return {}
    try:
        family.check_decode_block_size(config, args.decode_block_size)
    except ConfigError as err:
        raise UsageError(f"cannot load model {args.model!r}: {err}") from None
    except ValueError as err:
        raise UsageError(f"--{str(err).replace('_', '-')}") from None
    return {"decode_block_size": args.decode_block_size}


def names(text: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``: distinct, non-empty names (``--target``, ``--columns``, ...)."""
    parts = [name.strip() for name in text.split(",")]
    if not all(parts) or len(set(parts)) != len(parts):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated names, got {text!r}")
    return parts


def quantiles(text: str) -> list[tuple[str, float]]:
    """``"0.1,0.5"`` -> ``[("0.1", 0.1), ("0.5", 0.5)]``: distinct levels in [0, 1], each with its text."""
    levels = [(part.strip(), _finite(part)) for part in text.split(",")]
    for part, level in levels:
        if level is None or not 0.0 <= level <= 1.0:
            raise argparse.ArgumentTypeError(f"each level must be a number in [0, 1], got {part!r}")
    if len({level for _, level in levels}) != len(levels):
        raise argparse.ArgumentTypeError(f"levels must be distinct, got {text!r}")
    return levels


def frame_levels(levels: list[tuple[str, float]]) -> list[float]:
    """--quantiles for a data frame: each level strictly between 0 and 1."""
    for text, level in levels:
        if not 0.0 < level < 1.0:
            raise UsageError(f"--quantiles: in long format each level must be strictly between 0 and 1, got {text!r}")
    return [level for _, level in levels]


def check_model(model: str, option: str = "--model") -> None:
    """A local path given as the model must look like a checkpoint; anything else is left to the hub."""
    path = Path(model).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise UsageError(f"{option} {model}: not a checkpoint (no config.json in the folder; {NOT_A_CHECKPOINT})")
    if path.is_file() and (path.suffix != ".safetensors" or not (path.parent / "config.json").is_file()):
        raise UsageError(f"{option} {model}: not a checkpoint ({NOT_A_CHECKPOINT})")


def load_pipeline(args: argparse.Namespace) -> TotoPipeline:
    """The model named by --model on --device, compiled as --compile says; a failure is a UsageError."""
    from ..pipeline import TotoPipeline

    check_model(args.model)
    compiling = {None: "TOTO_COMPILE decides", True: "on", False: "off"}[args.compile]
    print(f"loading model {args.model} on {args.device} (compile: {compiling})", file=sys.stderr, flush=True)
    try:
        return TotoPipeline.from_pretrained(args.model, device_map=args.device, torch_compile=args.compile)
    except (OSError, ValueError) as err:  # no such folder, hub failure, bad config or weights
        raise UsageError(f"cannot load model {args.model!r}: {err}") from None


def option_names(text: str, options: dict[str, str] = PREDICT_OPTIONS) -> str:
    """Argument names in ``text`` as the command's options (``prediction_length=5`` -> ``--prediction-length 5``)."""
    for name, option in options.items():
        # \b: no match inside a longer name ("_" is a word character)
        text = re.sub(rf"\b{name}\b(=(?=\S))?", lambda match: option + (" " if match.group(1) else ""), text)
    return text


def forecast_error(err: ValueError, long_input: LongInput | None = None) -> UsageError | DataFileError:
    """A forecasting call's ValueError: one about an option (its message starts with the argument's name, as
    for a forecast too large for memory) names the option; one about the input names the file (and cell)."""
    text = str(err)
    if long_input is None or (not isinstance(err, CellError) and text.startswith(tuple(PREDICT_OPTIONS))):
        return UsageError(option_names(text))
    return long_input.error(err)


def horizon_error(prediction_length: int) -> UsageError:
    """The error for a forecast whose timestamps would run past what a timestamp can hold."""
    return UsageError(f"--prediction-length {prediction_length}: the forecast's timestamps would run past the "
                      "last representable time (year 2262 for datetimes); forecast fewer steps")


def long_columns(args: argparse.Namespace) -> tuple[str, str, list[str]]:
    """The id column, the timestamp column and the targets of a long-format input (defaults applied)."""
    id_column = args.id_column or "item_id"
    timestamp_column = args.timestamp_column or "timestamp"
    targets = args.target or ["target"]
    if len({id_column, timestamp_column}) != 2 or {id_column, timestamp_column} & set(targets):
        raise UsageError(
            f"--id-column {id_column!r}, --timestamp-column {timestamp_column!r} and --target "
            f"{','.join(targets)!r} must name different columns"
        )
    return id_column, timestamp_column, targets


def frame_options(args: argparse.Namespace, levels: list[float], family: Any) -> dict:
    """The keyword arguments that the long-format paths (``predict_df``, backtests, either engine)
    share; ``family``: the model's (:func:`sampling_options`)."""

    id_column, timestamp_column, targets = long_columns(args)
    return dict(
        id_column=id_column,
        timestamp_column=timestamp_column,
        target=targets,
        prediction_length=args.prediction_length,
        quantile_levels=levels,
        batch_size=args.batch_size or DEFAULT_BATCH_SIZE,
        **sampling_options(args, family),
    )


@dataclass(frozen=True)
class LongInput:
    """The columns of a long-format input, and its files as read."""

    id_column: str
    timestamp_column: str
    targets: list[str]
    data: DataFile
    future: DataFile | None = None

    def files(self) -> dict[str, DataFile]:
        """By the frame names that :mod:`toto.frames` errors use."""
        return {"df": self.data, **({"future_df": self.future} if self.future is not None else {})}

    def error(self, err: ValueError) -> DataFileError:
        """A frame's ValueError as an error naming the file, and for a bad cell its line (or row) and column."""
        if isinstance(err, CellError):
            return DataFileError(cell_error_message(err, self.files(), self.id_column, self.timestamp_column))
        return DataFileError(value_error_message(err, self.files()))

    def describe(self) -> str:
        frame = self.data.frame
        items = frame[self.id_column].nunique()
        text = (
            f"input: {self.data.path}: {len(frame)} rows, {items} item{'s' * (items != 1)}, "
            f"target {', '.join(self.targets)}"
        )
        if self.future is not None:
            exogenous = [c for c in self.future.columns() if c not in (self.id_column, self.timestamp_column)]
            text += f"; known future of {', '.join(exogenous) or '(no columns)'} from {self.future.path}"
        return text


def read_long_input(
    args: argparse.Namespace, path: Path | None = None, *, future: Path | None = None, more: dict | None = None
) -> LongInput:
    """Read ``path`` (default --input) (and ``future``) as long-format files and check that the named columns
    exist: the id, timestamp and --target columns, and ``more`` (column -> the option that names it)."""
    id_column, timestamp_column, targets = long_columns(args)
    keys = {id_column: "--id-column", timestamp_column: "--timestamp-column"}
    data = read_data_file(args.input if path is None else path, text_columns=[id_column])
    check_columns(data, {**keys, **{name: "--target" for name in targets}, **(more or {})})
    future_data = None
    if future is not None:
        future_data = read_data_file(future, text_columns=[id_column])
        check_columns(future_data, keys)
    return LongInput(id_column, timestamp_column, targets, data, future_data)

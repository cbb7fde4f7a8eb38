"""``toto-compiled export``: write a checkpoint as ``config.json`` + ``model.safetensors``.

The weights go under the published checkpoint's names (xFormers' fused SwiGLU spelling
``mlp.0.w12``/``mlp.0.w3``), which our loader and upstream's both read; the stale
``rotary_emb.freqs`` buffer is left out (both loaders ignore it). ``--random-weights DIR``
writes the published architecture (or a tiny one) with random weights: an offline ``--model``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .errors import UsageError
from .options import check_model

PROG = "toto-compiled export"
DESCRIPTION = (
    "Write a checkpoint (hub id, local folder, or a fine-tuned Lightning .ckpt on top of one) as "
    "config.json + model.safetensors in the published layout, loadable by Toto.from_pretrained(OUTPUT_DIR). "
    "With --random-weights DIR: the published architecture with random weights, for use without network "
    "(it checks the machinery, not forecast quality)."
)
# A small model of the published architecture's kinds of layers, for quick offline trials.
TINY_OVERRIDES: dict[str, Any] = {
    "patch_size": 16, "stride": 16, "embed_dim": 32, "num_layers": 4, "num_heads": 4, "mlp_hidden_dim": 64,
    "spacewise_every_n_layers": 2, "output_distribution_kwargs": {"k_components": 5},
}  # fmt: skip
TOTO2_SIZES = ("4m", "22m", "313m", "1B", "2.5B")
SIZES = ("published", "tiny", *(f"toto2-{size}" for size in TOTO2_SIZES))


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("export", help="write a checkpoint as config.json + model.safetensors",
                                   description=DESCRIPTION)
    add = parser.add_argument
    add("source", metavar="SOURCE", nargs="?",
        help="hub id, local folder or model.safetensors; with --finetuned-checkpoint, the base model whose "
             "config.json applies")
    add("output_dir", metavar="OUTPUT_DIR", type=Path, nargs="?",
        help="folder to write config.json and model.safetensors into (created if needed)")
    add("--finetuned-checkpoint", type=Path, metavar="CKPT",
        help="weights from a .ckpt of upstream's fine-tuning, read with torch.load(weights_only=True)")
    add("--random-weights", type=Path, metavar="DIR",
        help="instead of SOURCE OUTPUT_DIR: write a checkpoint with random weights into DIR (no network needed); "
             "load it with --model DIR")
    add("--size", choices=SIZES, default="published",
        help="--random-weights: Toto 1.0's published architecture (151M parameters) or a tiny one, or a Toto 2.0 "
             "size (toto2-4m ... toto2-2.5B) (default: %(default)s)")
    add("--seed", type=int, default=0, help="--random-weights: the seed of the weights (default: %(default)s)")
    add("--force", action="store_true", help="overwrite config.json / model.safetensors already in the folder")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load, then write the two files; user mistakes raise (``cli`` reports them)."""
    if args.random_weights is not None:
        if args.source is not None or args.finetuned_checkpoint is not None:
            raise UsageError("--random-weights DIR takes no SOURCE, OUTPUT_DIR or --finetuned-checkpoint")
        written = export_random(args.random_weights, size=args.size, seed=args.seed, force=args.force)
    else:
        if args.output_dir is None:
            raise UsageError("give SOURCE and OUTPUT_DIR, or --random-weights DIR")
        if args.size != "published" or args.seed != 0:
            raise UsageError("--size and --seed are for --random-weights")
        written = export(args.source, args.output_dir, finetuned_checkpoint=args.finetuned_checkpoint,
                         force=args.force)
    print(f"wrote {', '.join(str(path) for path in written)}")
    return 0


def export(
    source: str,
    output_dir: str | os.PathLike,
    *,
    finetuned_checkpoint: str | os.PathLike | None = None,
    force: bool = False,
) -> list[Path]:
    """Load ``source`` (with ``finetuned_checkpoint``'s weights, if given) and save it into ``output_dir``."""
    import torch

    from ..checkpoints.writing import save_pretrained
    from ..families import load_family
    from ..scripts.finetune_toto import load_finetuned_toto

    output_dir = Path(output_dir)
    _check_destination(output_dir, force)  # before the (possibly long) load
    check_model(source, "SOURCE")
    what = f"{source!r} with {str(finetuned_checkpoint)!r}" if finetuned_checkpoint else repr(source)
    try:
        if finetuned_checkpoint is None:  # any family, read from config.json
            model = load_family(source, device=torch.device("cpu")).model
        else:
            model = load_finetuned_toto(source, finetuned_checkpoint, map_location="cpu")
    except (OSError, ValueError) as err:  # no such file, hub failure, bad config, weights or pickle
        raise UsageError(f"cannot load model {what}: {err}") from None
    try:
        return save_pretrained(model, output_dir)
    except OSError as err:  # permissions, full disk, ...
        raise UsageError(f"cannot write into {output_dir}: {err}") from None


def export_random(output_dir: str | os.PathLike, *, size: str = "published", seed: int = 0,
                  force: bool = False) -> list[Path]:
    """A random-weight checkpoint of the published (or a tiny) architecture, in the published layout."""
    from ..checkpoints.random_weights import write_checkpoint
    from ..checkpoints.reading import CONFIG_NAME, WEIGHTS_NAME
    from ..config import PUBLISHED_CONFIG

    output_dir = Path(output_dir)
    _check_destination(output_dir, force)
    try:
        if size.startswith("toto2-"):
            from ..toto2.config import PUBLISHED_TOTO2_CONFIGS
            from ..toto2.loading import write_random_toto2

            write_random_toto2(output_dir, PUBLISHED_TOTO2_CONFIGS[size.removeprefix("toto2-")], seed=seed)
        else:
            write_checkpoint(output_dir, {**PUBLISHED_CONFIG, **(TINY_OVERRIDES if size == "tiny" else {})}, seed=seed)
    except OSError as err:
        raise UsageError(f"cannot write into {output_dir}: {err}") from None
    print(f"{PROG}: RANDOM weights ({size} architecture): they check the machinery, not forecast quality",
          file=sys.stderr)
    return [output_dir / CONFIG_NAME, output_dir / WEIGHTS_NAME]


def _check_destination(output_dir: Path, force: bool) -> None:
    from ..checkpoints.reading import CONFIG_NAME, WEIGHTS_NAME

    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"{output_dir}: exists and is not a folder")
    existing = [str(output_dir / name) for name in (CONFIG_NAME, WEIGHTS_NAME) if (output_dir / name).exists()]
    if existing and not force:
        raise UsageError(f"{', '.join(existing)} already exist(s); pass --force to overwrite")

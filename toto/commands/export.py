"""``toto-compiled export``: write any loadable checkpoint as ``config.json`` + ``model.safetensors``.

The weights are written under the published checkpoint's names (xFormers' fused
SwiGLU spelling ``mlp.0.w12``/``mlp.0.w3``), which our loader and upstream's both
read. The stale ``rotary_emb.freqs`` buffer of the published file is left out:
both loaders ignore it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..scripts.finetune_toto import load_finetuned_toto
from ..checkpoints.reading import CONFIG_NAME, WEIGHTS_NAME
from ..model.toto import Toto
from ..checkpoints.writing import save_pretrained

PROG = "toto-compiled export"
DESCRIPTION = (
    "Write a checkpoint (hub id, local folder, or a fine-tuned Lightning .ckpt on top of one) as "
    "config.json + model.safetensors in the published layout, loadable by Toto.from_pretrained(OUTPUT_DIR)."
)

class UsageError(Exception):
    """A user mistake: one error line on stderr, exit code 2."""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("export", help="write a checkpoint as config.json + model.safetensors",
                                   description=DESCRIPTION)
    add = parser.add_argument
    add("source", metavar="SOURCE",
        help="hub id, local folder or model.safetensors; with --finetuned-checkpoint, the base model whose "
             "config.json applies")
    add("output_dir", metavar="OUTPUT_DIR", type=Path,
        help="folder to write config.json and model.safetensors into (created if needed)")
    add("--finetuned-checkpoint", type=Path, metavar="CKPT",
        help="weights from a .ckpt of upstream's fine-tuning, read with torch.load(weights_only=True)")
    add("--force", action="store_true", help="overwrite config.json / model.safetensors already in OUTPUT_DIR")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load, then write the two files. A user mistake prints one error line and returns 2."""
    try:
        written = export(args.source, args.output_dir, finetuned_checkpoint=args.finetuned_checkpoint, force=args.force)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
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
    output_dir = Path(output_dir)
    targets = [output_dir / CONFIG_NAME, output_dir / WEIGHTS_NAME]
    _check_destination(output_dir, targets, force)  # before the (possibly long) load
    what = f"{source!r} with {str(finetuned_checkpoint)!r}" if finetuned_checkpoint else repr(source)
    try:
        if finetuned_checkpoint is None:
            model = Toto.from_pretrained(source, device="cpu")
        else:
            model = load_finetuned_toto(source, finetuned_checkpoint, map_location="cpu")
    except (OSError, ValueError) as err:  # no such file, hub failure, bad config, weights or pickle
        raise UsageError(f"cannot load model {what}: {err}") from None
    try:
        return save_pretrained(model, output_dir)
    except OSError as err:  # permissions, full disk, ...
        raise UsageError(f"cannot write into {output_dir}: {err}") from None


def _check_destination(output_dir: Path, targets: list[Path], force: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"{output_dir}: exists and is not a folder")
    existing = [str(path) for path in targets if path.exists()]
    if existing and not force:
        raise UsageError(f"{', '.join(existing)} already exist(s); pass --force to overwrite")

"""An optional progress bar over batches of series, with tqdm (extra ``toto-compiled[progress]``)."""

from __future__ import annotations

import sys
from typing import Any


def batch_bar(total: int, show: bool | None) -> Any | None:
    """A tqdm bar over ``total`` batches on stderr, or None.

    ``show=None``: only when stderr is a terminal, tqdm is installed and there is more
    than one batch. ``show=True`` without tqdm raises an ``ImportError`` naming the extra.
    """
    if show is False or (show is None and (total < 2 or not sys.stderr.isatty())):
        return None
    try:
        from tqdm import tqdm
    except ImportError as err:
        if show is None:
            return None
        raise ImportError('show_progress=True needs tqdm: pip install "toto-compiled[progress]"') from err
    return tqdm(total=total, unit="batch", desc="toto predict", file=sys.stderr, leave=False)

"""Per-step anomaly scores of a long frame's items, as a long frame (extra ``toto-compiled[pandas]``)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .panel import Panel, require_pandas

SCORE_COLUMNS = ("nll", "tail_probability", "anomaly")


def anomaly_frame(panel: Panel, scores: Sequence[Sequence[np.ndarray]]) -> Any:
    """One row per item, step and target: id, timestamp, ``target_name``, ``value`` (NaN where
    missing), then :data:`SCORE_COLUMNS` from ``scores`` (per item: nll, tail probability and
    flags, each ``[targets, time]``)."""
    pd = require_pandas()
    targets = len(panel.targets)
    lengths = [len(item.timestamps) for item in panel.items]
    grids = [item.timestamps for item in panel.items for _ in range(targets)]
    columns = {
        panel.id_column: pd.Index([item.item_id for item in panel.items]).repeat(np.array(lengths) * targets),
        panel.timestamp_column: grids[0].append(grids[1:]),
        "target_name": np.concatenate([np.repeat(np.array(panel.targets, dtype=object), n) for n in lengths]),
        "value": np.concatenate([item.values[:targets].ravel() for item in panel.items]),
    }
    for index, name in enumerate(SCORE_COLUMNS):
        columns[name] = np.concatenate([item_scores[index].ravel() for item_scores in scores])
    return pd.DataFrame(columns)

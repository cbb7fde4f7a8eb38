"""A measurable test of the anomaly-detection machinery: labelled anomalies injected into real
series, scored by a model and by a rolling z-score baseline, judged by precision, recall and
the area under the precision-recall curve (scikit-learn's average precision).

This measures the machinery (likelihoods, tail probabilities, flags) on whatever model it is
given; it says nothing about the published weights unless they are the model
(``scripts/anomaly_example.py`` runs it on them where the hub is reachable).
Needs the extra ``toto-compiled[anomaly-eval]`` (scikit-learn, statsmodels, pandas).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

KINDS = ("spike", "level_shift", "variance", "missed_season")
EXTRA = 'pip install "toto-compiled[anomaly-eval]"'


@dataclass(frozen=True)
class LabelledSeries:
    name: str
    values: np.ndarray  # float64, with the anomalies in
    labels: np.ndarray  # bool: the steps an anomaly changed
    kinds: np.ndarray  # the kind of anomaly at each step ("" where none)
    season: int
    start: int  # steps before this are context only: no anomaly, not scored


def real_series(length: int = 640) -> list[tuple[str, np.ndarray, int]]:
    """Held-out real series from statsmodels' bundled datasets: ``(name, values, season)``.

    Mauna Loa CO2 (weekly, gaps interpolated; windows of ``length`` weeks, season 52) and
    the El Niño sea-surface temperatures (monthly, season 12).
    """
    try:
        import statsmodels.api as sm
    except ImportError as err:
        raise ImportError(f"the evaluation's real series come from statsmodels: {EXTRA}") from err
    co2 = sm.datasets.co2.load_pandas().data["co2"].interpolate().bfill().to_numpy(np.float64)
    windows = [(f"co2[{i}:{i + length}]", co2[i : i + length], 52) for i in range(0, co2.size - length + 1, length)]
    elnino = sm.datasets.elnino.load_pandas().data.drop(columns="YEAR").to_numpy(np.float64).ravel()
    return [*windows, ("elnino", elnino, 12)]


def inject_anomalies(
    values: np.ndarray, season: int, rng: np.random.Generator, *, count: int = 4, start: int | None = None,
    kinds: Sequence[str] = KINDS, name: str = "series",
) -> LabelledSeries:  # fmt: skip
    """``count`` non-overlapping anomalies after ``start`` (default: three seasons in), kinds in
    turn from ``kinds``; sizes are relative to the series' typical step-to-step change.

    - spike: one step moved by 6 to 10 times that change;
    - level_shift: half a season moved by 5 times it;
    - variance: half a season with noise of 4 times it added;
    - missed_season: one season flattened to its mean (the seasonal shape disappears).
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"kinds: unknown {unknown}; choose from {KINDS}")
    out = np.asarray(values, dtype=np.float64).copy()
    labels = np.zeros(out.size, dtype=bool)
    step_kinds = np.full(out.size, "", dtype=object)
    start = 3 * season if start is None else start
    typical = float(np.nanmedian(np.abs(np.diff(out)))) or 1.0
    spans = {"spike": 1, "level_shift": max(season // 2, 2), "variance": max(season // 2, 2), "missed_season": season}
    slots = np.arange(start, out.size - season, season + 2)  # one anomaly per slot: they never touch
    if count > slots.size:
        raise ValueError(f"count: room for {slots.size} anomalies after step {start}, asked for {count}")
    for index, at in enumerate(sorted(rng.choice(slots, size=count, replace=False))):
        kind = kinds[index % len(kinds)]
        span = slice(at, at + spans[kind])
        if kind == "spike":
            out[at] += rng.choice([-1, 1]) * rng.uniform(6, 10) * typical
        elif kind == "level_shift":
            out[span] += rng.choice([-1, 1]) * 5 * typical
        elif kind == "variance":
            out[span] += rng.normal(0, 4 * typical, spans[kind])
        else:
            out[span] = out[span].mean()
        labels[span] = True
        step_kinds[span] = kind
    return LabelledSeries(name, out, labels, step_kinds, season, start)


def rolling_zscore(values: np.ndarray, window: int) -> np.ndarray:
    """|x - mean| / std of the ``window`` steps before each step (NaN before a full window)."""
    import pandas as pd

    previous = pd.Series(values).shift(1).rolling(window, min_periods=window)
    return (np.abs(values - previous.mean()) / previous.std().replace(0.0, np.nan)).to_numpy()


def detection_report(
    scores: np.ndarray, labels: np.ndarray, flags: np.ndarray, kinds: np.ndarray | None = None
) -> dict[str, float]:
    """Average precision of ``scores`` (higher: more anomalous; NaN steps are not scored) and the
    precision and recall of ``flags``, over steps; with ``kinds``, also the recall per kind."""
    try:
        from sklearn.metrics import average_precision_score, precision_score, recall_score
    except ImportError as err:
        raise ImportError(f"the detection metrics come from scikit-learn: {EXTRA}") from err
    scored = ~np.isnan(scores)
    truth, found = labels[scored], flags[scored]
    report = {
        "auc_pr": float(average_precision_score(truth, scores[scored])),
        "precision": float(precision_score(truth, found, zero_division=0.0)),
        "recall": float(recall_score(truth, found, zero_division=0.0)),
        "anomalous_share": float(truth.mean()),
    }
    if kinds is not None:
        for kind in KINDS:
            steps = kinds[scored] == kind
            if steps.any():
                report[f"recall {kind}"] = float(found[steps].mean())
    return report


def evaluate(pipeline: Any, series: Sequence[LabelledSeries], false_alarm_rate: float = 0.01) -> dict[str, dict]:
    """Toto's tail probabilities and the rolling z-score baseline on the same labelled steps
    (each series from its ``start``, where both have a score); the baseline flags at the
    normal quantile of the same two-sided ``false_alarm_rate``."""
    from scipy.stats import norm

    toto_scores, baseline_scores, labels, toto_flags, baseline_flags, kinds = [], [], [], [], [], []
    threshold = norm.ppf(1 - false_alarm_rate / 2)
    for item in series:
        (scores,) = pipeline.detect_anomalies(item.values.astype(np.float32), false_alarm_rate=false_alarm_rate)
        tail = scores.tail_probability[0]
        z = rolling_zscore(item.values, item.season)
        keep = slice(item.start, None)
        # -log(tail): higher is more anomalous; a tail probability of 0 (float underflow) ranks first.
        toto_scores.append(-np.log(np.maximum(tail[keep].astype(np.float64), 1e-300)))
        toto_flags.append(scores.anomaly[0][keep])
        baseline_scores.append(z[keep])
        baseline_flags.append(np.nan_to_num(z[keep]) > threshold)
        labels.append(item.labels[keep])
        kinds.append(item.kinds[keep])
    parts = (toto_scores, baseline_scores, labels, toto_flags, baseline_flags, kinds)
    toto, baseline, truth, toto_flagged, baseline_flagged, kind = (np.concatenate(part) for part in parts)
    both = ~np.isnan(toto) & ~np.isnan(baseline)
    return {
        "toto": detection_report(toto[both], truth[both], toto_flagged[both], kind[both]),
        "rolling z-score": detection_report(baseline[both], truth[both], baseline_flagged[both], kind[both]),
    }


def seasonal_training_series(count: int, length: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Clean seasonal series (periods 12 to 52, trends, noise) to fine-tune a model on."""
    t = np.arange(length)
    out = []
    for _ in range(count):
        period = rng.choice([12, 24, 52])
        level, trend, amplitude = rng.normal(0, 10), rng.normal(0, 0.01), rng.uniform(1, 5)
        shape = amplitude * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
        shape += 0.3 * amplitude * np.sin(4 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
        out.append(level + trend * t + shape + rng.normal(0, 0.2 * amplitude, length))
    return out


SMALL_CONFIG_CHANGES = {"patch_size": 16, "stride": 16, "embed_dim": 64, "num_layers": 4, "num_heads": 4,
                        "mlp_hidden_dim": 128, "spacewise_every_n_layers": 2,
                        "output_distribution_kwargs": {"k_components": 5}}  # fmt: skip


def small_fine_tuned(folder: Any, steps: int, seed: int = 0) -> Any:
    """A small random-weight Toto 1.0 (patch 16, 4 layers of width 64) written to ``folder`` and
    fine-tuned with ``fit`` for ``steps`` steps on :func:`seasonal_training_series`."""
    from ..checkpoints.random_weights import write_checkpoint
    from ..config import PUBLISHED_CONFIG
    from ..pipeline import TotoPipeline

    checkpoint = write_checkpoint(folder, {**PUBLISHED_CONFIG, **SMALL_CONFIG_CHANGES}, seed=seed)
    pipeline = TotoPipeline.from_pretrained(str(checkpoint), device_map="cpu", torch_compile=False)
    train = seasonal_training_series(48, 600, np.random.default_rng(seed))
    return pipeline.fit(train, prediction_length=32, context_length=256, num_steps=steps, batch_size=16,
                        learning_rate=1e-3, seed=seed, compile=False, show_progress=False)  # fmt: skip


def labelled_real_series(seed: int = 0, count: int = 6) -> list[LabelledSeries]:
    """:func:`real_series`, each with ``count`` anomalies injected (kinds in turn), reproducibly."""
    rng = np.random.default_rng(seed)
    return [inject_anomalies(values, season, rng, count=count, name=name) for name, values, season in real_series()]


def report_table(results: dict[str, dict]) -> str:
    kinds = [k for k in KINDS if f"recall {k}" in next(iter(results.values()))]
    lines = ["| scorer | AUC-PR | precision | recall | " + " | ".join(f"recall: {k}" for k in kinds) + " |",
             "|---" * (4 + len(kinds)) + "|"]  # fmt: skip
    for name, r in results.items():
        per_kind = " | ".join(f"{r[f'recall {k}']:.2f}" for k in kinds)
        lines.append(f"| {name} | {r['auc_pr']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | {per_kind} |")
    share = next(iter(results.values()))["anomalous_share"]
    return "\n".join(lines) + f"\n\nanomalous steps: {share:.1%} of those scored (AUC-PR of a random scorer)"

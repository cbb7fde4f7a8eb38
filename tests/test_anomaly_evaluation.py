"""The anomaly-detection evaluation's parts (injection, baseline, metrics) and one small end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest

from toto.evaluation.anomalies import (
    KINDS,
    detection_report,
    evaluate,
    inject_anomalies,
    labelled_real_series,
    report_table,
    rolling_zscore,
    small_fine_tuned,
)

pytest.importorskip("sklearn")
pytest.importorskip("statsmodels")


def test_injected_anomalies_are_labelled_where_they_change_the_series():
    rng = np.random.default_rng(0)
    clean = 10 + np.sin(np.arange(600) * 2 * np.pi / 24) + rng.normal(0, 0.1, 600)
    item = inject_anomalies(clean, 24, rng, count=8)
    assert item.values.shape == clean.shape and not item.labels[: 3 * 24].any()
    assert np.array_equal(item.labels, item.values != clean) or item.labels[item.values != clean].all()
    assert set(item.kinds[item.labels]) == set(KINDS) and (item.kinds[~item.labels] == "").all()
    assert (item.kinds == "spike").sum() == 2  # kinds in turn: two of each of four
    with pytest.raises(ValueError, match="kinds: unknown"):
        inject_anomalies(clean, 24, rng, kinds=["drift"])
    with pytest.raises(ValueError, match="count: room for"):
        inject_anomalies(clean, 24, rng, count=50)


def test_rolling_zscore_uses_only_the_steps_before():
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    z = rolling_zscore(values, 3)
    assert np.isnan(z[:3]).all()
    assert z[3] == pytest.approx(abs(4 - 2) / np.std([1, 2, 3], ddof=1))
    assert z[4] == pytest.approx(abs(100 - 3) / np.std([2, 3, 4], ddof=1))


def test_detection_report_counts_steps():
    labels = np.array([0, 0, 1, 1, 0, 0], dtype=bool)
    report = detection_report(np.array([0.1, 0.2, 0.9, 0.3, 0.4, np.nan]), labels,
                              np.array([0, 0, 1, 0, 1, 1], dtype=bool))  # fmt: skip
    # Scored: the first five steps. Ranked 0.9 (hit), 0.4 (miss), 0.3 (hit): AP = (1 + 2/3) / 2.
    assert report["auc_pr"] == pytest.approx((1 + 2 / 3) / 2)
    assert report["precision"] == 0.5 and report["recall"] == 0.5 and report["anomalous_share"] == 0.4


def test_a_small_end_to_end_run(tmp_path, record):
    """The machinery end to end on a small fine-tuned model: both scorers reported, Toto's
    ranking better than chance on the labelled steps (the figures in docs/MONITORING.md come
    from scripts/anomaly_example.py with more fine-tuning)."""
    pipeline = small_fine_tuned(tmp_path, steps=20)
    results = evaluate(pipeline, labelled_real_series(count=3), false_alarm_rate=0.01)
    table = report_table(results)
    assert "| toto |" in table and "| rolling z-score |" in table
    toto = results["toto"]
    record("anomaly evaluation: Toto AUC-PR (20 fine-tuning steps)", toto["auc_pr"])
    assert toto["auc_pr"] > toto["anomalous_share"]
    assert all(0 <= value <= 1 for r in results.values() for value in r.values())

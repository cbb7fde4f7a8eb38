"""The anomaly-detection evaluation of docs/MONITORING.md: labelled anomalies injected into real
series (statsmodels' CO2 and El Niño), scored by Toto's tail probabilities and by a rolling
z-score, reported as AUC-PR, precision and recall (at a false-alarm rate of 0.01).

    python scripts/anomaly_example.py                       # Datadog's weights, where the hub is reachable
    python scripts/anomaly_example.py --model DIR           # any Toto 1.0 checkpoint folder
    python scripts/anomaly_example.py --small-fine-tuned 600  # a small random model fine-tuned here

Needs ``pip install "toto-compiled[anomaly-eval,monitoring]"``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from toto.evaluation.anomalies import evaluate, labelled_real_series, report_table, small_fine_tuned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="Datadog/Toto-Open-Base-1.0", help="hub id or folder (default: %(default)s)")
    parser.add_argument("--small-fine-tuned", type=int, metavar="STEPS",
                        help="instead of --model: a small random model fine-tuned for STEPS steps on clean seasonal series")
    parser.add_argument("--false-alarm-rate", type=float, default=0.01)
    parser.add_argument("--anomalies", type=int, default=6, help="per series (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    if args.small_fine_tuned is not None:
        with tempfile.TemporaryDirectory() as folder:
            pipeline = small_fine_tuned(Path(folder), args.small_fine_tuned, args.seed)
        described = f"a small random model fine-tuned for {args.small_fine_tuned} steps"
    else:
        from toto import TotoPipeline

        pipeline = TotoPipeline.from_pretrained(args.model, device_map="cpu")
        described = args.model
    series = labelled_real_series(args.seed, args.anomalies)
    results = evaluate(pipeline, series, args.false_alarm_rate)
    print(f"{described}; {len(series)} series ({', '.join(s.name for s in series)}), {args.anomalies} anomalies each; "
          f"flags at a false-alarm rate of {args.false_alarm_rate:g} ({time.perf_counter() - started:.0f} s)\n")
    print(report_table(results))


if __name__ == "__main__":
    main()

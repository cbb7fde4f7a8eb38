"""GPU check: parity against upstream on CUDA, bfloat16 accuracy, compile health under CUDA graphs.

Stage 2 of scripts/gpu_check.sh. Each part prints its time and PASSED or FAILED and is cut
after ``--part-timeout`` seconds; a failing part does not stop the later ones. Exit 1 if any
part failed, 2 if CUDA was asked for and is missing. Rehearse without a GPU:

    python scripts/gpu_check.py --device cpu --tiny
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / ".oracle"), str(ROOT)]

from checkpoints import PUBLISHED_CONFIG, TINY_CONFIG, write_checkpoint  # noqa: E402
from parity_inputs import scenario  # noqa: E402

from toto import MaskedTimeseries, Toto, TotoForecaster  # noqa: E402
from toto.commands.bench.runners import RunnerTimeout, inputs, load_upstream, time_limit  # noqa: E402
from toto.compile.health import steady_state  # noqa: E402
from toto.data.util.dataset import pad_array, pad_id_mask  # noqa: E402
from toto.inference.capacity import bucket_capacity  # noqa: E402

PARITY_SCENARIOS = "univariate,multivariate_groups,large_magnitude,left_padding"
# univariate and large_magnitude have one shape, so they share compiled graphs: two
# scenarios for the compile time of one (each new shape costs ~30 s per graph on a GPU).
COMPILED_SCENARIOS = "univariate,large_magnitude"
FORWARD_BOUND = 1e-5  # float32, relative
FORECAST_BOUND = 1e-4  # float32 mean path, relative; compiled code reorders reductions
BF16_BOUND = 2e-2
HEALTH_SAMPLES = 64  # check --quick's sample count: the same decode graphs, so inductor's cache can serve them
# (horizon in patches, contexts in patches): every context of a case in one capacity bucket.
HEALTH_CASES = ((1, (1, 7, 16)), (3, (1, 7, 14)))  # prefill and first draw only; then decode steps too
HEALTH_MIN_GRAPHS = 3  # prefill and both decode-step kinds
PART_TIMEOUT = 60  # seconds per part on CUDA (stage 2 of gpu_check.sh gives the script 125); none on a CPU


@dataclass
class Models:
    ours: Any  # our float32 backbone
    ours_bf16: Any
    theirs: Any  # upstream's float32 backbone
    UpstreamForecaster: type
    UpstreamMasked: type

    @property
    def patch(self) -> int:
        return self.ours.patch_size


def rel(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b|, in float64."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def load_models(config: dict, device: str) -> Models:
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(Path(tmp), config, seed=2)
        ours = Toto.load_from_checkpoint(checkpoint, map_location=device).model
        ours_bf16 = Toto.load_from_checkpoint(checkpoint, map_location=device, dtype=torch.bfloat16).model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs, UpstreamForecaster, UpstreamMasked = load_upstream(checkpoint, device)
    return Models(ours, ours_bf16, theirs, UpstreamForecaster, UpstreamMasked)


def scenario_inputs(name: str, patch: int, device: str) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(t.to(device) for t in scenario(name, patch))


def masked(cls: type, series: Tensor, observed: Tensor, ids: Tensor):
    """``cls`` (ours or upstream's MaskedTimeseries) around one parity scenario."""
    interval = torch.full(series.shape[:2], 60, device=series.device)
    return cls(series, observed, ids, torch.zeros_like(ids), interval)


def compiled_forecaster(model) -> TotoForecaster:
    # compile_prefill=True explicitly: the CUDA default anyway, and a CPU rehearsal then runs the same graphs.
    return TotoForecaster(model, torch_compile=True, compile_prefill=True)


@torch.no_grad()
def parity_forward(m: Models, device: str, names: list[str]) -> list[str]:
    failures = []
    for name in names:
        series, observed, ids = scenario_inputs(name, m.patch, device)
        padded = pad_array(series, m.patch), pad_array(observed, m.patch), pad_id_mask(ids, m.patch)
        a, b = m.ours(*padded), m.theirs(*padded)
        near = b.distribution.mean + 0.1 * torch.randn_like(b.distribution.mean)
        errors = {
            "loc": rel(a.loc, b.loc),
            "scale": rel(a.scale, b.scale),
            "mean": rel(a.distribution.mean, b.distribution.mean),
            "log_prob": rel(a.distribution.log_prob(near), b.distribution.log_prob(near)),
        }
        print(f"parity forward {name}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
        failures += [f"forward {name} {k} {v:.2e}" for k, v in errors.items() if v > FORWARD_BOUND]
    return failures


@torch.no_grad()
def parity_forecast(m: Models, device: str, names: list[str], compiled: bool) -> list[str]:
    """Our mean forecast (4 patches + 5 steps, so decode steps run) against upstream's, eager or compiled."""
    torch._dynamo.reset()
    horizon = 4 * m.patch + 5
    forecaster = compiled_forecaster(m.ours) if compiled else TotoForecaster(m.ours, torch_compile=False)
    label = "compiled" if compiled else "eager"
    failures = []
    for name in names:
        data = scenario_inputs(name, m.patch, device)
        expected = m.UpstreamForecaster(m.theirs).forecast(masked(m.UpstreamMasked, *data), horizon).mean
        error = rel(forecaster.forecast(masked(MaskedTimeseries, *data), horizon).mean, expected)
        print(f"parity mean forecast {name} {label}: {error:.2e}")
        if error > FORECAST_BOUND:
            failures.append(f"mean forecast {name} {label} {error:.2e}")
    return failures + fallback_failures(forecaster)


@torch.no_grad()
def bf16_accuracy(m: Models, device: str, names: list[str], compiled_names: list[str], bound: float) -> list[str]:
    torch._dynamo.reset()
    horizon = 4 * m.patch + 5
    reference = TotoForecaster(m.ours, torch_compile=False)
    forecasters = {
        "eager": TotoForecaster(m.ours_bf16, torch_compile=False),
        "compiled": compiled_forecaster(m.ours_bf16),
    }
    failures = []
    for name in names:
        data = masked(MaskedTimeseries, *scenario_inputs(name, m.patch, device))
        expected = reference.forecast(data, horizon).mean
        for label, forecaster in forecasters.items():
            if label == "compiled" and name not in compiled_names:
                continue
            error = rel(forecaster.forecast(data, horizon).mean, expected)
            print(f"bf16 mean forecast {name} {label}: {error:.2e} (bound {bound:.0e})")
            if not error <= bound:  # NaN fails too
                failures.append(f"bf16 mean forecast {name} {label} {error:.2e}")
    return failures + fallback_failures(forecasters["compiled"])


def fallback_failures(forecaster: TotoForecaster) -> list[str]:
    if forecaster.compile_error:
        return [f"compilation fell back to eager: {forecaster.compile_error}"]
    return []


@torch.no_grad()
def compile_health(m: Models, device: str) -> list[str]:
    """``compile_prefill=True``; warm up at each case's longest context (twice: reduce-overhead records
    CUDA graphs on the second run), then every context of each case, twice, under ``fail_on_recompile``:
    0 new graphs, recompiles, graph breaks and CUDA-graph skips, mean path and sample paths alike."""
    torch._dynamo.reset()
    forecaster = compiled_forecaster(m.ours)
    patch = m.patch
    for steps, contexts in HEALTH_CASES:
        buckets = {bucket_capacity(c + steps - 1) for c in contexts}
        assert len(buckets) == 1, f"contexts {contexts} with {steps} steps span buckets {buckets}"
    series = {c: inputs(MaskedTimeseries, c * patch, device) for _, contexts in HEALTH_CASES for c in contexts}

    def both_kinds(context: int, steps: int) -> Callable[[], None]:  # the mean path, then sample paths
        def call() -> None:
            forecaster.forecast(series[context], steps * patch)
            samples = {"num_samples": HEALTH_SAMPLES, "samples_per_batch": HEALTH_SAMPLES}
            forecaster.forecast(series[context], steps * patch, **samples)

        return call

    warmup = [both_kinds(contexts[-1], steps) for steps, contexts in HEALTH_CASES]
    calls = [both_kinds(context, steps) for steps, contexts in HEALTH_CASES for context in contexts]
    health = steady_state(calls, warmup=warmup, warmup_rounds=2, rounds=2, catch=True)
    print(f"compile health (mode {forecaster.compile_settings.mode}, compile_prefill=True): warm-up {health.warm}")
    contexts = [c for _, cs in HEALTH_CASES for c in cs]
    print(f"compile health: steady state, contexts {contexts} patches: {health.steady} {health.error}".rstrip())
    return health.problems(min_warm_graphs=HEALTH_MIN_GRAPHS) + fallback_failures(forecaster)


def run_part(name: str, timeout: float | None, part: Callable[..., list[str]], *args: Any) -> list[str]:
    """Run one part, timed and cut after ``timeout`` seconds; an exception is that part's failure, not the end."""
    print(f"\n--- {time.strftime('%H:%M:%S')} {name}", flush=True)
    start = time.perf_counter()
    try:
        with time_limit(timeout):
            failures = part(*args)
    except RunnerTimeout:
        failures = [f"timed out after {timeout:g} s"]
    except Exception as err:  # noqa: BLE001 - report and go on with the next part
        traceback.print_exc()
        failures = [f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"]
    verdict = "PASSED" if not failures else "FAILED"
    print(f"--- {name}: {verdict} in {time.perf_counter() - start:.1f} s", flush=True)
    return [f"{name}: {failure}" for failure in failures]


def names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",")]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu only to rehearse the script")
    parser.add_argument("--tiny", action="store_true", help="the tiny test config instead of the published size")
    parser.add_argument("--parity-scenarios", default=PARITY_SCENARIOS, type=names, help="default: %(default)s")
    parser.add_argument("--compiled-scenarios", default=COMPILED_SCENARIOS, type=names, help="default: %(default)s")
    parser.add_argument("--bf16-bound", type=float, default=BF16_BOUND, help="default: %(default)s")
    parser.add_argument(
        "--part-timeout", type=float, metavar="S",
        help=f"cut a part after S seconds and go on with the next; 0: no limit (default: {PART_TIMEOUT} on CUDA, "
        "none on a CPU)",
    )  # fmt: skip
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check.py: error: CUDA is not available; rehearse with --device cpu --tiny", file=sys.stderr)
        return 2
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # parity bounds are float32's
        torch.backends.cudnn.allow_tf32 = False
        print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, TF32 off")
    if args.part_timeout is None:
        args.part_timeout = PART_TIMEOUT if args.device == "cuda" else 0
    compiled_names = [n for n in args.compiled_scenarios if n in args.parity_scenarios]
    m = load_models(TINY_CONFIG if args.tiny else PUBLISHED_CONFIG, args.device)
    # Cheapest and most important first: compile health reuses check --quick's graphs
    # (inductor's on-disk cache); bf16 and compiled parity each compile a new shape.
    parts = [
        ("parity forward", parity_forward, (m, args.device, args.parity_scenarios)),
        ("parity mean forecast, eager", parity_forecast, (m, args.device, args.parity_scenarios, False)),
        ("compile health", compile_health, (m, args.device)),
        ("bf16 accuracy", bf16_accuracy, (m, args.device, args.parity_scenarios, compiled_names, args.bf16_bound)),
        ("parity mean forecast, compiled", parity_forecast, (m, args.device, compiled_names, True)),
    ]
    failures: list[str] = []
    try:
        for name, part, part_args in parts:
            failures += run_part(name, args.part_timeout, part, *part_args)
    except KeyboardInterrupt:  # e.g. gpu_check.sh's time limit: say what was checked so far
        failures.append(f"interrupted during {name}")
    print("\nparity, bf16 accuracy and compile health:", "PASSED" if not failures else "FAILED", flush=True)
    for failure in failures:
        print(f"  {failure}")
    return 1 if failures else 0

if __name__ == "__main__":
    sys.exit(main())

"""GPU check: parity against upstream on CUDA, compile health under CUDA graphs, then the benchmark.

Run through scripts/gpu_check.sh on a machine with a GPU. Exits non-zero if a
parity bound or a compile-health assertion fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / ".oracle"), str(ROOT)]

from checkpoints import PUBLISHED_CONFIG, write_checkpoint  # noqa: E402
from parity_inputs import scenario  # noqa: E402

from toto import MaskedTimeseries, Toto, TotoForecaster  # noqa: E402
from toto.commands.bench import inputs, load_upstream  # noqa: E402
from toto.data.util.dataset import pad_array, pad_id_mask  # noqa: E402
from toto.diagnostics import snapshot  # noqa: E402


def rel(a, b) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@torch.no_grad()
def parity(ours, theirs, UpstreamForecaster, UpstreamMasked, device: str, names: list[str]) -> list[str]:
    failures = []
    for name in names:
        series, observed, ids = (t.to(device) for t in scenario(name, 64))
        padded = pad_array(series, 64), pad_array(observed, 64), pad_id_mask(ids, 64)
        a, b = ours(*padded), theirs(*padded)
        near = b.distribution.mean + 0.1 * torch.randn_like(b.distribution.mean)
        errors = {
            "loc": rel(a.loc, b.loc),
            "scale": rel(a.scale, b.scale),
            "mean": rel(a.distribution.mean, b.distribution.mean),
            "log_prob": rel(a.distribution.log_prob(near), b.distribution.log_prob(near)),
        }
        print(f"parity forward {name}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
        failures += [f"forward {name} {k} {v:.2e}" for k, v in errors.items() if v > 1e-5]

        def masked(cls):
            return cls(series, observed, ids, torch.zeros_like(ids), torch.full(series.shape[:2], 60, device=device))

        expected = UpstreamForecaster(theirs).forecast(masked(UpstreamMasked), 4 * 64 + 5).mean
        for compiled in (False, True):
            got = TotoForecaster(ours, torch_compile=compiled).forecast(masked(MaskedTimeseries), 4 * 64 + 5).mean
            error = rel(got, expected)
            print(f"parity mean forecast {name} compiled={compiled}: {error:.2e}")
            if error > 1e-4:
                failures.append(f"mean forecast {name} compiled={compiled} {error:.2e}")
    return failures


@torch.no_grad()
def compile_health(ours, device: str) -> list[str]:
    torch._dynamo.reset()
    forecaster = TotoForecaster(ours, torch_compile=True)  # reduce-overhead on CUDA
    sample_in, mean_in = inputs(MaskedTimeseries, 512, device), inputs(MaskedTimeseries, 1024, device)
    before = snapshot()
    for _ in range(2):  # warm-up: compile, then record the CUDA graphs
        forecaster.forecast(sample_in, 256, num_samples=128, samples_per_batch=128)
        forecaster.forecast(mean_in, 256)
    warm = snapshot() - before
    with torch.compiler.set_stance("fail_on_recompile"):
        for _ in range(5):
            forecaster.forecast(sample_in, 256, num_samples=128, samples_per_batch=128)
            forecaster.forecast(mean_in, 256)
    steady = snapshot() - before - warm
    print(f"compile health (mode {forecaster.compile_settings.mode}): warm-up {warm}, steady state {steady}")
    failures = []
    if not forecaster.compiled:
        failures.append(f"compilation fell back to eager: {forecaster.compile_error}")
    if warm.graph_breaks or warm.cudagraph_skips or steady.cudagraph_skips:
        failures.append(f"graph breaks or CUDA-graph skips: warm {warm}, steady {steady}")
    if steady.graphs or steady.recompiles:
        failures.append(f"steady-state compiles: {steady}")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench-args", default="", help="extra arguments for scripts/bench.py")
    parser.add_argument("--device", default="cuda", help="cpu only to rehearse the script")
    parser.add_argument(
        "--parity-scenarios",
        default="univariate,multivariate_groups,large_magnitude,left_padding",
        type=lambda s: s.split(","),
    )
    args = parser.parse_args()
    device = args.device
    if device == "cuda":
        assert torch.cuda.is_available(), "no CUDA device"
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(Path(tmp), PUBLISHED_CONFIG, seed=2)
        ours = Toto.load_from_checkpoint(checkpoint, map_location=device).model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs, UpstreamForecaster, UpstreamMasked = load_upstream(checkpoint, device)
    failures = parity(ours, theirs, UpstreamForecaster, UpstreamMasked, device, args.parity_scenarios)
    failures += compile_health(ours, device)
    del ours, theirs
    if device == "cuda":
        torch.cuda.empty_cache()
    print("parity and compile health:", "PASSED" if not failures else f"FAILED {failures}", flush=True)
    bench = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--device", device, *args.bench_args.split()])
    sys.exit(1 if failures or bench.returncode else 0)


if __name__ == "__main__":
    main()

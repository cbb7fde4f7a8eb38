"""``toto-compiled check --model`` on a Toto 2.0 checkpoint: compiled quantiles against eager,
compile health across a shorter context of the same bucket, and the speed of later calls."""

from __future__ import annotations

import sys
import time
from typing import Any

from ..compile.policy import CompileSettings
from .check import MEAN_PATH_BOUND, Row, Scenario, _peak_rss_mib, _verdict, speed_row, synthetic_series
from .common import sync


def compare_toto2(model: Any, scenario: Scenario, device: str, mode: str | None, seed: int) -> tuple[list[Row], str]:
    """The check's rows for a Toto 2.0 model, and the compile mode used."""
    import torch

    from ..compile.health import steady_state
    from ..inference.toto2_forecaster import DEFAULT_DECODE_BLOCK_SIZE, Toto2Forecaster

    settings = CompileSettings.resolve(torch_compile=True, compile_mode=mode, device=device)
    eager, compiled = Toto2Forecaster(model), Toto2Forecaster(model, settings)
    full = synthetic_series(scenario.context + scenario.horizon, seed)
    series, future = full[: scenario.context].reshape(1, 1, -1).to(device), full[scenario.context :]
    shorter = series[..., 3 * model.patch_size :]  # the same capacity bucket: the scenarios' contexts fill theirs

    def call(forecaster: Toto2Forecaster, context: Any = series) -> tuple[Any, float]:
        sync(device)
        start = time.perf_counter()
        quantiles = forecaster.forecast(context, torch.ones_like(context, dtype=torch.bool), scenario.horizon,
                                        DEFAULT_DECODE_BLOCK_SIZE)  # fmt: skip
        sync(device)
        return quantiles.cpu(), time.perf_counter() - start

    with torch.no_grad():
        plain, plain_s = call(eager)
        print(f"eager: first call {plain_s:.2f} s", file=sys.stderr, flush=True)
        first: dict = {}

        def warm_up() -> None:
            first["compiled"] = call(compiled)
            print(f"compiled: first call {first['compiled'][1]:.2f} s", file=sys.stderr, flush=True)

        health = steady_state([lambda: call(compiled), lambda: call(compiled, shorter)], warmup=[warm_up], catch=True)
        later = {"eager": [], "compiled": []}
        for _ in range(scenario.repeats):  # interleaved: a change of machine load hits both alike
            later["eager"].append(call(eager)[1])
            later["compiled"].append(call(compiled)[1])
    fast, fast_s = first["compiled"]
    diff = ((fast.double() - plain.double()).abs().max() / plain.double().abs().max()).item()
    error = (plain[4, 0, 0] - future[: scenario.horizon]).abs().mean().item()  # the median's MAE: information
    new = health.new_in_steady_state
    rows = [
        Row("compiled path active", "-", "yes" if compiled.compiled else "no", _verdict(compiled.compiled),
            compiled.compile_error or ""),  # fmt: skip
        Row("quantile difference (max rel.)", "-", f"{diff:.1e}", _verdict(diff <= MEAN_PATH_BOUND),
            f"<= {MEAN_PATH_BOUND:.0e}"),  # fmt: skip
        Row("median MAE vs held-out", f"{error:.4g}", "-", "info"),
        speed_row(min(later["eager"]), min(later["compiled"]), scenario.repeats, device),
        Row("first call incl. compile, s", f"{plain_s:.2f}", f"{fast_s:.2f}", "info"),
        Row("graph breaks", "-", str(health.graph_breaks), _verdict(health.graph_breaks == 0)),
        Row("graphs compiled (warm-up)", "-", str(health.warm.graphs), "info", "one per kind of decoding block"),
        Row("recompiles + new graphs (steady state)", "-", str(new), _verdict(new == 0 and not health.error),
            health.error or "same call again and a shorter context, fail_on_recompile"),  # fmt: skip
    ]
    if device == "cuda":
        rows.append(Row("CUDA-graph skips", "-", str(health.cudagraph_skips), _verdict(health.cudagraph_skips == 0)))
    else:
        rows.append(Row("peak memory (process RSS), MiB", "-", f"{_peak_rss_mib():.0f}", "info"))
    return rows, settings.mode

"""Fine-tuning steps per second on CPU: our compiled TrainingStep against upstream's Lightning module.

    # tiny model (smoke test, about a minute)
    python scripts/finetune_benchmark.py --size tiny --batch-size 8 --context-length 256 --variates 1 \\
        --steps 20 --warmup-steps 3
    # published size (151M parameters), reduced batch; run on a quiet machine
    python scripts/finetune_benchmark.py --size full --batch-size 4 --context-length 512 --variates 1 \\
        --steps 20 --warmup-steps 3 --json /tmp/finetune_benchmark.json

Both sides train the same checkpoint (random weights in the published layout; speed does
not depend on their values) on the same fixed list of batches, one batch per step:
windows drawn by our ``WindowSampler`` from seeded synthetic series (seasonal + trend +
noise), given to upstream as ``CausalMaskedTimeseries`` built from the very same tensors
(``input_slice = [0, C)``, ``target_slice = [P, C + P)``, one id group, as upstream's
``instance_to_causal`` and ``collate_causal`` build them).

* ours: ``toto.model.toto.Toto.load_from_checkpoint(...).model`` in training mode,
  ``TrainingStep(WindowLoss(backbone), all parameters, compile=True)``; one call per step.
* upstream: ``toto_upstream.model.lightning_module.TotoForFinetuning`` around
  ``toto_upstream.model.toto.Toto.load_from_checkpoint(...).model``, driven by
  ``lightning.Trainer.fit`` on CPU, gradients clipped to norm 1.0 as ours; the timed steps
  are measured by a ``Callback`` (``on_train_batch_start`` / ``on_train_batch_end``).

Same optimizer settings (AdamW, lr 1e-4, betas (0.9, 0.999), eps 1e-7, weight decay
0.01; upstream's is torch's default for-each AdamW, ours the fused CPU kernel), same
schedule (upstream's defaults: 200 warmup, 1000 stable, 1000 decay steps), the
checkpoint's dropout on both sides, torch's default thread count on both sides.

Each side runs in its own process, one after the other, so that its peak RSS
(``ru_maxrss`` at the end: imports, weights, compilation, optimizer state and activations)
is its own. ``--warmup-steps`` are untimed (they include our compilation and Lightning's
start-up); steps/s is ``--steps`` over the span from the start of the first timed step to
the end of the last, so the loop's own costs between steps count for both sides.
``children_peak_rss_mb`` is the largest child process's peak (inductor's compiler
subprocesses on our side); a forked child inherits its parent's figure, so it is only an
upper bound on what compilation adds outside the process.

Small steps are very sensitive to other load on the CPUs (a thread pool that loses a core
stalls the whole step): on a busy machine compare the median step times as well, or set
``OMP_NUM_THREADS=1`` (it applies to both sides).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
ORACLE_DIR = ROOT / ".oracle"
RESULT_PREFIX = "FINETUNE_BENCHMARK_RESULT "
SIDES = ("ours", "upstream", "ours-eager", "ours-bf16")
# Upstream TotoForFinetuning's defaults, used by both sides (the phases do not change the work).
LEARNING_RATE, MIN_LEARNING_RATE = 1e-4, 1e-5
WARMUP, STABLE, DECAY = 200, 1000, 1000
MAX_GRAD_NORM = 1.0


def tiny_config(published: dict) -> dict:
    """The tests' TINY_CONFIG: small enough to compile quickly, two space-wise layers, several heads."""
    return {**published, "patch_size": 16, "stride": 16, "embed_dim": 32, "num_layers": 4, "num_heads": 4,
            "mlp_hidden_dim": 64, "spacewise_every_n_layers": 2,
            "output_distribution_kwargs": {"k_components": 5}}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Parent: checkpoint, windows, one subprocess per side, the table.
# ---------------------------------------------------------------------------------------------


def synthetic_series(count: int, variates: int, length: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``count`` float32 ``[variates, length]`` series: a daily and a weekly cycle, a trend and noise."""
    t = torch.arange(length, dtype=torch.float64)
    series = []
    for _ in range(count):
        params = torch.rand(variates, 6, generator=generator, dtype=torch.float64)
        level, trend = 10 * params[:, :1], 0.01 * (params[:, 1:2] - 0.5)
        daily = (1 + 2 * params[:, 2:3]) * torch.sin(2 * math.pi * t / 24 + 2 * math.pi * params[:, 3:4])
        weekly = params[:, 4:5] * torch.sin(2 * math.pi * t / 168 + 2 * math.pi * params[:, 5:6])
        noise = 0.3 * torch.randn(variates, length, generator=generator, dtype=torch.float64)
        series.append((level + trend * t + daily + weekly + noise).float())
    return series


def build_windows(args: argparse.Namespace, patch_size: int, path: Path) -> None:
    """One batch of windows per step (warm-up and timed), saved for both sides to read."""
    from toto.training import WindowSampler, training_series

    generator = torch.Generator().manual_seed(args.seed)
    length = args.context_length + patch_size + 1024
    series = training_series(synthetic_series(16, args.variates, length, generator), name="synthetic")
    sampler = WindowSampler(series, context_length=args.context_length, patch_size=patch_size)
    batches = [sampler.sample(args.batch_size, generator) for _ in range(args.warmup_steps + args.steps)]
    stacked = {name: torch.stack([getattr(b, name) for b in batches]) for name in ("series", "observed", "loss_mask")}
    torch.save({**stacked, "patch_size": patch_size, "context_length": args.context_length}, path)


def run_side(side: str, args: argparse.Namespace, checkpoint: Path, windows: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--checkpoint", str(checkpoint),
               "--windows", str(windows), "--warmup-steps", str(args.warmup_steps), "--steps", str(args.steps)]  # fmt: skip
    print(f"running {side} ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode or not lines:
        sys.stderr.write(done.stdout)
        raise SystemExit(f"{side} failed (exit status {done.returncode})")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_table(results: dict[str, dict]) -> None:
    print(f"{'side':<11} {'steps/s':>8} {'ms/step':>9} {'median ms':>10} {'peak RSS MB':>12} "
          f"{'timed RSS growth MB':>20} {'loss':>8}", file=sys.stderr)  # fmt: skip
    for side, r in results.items():
        print(f"{side:<11} {r['steps_per_s']:>8.3f} {r['ms_per_step']:>9.1f} {r['median_ms_per_step']:>10.1f} "
              f"{r['peak_rss_mb']:>12.0f} {r['timed_rss_growth_mb']:>20.1f} {r['mean_timed_loss']:>8.4f}",
              file=sys.stderr)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="full")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--context-length", type=int, default=512)
    parser.add_argument("--variates", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first (compilation included)")
    parser.add_argument("--sides", default="ours,upstream", help=f"comma-separated, run in this order, from {SIDES}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    # Internal: one side, run by the parent in its own process.
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--windows", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        runners = {"ours": run_ours, "ours-eager": run_ours_eager, "ours-bf16": run_ours_bf16, "upstream": run_upstream}
        result = runners[args.side](args)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return

    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if unknown := [s for s in sides if s not in SIDES]:
        parser.error(f"unknown side(s) {unknown}; choose from {SIDES}")
    if args.steps < 1 or args.warmup_steps < 1:
        parser.error("--steps and --warmup-steps must be at least 1 (the first step compiles)")
    from toto.config import PUBLISHED_CONFIG
    from toto.checkpoints.random_weights import write_checkpoint

    config = PUBLISHED_CONFIG if args.size == "full" else tiny_config(PUBLISHED_CONFIG)
    report = {
        "cpu": cpu_model(), "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "size": args.size, "batch_size": args.batch_size, "context_length": args.context_length,
        "variates": args.variates, "steps": args.steps, "warmup_steps": args.warmup_steps,
        "dropout": config["dropout"], "max_grad_norm": MAX_GRAD_NORM, "results": {},
    }  # fmt: skip
    print(f"{report['cpu']}, {report['cpus']} CPUs, torch {report['torch']}, {report['threads']} threads; "
          f"{args.size} model, batch {args.batch_size} x {args.variates} variate(s), context {args.context_length}, "
          f"{args.warmup_steps} warm-up + {args.steps} timed steps", file=sys.stderr, flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="finetune_benchmark_") as folder:
        checkpoint = write_checkpoint(Path(folder) / "model", config, seed=args.seed)
        windows = Path(folder) / "windows.pt"
        build_windows(args, config["patch_size"], windows)
        for side in sides:  # one after the other, never in parallel
            report["results"][side] = run_side(side, args, checkpoint, windows)
            print(f"  {side}: {report['results'][side]['steps_per_s']:.3f} steps/s", file=sys.stderr, flush=True)
    results = report["results"]
    print_table(results)
    if "ours" in results and "upstream" in results:
        ours, upstream = results["ours"], results["upstream"]
        report["speedup_ours_over_upstream"] = ours["steps_per_s"] / upstream["steps_per_s"]
        report["median_speedup_ours_over_upstream"] = upstream["median_ms_per_step"] / ours["median_ms_per_step"]
        report["peak_rss_ratio_ours_over_upstream"] = ours["peak_rss_mb"] / upstream["peak_rss_mb"]
        print(f"ours / upstream: {report['speedup_ours_over_upstream']:.2f}x steps/s (target >= 1.5x; "
              f"{report['median_speedup_ours_over_upstream']:.2f}x on median step times), "
              f"peak RSS {report['peak_rss_ratio_ours_over_upstream']:.2f}x (target <= 1.0x)", file=sys.stderr)  # fmt: skip
    if "ours-bf16" in results and "upstream" in results:
        report["speedup_ours_bf16_over_upstream"] = results["ours-bf16"]["steps_per_s"] / results["upstream"]["steps_per_s"]
        print(f"ours bf16 autocast / upstream float32: {report['speedup_ours_bf16_over_upstream']:.2f}x steps/s "
              "(informative: not the same numbers)", file=sys.stderr)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


# ---------------------------------------------------------------------------------------------
# Children: one side each.
# ---------------------------------------------------------------------------------------------


def rss_mb() -> float:
    """This process's resident set now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def load_windows(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def summary(args: argparse.Namespace, step_seconds: list[float], span: float, losses: list[float],
            rss_before: float, rss_after: float, peak_before_timed: float, started: float) -> dict:  # fmt: skip
    return {
        "steps_per_s": args.steps / span,
        "ms_per_step": 1000 * span / args.steps,
        "median_ms_per_step": 1000 * statistics.median(step_seconds),
        "min_ms_per_step": 1000 * min(step_seconds),
        "timed_span_s": span,
        "warmup_and_setup_s": time.perf_counter() - started - span,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_before_timed_mb": peak_before_timed,
        "children_peak_rss_mb": peak_rss_mb(resource.RUSAGE_CHILDREN),  # compile workers, if any
        "rss_before_timed_mb": rss_before,
        "rss_after_timed_mb": rss_after,
        "timed_rss_growth_mb": rss_after - rss_before,
        "mean_timed_loss": statistics.fmean(losses),
        "step_ms": [round(1000 * t, 3) for t in step_seconds],
        "threads": torch.get_num_threads(),
    }


def run_ours(args: argparse.Namespace, compile: bool = True, autocast: torch.dtype | None = None) -> dict:
    started = time.perf_counter()
    from toto.model.toto import Toto
    from toto.training import TrainingStep, WindowLoss, Windows, trainable_parameters

    data = load_windows(args.windows)
    backbone = Toto.load_from_checkpoint(args.checkpoint).model
    backbone.train()
    step = TrainingStep(
        WindowLoss(backbone, autocast_dtype=autocast), trainable_parameters(backbone, "all"),
        learning_rate=LEARNING_RATE, min_learning_rate=MIN_LEARNING_RATE,
        warmup_steps=WARMUP, stable_steps=STABLE, decay_steps=DECAY, max_grad_norm=MAX_GRAD_NORM, compile=compile,
    )  # fmt: skip
    batches = [Windows(s, o, m) for s, o, m in zip(data["series"], data["observed"], data["loss_mask"])]
    for windows in batches[: args.warmup_steps]:
        step(windows)
    peak_before_timed, rss_before = peak_rss_mb(), rss_mb()
    step_seconds, losses = [], []
    first = time.perf_counter()
    for windows in batches[args.warmup_steps :]:
        begin = time.perf_counter()
        losses.append(step(windows))
        step_seconds.append(time.perf_counter() - begin)
    span = time.perf_counter() - first
    return summary(args, step_seconds, span, losses, rss_before, rss_mb(), peak_before_timed, started)


def run_ours_eager(args: argparse.Namespace) -> dict:
    return run_ours(args, compile=False)


def run_ours_bf16(args: argparse.Namespace) -> dict:
    """Ours under bfloat16 autocast (``precision="bf16"``): not the same numbers, so not the comparison
    the target is about; informative on CPUs with bfloat16 matrix units (AMX)."""
    return run_ours(args, autocast=torch.bfloat16)


def run_upstream(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    import logging
    import warnings

    sys.path.insert(0, str(ORACLE_DIR))
    warnings.filterwarnings("ignore")  # xFormers absent, DataLoader workers, ...
    import lightning
    from torch.utils.data import DataLoader

    from toto_upstream.data.util.dataset import CausalMaskedTimeseries
    from toto_upstream.model.lightning_module import TotoForFinetuning
    from toto_upstream.model.toto import Toto as UpstreamToto

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    data = load_windows(args.windows)
    context, patch = data["context_length"], data["patch_size"]
    batches = []
    for series, observed in zip(data["series"], data["observed"]):
        batch, variates, length = series.shape
        batches.append(
            CausalMaskedTimeseries(
                series=series,
                padding_mask=observed,
                id_mask=torch.zeros(batch, variates, length, dtype=torch.long),
                timestamp_seconds=torch.arange(length, dtype=torch.long).expand(batch, variates, length),
                time_interval_seconds=torch.ones(batch, variates, dtype=torch.long),
                input_slice=slice(0, context),
                target_slice=slice(patch, context + patch),
                num_exogenous_variables=0,
            )
        )
    backbone = UpstreamToto.load_from_checkpoint(str(args.checkpoint)).model
    module = TotoForFinetuning(
        pretrained_backbone=backbone, lr=LEARNING_RATE, min_lr=MIN_LEARNING_RATE,
        warmup_steps=WARMUP, stable_steps=STABLE, decay_steps=DECAY,
    )  # fmt: skip
    timer = _step_timer_class()(args.warmup_steps)  # a lightning.Callback: defined once lightning is imported
    trainer = lightning.Trainer(
        max_steps=args.warmup_steps + args.steps, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        gradient_clip_val=MAX_GRAD_NORM, gradient_clip_algorithm="norm", callbacks=[timer],
    )  # fmt: skip
    loader = DataLoader(batches, batch_size=None, shuffle=False, num_workers=0, collate_fn=_as_is)
    trainer.fit(module, train_dataloaders=loader)
    if len(timer.step_seconds) != args.steps:
        raise RuntimeError(f"upstream ran {len(timer.step_seconds)} timed steps, expected {args.steps}")
    span = timer.last_end - timer.first_start
    return summary(args, timer.step_seconds, span, timer.losses, timer.rss_before, timer.rss_after,
                   timer.peak_before_timed, started)  # fmt: skip


def _as_is(batch):
    return batch


def _step_timer_class():
    import lightning

    class StepTimer(lightning.Callback):
        """Times the training steps from index ``warmup`` on, and the RSS around them."""

        def __init__(self, warmup: int):
            self.warmup = warmup
            self.step_seconds: list[float] = []
            self.losses: list[float] = []
            self.first_start = self.last_end = self._begin = 0.0
            self.rss_before = self.rss_after = self.peak_before_timed = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == self.warmup:
                self.peak_before_timed, self.rss_before = peak_rss_mb(), rss_mb()
                self.first_start = time.perf_counter()
            self._begin = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            end = time.perf_counter()
            if batch_idx < self.warmup:
                return
            self.step_seconds.append(end - self._begin)
            self.last_end = end
            self.rss_after = rss_mb()
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(float(loss))

    return StepTimer


if __name__ == "__main__":
    main()

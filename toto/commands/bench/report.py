"""The benchmark's report: the S1-S3 table, S4's table and memory line, speed-ups. Plain Python, no torch."""

from __future__ import annotations

from typing import Callable, Iterator

from .settings import (
    BATCHED,
    COLUMNS,
    INTERRUPTED,
    S4_COLUMNS,
    UPSTREAM_DTYPE,
    S4Settings,
)


def s4_speed_ups(results: dict) -> dict[str, float]:
    """Each of ours' series/s over upstream eager's (same workload, so its later call time over ours)."""
    base = results.get("upstream-eager", {}).get("later_s")
    if not base:
        return {}
    return {
        name: base / r["later_s"]
        for name, r in results.items()
        if name.startswith("ours") and r.get("later_s")
    }


def _failed_cells(r: dict, remaining: int) -> list[str]:
    """A failed runner's row: the error, then dashes to the table's width."""
    return [f"failed: {r['error']}"] + ["-"] * (remaining - 1)


def _peak_and_speed_up(r: dict, base: dict | None) -> list[str]:
    """The peak-memory and speed-up cells (against ``base``'s later call) of a measured runner."""
    base_s = base.get("later_s") if base else None
    peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "n/a"
    return [peak, f"{base_s / r['later_s']:.1f}x" if base_s else "n/a"]


def _line(cells: list[str], columns: int, r: dict, measured: Callable[[], list[str]]) -> str:
    """A table line: ``cells``, then a failed runner's error or ``measured()``'s cells."""
    cells = cells + (_failed_cells(r, columns - len(cells)) if "error" in r else measured())
    return "| " + " | ".join(cells) + " |"


def s4_row(runner: str, r: dict, base: dict | None) -> str:
    cells = [BATCHED, runner, r["dtype"], str(r["batch_size"]), str(r["samples_per_batch"])]
    return _line(cells, len(S4_COLUMNS), r, lambda: [
        f"{r['warmup_s']:.2f}", f"{r['later_s']:.3f}", f"{r['series_per_s']:.2f}", *_peak_and_speed_up(r, base),
        str(r["graphs"]), str(r["graphs_after_warmup"]), str(r["graph_breaks"]), str(r["recompiles"]),
        str(r["cudagraph_skips"]),
    ])  # fmt: skip


def s4_table(report: dict) -> list[str]:
    """S4's lines: the workload and settings, its table, the headline ratio and the memory check."""
    s4 = report["s4"]
    settings = S4Settings(**s4["settings"])
    results = report["results"].get(BATCHED, {})
    lines = [f"S4 workload: {s4['workload']}"]
    if "upstream-eager" in results:
        lines.append(
            f"  upstream-eager as AutoGluon calls it: batches of {settings.baseline_batch_size} in the given order, "
            f"each left-padded to its longest (NaN, then 0 and masked), samples_per_batch "
            f"{settings.baseline_samples_per_batch}, KV cache; warm-up: one batch (eager: nothing to compile)"
        )
    lines += [
        f"  ours: TotoPipeline.predict on the whole list, batch_size {settings.batch_size}, samples_per_batch "
        f"{settings.samples_per_batch}, longest first; warm-up: one full call. Later call: median of the timed calls; "
        "series/s: series / later call",
        "",
        "| " + " | ".join(S4_COLUMNS) + " |",
        "|---" * len(S4_COLUMNS) + "|",
    ]
    lines += [s4_row(name, r, results.get("upstream-eager")) for name, r in results.items()]
    ratio = s4.get("speed_up", {}).get("ours-compiled")
    if ratio is not None:
        ours, base = results["ours-compiled"], results["upstream-eager"]
        lines.append(
            f"S4 ours-compiled / upstream-eager: {ratio:.1f}x "
            f"({ours['series_per_s']:.2f} against {base['series_per_s']:.3f} series/s)"
        )
    memory = s4.get("memory")
    if memory:
        lines.append(memory_line(memory))
    return lines


def memory_line(memory: dict) -> str:
    runs = memory["runs"]
    what = "torch.cuda.max_memory_allocated" if memory["device"] == "cuda" else "peak RSS during the runner"
    parts = []
    for run in runs:
        if "error" in run:
            parts.append(f"{run['series']} series: failed: {run['error']}")
        else:
            rss = run.get("process_max_rss_mib")
            whole = f", process max RSS {rss:.0f} MiB" if rss is not None else ""
            parts.append(f"{run['series']} series: {run['peak_mib']:.0f} MiB{whole}")
    text = f"S4 memory, ours-compiled, a fresh process each ({what}): " + "; ".join(parts)
    if memory.get("peak_ratio") is not None:
        text += f"; ratio {memory['peak_ratio']:.3f}"
        if memory.get("process_rss_ratio") is not None:
            text += f" (process max RSS {memory['process_rss_ratio']:.3f})"
    return text

def worst_exit(report: dict) -> int:
    """The command's exit code: 130 when interrupted, 1 when stopped early or one of ours (or the memory check) failed."""
    if report["stopped"]:
        return 130 if report["stopped"] == INTERRUPTED else 1
    # Upstream failing (e.g. compiled under CUDA graphs) is a finding about the baseline; ours failing is an error.
    memory_failed = any("error" in child for child in report.get("s4", {}).get("memory", {}).get("runs", []))
    return 1 if memory_failed or any(r.startswith("ours") and "error" in row for r, row in _rows(report)) else 0


def _rows(report: dict) -> Iterator[tuple[str, dict]]:
    for runners in report["results"].values():
        yield from runners.items()


def row(scenario: str, runner: str, r: dict, base: dict | None) -> str:
    note = f" ({r['note']})" if "note" in r else ""  # ours: compiling failed and it ran eagerly
    return _line([scenario, runner, r["dtype"]], len(COLUMNS), r, lambda: [
        f"{r['first_s']:.2f}", f"{r['later_s']:.3f}", f"{r['compile_s']:.1f}", *_peak_and_speed_up(r, base),
        str(r["graphs"]), str(r["graph_breaks"]), str(r["recompiles"]), str(r["cudagraph_skips"]) + note,
    ])  # fmt: skip


def table(report: dict) -> str:
    peak = "torch.cuda.max_memory_allocated" if report["device_type"] == "cuda" else "the process's peak RSS"
    prefill = "compiled" if report["default_compile_prefill"] else "eager"
    lines = [
        f"device: {report['device']}; torch {report['torch']}; compile mode {report['compile_mode']}",
        f"ours in {report['dtype']}, upstream in {UPSTREAM_DTYPE}; ours-compiled runs prefill {prefill} "
        f"(the device's default); peak MiB: {peak}, every loaded model's weights included",
        "",
    ]
    if "s4" not in report or any(name != BATCHED for name in report["results"]):
        lines += ["| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
        for name, runners in report["results"].items():
            if name == BATCHED:
                continue
            for runner, r in runners.items():
                lines.append(row(name, runner, r, runners.get("upstream-eager")))
        if "s4" in report:
            lines.append("")
    if "s4" in report:
        lines += s4_table(report)
    if report["stopped"]:
        lines.append(f"(stopped early, rows missing: {report['stopped']})")
    return "\n".join(lines)

"""Warm starts: ``TotoPipeline.warmup`` compiles every bucket up front; the compile cache outlives the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from compile_backends import HEALTH

from toto import TotoPipeline
from toto.compile.diagnostics import snapshot

H = 20  # two tiny patches: one decode step


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_warmup_compiles_every_bucket_a_backtest_touches(tiny_checkpoint, capsys):
    pipeline = TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=True, compile_backend=HEALTH)
    lengths = list(range(100, 521, 35))  # 100 ... 520
    report = pipeline.warmup(lengths, H, num_samples=8, samples_per_batch=8, batch_size=2)
    # Patches needed: ceil(L / 16) context + 1 decoded, rounded up to 16: buckets 16, 32 and 48.
    assert [capacity for _, capacity, _ in report] == [16, 32, 48]
    assert "bucket 3/3" in capsys.readouterr().err

    before = snapshot()
    with torch.compiler.set_stance("fail_on_recompile"):
        for length in lengths:
            pipeline.predict(torch.randn(2, length).cumsum(-1), H, num_samples=8, samples_per_batch=8)
    stats = snapshot() - before
    assert stats.graphs == 0 and stats.recompiles == 0 and stats.graph_breaks == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"context_lengths": []}, "context_lengths"), ({"context_lengths": [100, 0]}, r"context_lengths\[1\]")],
)
def test_warmup_rejects_bad_lengths(tiny_checkpoint, arguments, message):
    pipeline = TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=False)
    with pytest.raises(ValueError, match=message):
        pipeline.warmup(prediction_length=H, **arguments)


CALL = textwrap.dedent(
    """
    import json, sys, torch
    from torch._dynamo.utils import counters
    from toto import TotoPipeline
    pipeline = TotoPipeline.from_pretrained(sys.argv[1], device_map="cpu", torch_compile=True,
                                            compile_cache_dir=sys.argv[2])
    context = 10 + torch.randn(150, generator=torch.Generator().manual_seed(0)).cumsum(0)
    samples = pipeline.predict(context, 20, num_samples=8, samples_per_batch=8, seed=0)[0].samples
    print(json.dumps({"hits": counters["inductor"]["fxgraph_cache_hit"],
                      "misses": counters["inductor"]["fxgraph_cache_miss"],
                      "samples": samples.ravel().tolist()}))
    """
)


def test_compile_cache_serves_a_second_process(tiny_checkpoint, tmp_path):
    """The first process compiles and saves; the second, with an empty inductor cache of its own, only hits."""
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TOTO_COMPILE_CACHE")}
    runs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", CALL, str(tiny_checkpoint), str(tmp_path / "cache")],
            capture_output=True, text=True, env=env, timeout=600, check=True,
        )  # fmt: skip
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    assert cold["misses"] >= 1
    assert warm["misses"] == 0 and warm["hits"] >= 1
    assert warm["samples"] == cold["samples"]  # the same kernels, the same seed
    assert (tmp_path / "cache" / "compile-artifacts.bin").is_file()

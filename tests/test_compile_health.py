"""``toto.compile.health``: the steady-state check catches recompiles, graph breaks and missing graphs."""

from __future__ import annotations

import pytest
import torch
from compile_health import steady_state as helper_steady_state

from toto.compile.diagnostics import CompileStats
from toto.compile.health import Health, steady_state


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled(fn):
    return torch.compile(fn, backend="eager", dynamic=False)  # static shapes: a new shape is a recompile


def test_a_warm_function_is_healthy():
    double = compiled(lambda x: 2 * x + 1)
    x = torch.randn(3)
    health = steady_state([lambda: double(x)], rounds=3)
    assert health.warm.graphs == 1 and health.steady == CompileStats() and health.error == ""
    assert health.problems() == [] and health.problems(min_warm_graphs=1) == []
    assert health.problems(min_warm_graphs=2) == ["warm-up compiled 1 graphs; expected at least 2"]


def test_a_recompile_in_steady_state_raises_or_is_reported():
    double = compiled(lambda x: 2 * x + 1)
    warm, other = torch.randn(3), torch.randn(5)
    calls = [lambda: double(warm), lambda: double(other)]
    with pytest.raises(RuntimeError, match="fail_on_recompile"):
        steady_state(calls, warmup=calls[:1])
    torch._dynamo.reset()
    health = steady_state(calls, warmup=calls[:1], catch=True)
    assert "recompile" in health.error
    assert any(problem.startswith("steady state not clean") for problem in health.problems())


def test_the_tests_helper_fails_on_a_recompile():
    shapes = iter([3, 3, 4])  # warm-up with 3, then 3 and a new shape: a recompile
    double = compiled(lambda x: 2 * x)
    with pytest.raises(RuntimeError, match="fail_on_recompile"):
        helper_steady_state([lambda: double(torch.randn(next(shapes))), lambda: double(torch.randn(next(shapes)))])


def test_a_graph_break_is_a_problem():
    def broken(x):
        x = x + 1
        torch._dynamo.graph_break()
        return x * 2

    fn = compiled(broken)
    x = torch.randn(3)
    health = steady_state([lambda: fn(x)])
    assert health.graph_breaks >= 1 and health.new_in_steady_state == 0
    assert [p for p in health.problems() if "graph breaks" in p]


def test_counts_add_up_and_cudagraph_skips_are_problems():
    warm = CompileStats(graph_breaks=1, graphs=2, cudagraph_skips=1)
    steady = CompileStats(graphs=1, recompiles=2, cudagraph_skips=1)
    health = Health(warm, steady)
    assert (health.graph_breaks, health.new_in_steady_state, health.cudagraph_skips) == (1, 3, 2)
    assert len(health.problems()) == 3
    assert Health(CompileStats(graphs=3), CompileStats()).problems(min_warm_graphs=3) == []

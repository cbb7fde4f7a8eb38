"""Deterministic input series for the parity tests."""

from __future__ import annotations

import torch

from toto.data.util.dataset import masked_timeseries


def random_walk(batch: int, variates: int, length: int, level: float = 0.0, step: float = 1.0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return level + step * torch.randn(batch, variates, length, generator=gen).cumsum(-1)


def scenario(name: str, patch: int):
    """Return (series, observed, id_mask), unpadded; lengths may not be patch multiples."""
    if name == "univariate":
        series = random_walk(2, 1, 6 * patch, level=10.0)
        ids = torch.zeros_like(series, dtype=torch.int)
    elif name == "multivariate_groups":
        series = random_walk(2, 4, 6 * patch, level=5.0, seed=1)
        ids = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 2]], dtype=torch.int)[:, :, None].expand_as(series).contiguous()
    elif name == "left_padding":
        series = random_walk(3, 2, 4 * patch + patch // 2 + 3, seed=2)
        ids = torch.zeros_like(series, dtype=torch.int)
    elif name == "large_magnitude":  # BTC-like price levels
        series = random_walk(2, 1, 6 * patch, level=3e4, step=40.0, seed=3)
        ids = torch.zeros_like(series, dtype=torch.int)
    elif name == "constant_stretch":
        series = random_walk(2, 1, 6 * patch, level=2.0, step=0.5, seed=4)
        series[..., patch // 2 : 4 * patch] = 7.25
        ids = torch.zeros_like(series, dtype=torch.int)
    elif name == "missing_values":  # unobserved steps inside the context (upstream: mask False, value 0)
        series = random_walk(2, 2, 5 * patch, level=1.0, seed=5)
        observed = torch.rand(series.shape, generator=torch.Generator().manual_seed(6)) > 0.2
        return series * observed, observed, torch.zeros_like(series, dtype=torch.int)
    else:
        raise KeyError(name)
    return series, torch.ones_like(series, dtype=torch.bool), ids


SCENARIOS = ["univariate", "multivariate_groups", "left_padding", "large_magnitude", "constant_stretch", "missing_values"]


def masked_inputs(module, series: torch.Tensor, num_exogenous: int = 0):
    """``series`` as ``module.MaskedTimeseries`` (ours or the oracle's): all observed, one id group."""
    return masked_timeseries(series, container=module.MaskedTimeseries)._replace(num_exogenous_variables=num_exogenous)

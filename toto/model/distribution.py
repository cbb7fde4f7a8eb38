"""The output head: a mixture of Student-T distributions, and an affine wrapper.

Sampling never calls ``torch.multinomial`` or reads values back to the host: the
component is chosen by inverse CDF, and a Student-T draw is ``normal / sqrt(chi2(df) / df)``.
:meth:`MixtureOfStudentT.sample_from` draws from given uniforms instead (Bailey's polar
method, two uniforms per draw; per-series streams, see :mod:`toto.inference.keyed_random`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from torch.distributions import Distribution, constraints


class Uniforms(NamedTuple):
    """Three independent uniforms per drawn value, shaped like the draws.

    ``radius`` and ``radius_complement`` are ``p`` and ``1 - p`` of one uniform, each
    computed from the integer so that both keep full relative precision near 0.
    """

    component: Float[Tensor, "..."]  # in [0, 1), 24 bits, as torch.rand
    radius: Float[Tensor, "..."]  # in (0, 1)
    radius_complement: Float[Tensor, "..."]  # 1 - radius
    angle: Float[Tensor, "..."]  # in [0, 1), 24 bits


class MixtureOfStudentT(Distribution):
    """Mixture over the last dimension of ``df``, ``loc``, ``scale``, ``logits`` (``[..., k]``)."""

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = False

    def __init__(self, df: Tensor, loc: Tensor, scale: Tensor, logits: Tensor):
        # Means and draws in at least float32: a bfloat16 uniform has 8 bits, too coarse to sample with.
        df, loc, scale, logits = (t.to(torch.promote_types(t.dtype, torch.float32)) for t in (df, loc, scale, logits))
        self.df, self.loc, self.scale, self.logits = df, loc, scale, logits
        super().__init__(batch_shape=loc.shape[:-1], validate_args=False)

    def last_steps(self, n: int) -> "MixtureOfStudentT":
        """The mixture restricted to the last ``n`` entries of the final batch dimension."""
        return MixtureOfStudentT(*(t[..., -n:, :] for t in (self.df, self.loc, self.scale, self.logits)))

    @property
    def mixture_probs(self) -> Tensor:
        return torch.softmax(self.logits, dim=-1)

    @property
    def mean(self) -> Tensor:
        return (self.mixture_probs * self.loc).sum(-1)

    @property
    def variance(self) -> Tensor:
        probs = self.mixture_probs
        component_var = self.scale**2 * self.df / (self.df - 2)
        return (probs * (component_var + self.loc**2)).sum(-1) - self.mean**2

    def log_prob(self, value: Tensor) -> Tensor:
        z = (value[..., None] - self.loc) / self.scale
        half_df = 0.5 * self.df
        component = (
            torch.lgamma(half_df + 0.5)
            - torch.lgamma(half_df)
            - 0.5 * torch.log(self.df * math.pi)
            - torch.log(self.scale)
            - (half_df + 0.5) * torch.log1p(z * z / self.df)
        )
        return torch.logsumexp(torch.log_softmax(self.logits, dim=-1) + component, dim=-1)

    def sample(self, sample_shape: torch.Size | tuple = torch.Size()) -> Tensor:
        sample_shape = torch.Size(sample_shape)
        shape = sample_shape + self.logits.shape
        # Component by inverse CDF: one uniform per draw, located among the k - 1 inner
        # boundaries of the cumulative weights by binary search (a draw past the last
        # boundary's rounding error lands in the last component). Draws run along a
        # trailing dimension, as searchsorted wants, then move to the front.
        boundaries = torch.cumsum(self.mixture_probs, dim=-1)[..., :-1].contiguous()
        uniform = torch.rand((*boundaries.shape[:-1], sample_shape.numel()), device=self.logits.device, dtype=self.logits.dtype)
        choice = torch.searchsorted(boundaries, uniform, right=True).movedim(-1, 0).reshape(*shape[:-1], 1)
        df, loc, scale = (t.expand(shape).gather(-1, choice).squeeze(-1) for t in (self.df, self.loc, self.scale))
        # Drawn flat: with a strided input, inductor's meta kernel for _standard_gamma states
        # other strides than the real kernel returns (torch 2.13); 1-D has one layout.
        chi2 = 2.0 * torch._standard_gamma((0.5 * df).reshape(-1)).view(df.shape)
        normal = torch.randn_like(loc)
        return loc + scale * normal * torch.rsqrt(chi2 / df)

    def sample_from(self, uniforms: "Uniforms") -> Tensor:
        """One draw per element of ``uniforms`` (shaped draw dimensions + batch shape).

        The component by inverse CDF, as :meth:`sample`. The Student-T draw by Bailey's
        polar method (Math. Comp. 62, 1994) with the point of the unit disc taken in polar
        form, so nothing is rejected: for ``p`` uniform on (0, 1) (the squared radius) and an
        angle ``a``, ``cos(2 pi a) * sqrt(df * (p ** (-2 / df) - 1))`` is Student-T with
        ``df`` degrees of freedom. ``p ** (-2 / df) - 1`` is an ``expm1`` of ``log p``,
        taken from ``1 - p`` when ``p`` is near 1, where ``p`` itself has lost its digits.
        """
        shape = uniforms.component.shape
        boundaries = torch.cumsum(self.mixture_probs, dim=-1)[..., :-1]
        choice = (uniforms.component[..., None] >= boundaries).sum(-1, keepdim=True)
        full = (*shape, self.logits.shape[-1])
        df, loc, scale = (t.expand(full).gather(-1, choice).squeeze(-1) for t in (self.df, self.loc, self.scale))
        p, q = uniforms.radius, uniforms.radius_complement
        log_p = torch.where(p < 0.5, torch.log(p), torch.log1p(-q))
        radius = torch.sqrt(df * torch.expm1(-2.0 / df * log_p))
        return loc + scale * radius * torch.cos((2.0 * math.pi) * uniforms.angle)


class AffineTransformed(Distribution):
    """``loc + scale * X`` for a base distribution ``X``; maps the scaled space back to data."""

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = False

    def __init__(self, base: Distribution, loc: Tensor, scale: Tensor):
        self.base, self.loc, self.scale = base, loc, scale
        super().__init__(batch_shape=base.batch_shape, validate_args=False)

    @property
    def mean(self) -> Tensor:
        return self.loc + self.scale * self.base.mean

    @property
    def variance(self) -> Tensor:
        return self.scale**2 * self.base.variance

    def log_prob(self, value: Tensor) -> Tensor:
        return self.base.log_prob((value - self.loc) / self.scale) - torch.log(self.scale)

    def sample(self, sample_shape: torch.Size | tuple = torch.Size()) -> Tensor:
        return self.loc + self.scale * self.base.sample(sample_shape)

    def sample_from(self, uniforms: "Uniforms") -> Tensor:
        """A draw from given uniforms (see :meth:`MixtureOfStudentT.sample_from`)."""
        return self.loc + self.scale * self.base.sample_from(uniforms)


class MixtureOfStudentTsOutput(nn.Module):
    """Projects each step's features to ``k`` Student-T components; names match the checkpoint."""

    def __init__(self, embed_dim: int, k_components: int):
        super().__init__()
        self.df = nn.Linear(embed_dim, k_components)
        self.loc_proj = nn.Linear(embed_dim, k_components)
        self.scale_proj = nn.Linear(embed_dim, k_components)
        self.mixture_weights = nn.Linear(embed_dim, k_components)

    def projections(self) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
        """The four projections, in the order :meth:`mixture` takes their outputs."""
        return self.df, self.loc_proj, self.scale_proj, self.mixture_weights

    def forward(self, x: Float[Tensor, "... embed"]) -> MixtureOfStudentT:
        return self.mixture(*(projection(x) for projection in self.projections()))

    @staticmethod
    def mixture(df: Tensor, loc: Tensor, scale: Tensor, logits: Tensor) -> MixtureOfStudentT:
        """The mixture from the projections' raw outputs (``[..., k]`` each)."""
        eps = torch.finfo(df.dtype).eps
        return MixtureOfStudentT(
            df=2.0 + F.softplus(df).clamp_min(eps),
            loc=loc,
            scale=F.softplus(scale).clamp_min(eps),
            logits=logits,
        )

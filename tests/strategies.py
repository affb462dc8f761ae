"""Small, bounded Hypothesis strategies for batch-normalization inputs.

Arrays are drawn as a seed and a shape and then generated with NumPy, which keeps examples
small and shrinking meaningful (to the smallest shape and the simplest seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

EPS_VALUES = (1e-5, 1e-3, 0.1, 1.0)
MOMENTA = (0.1, 0.01, 0.5, 1.0, None)


@dataclass(frozen=True)
class BNInput:
    """An input ``x`` with per-channel ``gamma``, ``beta``, an upstream ``dy`` and ``eps``."""

    x: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    dy: np.ndarray
    eps: float

    @property
    def channels(self) -> int:
        return self.x.shape[1]


@st.composite
def shapes(draw, min_dims: int = 2, max_dims: int = 4, max_side: int = 5) -> tuple[int, ...]:
    """(N, C) or (N, C, *spatial) with at least 2 values per channel."""
    ndim = draw(st.integers(min_dims, max_dims))
    n = draw(st.integers(1, 6))
    c = draw(st.integers(1, 4))
    spatial = tuple(draw(st.integers(1, max_side)) for _ in range(ndim - 2))
    m = n * int(np.prod(spatial, dtype=int))
    if m < 2:
        n = 2
    return (n, c, *spatial)


@st.composite
def bn_inputs(draw, min_dims: int = 2, max_dims: int = 4, eps=None) -> BNInput:
    """A seeded BN input: values with a random offset and scale per channel."""
    shape = draw(shapes(min_dims=min_dims, max_dims=max_dims))
    seed = draw(st.integers(0, 2**32 - 1))
    eps = draw(st.sampled_from(EPS_VALUES)) if eps is None else eps
    rng = np.random.default_rng(seed)
    c = shape[1]
    offset = rng.uniform(-5.0, 5.0, c).reshape((1, c) + (1,) * (len(shape) - 2))
    scale = rng.uniform(0.2, 3.0, c).reshape(offset.shape)
    x = offset + scale * rng.normal(size=shape)
    gamma = rng.uniform(-2.0, 2.0, c)
    beta = rng.normal(size=c)
    dy = rng.normal(size=shape)
    return BNInput(x=x, gamma=gamma, beta=beta, dy=dy, eps=eps)

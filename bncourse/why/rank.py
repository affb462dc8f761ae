"""Claim 7, rank collapse (Daneshmand et al. 2020): the stable rank of a batch's hidden
representations at initialization, against depth, with and without BN."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..invariance import deep_mlp_forward, deep_mlp_weights
from ..training import torch_threads

__all__ = ["stable_rank", "stable_rank_by_depth"]


def stable_rank(h: np.ndarray | torch.Tensor) -> float:
    r"""$\|H\|_F^2 / \|H\|_2^2$, the sum of the squared singular values over the largest.

    Between 1 (rank one) and the rank of $H$ (all non-zero singular values equal: an
    orthogonal $n \times n$ matrix gives $n$). ``h`` is a 2-D batch, one row per example.
    """
    a = np.asarray(h.detach() if isinstance(h, torch.Tensor) else h, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"stable_rank needs a 2-D matrix; got shape {a.shape}")
    s = np.linalg.svd(a, compute_uv=False)
    if s.size == 0 or s[0] == 0:
        raise ValueError("stable_rank of a zero matrix is undefined")
    return float(np.sum(s**2) / s[0] ** 2)


def stable_rank_by_depth(
    depth: int, *, width: int = 64, batch: int = 32, use_bn: bool, seeds: Sequence[int],
    activation: str = "linear", center: bool = False,
) -> np.ndarray:
    """Stable rank of $h_l$ for $l = 0..$``depth`` (columns), one row per seed.

    The plain network of :func:`bncourse.invariance.deep_mlp_forward` at initialization
    (Gaussian He weights, divided by sqrt 2 for linear layers; BN in training mode when
    ``use_bn``), on a batch of standard Gaussian inputs. With ``center`` each
    representation's column means are subtracted first (the rank of the centred batch). The
    network's last layer has no nonlinearity (see ``deep_mlp_forward``).
    """
    with torch_threads(1):
        rows = [_stable_ranks(depth, width, batch, use_bn, seed, activation, center)
                for seed in seeds]
    return np.array(rows)


def _stable_ranks(depth: int, width: int, batch: int, use_bn: bool, seed: int,
                  activation: str, center: bool) -> list[float]:
    """One seed's stable ranks, input to output."""
    g = torch.Generator().manual_seed(30_000 + seed)
    x = torch.randn(batch, width, generator=g, dtype=torch.float64)
    weights = deep_mlp_weights(depth, width, seed)
    if activation == "linear":
        # variance 1/width keeps a linear network's scale (He's 2/width is for ReLU)
        weights = [w / 2.0**0.5 for w in weights]
    hs = deep_mlp_forward(x, weights, use_bn, activation=activation)
    if center:
        hs = [h - h.mean(dim=0, keepdim=True) for h in hs]
    return [stable_rank(h) for h in hs]

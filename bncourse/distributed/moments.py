r"""The statistics a process sends: ``(count, mean, M2)`` triples and their merge.

A process summarizes the values $x_i$ of a channel in its local batch by the triple
$(n_k, \bar{x}_k, M_{2,k})$, with $M_{2,k} = \sum_i (x_i - \bar{x}_k)^2$ (so the biased
variance is $M_2/n$). Two triples merge into the triple of the union
(:func:`merge_moments`, Chan, Golub and LeVeque's update); :func:`merge_all` merges many in a
tree. This is what :class:`~bncourse.distributed.SyncBatchNorm` gathers in its forward pass.

The alternative that needs only a sum over processes (one ``all_reduce``) sends the sums of
$x - s$ and $(x - s)^2$ about a shift $s$ that every process knows (:func:`shifted_sums`,
:func:`merge_shifted_sums`). With $s = 0$ it is the one-pass formula
$\overline{x^2} - \bar{x}^2$, which loses about $2\log_{10}(|\bar{x}|/\sigma)$ digits to
cancellation; with $s$ near the mean (the running mean, say) it loses only
$2\log_{10}(|\bar{x} - s|/\sigma)$.

Means, M2 and sums may be NumPy arrays or tensors (one entry per channel), reduced over axis
0 (and, for tensors, the spatial axes); counts are integers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from ..layer import _per_channel

__all__ = ["merge_moments", "local_moments", "merge_all", "shifted_sums", "merge_shifted_sums"]


def _count(n: Any, what: str) -> int:
    if isinstance(n, Tensor):
        n = n.item()
    if isinstance(n, (bool, np.bool_)) or not float(n).is_integer() or n < 0:
        raise ValueError(f"{what} must be a non-negative integer count; got {n!r}")
    return int(n)


def merge_moments(a: tuple, b: tuple) -> tuple:
    r"""Merge two ``(count, mean, M2)`` triples into the triple of the union.

    With $n = n_a + n_b$ and $\delta = \bar{x}_b - \bar{x}_a$:
    $\bar{x} = \bar{x}_a + \delta\, n_b/n$ and
    $M_2 = M_{2,a} + M_{2,b} + \delta^2 n_a n_b / n$ (Chan, Golub and LeVeque). A part with
    count 0 contributes nothing (its mean and M2 are ignored).
    """
    if len(a) != 3 or len(b) != 3:
        raise ValueError("merge_moments takes two (count, mean, M2) triples")
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n_a, n_b = _count(n_a, "the first count"), _count(n_b, "the second count")
    if n_b == 0:
        return n_a, mean_a, m2_a
    if n_a == 0:
        return n_b, mean_b, m2_b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta * delta * (n_a * n_b / n)


def local_moments(x: Tensor) -> tuple[int, Tensor, Tensor]:
    """``(count, mean, M2)`` per channel of ``x`` over axis 0 and the spatial axes (two-pass).

    An empty batch gives count 0 and zero means and M2.
    """
    c = x.shape[1]
    n = x.numel() // c if c else 0
    if n == 0:
        zeros = x.new_zeros(c)
        return 0, zeros, zeros.clone()
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dim=dims)
    centred = x - _per_channel(mean, x)
    return n, mean, (centred * centred).sum(dim=dims)


def merge_all(parts: Sequence[tuple]) -> tuple:
    """Merge ``(count, mean, M2)`` triples pairwise, as a tree: neighbours, then pairs of pairs.

    The tree keeps the round-off of the merged M2 growing like ``log2(len(parts))`` merges
    rather than ``len(parts)`` for a left-to-right fold. The order is fixed by the order of
    ``parts``, so every process that merges the same list gets the same bits.
    """
    if not parts:
        raise ValueError("merge_all needs at least one (count, mean, M2) triple")
    level = list(parts)
    while len(level) > 1:
        paired = [merge_moments(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = paired + ([level[-1]] if len(level) % 2 else [])
    return level[0]


def shifted_sums(x: Any, shift: Any = 0.0) -> tuple[int, Any, Any]:
    r"""``(count, sum(x - s), sum((x - s)^2))`` over axis 0 of ``x``, in the dtype of ``x``.

    ``x`` of shape ``(n, C)`` (a NumPy array or a tensor); ``shift`` a scalar or one value per
    channel that every process knows. These sums add up across processes, so one
    ``all_reduce`` merges them (:func:`merge_shifted_sums`).
    """
    d = x - shift
    return int(x.shape[0]), d.sum(0), (d * d).sum(0)


def merge_shifted_sums(parts: Sequence[tuple], shift: Any = 0.0) -> tuple[int, Any, Any]:
    r"""The count, mean and biased variance from summed :func:`shifted_sums`.

    $\bar{x} = s + S_1/n$ and $\sigma^2 = S_2/n - (S_1/n)^2$. ``shift=0`` is the one-pass
    formula $\frac{1}{n}\sum x^2 - (\frac{1}{n}\sum x)^2$ (what Keras 2's synchronized
    ``BatchNormalization`` all-reduces); its relative error grows like
    $u\,(|\bar{x} - s|/\sigma)^2$ for a unit round-off $u$.
    """
    if not parts:
        raise ValueError("merge_shifted_sums needs at least one (count, S1, S2) triple")
    n = sum(_count(p[0], "a count") for p in parts)
    if n == 0:
        raise ValueError("merge_shifted_sums: the parts hold no value")
    s1, s2 = parts[0][1], parts[0][2]
    for part in parts[1:]:  # what one all_reduce computes
        s1, s2 = s1 + part[1], s2 + part[2]
    m1 = s1 / n
    return n, shift + m1, s2 / n - m1 * m1


"""Exercises of chapter 1, the transform."""

from __future__ import annotations

import numpy as np

from ..functional import batch_norm_forward, channel_shape, reduction_axes
from ._cases import forward_cases
from .core import Exercise, FunctionExercise, Mistake


def _reference_forward(x, gamma, beta, eps):
    return batch_norm_forward(x, gamma, beta, eps)[0]


def _forward_with(x, gamma, beta, eps, *, axes=None, ddof=0, eps_outside=False, affine=True,
                  swap=False, divide_by_var=False):
    """A forward pass with one thing changed: the building block of the catalogue."""
    axes = reduction_axes(x.ndim) if axes is None else axes
    shape = channel_shape(x.ndim, x.shape[1])
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, ddof=ddof, keepdims=True)
    if divide_by_var:
        x_hat = (x - mean) / (var + eps)
    elif eps_outside:
        x_hat = (x - mean) / (np.sqrt(var) + eps)
    else:
        x_hat = (x - mean) / np.sqrt(var + eps)
    if not affine:
        return x_hat
    g, b = gamma.reshape(shape), beta.reshape(shape)
    return b * x_hat + g if swap else g * x_hat + b


def _per_sample_axes(ndim: int) -> tuple[int, ...]:
    return tuple(range(1, ndim))


FORWARD = FunctionExercise(
    id="formula.forward",
    chapter=1,
    title="Write the training-mode forward pass",
    signature="forward(x, gamma, beta, eps) -> y",
    reference=_reference_forward,
    cases=forward_cases,
    hint="Per channel: the mean and the biased variance over every axis except axis 1, "
    "then (x - mean) / sqrt(var + eps), then gamma * x_hat + beta.",
    mistakes=(
        Mistake(
            "unbiased_variance",
            "unbiased variance (N-1) used where BN uses the biased one: the transform divides "
            "by m, e.g. x.var(axis=..., ddof=0).",
            lambda x, g, b, e: _forward_with(x, g, b, e, ddof=1),
        ),
        Mistake(
            "eps_outside_sqrt",
            "eps belongs inside the square root: x_hat = (x - mean) / sqrt(var + eps), not "
            "(x - mean) / (sqrt(var) + eps).",
            lambda x, g, b, e: _forward_with(x, g, b, e, eps_outside=True),
        ),
        Mistake(
            "eps_missing",
            "eps is missing: it is added to the variance inside the square root, so that a "
            "channel with (almost) no spread is not divided by (almost) zero.",
            lambda x, g, b, e: _forward_with(x, g, b, 0.0),
        ),
        Mistake(
            "divided_by_variance",
            "divided by the variance instead of the standard deviation: x_hat = (x - mean) / "
            "sqrt(var + eps).",
            lambda x, g, b, e: _forward_with(x, g, b, e, divide_by_var=True),
        ),
        Mistake(
            "per_sample_statistics",
            "statistics taken over the wrong axes: BN normalizes each channel over the batch "
            "and spatial positions (axis 0 and axes 2, 3, ...); averaging over the features of "
            "one example is layer normalization.",
            lambda x, g, b, e: _forward_with(x, g, b, e, axes=_per_sample_axes(x.ndim)),
        ),
        Mistake(
            "per_position_statistics",
            "statistics taken over the wrong axes for a convolutional input: BN normalizes "
            "each channel over the batch and spatial positions together (axes 0, 2, 3), not "
            "each position separately over the batch (axis 0 only).",
            lambda x, g, b, e: _forward_with(x, g, b, e, axes=(0,)),
        ),
        Mistake(
            "missing_affine",
            "gamma and beta are missing: after normalizing, scale by gamma and shift by beta, "
            "y = gamma * x_hat + beta.",
            lambda x, g, b, e: _forward_with(x, g, b, e, affine=False),
        ),
        Mistake(
            "gamma_beta_swapped",
            "gamma and beta are swapped: gamma scales x_hat and beta shifts it, "
            "y = gamma * x_hat + beta.",
            lambda x, g, b, e: _forward_with(x, g, b, e, swap=True),
        ),
    ),
)

EXERCISES: list[Exercise] = [FORWARD]

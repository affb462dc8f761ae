"""Exercises of chapter 2, the gradients."""

from __future__ import annotations

import numpy as np

from ..functional import batch_norm_backward, batch_norm_forward, channel_shape, reduction_axes
from ._cases import backward_cases
from .core import Exercise, FunctionExercise, Mistake


def _reference_backward(dy, x, gamma, eps):
    _, cache = batch_norm_forward(x, gamma, np.zeros_like(gamma), eps)
    return batch_norm_backward(dy, cache)


def _pieces(dy, x, gamma, eps):
    axes = reduction_axes(x.ndim)
    shape = channel_shape(x.ndim, x.shape[1])
    m = x.size // x.shape[1]
    mean = x.mean(axis=axes, keepdims=True)
    inv_std = 1.0 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    x_hat = (x - mean) * inv_std
    g = gamma.reshape(shape)
    sum_dy = dy.sum(axis=axes, keepdims=True)
    sum_dy_xhat = (dy * x_hat).sum(axis=axes, keepdims=True)
    return axes, m, x_hat, inv_std, g, sum_dy, sum_dy_xhat


def _statistics_as_constants(dy, x, gamma, eps):
    axes, m, x_hat, inv_std, g, sum_dy, sum_dy_xhat = _pieces(dy, x, gamma, eps)
    return dy * g * inv_std, sum_dy_xhat.reshape(-1), sum_dy.reshape(-1)


def _dgamma_from_x(dy, x, gamma, eps):
    dx, _, dbeta = _reference_backward(dy, x, gamma, eps)
    return dx, (dy * x).sum(axis=reduction_axes(x.ndim)), dbeta


def _dbeta_not_summed(dy, x, gamma, eps):
    dx, dgamma, _ = _reference_backward(dy, x, gamma, eps)
    return dx, dgamma, dy.sum(axis=tuple(range(2, x.ndim)))


def _dbeta_averaged(dy, x, gamma, eps):
    dx, dgamma, _ = _reference_backward(dy, x, gamma, eps)
    return dx, dgamma, dy.mean(axis=reduction_axes(x.ndim))


def _missing_xhat_term(dy, x, gamma, eps):
    axes, m, x_hat, inv_std, g, sum_dy, sum_dy_xhat = _pieces(dy, x, gamma, eps)
    dx = g * inv_std / m * (m * dy - sum_dy)
    return dx, sum_dy_xhat.reshape(-1), sum_dy.reshape(-1)


def _missing_mean_term(dy, x, gamma, eps):
    axes, m, x_hat, inv_std, g, sum_dy, sum_dy_xhat = _pieces(dy, x, gamma, eps)
    dx = g * inv_std / m * (m * dy - x_hat * sum_dy_xhat)
    return dx, sum_dy_xhat.reshape(-1), sum_dy.reshape(-1)


def _missing_gamma(dy, x, gamma, eps):
    dx, dgamma, dbeta = _reference_backward(dy, x, gamma, eps)
    return dx / gamma.reshape(channel_shape(x.ndim, x.shape[1])), dgamma, dbeta


def _sums_over_channels(dy, x, gamma, eps):
    # The sums inside dx taken over the channel axis instead of the batch.
    axes, m, x_hat, inv_std, g, _, _ = _pieces(dy, x, gamma, eps)
    c = x.shape[1]
    sum_dy = dy.sum(axis=1, keepdims=True)
    sum_dy_xhat = (dy * x_hat).sum(axis=1, keepdims=True)
    dx = g * inv_std / m * (m * dy - sum_dy - x_hat * sum_dy_xhat) if c else dy
    _, dgamma, dbeta = _reference_backward(dy, x, gamma, eps)
    return dx, dgamma, dbeta


BACKWARD = FunctionExercise(
    id="gradients.backward",
    chapter=2,
    title="Write the backward pass",
    signature="backward(dy, x, gamma, eps) -> (dx, dgamma, dbeta)",
    reference=_reference_backward,
    cases=backward_cases,
    n_outputs=3,
    output_names=("dx", "dgamma", "dbeta"),
    hint="Recompute x_hat from x, then dbeta = sum(dy), dgamma = sum(dy * x_hat), and "
    "dx = gamma / (m * sqrt(var + eps)) * (m * dy - sum(dy) - x_hat * sum(dy * x_hat)), "
    "every sum per channel over the batch and spatial axes.",
    mistakes=(
        Mistake(
            "statistics_as_constants",
            "the batch mean and variance depend on x, so they contribute to dx: treating them "
            "as constants leaves only gamma * dy / sqrt(var + eps) and drops the terms "
            "- sum(dy) and - x_hat * sum(dy * x_hat).",
            _statistics_as_constants,
        ),
        Mistake(
            "dgamma_from_x",
            "dgamma is computed from x instead of x_hat: gamma multiplies the normalized "
            "input, so dgamma = sum(dy * x_hat).",
            _dgamma_from_x,
        ),
        Mistake(
            "dbeta_not_summed",
            "dbeta is not summed over the batch: beta is shared by every example (and every "
            "position), so its gradient is the sum of dy over the batch and spatial axes, one "
            "value per channel.",
            _dbeta_not_summed,
        ),
        Mistake(
            "dbeta_averaged",
            "dbeta is averaged instead of summed: the loss depends on beta through every "
            "output, and the chain rule adds those contributions, dbeta = sum(dy).",
            _dbeta_averaged,
        ),
        Mistake(
            "missing_xhat_term",
            "the x_hat * sum(dy * x_hat) term is missing from dx: it is the path through the "
            "batch variance, which depends on x.",
            _missing_xhat_term,
        ),
        Mistake(
            "missing_mean_term",
            "the - sum(dy) term is missing from dx: it is the path through the batch mean, "
            "which depends on x.",
            _missing_mean_term,
        ),
        Mistake(
            "missing_gamma",
            "gamma is missing from dx: y = gamma * x_hat + beta, so every path from x to the "
            "loss is multiplied by gamma.",
            _missing_gamma,
        ),
        Mistake(
            "sums_over_wrong_axis",
            "the sums in dx run over the wrong axis: they are per channel, over the batch "
            "(and spatial) axes, as in the forward pass, not over the channels of one example.",
            _sums_over_channels,
        ),
    ),
)

EXERCISES: list[Exercise] = [BACKWARD]

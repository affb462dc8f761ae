"""Exercises of chapter 2, the gradients."""

from __future__ import annotations

import numpy as np

from ..functional import batch_norm_backward, batch_norm_forward, channel_shape, reduction_axes
from ._cases import backward_cases, rng
from .core import Case, ChoiceExercise, Exercise, FunctionExercise, Mistake, NumberExercise


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



# --------------------------------------------------------------------------------------
# dgamma and dbeta alone
# --------------------------------------------------------------------------------------


def param_grad_cases() -> list[Case]:
    """Inputs ``(dy, x_hat)``: fully connected and convolutional, so wrong axes show."""
    r = rng(20260212)
    cases = []
    for label, shape in (
        ("dy and x_hat of shape (8, 3)", (8, 3)),
        ("a convolutional input of shape (N, C, H, W) = (2, 3, 4, 5)", (2, 3, 4, 5)),
        ("a sequence input of shape (N, C, L) = (4, 2, 6)", (4, 2, 6)),
    ):
        dy = r.normal(0.5, 1.0, shape)
        x = r.normal(1.0, 2.0, shape)
        axes = reduction_axes(len(shape))
        x_hat = (x - x.mean(axis=axes, keepdims=True)) / x.std(axis=axes, keepdims=True)
        cases.append(Case(label, (dy, x_hat)))
    return cases


def _reference_param_grads(dy, x_hat):
    axes = reduction_axes(dy.ndim)
    return (dy * x_hat).sum(axis=axes), dy.sum(axis=axes)


PARAM_GRADS = FunctionExercise(
    id="gradients.param_grads",
    chapter=2,
    title="The gradients of gamma and beta",
    signature="param_grads(dy, x_hat) -> (dgamma, dbeta)",
    reference=_reference_param_grads,
    cases=param_grad_cases,
    n_outputs=2,
    output_names=("dgamma", "dbeta"),
    hint="gamma and beta are shared by every value of their channel: add up the contributions "
    "dy * x_hat and dy over the batch axis and every spatial axis, one value per channel.",
    mistakes=(
        Mistake(
            "mean_not_sum",
            "the contributions are averaged instead of summed: each output y_i depends on gamma "
            "and beta, and the chain rule adds every path, dbeta = sum(dy), dgamma = "
            "sum(dy * x_hat).",
            lambda dy, x_hat: (
                (dy * x_hat).mean(axis=reduction_axes(dy.ndim)),
                dy.mean(axis=reduction_axes(dy.ndim)),
            ),
        ),
        Mistake(
            "batch_axis_only",
            "the sums run over the batch axis only: for a convolutional or sequence input, "
            "gamma and beta are shared by every spatial position too, so sum over axis 0 and "
            "axes 2, 3, ... (every axis but the channel axis).",
            lambda dy, x_hat: ((dy * x_hat).sum(axis=0), dy.sum(axis=0)),
        ),
        Mistake(
            "swapped",
            "dgamma and dbeta are swapped: gamma multiplies x_hat, so its gradient carries the "
            "factor x_hat; beta is added, so its gradient is the plain sum of dy.",
            lambda dy, x_hat: (
                dy.sum(axis=reduction_axes(dy.ndim)),
                (dy * x_hat).sum(axis=reduction_axes(dy.ndim)),
            ),
        ),
    ),
)


# --------------------------------------------------------------------------------------
# A number: the sum of dx over the batch
# --------------------------------------------------------------------------------------

#: The batch of the number exercise: one channel, four values.
SUM_DX_X = np.array([[1.0], [2.0], [4.0], [9.0]])
SUM_DX_GAMMA = np.array([2.0])
SUM_DX_DY = np.array([[1.0], [-1.0], [3.0], [0.5]])
SUM_DX_EPS = 1e-5


def _constants_sum() -> float:
    var = SUM_DX_X.var()
    return float(SUM_DX_GAMMA[0] * SUM_DX_DY.sum() / np.sqrt(var + SUM_DX_EPS))


SUM_DX = NumberExercise(
    id="gradients.sum_dx",
    chapter=2,
    title="The sum of the input gradient",
    value=0.0,
    rtol=1e-6,
    atol=1e-9,
    hint="Sum the compact form of dx over the batch: what do sum(x_hat) and sum(1) give?",
    mistakes=(
        Mistake(
            "statistics_as_constants",
            "this is the sum of gamma * dy / sqrt(var + eps), the gradient you get when the "
            "batch mean and variance are treated as constants; the mean subtraction makes the "
            "true gradient sum to zero over the batch.",
            _constants_sum(),
        ),
        Mistake(
            "sum_of_dy",
            "this is the sum of dy, which is dL/dbeta; the input gradient has the mean of dy "
            "subtracted, so its sum over the batch is zero.",
            float(SUM_DX_DY.sum()),
        ),
        Mistake(
            "sum_of_dy_times_gamma",
            "this is gamma * sum(dy): the input gradient has the mean of dy subtracted (the "
            "path through the batch mean), so its sum over the batch is zero.",
            float(SUM_DX_GAMMA[0] * SUM_DX_DY.sum()),
        ),
    ),
)


# --------------------------------------------------------------------------------------
# Find the bug in a given backward
# --------------------------------------------------------------------------------------


def buggy_backward(dy: np.ndarray, x: np.ndarray, gamma: np.ndarray,
                   eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The backward of the find-the-bug exercise, for an ``(N, C)`` input; one line is wrong."""
    mean = x.mean(axis=0)  # (a)
    inv_std = 1.0 / np.sqrt(x.var(axis=0) + eps)  # (b)
    x_hat = (x - mean) * inv_std
    dbeta = dy.sum(axis=0)  # (c)
    dgamma = (dy * x_hat).sum(axis=0)
    dx = gamma * inv_std * (dy - dbeta / len(x) - x_hat * dgamma)  # (d)
    return dx, dgamma, dbeta


FIND_BUG = ChoiceExercise(
    id="gradients.find_bug",
    chapter=2,
    title="Find the bug",
    options={
        "a": "line (a): the mean",
        "b": "line (b): the inverse standard deviation",
        "c": "line (c): dbeta",
        "d": "line (d): dx",
        "e": "none: the code is correct",
    },
    answer="d",
    hint="Compare each line with the compact form, factor by factor, and count the 1/m.",
    mistakes=(
        Mistake(
            "mean_line",
            "line (a) is right: for an (N, C) input the mean per channel is over axis 0.",
            "a",
        ),
        Mistake(
            "variance_line",
            "line (b) is right: np.var divides by N by default (ddof=0), the biased variance "
            "BN uses, and eps is inside the square root.",
            "b",
        ),
        Mistake(
            "dbeta_line",
            "line (c) is right: beta is shared by the batch, so dbeta = sum(dy) over axis 0.",
            "c",
        ),
        Mistake(
            "looks_correct",
            "the code is not correct: run it against finite differences or torch.autograd, and "
            "compare every term of dx with the compact form, including the factor 1/m.",
            "e",
        ),
    ),
)


# --------------------------------------------------------------------------------------
# Choosing the step of central differences
# --------------------------------------------------------------------------------------

FD_STEP = ChoiceExercise(
    id="gradients.fd_step",
    chapter=2,
    title="The step of a central difference",
    options={
        "a": "h = 1e-16, as small as float64 allows",
        "b": "h = 1e-8",
        "c": "h = 1e-5",
        "d": "h = 1e-1",
    },
    answer="c",
    hint="Add the truncation error (about h^2) and the round-off error (about 1e-16 / h), "
    "and find where the sum is smallest.",
    mistakes=(
        Mistake(
            "smallest_step",
            "a step near machine precision leaves only round-off: f(x + h) and f(x - h) agree "
            "in almost every digit, and their difference divided by 2h is noise of size "
            "epsilon / h.",
            "a",
        ),
        Mistake(
            "forward_difference_step",
            "1e-8 (the square root of machine precision) is the best step of the one-sided "
            "difference, whose truncation error is O(h); the central difference is O(h^2), so "
            "its best step balances h^2 against epsilon / h, near epsilon^(1/3).",
            "b",
        ),
        Mistake(
            "large_step",
            "a step of 0.1 leaves a large truncation error, O(h^2) times the third derivative: "
            "the difference quotient no longer describes the slope at x.",
            "d",
        ),
    ),
)

EXERCISES: list[Exercise] = [BACKWARD, PARAM_GRADS, SUM_DX, FIND_BUG, FD_STEP]

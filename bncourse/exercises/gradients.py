"""Exercises of chapter 2, the gradients."""

from __future__ import annotations

import numpy as np

from ..functional import batch_norm_backward, batch_norm_forward, channel_shape, reduction_axes
from ._cases import backward_cases, rng
from .core import Case, ChoiceExercise, Exercise, FunctionExercise, Mistake, NumberExercise


def _backward_cases() -> list[Case]:
    """The shared backward cases, with a sequence input ``(N, C, L)`` whenever they lack one.

    A backward that picks its axes by rank (``(0, 2, 3)`` for 4-D input, ``(0,)`` otherwise)
    is right on fully connected and image inputs and wrong only on a 3-D input.
    """
    cases = backward_cases()
    if not any(len(case.args[1].shape) == 3 for case in cases):
        r = rng(20260204)
        shape = (4, 2, 5)
        cases.append(Case("a sequence input of shape (N, C, L) = (4, 2, 5)",
                          (r.normal(0.0, 1.0, shape), r.normal(-1.0, 2.0, shape),
                           r.uniform(0.5, 2.0, 2), 1e-5)))
    return cases


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
    # dx without the factor gamma is dx for gamma = 1 (dgamma and dbeta do not involve it).
    return _reference_backward(dy, x, np.ones_like(gamma), eps)


def _compact_with(dy, x, gamma, axes, m, mean, inv_std):
    """The compact backward with given axes, count and statistics (the wrong ones, below)."""
    x_hat = (x - mean) * inv_std
    g = gamma.reshape(channel_shape(x.ndim, x.shape[1]))
    dx = g * inv_std / m * (m * dy - dy.sum(axis=axes, keepdims=True)
                             - x_hat * (dy * x_hat).sum(axis=axes, keepdims=True))
    return dx, (dy * x_hat).sum(axis=axes), dy.sum(axis=axes)


def _axes_by_rank(dy, x, gamma, eps):
    # Axes chosen for the two common ranks only: right for (N, C) and (N, C, H, W), wrong for
    # a sequence (N, C, L), where axis 2 (the positions) is left out of every sum.
    axes = (0, 2, 3) if x.ndim == 4 else (0,)
    m = int(np.prod([x.shape[a] for a in axes]))
    mean = x.mean(axis=axes, keepdims=True)
    inv_std = 1.0 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    return _compact_with(dy, x, gamma, axes, m, mean, inv_std)


def _bessel_corrected(dy, x, gamma, eps):
    # x_hat recomputed with the unbiased variance (np.var(ddof=1), torch.var's default).
    axes = reduction_axes(x.ndim)
    m = x.size // x.shape[1]
    mean = x.mean(axis=axes, keepdims=True)
    centred = x - mean
    # The unbiased variance, sum of squares over m - 1; undefined (nan) for m = 1.
    var = (centred**2).sum(axis=axes, keepdims=True) / (m - 1) if m > 1 else np.full_like(
        mean, np.nan)
    inv_std = 1.0 / np.sqrt(var + eps)
    return _compact_with(dy, x, gamma, axes, m, mean, inv_std)


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
    cases=_backward_cases,
    n_outputs=3,
    output_names=("dx", "dgamma", "dbeta"),
    hints=(
        "Start from the forward pass: recompute the batch mean, the biased variance and x_hat "
        "from x, per channel.",
        "Every sum runs per channel over every axis but axis 1, for any number of spatial "
        "axes: (0, *range(2, x.ndim)).",
        "dbeta and dgamma are the two sums of the gradients of gamma and beta; dx reuses "
        "both, inside the bracket of the compact form, with the factor gamma / (m * "
        "sqrt(var + eps)) outside.",
    ),
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
        Mistake(
            "axes_by_rank",
            "the sums leave out the positions of a sequence input (N, C, L): axes chosen as "
            "(0, 2, 3) for 4-D input and (0,) otherwise are right only for (N, C) and "
            "(N, C, H, W). Sum over every axis but the channel axis, (0, *range(2, x.ndim)).",
            _axes_by_rank,
        ),
        Mistake(
            "bessel_corrected",
            "x_hat is computed with the unbiased variance (divided by m - 1, as np.var(ddof=1) "
            "and torch.var's default do): BN normalizes with the biased variance, divided by "
            "m, so the backward must recompute x_hat and 1/sqrt(var + eps) with it too.",
            _bessel_corrected,
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
    hints=(
        "Each output y_i = gamma * x_hat_i + beta of a channel depends on the same gamma and "
        "beta: what does the chain rule do with contributions from many outputs?",
        "The results have one value per channel, shape (C,): which axes of an (N, C, H, W) "
        "array hold values of the same channel?",
    ),
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
    # The size of the dx_i that cancel: a sum computed in float32 is judged against it.
    zero_scale=float(np.abs(_reference_backward(SUM_DX_DY, SUM_DX_X, SUM_DX_GAMMA,
                                                SUM_DX_EPS)[0]).sum()),
    hints=(
        "You need not compute dx entry by entry: sum the compact form of dx over the batch.",
        "Inside the bracket, what do the sum of m * dy_i over i, the sum of the constant "
        "sum_j dy_j over i, and the sum of x_hat_i give?",
    ),
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
    hints=(
        "Lines (a) to (c) recompute the forward pass and the two parameter gradients: compare "
        "each with its formula first.",
        "Line (d) has moved the factor 1/m of the compact form inside the bracket: check that "
        "every term inside it got its 1/m.",
    ),
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
    hints=(
        "Two errors compete: the Taylor series terms the difference leaves out, which shrink "
        "with h, and the rounding of f, which the division by 2h magnifies as h shrinks.",
        "Write the first as C1 * h^2 and the second as C2 * 1e-16 / h; minimise the sum over "
        "h (the constants change the answer only by a small factor).",
    ),
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


# --------------------------------------------------------------------------------------
# Reasoning: predict, then run; choose the explanation of an output
# --------------------------------------------------------------------------------------

BIAS_BEFORE_BN = ChoiceExercise(
    id="gradients.bias_before_bn",
    chapter=2,
    title="The bias of the layer before BN",
    options={
        "a": "it grows steadily, because nothing in the loss holds it back",
        "b": "it does not change, up to round-off",
        "c": "it moves like beta does, by the learning rate times the sum of dy",
        "d": "it changes a little, by an amount of relative size eps / (var + eps)",
    },
    answer="b",
    hints=(
        "The bias b_j is added to every value of channel j of BN's input: what is the "
        "gradient of b_j in terms of dx?",
        "Sum the compact form of dx over the batch, term by term.",
    ),
    mistakes=(
        Mistake(
            "grows",
            "it would grow only if its gradient kept one sign, which is what the wrong "
            "'statistics as constants' backward gives it. The true gradient of the bias is "
            "the sum of dx over the batch, which is zero: the mean subtraction removes any "
            "shift of the channel, so the loss cannot depend on it.",
            "a",
        ),
        Mistake(
            "moves_like_beta",
            "beta comes after the mean subtraction and moves the output's mean; a bias before "
            "BN is removed by that subtraction. Its gradient is the sum of dx over the batch, "
            "not the sum of dy, and that sum is zero.",
            "c",
        ),
        Mistake(
            "eps_residual",
            "eps enters the other sum, that of dx * x_hat (the direction that stretches the "
            "batch). The sum of dx alone is zero for every eps: shifting a channel leaves its "
            "x_hat exactly unchanged.",
            "d",
        ),
    ),
)

BLOCK_MEMORY = ChoiceExercise(
    id="gradients.block_memory",
    chapter=2,
    title="What a Linear, BN, ReLU block keeps",
    options={
        "a": "none",
        "b": "one: BN's input, which the linear layer keeps anyway",
        "c": "two: BN's input and ReLU's output",
        "d": "three: BN's input, x_hat and ReLU's output",
    },
    answer="c",
    hints=(
        "Ask, layer by layer, what its backward needs: the linear layer to form the gradient "
        "of its weights, BN to form dx, ReLU to know where its output was positive.",
        "A tensor kept by two layers is kept once. Does the linear layer need its input or "
        "its output for the gradient of its weights?",
    ),
    mistakes=(
        Mistake(
            "none",
            "both BN's backward and ReLU's need a tensor the size of BN's input: BN needs the "
            "batch's values to form x_hat and its sums, ReLU needs to know which of its outputs "
            "were positive. Neither can be rebuilt from per-channel vectors.",
            "a",
        ),
        Mistake(
            "linear_keeps_output",
            "a linear layer keeps its input, not its output: the gradient of W in z = x W^T "
            "needs x. So BN's input z is kept by BN alone, and ReLU keeps its own output "
            "besides.",
            "b",
        ),
        Mistake(
            "keeps_x_hat_too",
            "torch's layer keeps its input x and the per-channel mean and 1/sigma, and "
            "recomputes x_hat from them in its backward; it does not keep x_hat as well.",
            "d",
        ),
    ),
)

FD_PLATEAU = ChoiceExercise(
    id="gradients.fd_plateau",
    chapter=2,
    title="The float32 plateau",
    options={
        "a": "x + h and x - h round to x itself, so f is evaluated twice at the same point",
        "b": "for some entry k, f(x + h e_k) and f(x - h e_k) round to the same float32 "
        "number, so that difference quotient is exactly 0",
        "c": "the truncation error, of order h^2, dominates at these steps",
        "d": "some entries of BN's true gradient are zero, and a relative error against zero "
        "is 1",
    },
    answer="b",
    hints=(
        "The relative error of one entry, |a - b| / (|a| + |b|), is exactly 1 when one of "
        "a, b is zero. Which of the two can be zero here?",
        "Compare two spacings of float32 numbers: that near the entries of x, and that near "
        "the value of f. Which one does a step of h = 1e-6 fall below first?",
    ),
    mistakes=(
        Mistake(
            "input_rounds",
            "x + h rounds to x only when h is below half the float32 spacing at x; near the "
            "largest |x| of this batch that is a few times 1e-7, short of where the plateau "
            "ends. Above it x + h and x - h differ, but f(x + h) and f(x - h) can still round "
            "to the same number.",
            "a",
        ),
        Mistake(
            "truncation",
            "the truncation error shrinks as h^2 when h shrinks: it is what bends the curves up "
            "at the largest steps, on the right of the figure, not at the smallest.",
            "c",
        ),
        Mistake(
            "zero_gradient",
            "the analytic gradient is computed in float64 and none of its entries is zero; "
            "what becomes zero is a difference quotient computed in float32.",
            "d",
        ),
    ),
)

EXERCISES: list[Exercise] = [BACKWARD, PARAM_GRADS, SUM_DX, FIND_BUG, FD_STEP, BIAS_BEFORE_BN,
                             BLOCK_MEMORY, FD_PLATEAU]

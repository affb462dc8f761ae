"""Exercises of chapter 5, BN after training."""

from __future__ import annotations

import numpy as np

from .core import Case, ChoiceExercise, Exercise, FunctionExercise, Mistake, NumberExercise

# --------------------------------------------------------------------------------------
# The backward pass of the eval-mode layer
# --------------------------------------------------------------------------------------


def _axes(ndim: int) -> tuple[int, ...]:
    return (0, *range(2, ndim))


def _shape(ndim: int, c: int) -> tuple[int, ...]:
    return (1, c) + (1,) * (ndim - 2)


def _reference_eval_backward(dy, x, gamma, running_mean, running_var, eps):
    shape = _shape(x.ndim, x.shape[1])
    inv_std = 1.0 / np.sqrt(running_var + eps)
    x_hat = (x - running_mean.reshape(shape)) * inv_std.reshape(shape)
    dx = dy * (gamma * inv_std).reshape(shape)
    return dx.astype(x.dtype), (dy * x_hat).sum(axis=_axes(x.ndim)).astype(x.dtype), \
        dy.sum(axis=_axes(x.ndim)).astype(x.dtype)


def _training_mode_backward(dy, x, gamma, running_mean, running_var, eps):
    """Chapter 2's backward, with the batch's statistics: right in training mode only."""
    axes, shape = _axes(x.ndim), _shape(x.ndim, x.shape[1])
    m = x.size // x.shape[1]
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    sum_dy = dy.sum(axis=axes, keepdims=True)
    sum_dy_xhat = (dy * x_hat).sum(axis=axes, keepdims=True)
    dx = gamma.reshape(shape) * inv_std / m * (m * dy - sum_dy - x_hat * sum_dy_xhat)
    return dx, (dy * x_hat).sum(axis=axes), dy.sum(axis=axes)


def _eval_with(dy, x, gamma, mean, var, eps, *, batch_x_hat=False, no_gamma=False,
               divide_by_var=False):
    axes, shape = _axes(x.ndim), _shape(x.ndim, x.shape[1])
    inv_std = 1.0 / (var + eps) if divide_by_var else 1.0 / np.sqrt(var + eps)
    if batch_x_hat:
        bm, bv = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
        x_hat = (x - bm) / np.sqrt(bv + eps)
    else:
        x_hat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
    scale = inv_std if no_gamma else gamma * inv_std
    return dy * scale.reshape(shape), (dy * x_hat).sum(axis=axes), dy.sum(axis=axes)


def eval_backward_cases() -> list[Case]:
    """Every rank from 2-D to 5-D, C = 1, a negative and a zero gamma, float32, a repeated
    shape with new values; running statistics far from the batch's own."""
    r = np.random.default_rng(20260505)
    cases = []
    for label, shape, gamma_kind, dtype in (
        ("x of shape (6, 3)", (6, 3), "positive", np.float64),
        ("x of shape (6, 3) again, with new values", (6, 3), "positive", np.float64),
        ("one channel: x of shape (5, 1)", (5, 1), "positive", np.float64),
        ("a negative and a zero gamma, x of shape (4, 3)", (4, 3), "signed", np.float64),
        ("a sequence input (N, C, L) = (3, 2, 5)", (3, 2, 5), "positive", np.float64),
        ("an image input (N, C, H, W) = (2, 3, 3, 4)", (2, 3, 3, 4), "signed", np.float64),
        ("a volume input (N, C, D, H, W) = (2, 2, 2, 3, 2)", (2, 2, 2, 3, 2), "positive",
         np.float64),
        ("float32 input of shape (5, 3)", (5, 3), "positive", np.float32),
    ):
        c = shape[1]
        x = r.normal(1.0, 2.0, shape)
        dy = r.normal(0.0, 1.0, shape)
        gamma = r.uniform(0.5, 2.0, c)
        if gamma_kind == "signed" and c >= 2:
            gamma[0], gamma[1] = -gamma[0], 0.0
        mean = r.normal(-1.0, 1.0, c)
        var = r.uniform(0.3, 3.0, c)
        args = tuple(a.astype(dtype) for a in (dy, x, gamma, mean, var))
        cases.append(Case(label, (*args, 1e-3)))
    return cases


EVAL_BACKWARD = FunctionExercise(
    id="inference.eval_backward",
    chapter=5,
    title="The backward pass in eval mode",
    signature="eval_backward(dy, x, gamma, running_mean, running_var, eps) -> "
              "(dx, dgamma, dbeta)",
    reference=_reference_eval_backward,
    cases=eval_backward_cases,
    n_outputs=3,
    output_names=("dx", "dgamma", "dbeta"),
    hints=(
        "In eval mode the statistics are numbers stored in the layer, not functions of x: "
        "write y as a per-channel a * x + b first.",
        "dx is then a per-channel multiple of dy. dgamma and dbeta are sums over every axis "
        "but the channel axis, as in chapter 2, but with which x_hat?",
    ),
    mistakes=(
        Mistake(
            "training_mode_backward",
            "this is the training-mode backward of chapter 2: it differentiates through the "
            "batch mean and variance, but in eval mode the running statistics do not depend "
            "on x, so dx is just a * dy.",
            _training_mode_backward,
        ),
        Mistake(
            "batch_x_hat",
            "dx is right, but dgamma uses the batch's own x_hat: in eval mode the output is "
            "gamma * (x - running_mean) / sqrt(running_var + eps) + beta, so dgamma sums dy "
            "times that x_hat.",
            lambda dy, x, g, m, v, e: _eval_with(dy, x, g, m, v, e, batch_x_hat=True),
        ),
        Mistake(
            "forgot_gamma",
            "dx is missing the factor gamma: y = gamma * x_hat + beta, so dx = gamma * dy / "
            "sqrt(running_var + eps).",
            lambda dy, x, g, m, v, e: _eval_with(dy, x, g, m, v, e, no_gamma=True),
        ),
        Mistake(
            "divided_by_variance",
            "divided by the variance instead of the standard deviation: the scale is "
            "1 / sqrt(running_var + eps).",
            lambda dy, x, g, m, v, e: _eval_with(dy, x, g, m, v, e, divide_by_var=True),
        ),
    ),
)

# --------------------------------------------------------------------------------------
# Folding a linear layer
# --------------------------------------------------------------------------------------


def _reference_fold(weight, bias, gamma, beta, running_mean, running_var, eps):
    a = gamma / np.sqrt(running_var + eps)
    return (weight * a[:, None]).astype(weight.dtype), \
        (a * (bias - running_mean) + beta).astype(weight.dtype)


def _fold_with(weight, bias, gamma, beta, mean, var, eps, *, forgot_mean=False,
               bias_unscaled=False, var_not_std=False, eps_outside=False):
    if var_not_std:
        a = gamma / (var + eps)
    elif eps_outside:
        a = gamma / (np.sqrt(var) + eps)
    else:
        a = gamma / np.sqrt(var + eps)
    w = weight * a[:, None]
    if forgot_mean:
        c = a * bias + beta
    elif bias_unscaled:
        c = bias - a * mean + beta
    else:
        c = a * (bias - mean) + beta
    return w, c


def fold_cases() -> list[Case]:
    """Square and non-square weights, one output (C = 1), a negative and a zero gamma,
    float32, a repeated shape with new values, a large eps."""
    r = np.random.default_rng(20260506)
    cases = []
    for label, (out, inp), gamma_kind, dtype, eps in (
        ("W of shape (3, 4)", (3, 4), "positive", np.float64, 1e-5),
        ("W of shape (3, 4) again, with new values", (3, 4), "positive", np.float64, 1e-5),
        ("a square W of shape (3, 3)", (3, 3), "positive", np.float64, 1e-5),
        ("one output: W of shape (1, 5)", (1, 5), "positive", np.float64, 1e-5),
        ("a negative and a zero gamma, W of shape (4, 2)", (4, 2), "signed", np.float64, 1e-5),
        ("a large eps = 0.5, W of shape (2, 3)", (2, 3), "positive", np.float64, 0.5),
        ("float32 parameters, W of shape (3, 2)", (3, 2), "positive", np.float32, 1e-5),
    ):
        weight = r.normal(0.0, 1.0, (out, inp))
        bias = r.normal(0.0, 1.0, out)
        gamma = r.uniform(0.5, 2.0, out)
        if gamma_kind == "signed":
            gamma[0], gamma[1] = -gamma[0], 0.0
        beta = r.normal(0.0, 1.0, out)
        mean = r.normal(2.0, 1.0, out)
        var = r.uniform(0.2, 4.0, out)
        args = tuple(a.astype(dtype) for a in (weight, bias, gamma, beta, mean, var))
        cases.append(Case(label, (*args, eps)))
    return cases


FOLD_LINEAR = FunctionExercise(
    id="inference.fold_linear",
    chapter=5,
    title="Fold BN into a linear layer",
    signature="fold_linear(weight, bias, gamma, beta, running_mean, running_var, eps) -> "
              "(weight, bias)",
    reference=_reference_fold,
    cases=fold_cases,
    n_outputs=2,
    output_names=("weight", "bias"),
    hints=(
        "Write the eval-mode BN of z = W x + c as a * z + b per output, then substitute z.",
        "a multiplies a whole output, that is one row of W; the bias collects everything "
        "that does not multiply x.",
    ),
    mistakes=(
        Mistake(
            "forgot_mean",
            "the folded bias forgets the running mean: BN subtracts it before scaling, so the "
            "bias is a * (c - running_mean) + beta.",
            lambda *args: _fold_with(*args, forgot_mean=True),
        ),
        Mistake(
            "bias_not_scaled",
            "the layer's own bias c is not scaled: it passes through BN like the rest of z, "
            "so it is multiplied by a too: a * (c - running_mean) + beta.",
            lambda *args: _fold_with(*args, bias_unscaled=True),
        ),
        Mistake(
            "variance_not_std",
            "divided by the variance instead of the standard deviation: "
            "a = gamma / sqrt(running_var + eps).",
            lambda *args: _fold_with(*args, var_not_std=True),
        ),
        Mistake(
            "eps_outside",
            "eps is outside the square root: a = gamma / sqrt(running_var + eps).",
            lambda *args: _fold_with(*args, eps_outside=True),
        ),
    ),
)

# --------------------------------------------------------------------------------------
# A folded bias by hand
# --------------------------------------------------------------------------------------

# c = 0.5, running mean 2, running variance 4, eps = 0, gamma = 3, beta = 1: a = 3 / 2.
_A = 3 / np.sqrt(4.0)

FOLDED_BIAS = NumberExercise(
    id="inference.folded_bias",
    chapter=5,
    title="The folded bias of a worked example",
    value=_A * (0.5 - 2.0) + 1.0,
    hints=(
        "First the scale a of the eval-mode layer, from gamma and the running variance.",
        "The folded bias is what the output is when x = 0: push the layer's bias through BN.",
    ),
    mistakes=(
        Mistake("forgot_mean", "the running mean is missing: BN subtracts it from z = W x + c "
                "before scaling, so the bias is a * (c - running_mean) + beta.",
                _A * 0.5 + 1.0),
        Mistake("variance_not_std", "a uses the variance, 4, instead of the standard deviation, "
                "2: a = gamma / sqrt(running_var).", 3 / 4.0 * (0.5 - 2.0) + 1.0),
        Mistake("forgot_beta", "beta is missing: it is added after the scaling.",
                _A * (0.5 - 2.0)),
        Mistake("bias_not_scaled", "c is not scaled: it goes through BN with the rest of z, "
                "so it is multiplied by a.", 0.5 - _A * 2.0 + 1.0),
        Mistake("mean_sign", "the running mean is added instead of subtracted.",
                _A * (0.5 + 2.0) + 1.0),
    ),
)

# --------------------------------------------------------------------------------------
# Which order folds
# --------------------------------------------------------------------------------------

FOLD_ORDER = ChoiceExercise(
    id="inference.fold_order",
    chapter=5,
    title="Which BN can be folded?",
    options={
        "a": "the BN of Conv -> BN -> ReLU, into the convolution before it",
        "b": "the BN of Conv -> ReLU -> BN, into the convolution before the ReLU",
        "c": "every BN in eval mode, wherever it sits, since it is an affine map",
        "d": "only a BN whose preceding layer has a bias to absorb its shift",
    },
    answer="a",
    hints=(
        "Folding replaces two maps by one of the first map's kind: what kind of map is a "
        "convolution followed by a per-channel a * z + b?",
        "Is ReLU(z) followed by a * (.) + b a convolution of z when some a are negative, or "
        "when b is not zero?",
    ),
    mistakes=(
        Mistake("across_relu", "a ReLU between them breaks it: a * ReLU(z) + b is not a "
                "convolution of the input, because the ReLU is not linear. Only a positive "
                "scale could cross it (a * ReLU(z) = ReLU(a * z) for a > 0); the shift, and a "
                "negative scale, cannot.", "b"),
        Mistake("anywhere", "being affine is not enough: the map it is folded into must be "
                "linear up to a bias on the same side, with nothing nonlinear in between.",
                "c"),
        Mistake("needs_bias", "no bias is needed: the fold creates one, a * (c - mean) + beta "
                "with c = 0 when the layer has none.", "d"),
    ),
)

# --------------------------------------------------------------------------------------
# Reasoning about the train/eval gap
# --------------------------------------------------------------------------------------

GAP_REASON = ChoiceExercise(
    id="inference.gap_reason",
    chapter=5,
    title="What does dividing out the start values recover?",
    options={
        "a": "none of it, within the noise: after 80 steps the start values weigh too little "
        "to matter",
        "b": "more than half of it, but not all: the rest comes from the weights that moved "
        "while the average covered them",
        "c": "all of it, within the noise: without its start values the moving average equals "
        "the re-estimated statistics",
        "d": "less than half of it: most of the gap comes from the weights that moved while "
        "the average covered them",
    },
    answer="b",
    hints=(
        "After k updates with momentum 0.01, the start values 0 and 1 keep the weight "
        "0.99^k in the running mean and variance. How large is that after 80 updates?",
        "The rest of the average is spread over roughly the last hundred batches. With a "
        "constant learning rate, were the weights of those batches the final ones?",
    ),
    mistakes=(
        Mistake("start_values_negligible", "after 80 updates with momentum 0.01 the start "
                "values still carry 0.99^80, about 45%, of the running statistics: the "
                "running mean is pulled almost halfway towards 0 and the running variance "
                "towards 1. That is not a small change.", "a"),
        Mistake("start_values_only", "dividing out the start values leaves the rest of the "
                "average as it was: batch statistics computed with the weights of the last "
                "hundred or so steps, which kept moving at a constant learning rate.", "c"),
        Mistake("moving_weights_dominate", "compare the two distortions: the start values "
                "carry about 45% of the average, while the weights of the batches it averages "
                "differ from the final ones by what a few dozen steps change. The first is "
                "the larger here.", "d"),
    ),
)

EXERCISES: tuple[Exercise, ...] = (EVAL_BACKWARD, FOLD_LINEAR, FOLDED_BIAS, FOLD_ORDER,
                                   GAP_REASON)

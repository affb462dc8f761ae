"""Exercises of chapter 1, the transform."""

from __future__ import annotations

import numpy as np

from ..functional import batch_norm_forward, batch_norm_inference, channel_shape, reduction_axes
from ._cases import forward_cases
from .core import Case, ChoiceExercise, Exercise, FunctionExercise, Mistake, NumberExercise


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


# --------------------------------------------------------------------------------------
# A number computed by hand from a tiny batch
# --------------------------------------------------------------------------------------

#: The batch of the hand computation: one channel, eight examples; gamma, beta, eps = 0.
HAND_BATCH = np.array([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
HAND_GAMMA = 3.0
HAND_BETA = 0.5


def _hand_output(*, ddof: int = 0, affine: bool = True, swap: bool = False,
                 divide_by_var: bool = False, normalize: bool = True) -> float:
    """Output for the last example of :data:`HAND_BATCH`, with one thing changed."""
    x = HAND_BATCH
    centred = x[-1] - x.mean()
    var = x.var(ddof=ddof)
    if not normalize:
        x_hat = centred
    elif divide_by_var:
        x_hat = centred / var
    else:
        x_hat = centred / np.sqrt(var)
    if not affine:
        return float(x_hat)
    return float(HAND_BETA * x_hat + HAND_GAMMA if swap else HAND_GAMMA * x_hat + HAND_BETA)


HAND_COMPUTED = NumberExercise(
    id="formula.hand_computed",
    chapter=1,
    title="Normalize a tiny batch by hand",
    value=float(batch_norm_forward(HAND_BATCH[:, None], np.array([HAND_GAMMA]),
                                   np.array([HAND_BETA]), 0.0)[0][-1, 0]),
    hint="Mean first, then the mean of the squared deviations (divide by the batch size), "
    "its square root, then scale by gamma and shift by beta.",
    mistakes=(
        Mistake(
            "unbiased_variance",
            "you divided the squared deviations by m - 1 (the unbiased variance); the "
            "transform divides by m, the batch size.",
            _hand_output(ddof=1),
        ),
        Mistake(
            "missing_affine",
            "this is x_hat, the normalized value; the layer's output is y = gamma * x_hat + "
            "beta.",
            _hand_output(affine=False),
        ),
        Mistake(
            "gamma_beta_swapped",
            "gamma and beta are swapped: gamma multiplies x_hat and beta is added.",
            _hand_output(swap=True),
        ),
        Mistake(
            "divided_by_variance",
            "you divided by the variance; x_hat divides by the standard deviation, the square "
            "root of the variance.",
            _hand_output(divide_by_var=True),
        ),
        Mistake(
            "not_scaled",
            "you subtracted the mean but did not divide by the standard deviation: x_hat = "
            "(x - mean) / sqrt(var + eps).",
            _hand_output(normalize=False),
        ),
    ),
)


# --------------------------------------------------------------------------------------
# Which axes a convolutional input is reduced over
# --------------------------------------------------------------------------------------

CONV_AXES = ChoiceExercise(
    id="formula.conv_axes",
    chapter=1,
    title="The axes of a convolutional input",
    options={
        "a": "(0,): over the batch, separately at every position (h, w)",
        "b": "(0, 2, 3): over the batch and every position, one mean per channel",
        "c": "(1, 2, 3): over the channels and positions of each example",
        "d": "(2, 3): over the positions, separately for each example and channel",
        "e": "(0, 1, 2, 3): over everything, one mean for the whole tensor",
    },
    answer="b",
    hint="BN keeps one gamma, one beta and one pair of statistics per channel.",
    mistakes=(
        Mistake(
            "per_position",
            "that gives a separate mean for every (c, h, w), so one channel would be "
            "normalized differently at different positions; a convolutional BN shares its "
            "statistics over the batch and all positions of a channel (m = N * H * W).",
            "a",
        ),
        Mistake(
            "layer_norm",
            "averaging over the channels and positions of each example is layer "
            "normalization; BN averages over the batch, never over the channel axis.",
            "c",
        ),
        Mistake(
            "instance_norm",
            "averaging over the positions of each example and channel is instance "
            "normalization; BN also averages over the examples of the batch (axis 0).",
            "d",
        ),
        Mistake(
            "all_axes",
            "one mean for the whole tensor would mix the channels; BN keeps statistics per "
            "channel, so axis 1 is never reduced.",
            "e",
        ),
    ),
)


# --------------------------------------------------------------------------------------
# An eval-mode output from given running statistics
# --------------------------------------------------------------------------------------

#: The eval-mode question: one channel, a batch of three, stored statistics and parameters.
EVAL_BATCH = np.array([6.0, 0.0, 2.0])
EVAL_RUNNING_MEAN = 2.0
EVAL_RUNNING_VAR = 4.0
EVAL_GAMMA = 1.5
EVAL_BETA = -0.5
EVAL_EPS = 1e-5


def _eval_reference() -> float:
    return float(batch_norm_inference(
        EVAL_BATCH[:, None], np.array([EVAL_RUNNING_MEAN]), np.array([EVAL_RUNNING_VAR]),
        np.array([EVAL_GAMMA]), np.array([EVAL_BETA]), EVAL_EPS,
    )[0, 0])


def _eval_with_batch_statistics() -> float:
    return float(batch_norm_forward(EVAL_BATCH[:, None], np.array([EVAL_GAMMA]),
                                    np.array([EVAL_BETA]), EVAL_EPS)[0][0, 0])


_EVAL_X_HAT = (EVAL_BATCH[0] - EVAL_RUNNING_MEAN) / np.sqrt(EVAL_RUNNING_VAR + EVAL_EPS)

EVAL_OUTPUT = NumberExercise(
    id="formula.eval_output",
    chapter=1,
    title="What does a BN layer output in eval mode?",
    value=_eval_reference(),
    rtol=1e-4,
    hint="In eval mode the batch plays no part: use the running mean and the square root of "
    "the running variance.",
    mistakes=(
        Mistake(
            "batch_statistics",
            "you normalized with the statistics of the batch: that is training mode. In eval "
            "mode the layer uses its running mean and running variance, whatever the batch.",
            _eval_with_batch_statistics(),
        ),
        Mistake(
            "variance_as_std",
            "the running variance is a variance: divide by its square root, "
            "sqrt(running_var + eps), not by running_var itself.",
            float(EVAL_GAMMA * (EVAL_BATCH[0] - EVAL_RUNNING_MEAN) / EVAL_RUNNING_VAR
                  + EVAL_BETA),
        ),
        Mistake(
            "missing_affine",
            "this is x_hat; eval mode still scales by gamma and shifts by beta.",
            float(_EVAL_X_HAT),
        ),
        Mistake(
            "gamma_beta_swapped",
            "gamma and beta are swapped: gamma multiplies x_hat and beta is added.",
            float(EVAL_BETA * _EVAL_X_HAT + EVAL_GAMMA),
        ),
    ),
)


# --------------------------------------------------------------------------------------
# The identity is representable
# --------------------------------------------------------------------------------------


def identity_cases() -> list[Case]:
    """Inputs ``(x, eps)``: shapes (N, C) and (N, C, H, W), small and large eps."""
    r = np.random.default_rng(20260111)
    cases = [
        Case("x of shape (8, 3), eps = 1e-5",
             (r.normal(0.0, 1.0, (8, 3)) * np.array([1.0, 5.0, 0.2]) + np.array([3.0, -1.0, 0.5]),
              1e-5)),
        Case("x of shape (5, 2) with a large eps = 0.5",
             (r.normal(2.0, 0.7, (5, 2)), 0.5)),
        Case("a tiny batch: x of shape (2, 4)", (r.normal(-1.0, 2.0, (2, 4)), 1e-3)),
        Case("a convolutional input of shape (N, C, H, W) = (2, 3, 4, 4)",
             (r.normal(1.0, 2.0, (2, 3, 4, 4)), 1e-5)),
    ]
    return cases


def _identity_with(x, eps, *, ddof=0, use_eps=True, axes=None, sqrt=True, swap=False,
                   inverse=False):
    """Parameters that (are meant to) make BN the identity, with one thing changed."""
    axes = reduction_axes(x.ndim) if axes is None else axes
    mean = x.mean(axis=axes)
    var = x.var(axis=axes, ddof=ddof) + (eps if use_eps else 0.0)
    std = np.sqrt(var) if sqrt else var
    if inverse:
        return 1.0 / std, -mean / std
    return (mean, std) if swap else (std, mean)


IDENTITY = FunctionExercise(
    id="formula.identity",
    chapter=1,
    title="Choose gamma and beta that undo the normalization",
    signature="identity_parameters(x, eps) -> (gamma, beta)",
    reference=lambda x, eps: _identity_with(x, eps),
    cases=identity_cases,
    n_outputs=2,
    output_names=("gamma", "beta"),
    hint="gamma * x_hat + beta = x must hold for every x in the batch; write x_hat out and "
    "compare the coefficients.",
    mistakes=(
        Mistake(
            "unbiased_variance",
            "the transform divides by the standard deviation of the biased variance (divide "
            "by m), so gamma must be that one too; you used the unbiased variance (m - 1).",
            lambda x, e: _identity_with(x, e, ddof=1),
        ),
        Mistake(
            "eps_ignored",
            "the transform divides by sqrt(var + eps), not by sqrt(var): gamma must include "
            "eps to undo it exactly.",
            lambda x, e: _identity_with(x, e, use_eps=False),
        ),
        Mistake(
            "variance_not_std",
            "gamma must be a standard deviation, sqrt(var + eps), not the variance itself.",
            lambda x, e: _identity_with(x, e, sqrt=False),
        ),
        Mistake(
            "gamma_beta_swapped",
            "gamma and beta are swapped: gamma multiplies x_hat, so it is the spread; beta is "
            "added, so it is the mean.",
            lambda x, e: _identity_with(x, e, swap=True),
        ),
        Mistake(
            "normalizing_parameters",
            "these parameters would normalize x a second time (scale by 1/std, shift by "
            "-mean/std); to undo the normalization, multiply by the standard deviation and "
            "add the mean back.",
            lambda x, e: _identity_with(x, e, inverse=True),
        ),
        Mistake(
            "per_position_statistics",
            "for a convolutional input the statistics are per channel over the batch and all "
            "positions (axes 0, 2, 3), so gamma and beta have shape (C,), not one value per "
            "position.",
            lambda x, e: _identity_with(x, e, axes=(0,)),
        ),
    ),
)

EXERCISES += [HAND_COMPUTED, CONV_AXES, EVAL_OUTPUT, IDENTITY]

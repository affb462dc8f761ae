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
    hints=(
        "Work per channel: which axes of an (N, C, H, W) array hold values of one channel? "
        "Write the rule so that it works for any number of spatial axes.",
        "Take the mean and the variance over those axes with keepdims=True, so that they "
        "broadcast against x; which of the two variances does the transform use?",
        "gamma and beta have shape (C,): reshape them to (1, C, 1, ...) before scaling and "
        "shifting, and mind where eps goes in the square root.",
    ),
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
                 divide_by_var: bool = False, normalize: bool = True,
                 eps: float = 0.0) -> float:
    """Output for the last example of :data:`HAND_BATCH`, with one thing changed."""
    x = HAND_BATCH
    centred = x[-1] - x.mean()
    var = x.var(ddof=ddof) + eps
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
    hints=(
        "Three numbers first: the batch mean, the batch variance, the batch standard "
        "deviation. The statement sets eps = 0.",
        "The variance is the mean of the squared deviations: divide their sum by the batch "
        "size m, not by m - 1.",
        "Normalize the last value with the mean and the standard deviation, then apply "
        "gamma and beta in the order of the transform.",
    ),
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
        Mistake(
            "eps_included",
            "you added eps = 1e-5 to the variance, as PyTorch's default does; this exercise "
            "sets eps = 0 to keep the arithmetic exact. The rest of your computation is right.",
            _hand_output(eps=1e-5),
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
    hints=(
        "A convolution applies the same filter at every position: a channel is one feature "
        "detector, seen at H * W places.",
        "BN keeps one gamma and one beta per channel. For one pair of statistics per channel "
        "to exist, which axes must the mean run over, and which must it never mix?",
    ),
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
    hints=(
        "In eval mode, which statistics replace the batch's? Does the rest of the batch "
        "matter then?",
        "The running variance is a variance: the transform divides by the square root of "
        "running_var + eps, then applies gamma and beta.",
    ),
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
    hints=(
        "gamma * x_hat + beta = x must hold for every x of the batch: write x_hat out in "
        "terms of x, the batch mean and the batch variance.",
        "Both sides are affine functions of x: compare the coefficients of x and the "
        "constant terms. Which variance, and where is eps?",
        "For a convolutional input the statistics, hence gamma and beta, are per channel, "
        "over every axis but axis 1.",
    ),
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



# --------------------------------------------------------------------------------------
# Reasoning: torch.no_grad() and training mode
# --------------------------------------------------------------------------------------

NO_GRAD = ChoiceExercise(
    id="formula.no_grad",
    chapter=1,
    title="A layer in training mode inside torch.no_grad()",
    options={
        "a": "It normalizes with its running statistics and leaves them unchanged: no_grad "
        "is inference",
        "b": "It normalizes with the batch's statistics and leaves the running statistics "
        "unchanged: without gradients nothing is updated",
        "c": "It normalizes with the batch's statistics and moves the running statistics "
        "toward the batch's",
        "d": "It normalizes with its running statistics and moves them toward the batch's",
    },
    answer="c",
    hints=(
        "Two switches are at play: the module's mode (train() or eval()) and autograd's "
        "recording (torch.no_grad()). Which one decides which statistics are used?",
        "The running statistics are buffers, not parameters: no optimizer step and no "
        "gradient is involved in updating them. When are they updated?",
    ),
    mistakes=(
        Mistake(
            "no_grad_is_eval",
            "torch.no_grad() only stops autograd from recording the computation; it does not "
            "change the module's mode. Only .eval() makes BN use its running statistics, and "
            "a layer in eval mode does not update them.",
            "a",
        ),
        Mistake(
            "running_stats_need_gradients",
            "the running statistics are buffers, not parameters: the optimizer never touches "
            "them. A forward pass in training mode updates them, with or without gradients.",
            "b",
        ),
        Mistake(
            "running_stats_used_in_training",
            "in training mode BN normalizes with the statistics of the current batch; the "
            "running statistics are only recorded then, and used in eval mode. no_grad does "
            "not switch between the two.",
            "d",
        ),
    ),
)


# --------------------------------------------------------------------------------------
# Reasoning: the sharp edge of a histogram
# --------------------------------------------------------------------------------------

HISTOGRAM_EDGE = ChoiceExercise(
    id="formula.histogram_edge",
    chapter=1,
    title="Why does the histogram for batches of 4 stop so sharply?",
    options={
        "a": "Chance: 2000 batches are too few to reach the rare large values of a normal "
        "tail; with many more batches the histogram would extend further",
        "b": "eps caps the output: with eps = 1e-5 in the square root, x_hat cannot grow "
        "beyond a fixed value",
        "c": "In any batch of m values, |x_hat| <= sqrt(m - 1): the deviations from the batch "
        "mean sum to zero, so one value cannot be far from the mean in units of the batch's "
        "standard deviation",
        "d": "The batch-mates are drawn from N(0, 1), whose values rarely exceed 1.73, so the "
        "example's output cannot either",
        "e": "BN divides by the unbiased standard deviation, which shrinks every x_hat by "
        "sqrt((m - 1) / m)",
    },
    answer="c",
    hints=(
        "The edge is sharp, and it is at the same place however many batches are drawn: "
        "look for a bound that holds for every batch of 4, not for a typical one.",
        "Try an extreme batch: the example far from three batch-mates that sit close "
        "together. What is its x_hat as it moves further away?",
    ),
    mistakes=(
        Mistake(
            "sampling",
            "a tail thins out gradually; this edge is a cliff, and drawing more batches does "
            "not move it. Try the batch (1, 0, 0, 0): whatever the scale of the outlier, its "
            "x_hat stays the same.",
            "a",
        ),
        Mistake(
            "eps_caps",
            "eps matters only when the batch's spread is comparable with sqrt(eps), about "
            "0.003 here; these batches have spreads near 1, and an eps cap would be near "
            "|x - mean| / sqrt(eps), hundreds, not 1.73.",
            "b",
        ),
        Mistake(
            "batch_mates_bounded",
            "a normal distribution has no edge: a batch-mate lies beyond +-1.73 in about 8% of "
            "draws. The bound comes from the normalization itself and holds whatever the "
            "batch-mates' distribution.",
            "d",
        ),
        Mistake(
            "unbiased_variance",
            "in training mode BN divides by the biased standard deviation (divide by m), and a "
            "constant factor would rescale the histogram, not cut it off.",
            "e",
        ),
    ),
)



# --------------------------------------------------------------------------------------
# Reasoning: a channel whose spread is below sqrt(eps)
# --------------------------------------------------------------------------------------

#: The channel's standard deviation and eps of the small-spread question.
SMALL_SPREAD_STD = 1e-3
SMALL_SPREAD_EPS = 1e-5

SMALL_SPREAD = ChoiceExercise(
    id="formula.small_spread",
    chapter=1,
    title="A channel that barely varies",
    options={
        "a": "About 1: training-mode BN gives every channel standard deviation 1",
        "b": "About 0.3: the batch variance, 1e-6, is small next to eps, so the division is "
        "mostly by sqrt(eps)",
        "c": "About 0.001: BN leaves a channel with so little variance as it is",
        "d": "Exactly 0: any channel whose variance is below eps is set to 0",
    },
    answer="b",
    hints=(
        "Write the standard deviation of x_hat over the batch: x - mean has standard "
        "deviation sigma_B, and every value is divided by the same number.",
        "That number is sqrt(sigma_B^2 + eps). Compare sigma_B^2 = 1e-6 with eps = 1e-5: "
        "which term dominates the sum?",
    ),
    mistakes=(
        Mistake(
            "always_unit_variance",
            "BN divides by sqrt(var + eps), not by sqrt(var): when the variance is not large "
            "next to eps, the output's standard deviation stays below 1.",
            "a",
        ),
        Mistake(
            "left_unchanged",
            "BN has no special case for small variances: it still subtracts the mean and "
            "divides by sqrt(var + eps), which is much smaller than 1 here, so the spread "
            "grows.",
            "c",
        ),
        Mistake(
            "set_to_zero",
            "eps is added to the variance, it is not a threshold: only a channel with exactly "
            "zero variance gives x_hat = 0; a small variance gives a small, non-zero spread.",
            "d",
        ),
    ),
)

EXERCISES += [HAND_COMPUTED, CONV_AXES, EVAL_OUTPUT, IDENTITY, NO_GRAD, HISTOGRAM_EDGE,
              SMALL_SPREAD]

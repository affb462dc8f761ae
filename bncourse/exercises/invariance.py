"""Exercises of chapter 4, scale invariance and the Jacobian."""

from __future__ import annotations

import numpy as np

from ..jacobian import batch_norm_jacobian
from .core import Case, ChoiceExercise, Exercise, FunctionExercise, Mistake, NumberExercise

GRADIENT_SCALE = NumberExercise(
    id="invariance.gradient_scale",
    chapter=4,
    title="How do weight gradients scale?",
    value=0.25,
    hint="BN(a w^T x) = BN(w^T x) for a > 0: differentiate L(a w) = L(w) with respect to w.",
    mistakes=(
        Mistake(
            "grows_with_scale",
            "larger weights get smaller gradients, not larger ones: the loss does not change "
            "when w is scaled, so grad L(a w) = grad L(w) / a.",
            4.0,
        ),
        Mistake(
            "unchanged",
            "the gradient with respect to the layer's input is unchanged by the scale, but the "
            "gradient with respect to w is divided by the scale: grad L(a w) = grad L(w) / a.",
            1.0,
        ),
        Mistake(
            "effective_lr_factor",
            "1/a^2 is how the effective learning rate lr / ||w||^2 changes, not the gradient: "
            "the gradient itself scales as 1/a.",
            1.0 / 16.0,
        ),
        Mistake(
            "squared_growth",
            "the gradient shrinks as the weights grow: it scales as 1/a, not a^2.",
            16.0,
        ),
    ),
)

# ||w|| = 2, ||g|| = 0.5, lr = 0.4, g orthogonal to w: ||w - lr g||^2 = 4 + 0.04.
NORM_AFTER_STEP = NumberExercise(
    id="invariance.norm_after_step",
    chapter=4,
    title="The squared norm after one gradient step",
    value=4.04,
    hint="The gradient of a scale-invariant loss is orthogonal to w: use Pythagoras on "
    "w - lr * g.",
    mistakes=(
        Mistake(
            "norm_unchanged",
            "a step orthogonal to w does not keep ||w|| fixed: it moves along the tangent, and "
            "by Pythagoras ||w - lr g||^2 = ||w||^2 + lr^2 ||g||^2.",
            4.0,
        ),
        Mistake(
            "norm_shrinks",
            "the step term enters with a plus sign: w and g are orthogonal, so the cross term "
            "vanishes and lr^2 ||g||^2 is added, never subtracted.",
            3.96,
        ),
        Mistake(
            "parallel_step",
            "(||w|| + lr ||g||)^2 would hold if g were parallel to w; for a scale-invariant loss "
            "g is orthogonal to w, so the squares add (Pythagoras).",
            4.84,
        ),
        Mistake(
            "lr_not_squared",
            "the step is lr * g, so its squared length is lr^2 ||g||^2: the learning rate is "
            "squared too.",
            4.1,
        ),
        Mistake(
            "norms_not_squared",
            "Pythagoras adds squared lengths: the step contributes lr^2 ||g||^2, not lr ||g||.",
            4.2,
        ),
        Mistake(
            "gave_the_norm",
            "this is ||w'||; the exercise asks for the squared norm ||w'||^2.",
            float(np.sqrt(4.04)),
        ),
    ),
)

EFFECTIVE_LR = NumberExercise(
    id="invariance.effective_lr",
    chapter=4,
    title="The effective learning rate of a BN'd weight",
    value=0.004,
    hint="The angle a step turns w through is lr ||g|| / ||w||, and ||g|| itself is "
    "proportional to 1 / ||w||.",
    mistakes=(
        Mistake(
            "one_over_norm",
            "lr / ||w|| counts only one of the two factors: the step lr g is divided by ||w|| "
            "to give an angle, and g itself shrinks as 1/||w|| (the gradient-scale rule), so "
            "the effective learning rate is lr / ||w||^2.",
            0.02,
        ),
        Mistake(
            "times_norm",
            "larger weights make the effective learning rate smaller, not larger: it is "
            "lr / ||w||^2.",
            0.5,
        ),
        Mistake(
            "times_norm_squared",
            "larger weights make the effective learning rate smaller: divide by ||w||^2, do "
            "not multiply.",
            2.5,
        ),
        Mistake(
            "nominal_lr",
            "the nominal learning rate is not what a scale-invariant weight feels: its "
            "direction moves at the effective rate lr / ||w||^2.",
            0.1,
        ),
    ),
)

JACOBIAN_RANK = NumberExercise(
    id="invariance.jacobian_rank",
    chapter=4,
    title="The rank of the BN Jacobian",
    value=8.0,
    hint="Count the directions of the input that leave the normalized output unchanged.",
    mistakes=(
        Mistake(
            "full_rank",
            "BN ignores two directions of its input, so the Jacobian is not of full rank: "
            "shifting every value by the same amount (direction 1) and, with eps = 0, "
            "stretching the values about their mean (direction x_hat).",
            10.0,
        ),
        Mistake(
            "one_null_direction",
            "BN ignores two directions, not one: shifting every value by the same amount "
            "(direction 1, removed by the mean subtraction) and, with eps = 0, stretching the "
            "values about their mean (direction x_hat, removed by the division by sigma).",
            9.0,
        ),
        Mistake(
            "nullity_not_rank",
            "2 is the number of directions BN ignores (the dimension of the null space); the "
            "rank counts the others: m minus the null directions.",
            2.0,
        ),
    ),
)

IGNORED_DIRECTION = ChoiceExercise(
    id="invariance.ignored_direction",
    chapter=4,
    title="Which change of the input does BN ignore exactly?",
    options={
        "a": "Add the same vector v to every example: x_i -> x_i + v for all i.",
        "b": "Multiply every example by 3: x_i -> 3 x_i for all i.",
        "c": "Add a vector v to the first example only: x_1 -> x_1 + v.",
        "d": "Flip the sign of every example: x_i -> -x_i for all i.",
    },
    answer="a",
    hint="Follow each change through z_i = w^T x_i: what happens to the batch mean, and to "
    "the batch variance, and does eps enter?",
    mistakes=(
        Mistake(
            "scale_with_eps",
            "multiplying by 3 changes the output slightly when eps > 0: x_hat becomes "
            "3(z - mu) / sqrt(9 sigma^2 + eps), equal to (z - mu) / sqrt(sigma^2 + eps) only "
            "when eps = 0. The invariance under scaling is exact only without eps.",
            "b",
        ),
        Mistake(
            "one_example",
            "moving one example changes the batch mean and variance and that example's own "
            "position relative to them, so every output changes: in training mode the outputs "
            "of a batch depend on each other.",
            "c",
        ),
        Mistake(
            "negative_scale",
            "a negative scale flips the sign of x_hat: BN(-z) = -BN(z) before gamma and beta. "
            "Scale invariance holds only for a > 0.",
            "d",
        ),
    ),
)


# --------------------------------------------------------------------------------------
# The Jacobian of BN for one channel, as a function exercise
# --------------------------------------------------------------------------------------


def _reference_jacobian(x, gamma, eps):
    return batch_norm_jacobian(x[:, None], np.array([gamma], dtype=x.dtype), eps)[0]


def _jacobian_with(x, gamma, eps, *, ddof=0, mean_term=True, xhat_term=True,
                   eps_outside=False, no_eps=False):
    """The one-channel Jacobian with one thing changed: the building block of the catalogue."""
    m = x.size
    var = x.var(ddof=ddof)
    e = 0.0 if no_eps else eps
    std = np.sqrt(var) + e if eps_outside else np.sqrt(var + e)
    x_hat = (x - x.mean()) / std
    jac = np.eye(m)
    if mean_term:
        jac = jac - 1.0 / m
    if xhat_term:
        jac = jac - np.outer(x_hat, x_hat) / m
    return gamma / std * jac


def jacobian_cases() -> list[Case]:
    """Inputs ``(x, gamma, eps)``: one channel of m values, a scale gamma and eps."""
    r = np.random.default_rng(20260404)
    cases = []
    for label, m, loc, scale, gamma, eps in (
        ("m = 6 values, eps = 1e-5", 6, 0.0, 1.0, 1.5, 1e-5),
        ("m = 4 values with a large eps = 0.5", 4, 1.0, 0.6, 0.8, 0.5),
        ("m = 3 values, gamma = 2, eps = 0.1", 3, -2.0, 1.5, 2.0, 0.1),
        ("m = 8 values with a large offset, eps = 1e-3", 8, 50.0, 2.0, 1.2, 1e-3),
    ):
        cases.append(Case(label, (r.normal(loc, scale, m), gamma, eps)))
    return cases


JACOBIAN = FunctionExercise(
    id="invariance.jacobian",
    chapter=4,
    title="Write the Jacobian of BN for one channel",
    signature="jacobian(x, gamma, eps) -> J of shape (m, m)",
    reference=_reference_jacobian,
    cases=jacobian_cases,
    hint="J = gamma / sqrt(sigma^2 + eps) * (I - 1 1^T / m - x_hat x_hat^T / m), with the "
    "biased variance and x_hat = (x - mu) / sqrt(sigma^2 + eps).",
    mistakes=(
        Mistake(
            "statistics_as_constants",
            "the batch mean and variance were treated as constants: they depend on every x_j, "
            "which adds the terms -1/m (through the mean) and -x_hat_i x_hat_j / m (through "
            "the variance).",
            lambda x, g, e: _jacobian_with(x, g, e, mean_term=False, xhat_term=False),
        ),
        Mistake(
            "variance_as_constant",
            "the variance was treated as a constant: it depends on every x_j too, which adds "
            "the term -x_hat_i x_hat_j / m.",
            lambda x, g, e: _jacobian_with(x, g, e, xhat_term=False),
        ),
        Mistake(
            "mean_as_constant",
            "the mean was treated as a constant: mu depends on every x_j with derivative 1/m, "
            "which adds the term -1/m to every entry.",
            lambda x, g, e: _jacobian_with(x, g, e, mean_term=False),
        ),
        Mistake(
            "unbiased_variance",
            "unbiased variance (m - 1) used where BN uses the biased one (divide by m).",
            lambda x, g, e: _jacobian_with(x, g, e, ddof=1),
        ),
        Mistake(
            "eps_outside_sqrt",
            "eps belongs inside the square root: sqrt(sigma^2 + eps), not sqrt(sigma^2) + eps.",
            lambda x, g, e: _jacobian_with(x, g, e, eps_outside=True),
        ),
        Mistake(
            "eps_missing",
            "eps is missing: the scale is 1 / sqrt(sigma^2 + eps), and x_hat uses the same "
            "denominator.",
            lambda x, g, e: _jacobian_with(x, g, e, no_eps=True),
        ),
    ),
)

EXERCISES: list[Exercise] = [
    GRADIENT_SCALE,
    NORM_AFTER_STEP,
    EFFECTIVE_LR,
    JACOBIAN_RANK,
    IGNORED_DIRECTION,
    JACOBIAN,
]

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
    hints=(
        "Write the loss as a function L(w) of the weights feeding BN. What does the scale "
        "invariance of BN say about L(4 w) compared with L(w)?",
        "Differentiate the identity L(a w) = L(w) with respect to w, holding a fixed, and "
        "use the chain rule on the left-hand side.",
        "The chain rule gives a * (gradient of L at a w) on the left: solve for the gradient "
        "at a w.",
    ),
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
            "1/a^2 is how the effective learning rate of plain SGD, lr / ||w||^2, changes, not "
            "the gradient: the gradient itself scales as 1/a.",
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
    hints=(
        "Expand ||w - lr g||^2 = (w - lr g)^T (w - lr g) into three terms.",
        "One of the three terms contains w^T g. What did the proposition on the gradients "
        "of a scale-invariant loss say about it?",
        "With the cross term gone, two squared lengths remain: ||w||^2 and the squared "
        "length of the step lr g.",
    ),
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
    title="The effective learning rate of a BN'd weight under SGD",
    value=0.004,
    hints=(
        "Only the direction w / ||w|| matters to the network. For a small step, the angle it "
        "turns through is the length of the step divided by ||w||.",
        "The step is lr * g, and g itself depends on ||w||: use the gradient-scale rule with "
        "a = ||w|| to write g in terms of the gradient at the unit vector w / ||w||.",
        "You now have two factors of 1/||w||: one from turning a step into an angle, one "
        "from the gradient. Compare with a unit-norm weight, for which both are 1.",
    ),
    mistakes=(
        Mistake(
            "one_over_norm",
            "lr / ||w|| counts only one of the two factors of 1/||w||: with plain gradient "
            "descent the gradient g itself shrinks as 1/||w|| too, so the effective learning "
            "rate is lr / ||w||^2.",
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

ADAM_ANGLE = NumberExercise(
    id="invariance.adam_angle",
    chapter=4,
    title="The angle per step of a BN'd weight under Adam",
    value=0.25,
    hints=(
        "Adam divides each entry of the gradient's running mean by the square root of the "
        "running mean of its square. What happens to that ratio when every gradient in the "
        "history is divided by 4?",
        "So the next step of Adam has (nearly) the same length for both copies. Through what "
        "angle does a step of a given length turn a vector that is 4 times longer?",
    ),
    mistakes=(
        Mistake(
            "sgd_rule",
            "1/16 is the rule of plain SGD, whose step shrinks with the gradient (1/||w||) and "
            "is then divided by ||w|| again. Adam's step does not shrink with the gradient: "
            "only the division by ||w|| remains.",
            1.0 / 16.0,
        ),
        Mistake(
            "adam_is_invariant",
            "Adam's step length is indeed unchanged, but the same step turns a longer vector "
            "through a smaller angle: the angle is the step length divided by ||w||.",
            1.0,
        ),
        Mistake(
            "grows",
            "the angle shrinks as the weight grows: a step of the same length turns a longer "
            "vector through a smaller angle.",
            4.0,
        ),
    ),
)

WEIGHT_DECAY_ROLE = ChoiceExercise(
    id="invariance.weight_decay_role",
    chapter=4,
    title="What does weight decay do to weights that feed BN?",
    options={
        "a": "It keeps the weights small, so the network computes a simpler, smoother "
        "function: it is a regularizer.",
        "b": "It keeps ||w|| from growing, so the effective learning rate lr / ||w||^2 stays "
        "high instead of decaying: it changes the optimization, not the function.",
        "c": "Nothing: the loss does not depend on the scale of w, so weight decay has no "
        "effect on training.",
        "d": "It shrinks the gradients of w along with w, so training slows down.",
    },
    answer="b",
    hints=(
        "Scale invariance: does the function the network computes change when w is divided "
        "by 2?",
        "If the function does not change, look at what does: the norm ||w||, and through it "
        "the size of the gradient and the angle of each SGD step.",
    ),
    mistakes=(
        Mistake(
            "regularizer",
            "for a > 0 the network computes exactly the same function with w and with a w, so "
            "a smaller norm cannot make the function simpler: weight decay acts on the "
            "optimizer through the effective learning rate, not as a regularizer.",
            "a",
        ),
        Mistake(
            "no_effect",
            "the loss ignores the scale of w, but the training run does not: the gradient is "
            "divided by ||w||, so decay, by keeping ||w|| small, keeps the steps large and "
            "changes where training goes.",
            "c",
        ),
        Mistake(
            "smaller_gradients",
            "the other way round: the gradient of a scale-invariant loss scales as 1/||w||, so "
            "shrinking w makes its gradients larger, and the effective learning rate higher.",
            "d",
        ),
    ),
)

JACOBIAN_RANK = NumberExercise(
    id="invariance.jacobian_rank",
    chapter=4,
    title="The rank of the BN Jacobian",
    value=8.0,
    hints=(
        "The rank is m minus the number of independent directions of the input that J sends "
        "to 0, that is, changes of the 10 values that leave the normalized output unchanged.",
        "Which change of the whole channel does the mean subtraction undo? Which one does "
        "the division by sigma undo when eps = 0?",
        "Check that the two directions you found are independent (they are orthogonal), and "
        "that nothing else is sent to 0.",
    ),
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
    hints=(
        "Follow each change through z_i = W x_i: what happens to the batch mean of each "
        "output unit, and to its batch variance?",
        "Then ask for each change whether eps enters: a change that is undone only when "
        "eps = 0 does not leave the output exactly unchanged here.",
    ),
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

DEPTH_PREDICTION = ChoiceExercise(
    id="invariance.depth_prediction",
    chapter=4,
    title="Predict: the gradient of a deep BN network at initialization",
    options={
        "a": "About the same size at the input as at the output: BN normalizes every layer, "
        "so the gradient stays well scaled.",
        "b": "Much larger at the input than at the output, growing by a roughly constant "
        "factor per layer.",
        "c": "Much smaller at the input: every BN Jacobian ignores two directions, so each "
        "layer loses part of the gradient and it vanishes with depth.",
        "d": "Exactly the same size at every layer, because each BN Jacobian is a projection "
        "times gamma / sigma, and a projection preserves norms.",
    },
    answer="b",
    hints=(
        "BN fixes the variance of each output unit in the forward pass. Does that fix the "
        "size of the gradient in the backward pass?",
        "In the backward pass a layer divides the gradient by the standard deviation sigma of "
        "its pre-activation (BN) and multiplies it by the slope of ReLU, 0 or 1. For "
        "z ~ N(0, 1), compare Var(ReLU(z)), which sets sigma at the next layer, with "
        "E[ReLU'(z)^2]. What does a product of many factors that are each a little larger "
        "than 1 do?",
    ),
    mistakes=(
        Mistake(
            "normalized_means_stable",
            "BN fixes the scale of the forward signal, not of the gradient: each layer "
            "multiplies the gradient by the mean square slope of ReLU and divides it by the "
            "variance of ReLU's output (in squared norm), a factor above 1, so over many "
            "layers the gradient grows with depth.",
            "a",
        ),
        Mistake(
            "vanishes",
            "the two ignored directions are only two of the batch's m per unit, and removing "
            "them shortens the gradient a little; each layer also multiplies it by a factor "
            "above 1 (the slope of ReLU over the standard deviation of its output), so over "
            "many layers the gradient grows, it does not vanish.",
            "c",
        ),
        Mistake(
            "projection_preserves_norms",
            "a projection does not preserve norms (it shortens every vector with a component "
            "in the removed directions), and gamma / sigma need not be 1: nothing forces the "
            "gradient's size to stay the same from layer to layer.",
            "d",
        ),
    ),
)


# --------------------------------------------------------------------------------------
# The Jacobian of BN for one channel, as a function exercise
# --------------------------------------------------------------------------------------


def _reference_jacobian(x, gamma, eps):
    """bncourse's Jacobian for one channel: computed in float64, returned in the dtype of x."""
    return batch_norm_jacobian(x[:, None], np.array([gamma], dtype=np.float64), eps)[0]


def _jacobian_with(x, gamma, eps, *, ddof=0, mean_term=True, xhat_term=True,
                   eps_outside=False, no_eps=False, abs_gamma=False):
    """The one-channel Jacobian with one thing changed: the building block of the catalogue."""
    m = x.size
    var = x.var(ddof=ddof)
    e = 0.0 if no_eps else eps
    std = np.sqrt(var) + e if eps_outside else np.sqrt(var + e)
    x_hat = (x - x.mean()) / std
    jac = np.eye(m, dtype=x.dtype)
    if mean_term:
        jac = jac - 1.0 / m
    if xhat_term:
        jac = jac - np.outer(x_hat, x_hat) / m
    scale = abs(gamma) if abs_gamma else gamma
    return (scale / std * jac).astype(x.dtype)


def jacobian_cases() -> list[Case]:
    """Inputs ``(x, gamma, eps)``: one channel of m values, a scale gamma and eps.

    The rule: the only shape the statement allows, ``(m,)``, for several m (3 to 8); float64
    and, since the statement promises the dtype of x, float32; a positive, a negative and a
    zero gamma; eps small and large; a large offset; and one m repeated with new values (an
    answer that remembers results by shape fails).
    """
    r = np.random.default_rng(20260404)
    cases = []
    for label, m, loc, scale, gamma, eps, dtype in (
        ("m = 6 values, eps = 1e-5", 6, 0.0, 1.0, 1.5, 1e-5, np.float64),
        ("m = 4 values with a large eps = 0.5", 4, 1.0, 0.6, 0.8, 0.5, np.float64),
        ("m = 3 values, gamma = 2, eps = 0.1", 3, -2.0, 1.5, 2.0, 0.1, np.float64),
        ("m = 8 values with a large offset, eps = 1e-3", 8, 50.0, 2.0, 1.2, 1e-3, np.float64),
        ("m = 6 values again, new values, negative gamma = -0.7", 6, 0.5, 2.0, -0.7, 0.2,
         np.float64),
        ("m = 5 values, gamma = 0", 5, 0.0, 1.0, 0.0, 1e-2, np.float64),
        ("m = 5 values in float32, eps = 0.3", 5, 1.0, 1.5, 1.3, 0.3, np.float32),
    ):
        cases.append(Case(label, (r.normal(loc, scale, m).astype(dtype), gamma, eps)))
    return cases


JACOBIAN = FunctionExercise(
    id="invariance.jacobian",
    chapter=4,
    title="Write the Jacobian of BN for one channel",
    signature="jacobian(x, gamma, eps) -> J of shape (m, m)",
    reference=_reference_jacobian,
    cases=jacobian_cases,
    hints=(
        "Write y_i = gamma (x_i - mu) / s with s = sqrt(sigma^2 + eps), and remember that mu "
        "and sigma^2 depend on every x_j: d mu / d x_j = 1/m and "
        "d sigma^2 / d x_j = 2 (x_j - mu) / m.",
        "From the second, d s / d x_j = (x_j - mu) / (m s) = x_hat_j / m. Now apply the "
        "quotient rule to (x_i - mu) / s and differentiate with respect to x_j.",
        "The result has three terms inside a common factor gamma / s: one from x_i itself "
        "(only when i = j), one through mu, one through s. Write each as an m x m matrix "
        "(np.eye, a constant, an np.outer) and keep the dtype of x.",
    ),
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
        Mistake(
            "abs_gamma",
            "gamma enters with its sign: y = gamma x_hat + beta, so J is gamma / s times the "
            "projection, and a negative gamma flips every entry. The absolute value belongs "
            "only to the singular values.",
            lambda x, g, e: _jacobian_with(x, g, e, abs_gamma=True),
        ),
    ),
)

#: In the order of the chapter.
EXERCISES: list[Exercise] = [
    GRADIENT_SCALE,
    NORM_AFTER_STEP,
    EFFECTIVE_LR,
    ADAM_ANGLE,
    WEIGHT_DECAY_ROLE,
    JACOBIAN,
    JACOBIAN_RANK,
    IGNORED_DIRECTION,
    DEPTH_PREDICTION,
]

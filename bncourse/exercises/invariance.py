"""Exercises of chapter 4, scale invariance and the Jacobian."""

from __future__ import annotations

from .core import Exercise, Mistake, NumberExercise

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

EXERCISES: list[Exercise] = [GRADIENT_SCALE]

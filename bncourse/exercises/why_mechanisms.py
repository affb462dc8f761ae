"""Exercises of chapter 8 (second part): gradients, regularization, rank collapse, and what
replaces BN.

``why.stable_rank``'s value is computed by :func:`bncourse.why.rank.stable_rank` on the same
matrix in ``tests/test_why_mechanisms.py``.
"""

from __future__ import annotations

from .core import ChoiceExercise, Exercise, Mistake, NumberExercise

# --------------------------------------------------------------------------------------
# After the first steps (a prediction, asked before the measurement)
# --------------------------------------------------------------------------------------

FIRST_STEPS = ChoiceExercise(
    id="why.first_steps",
    chapter=8,
    title="The exploding gradient with the weights' norms pinned",
    options={
        "a": "it stays near its initial value: without norm growth nothing undoes the explosion",
        "b": "it falls, but only by about the factor that the norm would have grown, tens "
             "of percent",
        "c": "it falls by more than a decade, about as far as without pinning",
        "d": "it grows: the early layers keep their large gradients and take ever larger steps",
    },
    answer="c",
    hints=(
        "A factor $1/\\|W_1\\|$ can shrink the gradient only by as much as the norm grows. "
        "Compare that growth, without pinning, with the fall of the ratio.",
        "Pinning removes the norm growth but not the steps themselves: the weights still move "
        "away from their random starting directions.",
    ),
    mistakes=(
        Mistake("norm_only", "pinning removes the norm growth, but the ratio still falls: "
                             "whatever brings it down is not the weights' length.", "a"),
        Mistake("norm_factor", "that would be the case if the fall were the norm growth; "
                               "but the fall without pinning is far larger than the growth "
                               "(more than a decade against tens of percent), and pinning "
                               "leaves it in place.", "b"),
        Mistake("compounding", "the early layers' gradients shrink in the first steps, with "
                               "or without pinning; nothing makes them compound.", "d"),
    ),
)

# --------------------------------------------------------------------------------------
# The stable rank, by hand
# --------------------------------------------------------------------------------------

#: The singular values of the exercise's matrix.
_SINGULAR = (2.0, 1.0, 1.0)

STABLE_RANK = NumberExercise(
    id="why.stable_rank",
    chapter=8,
    title="The stable rank of a small matrix",
    value=sum(s * s for s in _SINGULAR) / max(_SINGULAR) ** 2,
    rtol=1e-6,
    hints=(
        "The stable rank is the squared Frobenius norm over the squared spectral norm.",
        "Both norms come from the singular values: the Frobenius norm squared is the sum of "
        "their squares, the spectral norm the largest.",
    ),
    mistakes=(
        Mistake("rank", "that is the rank (the number of non-zero singular values); the stable "
                        "rank weighs each by its square over the largest one's.", 3.0),
        Mistake("not_squared", "the stable rank is a ratio of squared norms: the Frobenius "
                               "norm squared over the spectral norm squared.",
                (sum(s * s for s in _SINGULAR)) ** 0.5 / max(_SINGULAR)),
        Mistake("nuclear", "that is the sum of the singular values over the largest; square "
                           "each of them first.", sum(_SINGULAR) / max(_SINGULAR)),
    ),
)

# --------------------------------------------------------------------------------------
# Rank collapse without BN (a prediction, asked before the measurement)
# --------------------------------------------------------------------------------------

RANK_DEPTH = ChoiceExercise(
    id="why.rank_depth",
    chapter=8,
    title="What depth does to a batch without BN",
    options={
        "a": "it stays near the input's stable rank: random weights of the right variance "
             "preserve the geometry of the batch",
        "b": "it falls towards 1: the examples' representations line up along one direction",
        "c": "it rises towards the width: the layers spread the batch out",
    },
    answer="b",
    hints=(
        "A product of many random matrices: what happens to the ratio of its largest singular "
        "value to the others as factors are added?",
        "The right variance keeps the total size (the Frobenius norm) of the batch, not how "
        "that size is shared among directions.",
    ),
    mistakes=(
        Mistake("preserved", "the variance is kept on average, but the spread between singular "
                             "values of a product of random matrices grows with the number of "
                             "factors: the largest one dominates more and more.", "a"),
        Mistake("spread", "a product of random matrices concentrates the batch in the "
                          "directions of its largest singular values; it does not spread it.",
                "c"),
    ),
)

EXERCISES: list[Exercise] = [FIRST_STEPS, STABLE_RANK, RANK_DEPTH]

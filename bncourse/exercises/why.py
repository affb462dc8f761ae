"""Exercises of chapter 8, why BN helps, each popular claim on trial.

``why.noisy_score`` and ``why.first_to_diverge`` are predictions asked before the chapter's
measurement reveals them; their answers are checked against the stored measurements in
``tests/test_why.py`` and in the chapter.
"""

from __future__ import annotations

import math

from .core import ChoiceExercise, Exercise, Mistake, NumberExercise

NOISY_SCORE = ChoiceExercise(
    id="why.noisy_score",
    chapter=8,
    title="Predict: how well does noisy BN train?",
    options={
        "a": "as well as BN: the noise is removed by the next BN layer",
        "b": "below BN, but far above the network without BN",
        "c": "below the network without BN: its layers see more shift than without BN",
        "d": "no better than a guess: the noise is as large as the signal",
    },
    answer="b",
    hints=(
        "The next layer's input moves more with the noise than without BN; does that decide "
        "how well the network trains at this rate?",
        "What does the plain network lack at a learning rate of 0.1 that both BN networks have?",
    ),
    mistakes=(
        Mistake("removed", "the next BN removes the noise from its own output, but the linear "
                           "layer in between sees the shifted input and has to cope with it: "
                           "it costs some accuracy.", "a"),
        Mistake("shift_decides", "if the shift decided, noisy BN would lose to the plain "
                                 "network; at the same rate it wins by a wide margin.", "c"),
        Mistake("guess", "the shifts are at most half a standard deviation and the scales at "
                         "most 1.5: the signal survives.", "d"),
    ),
)

FIRST_TO_DIVERGE = ChoiceExercise(
    id="why.first_to_diverge",
    chapter=8,
    title="Predict: which network diverges first as the learning rate grows?",
    options={
        "a": "the network without BN",
        "b": "the network with BN",
        "c": "the network with noisy BN",
        "d": "all three at the same rate: the rate is too large for any of them at once",
    },
    answer="a",
    hints=(
        "What happens to a plain network's pre-activations when a large step makes its "
        "weights larger, and what does BN do with the same step?",
        "Chapter 4: the output of a BN layer does not depend on the scale of the weights "
        "before it.",
    ),
    mistakes=(
        Mistake("bn_first", "BN's output does not grow when its weights do; the plain network's "
                            "activations grow with every layer's weights.", "b"),
        Mistake("noisy_first", "the noisy network is still normalized at every layer: it keeps "
                               "BN's protection against growing weights.", "c"),
        Mistake("same", "the plain network's activations grow with its weights, BN's do not: "
                        "they fail at different rates.", "d"),
    ),
)

INIT_RATE = NumberExercise(
    id="why.init_rate",
    chapter=8,
    title="The learning rate that a ten-times-larger initialization feels",
    value=0.1 / 10**2,
    rtol=1e-6,
    hints=(
        "Chapter 4: under plain SGD, the direction of a weight vector that feeds BN moves with "
        "the effective learning rate eta / |w|^2.",
        "Multiply every such weight by 10: by how much does |w|^2 grow?",
    ),
    mistakes=(
        Mistake("one_factor", "that counts one factor of 10 only: the gradient is 10 times "
                              "smaller and the same step turns a 10 times longer vector 10 "
                              "times less.", 0.1 / 10),
        Mistake("inverted", "a larger weight feels a smaller rate, not a larger one "
                            "(eta / |w|^2).", 0.1 * 10**2),
        Mistake("inverted_one", "a larger weight feels a smaller rate, and by the square of "
                                "the factor.", 0.1 * 10),
    ),
)

BETA_QUADRATIC = NumberExercise(
    id="why.beta_quadratic",
    chapter=8,
    title="Effective beta-smoothness of a quadratic",
    value=math.sqrt(257 / 17),
    rtol=1e-6,
    hints=(
        "The gradient of L = theta^T A theta / 2 is A theta, and moving along it by eta "
        "changes the gradient by -eta A g.",
        "The change of the gradient per distance moved is |A g| / |g|, whatever eta is.",
        "Compute g = A theta first, then A g.",
    ),
    mistakes=(
        Mistake("largest_eigenvalue", "that is the largest eigenvalue, the bound over all "
                                      "directions; along this gradient the ratio |A g| / |g| "
                                      "is smaller.", 4.0),
        Mistake("theta_not_g", "that is |A theta| / |theta|: the step is along the gradient "
                               "g = A theta, so the ratio is |A g| / |g|.", math.sqrt(17 / 2)),
        Mistake("no_root", "norms are square roots of sums of squares: take the root of the "
                           "ratio of squared norms.", 257 / 17),
    ),
)

EXERCISES: list[Exercise] = [NOISY_SCORE, FIRST_TO_DIVERGE, INIT_RATE, BETA_QUADRATIC]

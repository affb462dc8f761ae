"""Exercises of chapter 6, small batches and many processes."""

from __future__ import annotations

from ._cases import rng
from .core import Case, ChoiceExercise, Exercise, FunctionExercise, Mistake, NumberExercise

# --------------------------------------------------------------------------------------
# The pairwise merge of two (count, mean, M2) triples
# --------------------------------------------------------------------------------------


def merge_cases() -> list[Case]:
    """Inputs ``(n_a, mean_a, m2_a, n_b, mean_b, m2_b)``, per channel arrays of 3 channels."""
    r = rng(20260601)
    cases = []
    for label, n_a, n_b, offset in (
        ("two processes with 5 and 3 values per channel", 5, 3, 0.0),
        ("equal counts, 4 and 4", 4, 4, 0.0),
        ("a process with a single value and one with 7, means near 100", 1, 7, 100.0),
        ("unequal counts, 2 and 9, means far apart", 2, 9, 0.0),
    ):
        a = r.normal(offset, 1.0, (n_a, 3))
        b = r.normal(offset + r.normal(0, 3, 3), 2.0, (n_b, 3))
        mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
        m2_a = ((a - mean_a) ** 2).sum(axis=0)
        m2_b = ((b - mean_b) ** 2).sum(axis=0)
        cases.append(Case(label, (n_a, mean_a, m2_a, n_b, mean_b, m2_b)))
    return cases


def _reference_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    n = n_a + n_b
    delta = mean_b - mean_a
    return mean_a + delta * n_b / n, m2_a + m2_b + delta**2 * n_a * n_b / n


def _unweighted_mean(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    _, m2 = _reference_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b)
    return (mean_a + mean_b) / 2, m2


def _no_between_term(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    mean, _ = _reference_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b)
    return mean, m2_a + m2_b


def _between_term_not_divided(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    mean, _ = _reference_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b)
    return mean, m2_a + m2_b + (mean_b - mean_a) ** 2 * n_a * n_b


def _returns_variance(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    mean, m2 = _reference_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b)
    return mean, m2 / (n_a + n_b)


def _averaged_m2(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    mean, _ = _reference_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b)
    return mean, (m2_a + m2_b) / 2


MERGE = FunctionExercise(
    id="distributed.merge",
    chapter=6,
    title="Merge the moments of two processes",
    signature="merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b) -> (mean, m2)",
    reference=_reference_merge,
    cases=merge_cases,
    n_outputs=2,
    output_names=("mean", "m2"),
    rtol=1e-9,
    atol=1e-9,
    hints=(
        "The merged mean is the mean of all n_a + n_b values: each part's mean counts in "
        "proportion to how many values it holds.",
        "Split each squared deviation from the merged mean into the deviation from the part's "
        "own mean plus the gap between the two means; the cross terms sum to zero.",
        "With delta = mean_b - mean_a and n = n_a + n_b: mean = mean_a + delta * n_b / n and "
        "m2 = m2_a + m2_b + delta**2 * n_a * n_b / n.",
    ),
    mistakes=(
        Mistake(
            "unweighted_mean",
            "the two means are averaged as if both processes held as many values: the merged "
            "mean weights each part by its count, mean_a + (mean_b - mean_a) * n_b / n.",
            _unweighted_mean,
        ),
        Mistake(
            "no_between_term",
            "m2 is the sum of the two parts' m2 only: each part measured its spread about its "
            "own mean, and the spread of the means about the merged mean is missing, the "
            "term delta**2 * n_a * n_b / n.",
            _no_between_term,
        ),
        Mistake(
            "between_term_not_divided",
            "the term for the gap between the means is not divided by n: it is "
            "delta**2 * n_a * n_b / n, the squared gap weighted by n_a n_b / (n_a + n_b).",
            _between_term_not_divided,
        ),
        Mistake(
            "returns_variance",
            "this returns the variance m2 / n; the merge passes on m2, the sum of squared "
            "deviations, so that it can be merged again with the next process's triple.",
            _returns_variance,
        ),
        Mistake(
            "averaged_m2",
            "the two m2 are averaged: m2 is a sum over values, so the parts' sums add (and the "
            "gap between the means adds its own term).",
            _averaged_m2,
        ),
    ),
)


# --------------------------------------------------------------------------------------
# A number: the bytes a SyncBN layer contributes per step
# --------------------------------------------------------------------------------------

#: The layer of the number exercise: channels and bytes per value (float32).
BYTES_C = 512
BYTES_ITEMSIZE = 4

BYTES_PER_STEP = NumberExercise(
    id="distributed.bytes_per_step",
    chapter=6,
    title="Bytes per step of a synchronized BN layer",
    value=float(4 * BYTES_C * BYTES_ITEMSIZE),
    rtol=1e-9,
    hints=(
        "List what the forward pass must know about the other processes' values, per "
        "channel, and what the backward pass must know; the two integers the layer also sends "
        "(its number of channels and its count) are not counted here.",
        "Forward: every process needs the global mean and variance of each channel, and two "
        "numbers per process and channel are enough to get them (a mean and an M2, or a sum "
        "and a sum of squares). Backward: in chapter 2's compact form of the input gradient, "
        "look for the terms that are sums over the whole batch.",
        "The backward pass needs the global sums of dy and of dy * x_hat: two more values per "
        "channel. Count the values, then their bytes in float32.",
    ),
    mistakes=(
        Mistake(
            "forward_only",
            "this counts the forward pass only: the backward pass needs the global sums of dy "
            "and dy * x_hat, two more values per channel.",
            2.0 * BYTES_C * BYTES_ITEMSIZE,
        ),
        Mistake(
            "float64_or_sent_and_received",
            "this is twice the answer: either the values counted at 8 bytes each (float64), "
            "while the layer works in float32, 4 bytes per value; or what a process sends and "
            "receives together with one peer, while the question asks what it puts into the "
            "collectives.",
            4.0 * BYTES_C * 8,
        ),
        Mistake(
            "count_per_channel",
            "the count is counted once per channel: every channel of a process has the same "
            "number of values, so one integer per layer (sent with the number of channels, and "
            "not counted here) says it for all of them.",
            5.0 * BYTES_C * BYTES_ITEMSIZE,
        ),
        Mistake(
            "values_not_bytes",
            "this is the number of values, 4 per channel; multiply by the bytes per value.",
            4.0 * BYTES_C,
        ),
        Mistake(
            "bits",
            "this is in bits; the question asks for bytes (8 bits each).",
            4.0 * BYTES_C * BYTES_ITEMSIZE * 8,
        ),
    ),
)


# --------------------------------------------------------------------------------------
# Choices: gradient accumulation, and when to prefer GroupNorm
# --------------------------------------------------------------------------------------

ACCUMULATION = ChoiceExercise(
    id="distributed.accumulation",
    chapter=6,
    title="What gradient accumulation does to BN",
    options={
        "a": "nothing changes: the gradients of the 4 micro-batches add up to the gradient of "
        "the 32 examples, and the running statistics end where one batch of 32 leaves them",
        "b": "the gradient equals that of one batch of 32, since each loss is divided by 4, "
        "but the running statistics take 4 updates from batches of 8 instead of 1 from 32",
        "c": "each micro-batch is normalized with its own mean and variance, so the gradient "
        "differs from that of one batch of 32, and the running statistics take 4 updates",
        "d": "the running statistics equal those of one batch of 32, since they average the "
        "same 32 examples, but the gradient differs from that of one batch of 32",
    },
    answer="c",
    hints=(
        "Ask which statistics BN uses in the forward pass of each micro-batch.",
        "The loss of a micro-batch depends on its 8 examples through their own mean and "
        "variance: is that the same function as the loss of 32 examples normalized "
        "together?",
    ),
    mistakes=(
        Mistake(
            "same_as_big_batch",
            "accumulation adds gradients, it does not enlarge the batch BN sees: each forward "
            "pass normalizes 8 examples with their own mean and variance, which is a "
            "different function from normalizing 32 together (without BN, the two would be "
            "equal).",
            "a",
        ),
        Mistake(
            "gradients_equal",
            "the gradients are not equal: each micro-batch's loss goes through its own batch "
            "statistics, and the gradient carries the terms through those statistics.",
            "b",
        ),
        Mistake(
            "running_stats_equal",
            "the running statistics take one update per forward pass in training mode, 4 "
            "updates from batches of 8, not one from the batch of 32; and the gradients differ "
            "too.",
            "d",
        ),
    ),
)

PREFER_GROUP_NORM = ChoiceExercise(
    id="distributed.prefer_group_norm",
    chapter=6,
    title="When to prefer GroupNorm",
    options={
        "a": "an image classifier trained with 256 images per device",
        "b": "a detector trained with 2 large images per device on 8 devices joined by a fast "
        "interconnect, its BN layers synchronized across the 8",
        "c": "a network that must run as fast as possible at inference, with BN folded into "
        "the convolution before it",
        "d": "a video model trained on one device that holds a single clip per step",
    },
    answer="d",
    hints=(
        "For each setting, count the examples whose statistics BN (or a synchronized BN) "
        "would average over in one step.",
        "Synchronizing BN needs other processes that hold examples at the same time; "
        "GroupNorm's statistics come from the channels of one example.",
    ),
    mistakes=(
        Mistake(
            "large_batch",
            "with 256 examples per device BN's statistics are precise and their noise is "
            "mild; GroupNorm's advantage is at a batch of a few examples, where BN's "
            "statistics are noisy.",
            "a",
        ),
        Mistake(
            "synchronized",
            "synchronized across 8 devices, BN's statistics cover 16 images per step, not 2: "
            "this is a setting synchronized BN is made for. GroupNorm is a common choice there "
            "too (it was introduced for such detectors), a trade of accuracy against the cost "
            "of the collectives, but BN is not left without statistics; the question asks "
            "where it is.",
            "b",
        ),
        Mistake(
            "inference_speed",
            "at inference BN with its running statistics is an affine map that folds into "
            "the convolution before it and costs nothing; GroupNorm computes statistics of "
            "every example and cannot be folded.",
            "c",
        ),
    ),
)

EXERCISES: list[Exercise] = [MERGE, BYTES_PER_STEP, ACCUMULATION, PREFER_GROUP_NORM]

"""Exercises of chapter 3, trainable and non-trainable parameters."""

from __future__ import annotations

import numpy as np

from ..functional import update_running_stats
from .core import Case, ChoiceExercise, Exercise, FunctionExercise, Mistake, NumberExercise


def _axes(batch):
    return (0, *range(2, batch.ndim))


def _batch_stats(batch):
    """Per-channel mean, unbiased and biased variance of a batch of shape (N, C, ...)."""
    axes = _axes(batch)
    return batch.mean(axis=axes), batch.var(axis=axes, ddof=1), batch.var(axis=axes, ddof=0)


def _keras_convention(rm, rv, batch, momentum):
    mean, unbiased, _ = _batch_stats(batch)
    return momentum * rm + (1 - momentum) * mean, momentum * rv + (1 - momentum) * unbiased


def _biased_stored(rm, rv, batch, momentum):
    mean, _, biased = _batch_stats(batch)
    return (1 - momentum) * rm + momentum * mean, (1 - momentum) * rv + momentum * biased


def _keras_and_biased(rm, rv, batch, momentum):
    mean, _, biased = _batch_stats(batch)
    return momentum * rm + (1 - momentum) * mean, momentum * rv + (1 - momentum) * biased


def _std_stored(rm, rv, batch, momentum):
    mean, unbiased, _ = _batch_stats(batch)
    return (1 - momentum) * rm + momentum * mean, (1 - momentum) * rv + momentum * np.sqrt(unbiased)


def _replaced(rm, rv, batch, momentum):
    mean, unbiased, _ = _batch_stats(batch)
    return mean.copy(), unbiased.copy()


def _bessel_over_n(rm, rv, batch, momentum):
    # Bessel's factor N / (N - 1) from the batch size alone, not from m = N * H * W.
    mean, _, biased = _batch_stats(batch)
    n = batch.shape[0]
    unbiased_wrong = biased * n / (n - 1)
    return (1 - momentum) * rm + momentum * mean, (1 - momentum) * rv + momentum * unbiased_wrong


def running_stats_cases() -> list[Case]:
    """``(running_mean, running_var, batch, momentum)``: every rank from 2 to 5, C = 1 too."""
    r = np.random.default_rng(20260303)
    cases = []
    for label, shape, momentum in (
        ("a batch of shape (8, 3), momentum = 0.1", (8, 3), 0.1),
        ("a tiny batch of shape (2, 3), momentum = 0.1", (2, 3), 0.1),
        ("a sequence batch of shape (N, C, L) = (3, 4, 5), momentum = 0.3", (3, 4, 5), 0.3),
        ("an image batch of shape (N, C, H, W) = (2, 3, 4, 5), momentum = 0.1", (2, 3, 4, 5),
         0.1),
        ("one channel: shape (4, 1, 3, 3), momentum = 0.2", (4, 1, 3, 3), 0.2),
        ("a volume batch of shape (N, C, D, H, W) = (2, 2, 2, 3, 3), momentum = 0.1",
         (2, 2, 2, 3, 3), 0.1),
        ("a batch of shape (6, 2), momentum = 1.0 (keep only the new batch)", (6, 2), 1.0),
    ):
        c = shape[1]
        running_mean = r.normal(0.0, 1.0, c)
        running_var = r.uniform(0.5, 2.0, c)
        batch = r.normal(2.0, 3.0, shape)
        cases.append(Case(label, (running_mean, running_var, batch, momentum)))
    return cases


RUNNING_STATS = FunctionExercise(
    id="parameters.running_stats",
    chapter=3,
    title="Update the running statistics, for any layer",
    signature="update(running_mean, running_var, batch, momentum) -> (new_mean, new_var)",
    reference=lambda rm, rv, batch, momentum: update_running_stats(rm, rv, batch, momentum),
    cases=running_stats_cases,
    n_outputs=2,
    output_names=("new_mean", "new_var"),
    hints=(
        "A channel's statistics are taken over every axis but the channel axis 1: axis 0 "
        "for (N, C), axes (0, 2) for (N, C, L), axes (0, 2, 3) for (N, C, H, W), and so on.",
        "m is the number of values per channel, N times the sizes of the trailing axes; the "
        "stored variance divides the sum of squared deviations by m - 1, not by N - 1.",
        "PyTorch's momentum weights the new batch: new = (1 - momentum) * old + momentum * "
        "(the batch's statistic).",
    ),
    mistakes=(
        Mistake(
            "keras_convention",
            "this is the Keras momentum convention (momentum weights the old value); in "
            "PyTorch's, momentum weights the new batch: new = (1 - momentum) * old + momentum "
            "* batch.",
            _keras_convention,
        ),
        Mistake(
            "biased_variance_stored",
            "the biased batch variance is stored: PyTorch normalizes with the biased variance "
            "but puts the unbiased one (divide by m - 1) into running_var.",
            _biased_stored,
        ),
        Mistake(
            "keras_and_biased",
            "this is Keras 3's update, momentum convention and biased variance both; "
            "PyTorch's momentum weights the new batch and PyTorch stores the unbiased "
            "variance.",
            _keras_and_biased,
        ),
        Mistake(
            "std_stored",
            "a standard deviation is stored: the running statistic is a variance (the "
            "'moving sigma' of some write-ups is a running variance), so average var, not "
            "its square root.",
            _std_stored,
        ),
        Mistake(
            "replaced_not_averaged",
            "the running statistics are replaced by the batch's: they are an exponential "
            "moving average that keeps (1 - momentum) of the old value.",
            _replaced,
        ),
        Mistake(
            "bessel_over_batch_size",
            "the Bessel factor uses the batch size N: each channel's variance is taken over "
            "m = N times the trailing sizes values, so the unbiased variance divides by m - 1 "
            "(right for (N, C), wrong for (N, C, L) and images).",
            _bessel_over_n,
        ),
    ),
)


# --------------------------------------------------------------------------------------
# The running mean after k updates
# --------------------------------------------------------------------------------------

# Start at 0, every batch has mean 2.0, PyTorch momentum 0.1, three updates.
_K, _TARGET, _ALPHA = 3, 2.0, 0.1

K_UPDATES = NumberExercise(
    id="parameters.k_updates",
    chapter=3,
    title="The running mean after three batches",
    value=_TARGET * (1 - (1 - _ALPHA) ** _K),
    rtol=1e-4,
    hints=(
        "Write one update out: new = (1 - momentum) * old + momentum * batch mean, with "
        "PyTorch's momentum 0.1 weighting the new batch.",
        "Apply it three times, starting from 0, or unroll it: after k updates the starting "
        "value keeps the share (1 - momentum)^k.",
    ),
    mistakes=(
        Mistake(
            "keras_convention",
            "this is the Keras momentum convention (momentum weights the old value); in "
            "PyTorch's, momentum = 0.1 is the weight of the new batch, so 0.9 of the old value "
            "is kept at each step.",
            _TARGET * (1 - _ALPHA**_K),
        ),
        Mistake(
            "replaced_not_averaged",
            "the running mean is not replaced by the batch mean: it is an exponential moving "
            "average that starts at 0 and approaches the batch mean only gradually.",
            _TARGET,
        ),
        Mistake(
            "weights_swapped",
            "the weights are swapped: (1 - momentum)^k is the share left of the starting "
            "value 0, so the batch mean gets the rest, 1 - (1 - momentum)^k.",
            _TARGET * (1 - _ALPHA) ** _K,
        ),
        Mistake(
            "one_update_short",
            "one update short: three batches give three updates, so the exponent is k = 3.",
            _TARGET * (1 - (1 - _ALPHA) ** (_K - 1)),
        ),
        Mistake(
            "one_update_too_many",
            "one update too many: three batches give three updates, so the exponent is k = 3.",
            _TARGET * (1 - (1 - _ALPHA) ** (_K + 1)),
        ),
    ),
)

# --------------------------------------------------------------------------------------
# Porting the momentum
# --------------------------------------------------------------------------------------

# PyTorch's BatchNorm1d(momentum=0.1) ported to Keras 3 with the converted momentum 0.9. Both
# start at variance 1; one batch of m = 5 values 1, 2, 3, 4, 5 (biased variance 2, unbiased
# 2.5) in one channel. Keras 3 stores the biased variance (tests/test_keras_facts.py runs the
# real layer); so does tf.keras 2 for such a 2-D input, on its non-fused path.
_PORT_VALUES = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
_BIASED, _UNBIASED = float(_PORT_VALUES.var()), float(_PORT_VALUES.var(ddof=1))


def _keras_moving_var(rho: float, batch_var: float) -> float:
    return rho * 1.0 + (1 - rho) * batch_var


KERAS_MOMENTUM = NumberExercise(
    id="parameters.keras_momentum",
    chapter=3,
    title="A PyTorch layer ported to Keras 3: the moving variance",
    value=_keras_moving_var(0.9, _BIASED),
    rtol=1e-6,
    hints=(
        "First convert the momentum: Keras' momentum is the weight of the old value, "
        "PyTorch's the weight of the new batch.",
        "Then: which batch variance does Keras 3 put into moving_variance, the one that "
        "divides by m or the one that divides by m - 1?",
    ),
    mistakes=(
        Mistake(
            "unbiased_like_torch",
            "that is what PyTorch stores (the unbiased variance, 2.5 here); Keras 3 stores "
            "the biased batch variance, the one the layer normalizes with (divide by m).",
            _keras_moving_var(0.9, _UNBIASED),
        ),
        Mistake(
            "momentum_not_converted",
            "the momentum 0.1 was ported unchanged: in Keras it weights the old value, so "
            "0.1 keeps almost nothing but the last batch. The converted momentum is 1 - 0.1.",
            _keras_moving_var(0.1, _BIASED),
        ),
        Mistake(
            "momentum_not_converted_unbiased",
            "two things: the momentum 0.1 was ported unchanged (Keras' momentum weights the "
            "old value: use 1 - 0.1), and Keras 3 stores the biased variance, not the "
            "unbiased.",
            _keras_moving_var(0.1, _UNBIASED),
        ),
        Mistake(
            "keras_default",
            "0.99 is Keras' default momentum, PyTorch's 0.01; the layer being ported uses "
            "PyTorch's 0.1, which is Keras' 1 - 0.1.",
            _keras_moving_var(0.99, _BIASED),
        ),
        Mistake(
            "replaced",
            "the moving variance is not replaced by the batch's: it keeps the momentum's share "
            "of the old value 1.",
            _BIASED,
        ),
        Mistake(
            "replaced_unbiased",
            "the moving variance is not replaced by the batch's (it keeps the momentum's share "
            "of the old value 1), and Keras 3 stores the biased variance.",
            _UNBIASED,
        ),
    ),
)

# --------------------------------------------------------------------------------------
# Counting non-trainable values
# --------------------------------------------------------------------------------------

# Linear(64, 32) -> BatchNorm1d(32) -> ReLU -> Linear(32, 16) -> BatchNorm1d(16) -> ReLU
# -> Linear(16, 10), with gamma and beta of the first BN layer frozen (requires_grad False).
_BN_WIDTHS = (32, 16)
_STATS = 2 * sum(_BN_WIDTHS)          # running means and variances: 96
_FROZEN = 2 * _BN_WIDTHS[0]           # gamma and beta of the first BN layer: 64

NON_TRAINABLE = NumberExercise(
    id="parameters.non_trainable",
    chapter=3,
    title="Count the non-trainable values",
    value=_STATS + _FROZEN,
    hints=(
        "Two kinds of values are non-trainable: buffers the optimizer never sees, and "
        "parameters whose requires_grad is off.",
        "Per BN layer with C channels: which of its tensors are buffers, and which one of "
        "them is a counter rather than a value? Then add the frozen parameters.",
    ),
    mistakes=(
        Mistake(
            "frozen_parameters_forgotten",
            "the running statistics are counted, but the frozen gamma and beta of the first "
            "BN layer are non-trainable too: requires_grad=False moves a parameter to the "
            "non-trainable count.",
            _STATS,
        ),
        Mistake(
            "buffers_forgotten",
            "the frozen gamma and beta are counted, but the running mean and running variance "
            "of both BN layers are non-trainable values too (buffers).",
            _FROZEN,
        ),
        Mistake(
            "counter_counted",
            "num_batches_tracked is a counter of forward passes, not a value of the model: "
            "count only the running mean and the running variance, C values each per layer, "
            "plus the frozen parameters.",
            _STATS + _FROZEN + len(_BN_WIDTHS),
        ),
        Mistake(
            "all_gamma_beta_counted",
            "the second BN layer's gamma and beta still train (only the first layer's were "
            "frozen): they are trainable.",
            _STATS + 2 * sum(_BN_WIDTHS),
        ),
        Mistake(
            "one_statistic",
            "each BN layer stores two running statistics, the mean and the variance, C values "
            "each.",
            sum(_BN_WIDTHS) + _FROZEN,
        ),
        Mistake(
            "only_trainable_gamma_beta",
            "that is the number of gamma and beta values that still train; the question asks "
            "for the non-trainable values: running statistics and frozen parameters.",
            2 * _BN_WIDTHS[1],
        ),
    ),
)

# --------------------------------------------------------------------------------------
# Which snippet freezes BN?
# --------------------------------------------------------------------------------------

FREEZE_CHOICE = ChoiceExercise(
    id="parameters.freeze_choice",
    chapter=3,
    title="Which snippet freezes BN?",
    options={
        "a": "for p in bn.parameters(): p.requires_grad = False",
        "b": "model.eval() once, before the training loop (which calls model.train() at the "
        "start of every epoch)",
        "c": "with torch.no_grad(): out = model(x) for every forward pass of the loop",
        "d": "bn.weight.requires_grad_(False); bn.bias.requires_grad_(False), and bn.eval() "
        "after every model.train() of the loop",
        "e": "bn.momentum = 0.0 and requires_grad_(False) on bn.weight and bn.bias",
    },
    answer="d",
    hints=(
        "Two things must stop: the optimizer moving gamma and beta, and the forward pass "
        "moving the running statistics.",
        "And the layer must normalize with its stored statistics. What does model.train() do "
        "to every submodule's mode?",
    ),
    mistakes=(
        Mistake(
            "requires_grad_only",
            "requires_grad=False stops gamma and beta, but the running statistics are buffers "
            "updated by every training-mode forward pass, with no gradient involved: they keep "
            "drifting.",
            "a",
        ),
        Mistake(
            "eval_undone",
            "model.train() puts every submodule back into training mode, so the eval() is "
            "undone at the first epoch: the statistics drift, and gamma and beta still train.",
            "b",
        ),
        Mistake(
            "no_grad_is_not_eval",
            "torch.no_grad() turns off gradient tracking, not training mode: BN still "
            "normalizes with batch statistics and updates its running statistics.",
            "c",
        ),
        Mistake(
            "momentum_zero",
            "with momentum 0 the running statistics stay put, but in training mode the layer "
            "still normalizes with each batch's own statistics: it is not in inference mode, "
            "as Keras' trainable=False puts it, and small batches make it noisy.",
            "e",
        ),
    ),
)

# --------------------------------------------------------------------------------------
# momentum=None: the cumulative average
# --------------------------------------------------------------------------------------


def _split(x, batch_size):
    return [x[i:i + batch_size] for i in range(0, x.shape[0], batch_size)]


def _reference_cumulative(x, batch_size):
    c = x.shape[1]
    running_mean, running_var = np.zeros(c), np.ones(c)
    for k, batch in enumerate(_split(x, batch_size), start=1):
        running_mean, running_var = update_running_stats(
            running_mean, running_var, batch, momentum=1.0 / k
        )
    return running_mean, running_var


def _pooled(x, batch_size):
    return x.mean(axis=0), x.var(axis=0, ddof=1)


def _cumulative_biased(x, batch_size):
    batches = _split(x, batch_size)
    means = np.mean([b.mean(axis=0) for b in batches], axis=0)
    return means, np.mean([b.var(axis=0, ddof=0) for b in batches], axis=0)


def _default_momentum(x, batch_size):
    c = x.shape[1]
    running_mean, running_var = np.zeros(c), np.ones(c)
    for batch in _split(x, batch_size):
        running_mean, running_var = update_running_stats(running_mean, running_var, batch, 0.1)
    return running_mean, running_var


def _last_batch(x, batch_size):
    last = _split(x, batch_size)[-1]
    return last.mean(axis=0), last.var(axis=0, ddof=1)


def _init_counted(x, batch_size):
    # The initial (0, 1) counted as one more batch in the average.
    mean, var = _reference_cumulative(x, batch_size)
    k = len(_split(x, batch_size))
    return k * mean / (k + 1), (k * var + 1.0) / (k + 1)


def cumulative_cases() -> list[Case]:
    """``(x, batch_size)``: batches whose means differ, and a shorter last batch."""
    r = np.random.default_rng(20260313)
    cases = []
    for label, sizes, c in (
        ("x of shape (24, 3) in batches of 8, whose means differ", (8, 8, 8), 3),
        ("x of shape (20, 2) in batches of 4", (4, 4, 4, 4, 4), 2),
        ("x of shape (17, 4) in batches of 5 (the last batch has 2 rows)", (5, 5, 5, 2), 4),
    ):
        x = np.concatenate(
            [r.normal(r.uniform(-3, 3), r.uniform(0.5, 2.0), (n, c)) for n in sizes]
        )
        cases.append(Case(label, (x, sizes[0])))
    return cases


CUMULATIVE = FunctionExercise(
    id="parameters.cumulative",
    chapter=3,
    title="The running statistics with momentum=None",
    signature="cumulative(x, batch_size) -> (running_mean, running_var)",
    reference=_reference_cumulative,
    cases=cumulative_cases,
    n_outputs=2,
    output_names=("running_mean", "running_var"),
    hints=(
        "With momentum=None the k-th update uses momentum 1/k, starting from (0, 1).",
        "So the first update discards the starting values, and the result is a plain average "
        "over the batches, each batch weighted equally.",
        "Average each batch's mean and each batch's unbiased variance (divide by that batch's "
        "size minus 1), not the statistics of all rows pooled.",
    ),
    mistakes=(
        Mistake(
            "pooled_statistics",
            "these are the statistics of all rows pooled together; the cumulative average is "
            "taken over batches: the average of the batch means and the average of the "
            "per-batch unbiased variances (which leaves out how much the batch means differ).",
            _pooled,
        ),
        Mistake(
            "biased_variance_stored",
            "the biased batch variances are averaged: PyTorch stores the unbiased one (divide "
            "by N_k - 1) in running_var.",
            _cumulative_biased,
        ),
        Mistake(
            "default_momentum",
            "this is the exponential moving average with the default momentum 0.1; "
            "momentum=None means a cumulative average, momentum 1/k at the k-th batch.",
            _default_momentum,
        ),
        Mistake(
            "last_batch_only",
            "only the last batch counts here; the cumulative average gives every batch the "
            "same weight 1/K.",
            _last_batch,
        ),
        Mistake(
            "initial_value_counted",
            "the initial values (0 and 1) are counted as one more batch: the first update has "
            "momentum 1/1 = 1 and discards them.",
            _init_counted,
        ),
    ),
)

# --------------------------------------------------------------------------------------
# Reasoning: train mode inside torch.inference_mode()
# --------------------------------------------------------------------------------------

INFERENCE_MODE_TRAIN = ChoiceExercise(
    id="parameters.inference_mode_train",
    chapter=3,
    title="Train mode inside torch.inference_mode()",
    options={
        "a": "It normalizes with its running statistics and leaves them unchanged, because "
        "inference mode switches the layer to its eval behaviour.",
        "b": "It raises an error, because inference mode refuses the in-place update of the "
        "running statistics.",
        "c": "It normalizes with the batch's statistics and updates its running statistics, "
        "because inference mode leaves the layer's training flag as it is.",
        "d": "It normalizes with the batch's statistics but leaves its running statistics "
        "unchanged, because inference mode makes every tensor read-only.",
    },
    answer="c",
    hints=(
        "Which switch decides between the batch's statistics and the running ones: "
        "module.training, or a context manager? Does torch.inference_mode() change "
        "module.training?",
        "Inference mode restricts the tensors created inside it. Are the running statistics "
        "created inside it, or were they registered as buffers when the layer was built?",
    ),
    mistakes=(
        Mistake(
            "inference_mode_is_eval",
            "torch.inference_mode() is a stricter torch.no_grad(): it turns off autograd, "
            "and it never calls eval(). The layer is still in training mode, so it normalizes "
            "with the batch's statistics and updates its running statistics.",
            "a",
        ),
        Mistake(
            "in_place_update_refused",
            "inference mode forbids changing an inference tensor (one created inside it) in "
            "place outside it, not changing an ordinary tensor inside it. The running "
            "statistics are ordinary buffers, created with the layer: the call runs, and "
            "they move.",
            "b",
        ),
        Mistake(
            "statistics_read_only",
            "the output is computed from the batch's statistics, that part is right; but "
            "nothing is read-only here: the running statistics are ordinary buffers, and the "
            "training-mode pass updates them in place.",
            "d",
        ),
    ),
)

# --------------------------------------------------------------------------------------
# Reasoning: a network "frozen" with requires_grad=False, run in train mode
# --------------------------------------------------------------------------------------

FROZEN_DRIFT = ChoiceExercise(
    id="parameters.frozen_drift",
    chapter=3,
    title="A frozen network in train mode",
    options={
        "a": "It stays the same: with requires_grad=False on every parameter, nothing in the "
        "network can change.",
        "b": "It drops, because gamma and beta still receive gradients and move.",
        "c": "It drops, because each BN layer's running statistics move towards those of the "
        "new inputs, and evaluation normalizes with them.",
        "d": "It stays the same, because the accuracy is measured in eval mode, which is not "
        "affected by what happened in train mode.",
    },
    answer="c",
    hints=(
        "List the tensors of a BN layer, and for each one what moves it.",
        "Does anything move a BN layer's tensors without a gradient? And which of them does "
        "eval mode read?",
    ),
    mistakes=(
        Mistake(
            "requires_grad_freezes_all",
            "requires_grad=False stops the optimizer, but the running mean and variance are "
            "buffers moved by every training-mode forward pass, with no gradient involved.",
            "a",
        ),
        Mistake(
            "gamma_beta_move",
            "with requires_grad=False gamma and beta get no gradient, and there is no "
            "optimizer here anyway; what moves is what needs neither: the running statistics.",
            "b",
        ),
        Mistake(
            "eval_unaffected",
            "eval mode is exactly where the damage shows: it normalizes with the running "
            "statistics, which the train-mode passes over the new inputs have moved.",
            "d",
        ),
    ),
)

EXERCISES: list[Exercise] = [
    RUNNING_STATS, K_UPDATES, KERAS_MOMENTUM, NON_TRAINABLE, FREEZE_CHOICE, CUMULATIVE,
    INFERENCE_MODE_TRAIN, FROZEN_DRIFT,
]

"""Exercises of chapter 3, trainable and non-trainable parameters."""

from __future__ import annotations

import numpy as np

from ..functional import update_running_stats
from ._cases import running_stats_cases
from .core import Case, ChoiceExercise, Exercise, FunctionExercise, Mistake, NumberExercise


def _batch_stats(batch):
    return batch.mean(axis=0), batch.var(axis=0, ddof=1), batch.var(axis=0, ddof=0)


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


RUNNING_STATS = FunctionExercise(
    id="parameters.running_stats",
    chapter=3,
    title="Update the running statistics",
    signature="update(running_mean, running_var, batch, momentum) -> (new_mean, new_var)",
    reference=lambda rm, rv, batch, momentum: update_running_stats(rm, rv, batch, momentum),
    cases=running_stats_cases,
    n_outputs=2,
    output_names=("new_mean", "new_var"),
    hint="PyTorch's convention: new = (1 - momentum) * old + momentum * batch statistic, and "
    "the batch variance stored is the unbiased one (divide by N - 1).",
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
            "but puts the unbiased one (divide by N - 1) into running_var.",
            _biased_stored,
        ),
        Mistake(
            "keras_and_biased",
            "two things: this is the Keras momentum convention (PyTorch's momentum weights the "
            "new batch), and the biased variance is stored where PyTorch stores the unbiased "
            "one.",
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
    hint="Unroll new = (1 - momentum) * old + momentum * batch: after k updates from 0, the "
    "running mean is batch * (1 - (1 - momentum)^k).",
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

KERAS_MOMENTUM = NumberExercise(
    id="parameters.keras_momentum",
    chapter=3,
    title="PyTorch's default momentum in Keras",
    value=0.9,
    hint="Write both updates out: Keras' momentum multiplies the old value, PyTorch's "
    "multiplies the new batch.",
    mistakes=(
        Mistake(
            "same_number",
            "the same number means a different average: PyTorch's momentum weights the new "
            "batch and Keras' weights the old value, so keras_momentum = 1 - torch_momentum.",
            0.1,
        ),
        Mistake(
            "keras_default",
            "0.99 is Keras' default, which is PyTorch's 0.01, ten times slower than "
            "PyTorch's default: keras_momentum = 1 - torch_momentum.",
            0.99,
        ),
        Mistake(
            "torch_of_keras_default",
            "0.01 is what Keras' default 0.99 becomes in PyTorch; the question goes the other "
            "way: keras_momentum = 1 - torch_momentum.",
            0.01,
        ),
    ),
)

# --------------------------------------------------------------------------------------
# Counting non-trainable values
# --------------------------------------------------------------------------------------

# Linear(64, 32) -> BatchNorm1d(32) -> ReLU -> Linear(32, 16) -> BatchNorm1d(16) -> ReLU
# -> Linear(16, 10)
_BN_WIDTHS = (32, 16)

NON_TRAINABLE = NumberExercise(
    id="parameters.non_trainable",
    chapter=3,
    title="Count the non-trainable values",
    value=2 * sum(_BN_WIDTHS),
    hint="Per BN layer with C channels: which of its tensors does the optimizer move, which "
    "are moved by the moving average, and which one is a counter?",
    mistakes=(
        Mistake(
            "counter_counted",
            "num_batches_tracked is a counter of forward passes, not a value of the model: "
            "count only the running mean and the running variance, C values each per layer.",
            2 * sum(_BN_WIDTHS) + len(_BN_WIDTHS),
        ),
        Mistake(
            "gamma_beta_counted",
            "gamma and beta are trainable (the optimizer moves them through their gradients); "
            "only the running mean and running variance are non-trainable.",
            4 * sum(_BN_WIDTHS),
        ),
        Mistake(
            "one_statistic",
            "each BN layer stores two running statistics, the mean and the variance, C values "
            "each.",
            sum(_BN_WIDTHS),
        ),
        Mistake(
            "buffers_not_counted",
            "the running mean and running variance are not parameters (model.parameters() "
            "does not list them), but they are values of the model that the optimizer does not "
            "move: they are the non-trainable ones (model.buffers()).",
            0,
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
    hint="Two things must stop: the optimizer moving gamma and beta, and the forward pass "
    "moving the running statistics; and the layer must normalize with the stored statistics.",
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
    hint="With momentum=None the k-th update uses momentum 1/k, starting from (0, 1): the "
    "result is the plain average, over the batches, of each batch's mean and of each "
    "batch's unbiased variance.",
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

EXERCISES: list[Exercise] = [
    RUNNING_STATS, K_UPDATES, KERAS_MOMENTUM, NON_TRAINABLE, FREEZE_CHOICE, CUMULATIVE,
]

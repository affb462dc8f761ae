"""Exercises of chapter 3, trainable and non-trainable parameters."""

from __future__ import annotations

import numpy as np

from ..functional import update_running_stats
from ._cases import running_stats_cases
from .core import Exercise, FunctionExercise, Mistake


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

EXERCISES: list[Exercise] = [RUNNING_STATS]

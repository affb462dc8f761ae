"""Exercises of chapter 7, porting BN between frameworks.

``porting.misport_mean``'s and ``porting.variance_ratio``'s values, ``porting.keras_update``'s
reference and ``porting.freeze_port``'s answer are checked against the real Keras 3 and Flax
layers in ``tests/test_ports.py``. ``porting.keras_update``'s cases are float32, the precision
the Keras layer works in, so an answer that ports a layer and calls Keras is accepted as well as
the update written out.
"""

from __future__ import annotations

import numpy as np

from .core import Case, ChoiceExercise, Exercise, FunctionExercise, Mistake, NumberExercise


def _axes(x):
    return (0, *range(2, x.ndim))


# --------------------------------------------------------------------------------------
# What Keras 3 stores after one training step of a ported layer
# --------------------------------------------------------------------------------------

def _keras_port_update(rm, rv, x, momentum):
    """Keras 3's moving statistics after one step of the port of a PyTorch layer."""
    rho = 1.0 - momentum
    axes = _axes(x)
    return rho * rm + (1 - rho) * x.mean(axis=axes), rho * rv + (1 - rho) * x.var(axis=axes)


def _unconverted(rm, rv, x, momentum):
    axes = _axes(x)
    return (momentum * rm + (1 - momentum) * x.mean(axis=axes),
            momentum * rv + (1 - momentum) * x.var(axis=axes))


def _unbiased(rm, rv, x, momentum):
    axes = _axes(x)
    return ((1 - momentum) * rm + momentum * x.mean(axis=axes),
            (1 - momentum) * rv + momentum * x.var(axis=axes, ddof=1))


def _unconverted_unbiased(rm, rv, x, momentum):
    axes = _axes(x)
    return (momentum * rm + (1 - momentum) * x.mean(axis=axes),
            momentum * rv + (1 - momentum) * x.var(axis=axes, ddof=1))


def keras_update_cases() -> list[Case]:
    """``(running_mean, running_var, x, momentum)``, float32: ranks 2 to 5, C from 1 to 3,
    PyTorch momenta."""
    r = np.random.default_rng(20261401)
    cases = []
    for label, shape, momentum in (
        ("x of shape (8, 3), PyTorch's momentum 0.1", (8, 3), 0.1),
        ("a sequence (N, C, L) = (3, 2, 6), momentum 0.3", (3, 2, 6), 0.3),
        ("an image batch (2, 3, 4, 4), momentum 0.01", (2, 3, 4, 4), 0.01),
        ("one channel, (4, 1, 3, 3), momentum 0.5", (4, 1, 3, 3), 0.5),
        ("a volume (2, 2, 2, 3, 3), momentum 0.1", (2, 2, 2, 3, 3), 0.1),
    ):
        c = shape[1]
        cases.append(Case(label, (r.normal(0.0, 1.0, c).astype(np.float32),
                                  r.uniform(0.5, 2.0, c).astype(np.float32),
                                  r.normal(1.0, 2.0, shape).astype(np.float32), momentum)))
    return cases


KERAS_UPDATE = FunctionExercise(
    id="porting.keras_update",
    chapter=7,
    title="What the Keras port stores after a training step",
    signature="keras_update(running_mean, running_var, x, momentum) -> (moving_mean, moving_var)",
    reference=_keras_port_update,
    cases=keras_update_cases,
    n_outputs=2,
    output_names=("moving_mean", "moving_var"),
    hints=(
        "The layer was ported with the momentum converted: Keras' momentum is 1 minus "
        "PyTorch's, and it weights the old value.",
        "Which batch variance does Keras 3 put into moving_variance: the one it normalizes "
        "with, or PyTorch's?",
        "Statistics per channel over every axis but axis 1; the variance divides by m.",
    ),
    mistakes=(
        Mistake("momentum_unconverted",
                "PyTorch's momentum was used as Keras' without conversion: Keras' momentum "
                "weights the old value, so the port uses 1 - momentum.", _unconverted),
        Mistake("unbiased_stored",
                "that is PyTorch's update, with the unbiased variance: Keras 3 stores the "
                "biased batch variance (divide by m), the one it normalizes with.", _unbiased),
        Mistake("both", "the momentum is unconverted and the variance is PyTorch's unbiased "
                        "one; Keras 3 weights the old value by 1 - momentum and stores the "
                        "biased variance.", _unconverted_unbiased),
    ),
)

# --------------------------------------------------------------------------------------
# PyTorch's momentum typed into Keras unconverted
# --------------------------------------------------------------------------------------

_MEANS = (2.0, 10.0)          # the two batches' means, moving mean starting at 0


def _keras_moving_mean(rho: float) -> float:
    mean = 0.0
    for batch_mean in _MEANS:
        mean = rho * mean + (1 - rho) * batch_mean
    return mean


MISPORT = NumberExercise(
    id="porting.misport_mean",
    chapter=7,
    title="PyTorch's momentum typed into Keras",
    value=_keras_moving_mean(0.1),
    rtol=1e-6,
    hints=(
        "Keras' momentum is the weight of the old value: with 0.1 the new batch gets 0.9.",
        "Apply the update twice, from 0: first with the batch mean 2, then with 10.",
    ),
    mistakes=(
        Mistake("converted", "that is the layer ported correctly, with Keras' momentum 0.9; "
                             "the question types PyTorch's 0.1 into Keras unchanged.",
                _keras_moving_mean(0.9)),
        Mistake("replaced", "the moving mean keeps a tenth of its old value at each step; it is "
                            "not replaced by the last batch's mean.", _MEANS[-1]),
        Mistake("one_step", "two training steps: apply the update once per batch.",
                (1 - 0.1) * _MEANS[-1]),
    ),
)

# --------------------------------------------------------------------------------------
# Where the ported variance settles
# --------------------------------------------------------------------------------------

_N, _H, _W = 4, 6, 6          # images per step and their height and width
_M = _N * _H * _W             # values per channel in one batch

VARIANCE_RATIO = NumberExercise(
    id="porting.variance_ratio",
    chapter=7,
    title="Where a variance ported to PyTorch settles",
    value=_M / (_M - 1),
    rtol=1e-6,
    hints=(
        "After many steps a moving average forgets where it started: it settles at the "
        "average of what each step puts in.",
        "How many values per channel does a BN layer after a convolution average over in one "
        "batch? Every image and every position.",
        "PyTorch puts in the batch variance divided by m - 1, Flax the one divided by m.",
    ),
    mistakes=(
        Mistake("inverted", "that is Flax's over PyTorch's; the question asks for PyTorch's "
                            "settled variance over Flax's.", (_M - 1) / _M),
        Mistake("unchanged", "the two libraries store different batch variances: Flax's "
                             "divides by m, PyTorch's by m - 1.", 1.0),
        Mistake("images_only", "m counts every value a channel's statistics average over: "
                               "the images times the positions, N * H * W, not N.",
                _N / (_N - 1)),
        Mistake("positions_only", "m counts every value a channel's statistics average over: "
                                  "all the images of the batch, not one image's positions.",
                (_H * _W) / (_H * _W - 1)),
    ),
)

# --------------------------------------------------------------------------------------
# Freezing: Keras' trainable=False against requires_grad_(False)
# --------------------------------------------------------------------------------------

FREEZE_PORT = ChoiceExercise(
    id="porting.freeze_port",
    chapter=7,
    title="A frozen-BN recipe moved from PyTorch to Flax NNX",
    options={
        "a": "what they did in PyTorch: they normalize with their fixed running statistics, "
             "and scale and bias stay fixed",
        "b": "they normalize with each batch's statistics and update the running statistics "
             "at every step; scale and bias stay fixed",
        "c": "scale and bias train, and the running statistics stay fixed",
        "d": "they normalize with their running statistics but update them at every step",
    },
    answer="b",
    hints=(
        "Which attribute of an NNX BatchNorm decides between batch and running statistics, "
        "and what do the model's train() and eval() do to it?",
        "Leaving scale and bias out of the optimizer freezes them; it does nothing to the mode.",
    ),
    mistakes=(
        Mistake("same", "NNX's model.train() sets use_running_average=False on every "
                        "BatchNorm inside the model, so the BN layers are back in training "
                        "mode; the port needs .eval() on them after each model.train().", "a"),
        Mistake("reversed", "scale and bias are left out of the optimizer's update, so they "
                            "stay; it is the running statistics that move.", "c"),
        Mistake("half", "with use_running_average=False the layer normalizes with the batch's "
                        "statistics, not the running ones, and updates the running ones.", "d"),
    ),
)

EXERCISES: list[Exercise] = [MISPORT, KERAS_UPDATE, VARIANCE_RATIO, FREEZE_PORT]

"""The course's statements about Keras 3, checked against the real library.

Keras 3 installs from the package index and runs on the torch backend (``bncourse.ports``
selects it), without TensorFlow, so these tests run its own ``BatchNormalization``, against
the update rule written out in each test: the momentum that weights the old value
(default 0.99), the default epsilon 1e-3, the **biased** batch variance in
``moving_variance``, and ``trainable=False`` running the layer in inference mode even when it
is called with ``training=True`` (on this backend it takes effect in the next ``fit()`` without
a new ``compile()``, which Keras' guide asks for because a traced train step may keep the old
setting). tf.keras 2 (Keras 2) needs TensorFlow and is not installed:
chapters 3 and 7 cite its source for what it stores, and the unbiased variance of its fused
path is shown here *not* to be what Keras 3 stores. Chapter 3 runs Keras 3's layer itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from bncourse.exercises import check
from bncourse.exercises.parameters import KERAS_MOMENTUM
from bncourse.ports import keras as _keras

# The backend is chosen when keras is first imported: bncourse.ports selects torch.
keras = _keras()

# Keras keeps its variables in float32: agreement to this relative tolerance is agreement.
RTOL = 1e-5


def _np(value) -> np.ndarray:
    """A Keras tensor or variable as a float64 NumPy array."""
    if isinstance(value, keras.Variable):
        value = value.value                  # the backend's tensor, not the variable
    # On the torch backend that is a torch tensor (keras.ops.convert_to_numpy would go
    # through np.array(tensor), which NumPy 2 warns about).
    return value.detach().cpu().numpy().astype(np.float64)


def _channels_first(x: np.ndarray) -> np.ndarray:
    """Keras' channels-last batch as bncourse's (N, C, ...) layout."""
    return np.moveaxis(x, -1, 1)


def _written_update(moving_mean, moving_var, x, momentum, ddof=0):
    """The update rule, written out: ``momentum`` weights the old value, channels on axis 1."""
    axes = (0, *range(2, x.ndim))
    x = np.asarray(x, dtype=np.float64)
    return (momentum * moving_mean + (1 - momentum) * x.mean(axis=axes),
            momentum * moving_var + (1 - momentum) * x.var(axis=axes, ddof=ddof))


def _batch(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(3.0, 2.0, size=shape).astype(np.float32)


def test_the_backend_is_torch():
    assert keras.backend.backend() == "torch", (
        f"keras runs on {keras.backend.backend()!r}: it was imported before this module set "
        f"KERAS_BACKEND=torch")
    assert int(keras.__version__.split(".")[0]) == 3, f"Keras {keras.__version__} is not Keras 3"


def test_keras3_defaults_are_momentum_099_and_epsilon_1e3():
    layer = keras.layers.BatchNormalization()
    assert layer.momentum == 0.99, f"default momentum {layer.momentum}"
    assert layer.epsilon == 1e-3, f"default epsilon {layer.epsilon}"
    layer.build((None, 5))
    names = lambda weights: sorted(w.name for w in weights)  # noqa: E731
    assert names(layer.trainable_weights) == ["beta", "gamma"]
    assert names(layer.non_trainable_weights) == ["moving_mean", "moving_variance"]
    assert layer.count_params() == 4 * 5, "gamma, beta and the two moving statistics"


@pytest.mark.verifies("eq-parameters-keras")
@pytest.mark.parametrize(("shape", "momentum"), [
    ((8, 4), 0.99),             # after Dense: m = 8
    ((8, 4), 0.9),              # PyTorch's default 0.1, converted
    ((2, 3, 3, 5), 0.99),       # after Conv2D, channels last: m = 2 * 3 * 3
    ((2, 2, 3, 3, 4), 0.9),     # after Conv3D: m = 2 * 2 * 3 * 3
])
def test_keras3_stores_the_biased_batch_variance_with_momentum_on_the_old_value(shape, momentum):
    x = _batch(shape, seed=len(shape))
    channels = shape[-1]
    layer = keras.layers.BatchNormalization(momentum=momentum)
    layer(x, training=True)
    got_mean, got_var = _np(layer.moving_mean), _np(layer.moving_variance)

    start_mean, start_var = np.zeros(channels), np.ones(channels)
    want_mean, want_var = _written_update(start_mean, start_var, _channels_first(x), momentum)
    np.testing.assert_allclose(got_mean, want_mean, rtol=RTOL,
                               err_msg="Keras 3's moving mean and momentum * old + (1 - "
                                       "momentum) * batch mean")
    np.testing.assert_allclose(got_var, want_var, rtol=RTOL,
                               err_msg="Keras 3's moving variance and the update with the "
                                       "biased batch variance")
    # The unbiased variance (PyTorch's, and tf.keras 2's fused path) is told apart: its
    # update differs from Keras 3's by far more than the tolerance.
    _, unbiased = _written_update(start_mean, start_var, _channels_first(x), momentum, ddof=1)
    gap = np.min(np.abs(unbiased - got_var) / got_var)
    assert gap > 100 * RTOL, f"biased and unbiased updates differ by only {gap:.2g}"


def test_keras3_normalizes_with_the_biased_variance_and_epsilon_in_training_mode():
    x = _batch((8, 3), seed=5).astype(np.float64)
    layer = keras.layers.BatchNormalization()
    y = _np(layer(x.astype(np.float32), training=True))
    want = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3)        # gamma 1, beta 0
    np.testing.assert_allclose(y, want, rtol=RTOL, atol=RTOL,
                               err_msg="Keras 3's training-mode output")


def test_keras3_trainable_false_runs_in_inference_mode_even_with_training_true():
    x = _batch((16, 3), seed=6)
    layer = keras.layers.BatchNormalization()
    layer(x, training=True)                                   # moving statistics move once
    mean, var = _np(layer.moving_mean), _np(layer.moving_variance)
    gamma, beta = np.array([2.0, 0.5, 1.0]), np.array([0.1, -1.0, 0.0])
    layer.gamma.assign(gamma.astype(np.float32))
    layer.beta.assign(beta.astype(np.float32))

    layer.trainable = False
    y = _np(layer(x, training=True))
    np.testing.assert_array_equal(_np(layer.moving_mean), mean,
                                  err_msg="trainable=False must leave the moving mean alone")
    np.testing.assert_array_equal(_np(layer.moving_variance), var,
                                  err_msg="trainable=False must leave the moving variance alone")
    want = gamma * (x - mean) / np.sqrt(var + 1e-3) + beta    # the moving statistics
    np.testing.assert_allclose(y, want, rtol=RTOL, atol=RTOL,
                               err_msg="with trainable=False Keras 3 normalizes with the "
                                       "moving statistics, as in inference")
    assert layer.trainable_weights == [], "gamma and beta are frozen too"

    layer.trainable = True                                    # and the switch goes back
    layer(x, training=True)
    assert not np.array_equal(_np(layer.moving_mean), mean)


# fit() turns its logs into NumPy with np.array(tensor), which NumPy 2 warns about (Keras'
# code, not this test's).
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
def test_keras3_on_torch_applies_a_change_of_trainable_without_compiling_again():
    # Chapter 3: Keras' guide asks for compile() again after a change of trainable, because a
    # compiled training step may keep the old setting. On the torch backend (eager, no traced
    # train function) the change takes effect at the next fit(), compiled or not.
    keras.utils.set_random_seed(0)
    x = _batch((64, 5), seed=7)
    y = np.random.default_rng(8).normal(size=(64, 1)).astype(np.float32)
    bn = keras.layers.BatchNormalization()
    dense = keras.layers.Dense(4)
    model = keras.Sequential([keras.Input((5,)), dense, bn, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    state = {name: _np(w) for name, w in (("moving_mean", bn.moving_mean),
                                          ("moving_variance", bn.moving_variance),
                                          ("gamma", bn.gamma), ("beta", bn.beta))}
    kernel = _np(dense.kernel)

    bn.trainable = False                                      # no compile() after this
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    for name, before in state.items():
        np.testing.assert_array_equal(_np(getattr(bn, name)), before, err_msg=(
            f"after trainable=False without compiling again, fit() moved the BN layer's {name}"))
    assert not np.array_equal(_np(dense.kernel), kernel), "the rest of the model still trains"


def test_the_ported_momentum_exercise_is_what_keras3_stores():
    # ex-parameters-keras-momentum: PyTorch's momentum 0.1 ported as Keras' 0.9, moving
    # variance 1, one batch 1, 2, 3, 4, 5 in one channel.
    layer = keras.layers.BatchNormalization(momentum=0.9)
    layer(np.arange(1.0, 6.0, dtype=np.float32)[:, None], training=True)
    got = float(_np(layer.moving_variance)[0])
    assert got == pytest.approx(KERAS_MOMENTUM.value, rel=RTOL), (
        f"Keras 3 stores {got}, the exercise's answer is {KERAS_MOMENTUM.value}")
    assert check("parameters.keras_momentum", got).passed


def test_the_chapters_misport_example_is_what_keras3_does():
    # Chapter 3: PyTorch's 0.1 typed into Keras, one batch (9, 11) from moving mean 0.
    layer = keras.layers.BatchNormalization(momentum=0.1)
    batch = np.array([[9.0], [11.0]], dtype=np.float32)
    layer(batch, training=True)
    want, _ = _written_update(np.zeros(1), np.ones(1), batch, 0.1)
    assert float(_np(layer.moving_mean)[0]) == pytest.approx(want[0], rel=RTOL) == 9.0


def test_keras3_on_torch_takes_the_one_pass_variance_without_clamping_it():
    # keras.src.backend.torch.nn.moments: variance = mean(x^2) - mean(x)^2, in the input's
    # float32, and nothing keeps it from going negative.
    import torch

    x = 1e4 + np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32)
    layer = keras.layers.BatchNormalization(momentum=0.0)
    y = _np(layer(x, training=True))
    got = _np(layer.moving_variance)
    xt = torch.from_numpy(x)
    one_pass = (torch.mean(xt * xt, dim=0) - torch.mean(xt, dim=0) ** 2).numpy()
    np.testing.assert_array_equal(got, one_pass.astype(np.float64),
                                  err_msg="Keras 3's variance and E[x^2] - E[x]^2 in float32")
    true_var = x.astype(np.float64).var(axis=0)
    assert np.all(np.abs(got - true_var) > 0.5), f"stored {got}, true {true_var}"
    assert np.all(got % 8 == 0), "multiples of the float32 spacing near 1e8"
    assert np.any(got < 0), f"no negative variance this time: {got}"
    assert np.all(np.isnan(y[:, got < 0])), "a negative variance below -eps gives NaN outputs"


def test_keras3_masked_call_takes_two_passes_where_the_unmasked_one_loses_the_variance():
    """On the torch backend Keras 3's unmasked variance is the one-pass E[x^2] - E[x]^2; a call
    with a mask goes through the layer's masked moments, which subtract the mean first."""
    x = 1e4 + np.random.default_rng(3).normal(size=(256, 8)).astype(np.float32)
    true_var = x.astype(np.float64).var(axis=0)
    plain = keras.layers.BatchNormalization(momentum=0.0)
    plain(x, training=True)
    masked = keras.layers.BatchNormalization(momentum=0.0)
    masked(x, training=True, mask=np.ones(len(x), dtype=bool))
    assert np.all(np.abs(_np(plain.moving_variance) - true_var) > 0.5)      # digits lost
    np.testing.assert_allclose(_np(masked.moving_variance), true_var, rtol=1e-4)

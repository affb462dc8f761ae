"""bncourse.ports against the real Keras 3 (torch backend) and Flax NNX.

Every comparison runs the other library's own layer: outputs in eval and training mode, the
state after a training step, round trips, the refused cases, a whole small network, and
Flax's synchronized BN over four XLA host devices (in a subprocess, since the device count is
fixed when JAX starts) against BN on the global batch and bncourse's SyncBatchNorm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from bncourse import BatchNorm, ports

keras = ports.keras()
nnx = ports.nnx()
import jax.numpy as jnp  # noqa: E402

# Keras and Flax compute in float32 here: agreement within this bound is agreement.
F32 = 2e-5


def _np(value) -> np.ndarray:
    if isinstance(value, keras.Variable):
        value = value.value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _layer(cls, c: int, seed: int, **kw) -> nn.Module:
    """A torch BN layer with random gamma, beta and running statistics."""
    layer = cls(c, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if layer.affine:
            layer.weight.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            layer.weight[0] = -layer.weight[0]
            layer.bias.copy_(torch.randn(c, generator=g))
        layer.running_mean.copy_(torch.randn(c, generator=g))
        layer.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return layer


def _x(shape, seed: int, loc: float = 1.0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (loc + 2.0 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)


CASES = [  # (class, ndim passed, input shape)
    (nn.BatchNorm1d, None, (8, 3)),
    (nn.BatchNorm1d, 3, (4, 3, 5)),
    (nn.BatchNorm2d, None, (2, 3, 4, 5)),
    (nn.BatchNorm3d, None, (2, 2, 3, 3, 2)),
    (BatchNorm, 4, (3, 1, 4, 4)),
]


def _assert_near(got, want, what, bound=F32):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shapes {got.shape} and {want.shape}"
    err = np.max(np.abs(got - want) / (1 + np.abs(want)))
    assert err < bound, f"{what}: differs by {err:.3g} (bound {bound:.1g})"


# --------------------------------------------------------------------------------------
# Keras
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("cls", "ndim", "shape"), CASES)
def test_to_keras_gives_torchs_outputs_in_both_modes_and_its_mean_after_a_step(cls, ndim, shape):
    bn = _layer(cls, shape[1], seed=len(shape), momentum=0.2)
    layer = ports.to_keras(bn, ndim)
    assert layer.built and layer.axis in (1, -1 + len(shape) if len(shape) == 2 else 1)
    assert layer.momentum == 0.8 and layer.epsilon == bn.eps
    x = _x(shape, seed=7)
    bn.eval()
    _assert_near(_np(layer(x.numpy(), training=False)), _np(bn(x)), "eval output")
    bn.train()
    start_var = bn.running_var.clone()
    _assert_near(_np(layer(x.numpy(), training=True)), _np(bn(x)), "training output")
    _assert_near(_np(layer.moving_mean), _np(bn.running_mean), "moving mean after a step")
    # The variance after a step: Keras stores the biased batch variance, torch the unbiased.
    axes = (0, *range(2, x.ndim))
    m = x.numel() // x.shape[1]
    biased = _np(x.double().var(dim=axes, unbiased=False))
    want_keras = 0.8 * _np(start_var) + 0.2 * biased
    _assert_near(_np(layer.moving_variance), want_keras, "Keras' moving variance")
    _assert_near(_np(bn.running_var), want_keras + 0.2 * biased / (m - 1),
                 "torch's running variance, the unbiased share")


def test_to_keras_carries_affine_false_and_refuses_float64_which_keras_rounds_to_float32():
    bn = _layer(nn.BatchNorm1d, 4, seed=1, affine=False)
    layer = ports.to_keras(bn)
    assert not layer.center and not layer.scale and layer.variable_dtype == "float32"
    x = _x((6, 4), seed=2)
    bn.eval()
    _assert_near(_np(layer(x, training=False)), _np(bn(x)), "eval output, affine=False")
    with pytest.raises(ValueError, match="float32"):
        ports.to_keras(nn.BatchNorm1d(3, dtype=torch.float64))
    # Why: a float64 Keras layer (variables float64) returns its input rounded to float32.
    plain = keras.layers.BatchNormalization(axis=1, dtype="float64", center=False, scale=False,
                                            epsilon=0.0)
    plain.build((None, 1))
    third = torch.tensor([[1 / 3]], dtype=torch.float64)
    got = float(_np(plain(third, training=False))[0, 0])
    assert plain.moving_mean.value.dtype == torch.float64
    assert got == float(np.float32(1 / 3)) != 1 / 3, f"Keras returned {got!r} for 1/3"


def test_from_keras_ports_a_layer_with_keras_own_defaults():
    # A layer made in Keras with its defaults (channels last, momentum 0.99, eps 1e-3),
    # trained one step in Keras.
    layer = keras.layers.BatchNormalization()
    x = _x((2, 4, 4, 3), seed=3).numpy()                      # channels last
    layer(x, training=True)
    bn = ports.from_keras(layer)
    assert bn.momentum == 0.01 and bn.eps == 1e-3
    xt = torch.from_numpy(x).movedim(-1, 1)
    bn.eval()
    _assert_near(_np(bn(xt)), np.moveaxis(_np(layer(x, training=False)), -1, 1), "eval output")
    bn.train()
    _assert_near(_np(bn(xt)), np.moveaxis(_np(layer(x, training=True)), -1, 1), "training output")


def test_round_trips_through_keras_keep_every_value_exactly():
    bn = _layer(nn.BatchNorm2d, 5, seed=4, momentum=0.1)
    back = ports.from_keras(ports.to_keras(bn))
    assert back.momentum == bn.momentum and back.eps == bn.eps
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(back, name), getattr(bn, name)), name
    layer = keras.layers.BatchNormalization(axis=1, momentum=0.97, epsilon=1e-4)
    layer(_x((6, 4, 3), seed=5).numpy(), training=True)
    again = ports.to_keras(ports.from_keras(layer), ndim=3)
    assert (again.momentum, again.epsilon) == (layer.momentum, layer.epsilon)
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        np.testing.assert_array_equal(_np(getattr(again, name)), _np(getattr(layer, name)))


def test_what_does_not_port_to_or_from_keras_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="cumulative average"):
        ports.to_keras(nn.BatchNorm1d(3, momentum=None))
    with pytest.raises(ValueError, match="track_running_stats"):
        ports.to_keras(nn.BatchNorm1d(3, track_running_stats=False))
    with pytest.raises(ValueError, match="pass ndim"):
        ports.to_keras(BatchNorm(3))
    with pytest.raises(ValueError, match="takes 4-D"):
        ports.to_keras(nn.BatchNorm2d(3), ndim=3)
    with pytest.raises(TypeError, match="BatchNorm layer"):
        ports.to_keras(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="not built"):
        ports.from_keras(keras.layers.BatchNormalization())
    refused = {
        "renorm": dict(renorm=True),
        "center=False": dict(center=False),
        "gamma_regularizer": dict(gamma_regularizer="l2"),
        "channel axis is 2": dict(axis=2),
    }
    for reason, kw in refused.items():
        layer = keras.layers.BatchNormalization(**kw)
        layer.build((None, 3, 4, 5))
        with pytest.raises(ValueError, match=reason):
            ports.from_keras(layer)


# --------------------------------------------------------------------------------------
# Flax
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("cls", "ndim", "shape"), CASES)
def test_to_flax_gives_torchs_outputs_in_both_modes_and_its_mean_after_a_step(cls, ndim, shape):
    bn = _layer(cls, shape[1], seed=len(shape) + 10, momentum=0.3)
    module = ports.to_flax(bn)
    assert module.axis == 1 and not module.use_fast_variance and module.epsilon == bn.eps
    assert module.momentum == 0.7
    x = _x(shape, seed=8)
    bn.eval()
    _assert_near(module(jnp.asarray(x.numpy()), use_running_average=True), _np(bn(x)), "eval")
    bn.train()
    start_var = _np(bn.running_var).copy()
    _assert_near(module(jnp.asarray(x.numpy()), use_running_average=False), _np(bn(x)), "train")
    _assert_near(module.mean[...], _np(bn.running_mean), "mean after a step")
    biased = _np(x.double().var(dim=(0, *range(2, x.ndim)), unbiased=False))
    _assert_near(module.var[...], 0.7 * start_var + 0.3 * biased, "Flax's variance (biased)")


def test_from_flax_ports_a_module_with_flax_own_defaults_and_round_trips_exactly():
    module = nnx.BatchNorm(3, rngs=nnx.Rngs(0))               # axis -1, 0.99, 1e-5
    x = _x((5, 3), seed=9).numpy()
    module(jnp.asarray(x), use_running_average=False)
    bn = ports.from_flax(module)
    assert bn.momentum == 0.01 and bn.eps == 1e-5 and bn.training
    bn.eval()
    _assert_near(_np(bn(torch.from_numpy(x))), module(jnp.asarray(x), use_running_average=True),
                 "eval output")
    again = ports.to_flax(ports.from_flax(module), channels_last=True)
    for name in ("scale", "bias", "mean", "var"):
        np.testing.assert_array_equal(np.asarray(getattr(again, name)[...]),
                                      np.asarray(getattr(module, name)[...]))
    assert (again.momentum, again.epsilon) == (module.momentum, module.epsilon)
    torch_bn = _layer(nn.BatchNorm1d, 4, seed=2, momentum=0.05)
    back = ports.from_flax(ports.to_flax(torch_bn))
    assert back.momentum == torch_bn.momentum
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(back, name), getattr(torch_bn, name)), name


def test_what_does_not_port_to_or_from_flax_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="cumulative average"):
        ports.to_flax(nn.BatchNorm2d(3, momentum=None))
    with pytest.raises(ValueError, match="jax_enable_x64"):
        ports.to_flax(nn.BatchNorm1d(3, dtype=torch.float64))
    refused = {
        "use_scale=False": dict(use_scale=False),
        "axis_name": dict(axis_name="batch"),
        "axes": dict(axis=(1, 2)),
        "channel axis is 2": dict(axis=2),
    }
    for reason, kw in refused.items():
        with pytest.raises(ValueError, match=reason):
            ports.from_flax(nnx.BatchNorm(3, rngs=nnx.Rngs(0), **kw))


def test_flax_default_one_pass_variance_stores_zero_for_offset_float32_and_the_port_does_not():
    x = 1e4 + np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32)
    default = nnx.BatchNorm(8, axis=1, rngs=nnx.Rngs(0), momentum=0.0)
    y = np.asarray(default(jnp.asarray(x), use_running_average=False))
    true_var = x.astype(np.float64).var(axis=0)
    one_pass = np.asarray(default.var[...])
    # E[x^2] is near 1e8, where float32 values are 8 apart: the difference E[x^2] - E[x]^2 is a
    # whole multiple of 8 (or clipped at 0), nowhere near the true variance of about 1.
    assert np.all(one_pass % 8 == 0) and np.all(np.abs(one_pass - true_var) > 0.5), one_pass
    assert np.any(one_pass == 0) and np.all(np.abs(true_var - 1) < 0.2)
    # Where it stored 0 it normalized by sqrt(eps): an output spread of about 1/sqrt(1e-5).
    assert np.all(y.std(axis=0)[one_pass == 0] > 100)
    fixed = ports.to_flax(nn.BatchNorm1d(8, momentum=1.0))
    yf = np.asarray(fixed(jnp.asarray(x), use_running_average=False))
    _assert_near(np.asarray(fixed.var[...]), true_var, "two-pass variance", bound=1e-4)
    assert np.all(np.abs(yf.std(axis=0) - 1) < 1e-3)


# --------------------------------------------------------------------------------------
# A whole small network
# --------------------------------------------------------------------------------------

def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 3, 3, stride=2), BatchNorm(3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3 * 3 * 3, 5))
    for layer in net:
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2.0)
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.5, 0.5)
    return net


def test_a_conv_bn_relu_network_ports_to_keras_and_flax_in_both_modes():
    net = _net()
    x = _x((6, 2, 7, 7), seed=11)
    k_net, f_net = ports.torch_model_to_keras(net), ports.torch_model_to_flax(net)
    net.eval()
    want = _np(net(x))
    _assert_near(_np(k_net(x.numpy(), training=False)), want, "Keras, eval")
    _assert_near(f_net(jnp.asarray(x.numpy()), use_running_average=True), want, "Flax, eval")
    net.train()
    want = _np(net(x))
    _assert_near(_np(k_net(x.numpy(), training=True)), want, "Keras, training")
    _assert_near(f_net(jnp.asarray(x.numpy()), use_running_average=False), want,
                 "Flax, training")
    keras_bn = [la for la in k_net.layers if isinstance(la, keras.layers.BatchNormalization)]
    _assert_near(_np(keras_bn[1].moving_mean), _np(net[4].running_mean), "Keras' second mean")
    _assert_near(f_net.layers[4].mean[...], _np(net[4].running_mean), "Flax's second mean")
    with pytest.raises(ValueError, match="MaxPool2d does not port"):
        ports.torch_model_to_keras(nn.Sequential(nn.MaxPool2d(2)))


# --------------------------------------------------------------------------------------
# Synchronized BN: Flax over four XLA host devices, against global BN and SyncBatchNorm
# --------------------------------------------------------------------------------------

_FLAX_SYNC = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import numpy as np
    from bncourse import ports
    x = np.load(sys.argv[1]); dy = np.load(sys.argv[2])
    out = ports.flax_sync_batch_norm(x, dy, devices=4, momentum=0.1)
    out = {k: v.astype(float).tolist() for k, v in out.items()}
    for fast in (False, True):
        for backward in (False, True):
            out[f"collectives {fast} {backward}"] = ports.flax_sync_collectives(
                3, devices=4, fast_variance=fast, backward=backward)
    for twice in (False, True):
        out[f"written {twice}"] = ports.written_sync_collectives(
            3, devices=4, subtract_mean_twice=twice)
    print(json.dumps(out))
""")


def test_flax_synchronized_bn_equals_global_bn_and_sync_batch_norm(tmp_path):
    from bncourse.distributed import launch

    g = torch.Generator().manual_seed(12)
    x = (3.0 + 2.0 * torch.randn(16, 3, 5, generator=g)).float()
    dy = torch.randn(16, 3, 5, generator=g).float()
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "dy.npy", dy.numpy())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", _FLAX_SYNC, str(tmp_path / "x.npy"),
                          str(tmp_path / "dy.npy")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    # What travels, read from the traced program: all-reduces of C values (C = 3).
    sizes = {key: sorted(n for name, n in out.pop(key) if name.startswith("psum"))
             for key in [k for k in out if k.startswith("collectives")]}
    assert sizes["collectives False False"] == [3, 3], sizes       # two-pass forward
    assert sizes["collectives False True"] == [3] * 5, sizes       # and its backward: 3 more
    assert sizes["collectives True False"] == [6], sizes           # one-pass: one of 2C
    assert sizes["collectives True True"] == [3, 3, 6], sizes
    # Written out by hand, JAX's derivative of two-pass synchronized BN needs two backward
    # all-reduces when x - mean is computed once, three when it is computed twice (as Flax).
    written = {key: [(name, n) for name, n in out.pop(key)]
               for key in [k for k in out if k.startswith("written")]}
    assert all(name.startswith("psum") for w in written.values() for name, _ in w), written
    assert [n for _, n in written["written False"]] == [3] * 4, written
    assert [n for _, n in written["written True"]] == [3] * 5, written
    flax = {k: np.array(v) for k, v in out.items()}

    ref = nn.BatchNorm1d(3, momentum=0.1, dtype=torch.float64)
    xr = x.double().requires_grad_(True)
    y = ref(xr)
    y.backward(dy.double())
    _assert_near(flax["y"], _np(y), "Flax synchronized vs global BN: y")
    _assert_near(flax["dx"], _np(xr.grad), "Flax synchronized vs global BN: dx")
    _assert_near(flax["mean"], _np(ref.running_mean), "running mean")
    m = x.numel() // x.shape[1]
    _assert_near(flax["var"] + 0.1 * _np(x.double().var(dim=(0, 2))) / m,
                 _np(ref.running_var), "running variance, biased vs unbiased share")

    parts = launch(ports.sync_batch_norm_worker, 4, (x.double(), dy.double(), 0.1, 1e-5))
    sync_y = torch.cat([p["y"] for p in parts])
    sync_dx = torch.cat([p["dx"] for p in parts])
    _assert_near(flax["y"], _np(sync_y), "Flax vs SyncBatchNorm: y")
    _assert_near(flax["dx"], _np(sync_dx), "Flax vs SyncBatchNorm: dx")
    np.testing.assert_allclose(_np(parts[0]["running_var"]), _np(ref.running_var), rtol=1e-12)


# --------------------------------------------------------------------------------------
# The chapter's exercises, against the libraries
# --------------------------------------------------------------------------------------

def test_the_keras_update_exercise_is_what_the_keras_port_stores():
    from bncourse.exercises import EXERCISES, check

    exercise = EXERCISES["porting.keras_update"]
    # The seeded cases are float32, the Keras layer's precision: calling the ported Keras
    # layer answers them.
    assert all(a.dtype == np.float32 for c in exercise.cases() for a in c.args[:3])
    for case in exercise.all_cases():
        rm, rv, x, momentum = case.args
        bn = nn.BatchNorm1d(x.shape[1], momentum=momentum)
        with torch.no_grad():
            bn.running_mean.copy_(torch.from_numpy(rm))
            bn.running_var.copy_(torch.from_numpy(rv))
        layer = ports.to_keras(_loaded(bn), ndim=x.ndim)
        layer(x.astype(np.float32), training=True)
        want = exercise.reference(rm, rv, x, momentum)
        _assert_near(_np(layer.moving_mean), want[0], f"{case.label}: moving mean")
        _assert_near(_np(layer.moving_variance), want[1], f"{case.label}: moving variance")

    def keras_update(rm, rv, x, momentum):                    # written out, as a reader would
        axes = (0, *range(2, x.ndim))
        rho = 1 - momentum
        return rho * rm + momentum * x.mean(axis=axes), rho * rv + momentum * x.var(axis=axes)

    assert check("porting.keras_update", keras_update).passed


def _loaded(bn: nn.Module) -> BatchNorm:
    out = BatchNorm(bn.num_features, momentum=bn.momentum)
    out.load_state_dict(bn.state_dict())
    return out


def test_the_variance_ratio_exercise_is_where_torch_settles_against_flax():
    from bncourse.exercises import EXERCISES

    module = nnx.BatchNorm(2, axis=1, momentum=0.5, use_fast_variance=False, rngs=nnx.Rngs(0))
    bn = ports.from_flax(module).double()              # the port to PyTorch, trained on
    g = torch.Generator().manual_seed(13)
    for _ in range(200):
        x = torch.randn(4, 2, 6, 6, generator=g, dtype=torch.float64)    # the exercise's shape
        bn(x)
        module(jnp.asarray(x.float().numpy()), use_running_average=False)
    ratio = _np(bn.running_var) / np.asarray(module.var[...], np.float64)
    np.testing.assert_allclose(ratio, EXERCISES["porting.variance_ratio"].value, rtol=1e-5)


def test_the_freeze_port_exercise_is_what_nnx_train_does_to_a_frozen_bn_layer():
    from bncourse.exercises import EXERCISES

    model = nnx.Sequential(nnx.Linear(3, 3, rngs=nnx.Rngs(0)), nnx.BatchNorm(3, rngs=nnx.Rngs(0)))
    bn = model.layers[1]
    bn.eval()                                          # frozen, as in PyTorch
    assert bn.use_running_average is True
    model.train()                                      # the port's start of an epoch
    assert bn.use_running_average is False
    x = jnp.asarray(3.0 + 2.0 * np.random.default_rng(0).normal(size=(16, 3)), jnp.float32)
    before = np.asarray(bn.mean[...]).copy()
    h = model.layers[0](x)
    y = np.asarray(model(x), np.float64)
    assert not np.array_equal(np.asarray(bn.mean[...]), before)     # the statistics move
    h = np.asarray(h, np.float64)
    batch_normalized = (h - h.mean(0)) / np.sqrt(h.var(0) + bn.epsilon)
    np.testing.assert_allclose(y, batch_normalized, rtol=1e-4, atol=1e-5)   # batch statistics
    assert EXERCISES["porting.freeze_port"].answer == "b"


def test_the_misport_exercise_is_what_keras3_stores():
    from bncourse.exercises import EXERCISES

    layer = keras.layers.BatchNormalization(momentum=0.1)      # PyTorch's 0.1, unconverted
    for batch_mean in (2.0, 10.0):
        layer(np.array([[batch_mean - 1.0], [batch_mean + 1.0]], np.float32), training=True)
    got = float(_np(layer.moving_mean)[0])
    assert got == pytest.approx(EXERCISES["porting.misport_mean"].value, rel=1e-6), got

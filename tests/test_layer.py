"""bncourse.BatchNorm is a drop-in for torch.nn.BatchNorm1d/2d/3d, checked in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bncourse
from bncourse.layer import BatchNormFunction, batch_norm, compact_forward, staged_batch_norm
from bncourse.memory import saved_tensors

from .strategies import MOMENTA, shapes

TORCH_CLASSES = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
                 5: torch.nn.BatchNorm3d}


def _pair(c: int, ndim: int, **kwargs):
    ours = bncourse.BatchNorm(c, **kwargs).double()
    theirs = TORCH_CLASSES[ndim](c, **kwargs).double()
    if ours.affine:
        with torch.no_grad():
            w = torch.linspace(-1.5, 2.0, c, dtype=torch.float64)
            b = torch.linspace(0.5, -0.5, c, dtype=torch.float64)
            for layer in (ours, theirs):
                layer.weight.copy_(w)
                layer.bias.copy_(b)
    return ours, theirs


def _max_diff(a, b) -> float:
    if a is None or b is None:
        assert a is None and b is None, "one side has a tensor where the other has None"
        return 0.0
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def _assert_same(name, a, b, tol=1e-10):
    d = _max_diff(a, b)
    assert d <= tol, f"{name}: max abs difference {d:.3e} exceeds {tol:.0e}"


@given(
    shape=shapes(max_dims=5, max_side=3),
    momentum=st.sampled_from(MOMENTA),
    eps=st.sampled_from([1e-5, 1e-3, 0.5]),
    affine=st.booleans(),
    track=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_layer_matches_torch_over_several_steps_and_eval(shape, momentum, eps, affine, track,
                                                         seed):
    c, ndim = shape[1], len(shape)
    ours, theirs = _pair(c, ndim, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track)
    gen = torch.Generator().manual_seed(seed)
    for step in range(3):
        x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + step)
        dy = torch.randn(shape, generator=gen, dtype=torch.float64)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), theirs(xb)
        ya.backward(dy)
        yb.backward(dy)
        _assert_same(f"output at step {step}", ya, yb)
        _assert_same(f"input gradient at step {step}", xa.grad, xb.grad)
        if affine:
            _assert_same(f"weight gradient at step {step}", ours.weight.grad, theirs.weight.grad)
            _assert_same(f"bias gradient at step {step}", ours.bias.grad, theirs.bias.grad)
        for buf in ("running_mean", "running_var", "num_batches_tracked"):
            _assert_same(f"{buf} after step {step}", getattr(ours, buf), getattr(theirs, buf))
    ours.eval()
    theirs.eval()
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    _assert_same("eval-mode output", ours(x), theirs(x))


def test_momentum_none_is_a_cumulative_average():
    ours, theirs = _pair(3, 2, momentum=None)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 3, generator=gen, dtype=torch.float64) + k for k in range(5)]
    for x in batches:
        ours(x)
        theirs(x)
    expected = torch.stack([b.mean(0) for b in batches]).mean(0)
    _assert_same("running_mean vs mean of batch means", ours.running_mean, expected, 1e-12)
    _assert_same("running_mean vs torch", ours.running_mean, theirs.running_mean)
    _assert_same("running_var vs torch", ours.running_var, theirs.running_var)


def test_gradcheck_of_the_custom_function():
    gen = torch.Generator().manual_seed(1)
    for shape in [(5, 3), (3, 2, 4), (2, 3, 2, 3)]:
        x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
        w = torch.randn(shape[1], generator=gen, dtype=torch.float64, requires_grad=True)
        b = torch.randn(shape[1], generator=gen, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda x, w, b: BatchNormFunction.apply(x, w, b, 1e-3)[0], (x, w, b)
        ), f"gradcheck failed for shape {shape}"


def test_gradcheck_of_the_custom_function_without_affine():
    x = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: BatchNormFunction.apply(x, None, None, 1e-5)[0],
                                    (x,))


def test_staged_formula_matches_torch():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64)
    w, b = torch.rand(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    ref = torch.nn.functional.batch_norm(x, None, None, w, b, training=True)
    _assert_same("staged output", staged_batch_norm(x, w, b), ref)


def test_state_dicts_load_in_both_directions():
    ours, theirs = _pair(4, 4)
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    theirs(x)
    theirs(x * 2)
    assert set(ours.state_dict()) == set(theirs.state_dict()), "state_dict keys differ"
    ours.load_state_dict(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        _assert_same(f"{key} after torch -> bncourse", ours.state_dict()[key], value, 0.0)
    fresh = torch.nn.BatchNorm2d(4).double()
    fresh.load_state_dict(ours.state_dict())
    for key, value in ours.state_dict().items():
        _assert_same(f"{key} after bncourse -> torch", fresh.state_dict()[key], value, 0.0)


def test_state_dict_without_running_stats_matches_torch_keys():
    ours = bncourse.BatchNorm(3, track_running_stats=False, affine=False)
    theirs = torch.nn.BatchNorm1d(3, track_running_stats=False, affine=False)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == []
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]


def test_parameters_and_buffers_have_torchs_names():
    ours, theirs = bncourse.BatchNorm(5), torch.nn.BatchNorm1d(5)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert ours.num_batches_tracked.dtype == torch.long


def test_eval_mode_accepts_a_batch_of_one_and_train_mode_refuses_it():
    layer = bncourse.BatchNorm(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.ones(1, 3))
    layer.eval()
    assert layer(torch.ones(1, 3)).shape == (1, 3)


def test_float32_inputs_give_float32_outputs_close_to_torch():
    ours, theirs = bncourse.BatchNorm(8), torch.nn.BatchNorm2d(8)
    x = torch.randn(4, 8, 6, 6, generator=torch.Generator().manual_seed(5)) * 3 + 1
    y = ours(x)
    assert y.dtype == torch.float32
    _assert_same("float32 output", y, theirs(x), 1e-5)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: bncourse.BatchNorm(3)(torch.ones(3)), "at least 2 dimensions"),
        (lambda: bncourse.BatchNorm(3)(torch.ones(4, 3, dtype=torch.long)), "floating dtype"),
        (lambda: bncourse.BatchNorm(3)(torch.ones(4, 2)), "num_features = 3"),
        (lambda: bncourse.BatchNorm(0), "num_features"),
        (lambda: bncourse.BatchNorm(3, momentum=2.0), "momentum"),
        (lambda: bncourse.BatchNorm(3, eps=-1.0), "eps"),
        (lambda: batch_norm(torch.ones(4, 3), torch.zeros(2), torch.ones(3)), "running_mean"),
        (lambda: batch_norm(torch.ones(4, 3), None, None, training=False), "running_mean"),
        (lambda: bncourse.BatchNorm(3)(np.ones((4, 3))), "torch.Tensor"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_nan_propagates_and_is_not_clipped():
    x = torch.randn(6, 2, dtype=torch.float64)
    x[0, 0] = float("nan")
    y = bncourse.BatchNorm(2).double()(x)
    assert torch.isnan(y[:, 0]).all() and torch.isfinite(y[:, 1]).all()


@pytest.mark.parametrize("shape", [(64, 16), (8, 4, 6, 6), (4, 3, 2, 3, 3)])
def test_layer_saves_one_activation_sized_tensor_for_backward(shape):
    x = torch.randn(shape, requires_grad=True)
    numel = x.numel()
    ours = saved_tensors(lambda: bncourse.BatchNorm(shape[1])(x))
    staged = saved_tensors(
        lambda: staged_batch_norm(x, torch.ones(shape[1], requires_grad=True),
                                  torch.zeros(shape[1], requires_grad=True))
    )
    c = shape[1]
    assert ours.activation_sized(numel) == 1, f"bncourse saved {ours.shapes}"
    assert ours.nbytes == 4 * (numel + 3 * c), (
        f"bncourse saved {ours.nbytes} bytes; expected x plus three per-channel vectors "
        f"(mean, inv_std, gamma), {4 * (numel + 3 * c)}"
    )
    # The activation-sized tensor is the input itself, as in torch's layer.
    layer = bncourse.BatchNorm(c)
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        layer(x)
    big = [t for t in packed if t.numel() == numel]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr(), [t.shape for t in packed]
    assert staged.activation_sized(numel) >= 2, f"the staged graph saved only {staged.shapes}"


def test_compact_forward_returns_biased_batch_statistics():
    x = torch.randn(7, 3, dtype=torch.float64)
    _, x_hat, mean, var, inv_std = compact_forward(x, None, None, 0.0)
    _assert_same("mean", mean, x.mean(0))
    _assert_same("biased var", var, x.var(0, unbiased=False))
    _assert_same("x_hat", x_hat, (x - x.mean(0)) * inv_std)


@pytest.mark.parametrize("gamma_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 5)])
def test_numpy_reference_gradients_keep_the_dtypes_like_torch(shape, gamma_dtype):
    """float32 in, float32 gradients out, as torch's layer gives; dgamma and dbeta in gamma's
    dtype (np.ones gives float64 gamma, which NumPy would otherwise spread to dx)."""
    from bncourse import functional as F

    rng = np.random.default_rng(0)
    x = (1.0 + 2.0 * rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma = (1.0 + 0.1 * rng.standard_normal(shape[1])).astype(gamma_dtype)
    beta = np.zeros(shape[1], dtype=gamma_dtype)
    theirs = torch.nn.BatchNorm1d(shape[1]) if len(shape) == 2 else torch.nn.BatchNorm2d(shape[1])
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(gamma.astype(np.float32)))
    xt = torch.from_numpy(x).requires_grad_()
    dx_t, dgamma_t, dbeta_t = torch.autograd.grad(theirs(xt), [xt, theirs.weight, theirs.bias],
                                                  torch.from_numpy(dy))
    y, cache = F.batch_norm_forward(x, gamma, beta)
    for name, grads in (("closed form", F.batch_norm_backward(dy, cache)),
                        ("staged", F.batch_norm_backward_staged(dy, x, gamma))):
        dx, dgamma, dbeta = grads
        assert y.dtype == dx.dtype == dx_t.numpy().dtype == np.float32, (name, dx.dtype)
        assert dgamma.dtype == dbeta.dtype == np.dtype(gamma_dtype), (name, dgamma.dtype)
        for what, a, b in (("dx", dx, dx_t), ("dgamma", dgamma, dgamma_t),
                           ("dbeta", dbeta, dbeta_t)):
            err = np.abs(a.astype(np.float64) - b.numpy().astype(np.float64)).max()
            assert err <= 1e-4 * max(1.0, np.abs(b.numpy()).max()), (name, what, err)


# --------------------------------------------------------------------------------------
# The eager Function: a first-order path and a differentiable one under create_graph
# --------------------------------------------------------------------------------------

EAGER_LAYOUTS = [((16, 5), "contiguous"), ((6, 4, 7), "contiguous"),
                 ((4, 3, 5, 6), "contiguous"), ((4, 3, 5, 6), "channels_last"),
                 ((3, 2, 2, 3, 4), "contiguous")]


def _eager_input(shape, layout, offset, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2.0 + offset
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    x, dy = x.to(dtype), dy.to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, dy


def _affine_layer(c, dtype):
    layer = bncourse.BatchNorm(c, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(-1.5, 2.0, c))
        layer.bias.copy_(torch.linspace(0.5, -0.5, c))
    return layer


@pytest.mark.parametrize("shape,layout", EAGER_LAYOUTS)
@pytest.mark.parametrize("offset", [0.0, 1e3])  # |mean| / std of 0 and 500: both first-order sums
def test_first_order_and_create_graph_paths_give_the_same_gradients(shape, layout, offset):
    x, dy = _eager_input(shape, layout, offset, torch.float64)
    layer = _affine_layer(shape[1], torch.float64)
    grads = {}
    for create_graph in (False, True):
        xg = x.clone().requires_grad_()
        y = layer(xg)
        assert type(y.grad_fn).__name__ == "_BatchNormCoreEagerBackward", y.grad_fn
        grads[create_graph] = torch.autograd.grad(y, (xg, layer.weight, layer.bias), dy,
                                                  create_graph=create_graph)
        # Only the create_graph path records a graph of the gradient itself.
        assert grads[create_graph][0].requires_grad == create_graph
    for name, a, b in zip(("dx", "dgamma", "dbeta"), grads[False], grads[True], strict=True):
        _assert_same(name, a, b, tol=1e-9)
    assert grads[False][0].stride() == x.stride(), "dx must keep the input's memory format"


@pytest.mark.parametrize("shape,layout", EAGER_LAYOUTS)
def test_second_derivative_through_the_eager_function_equals_torchs(shape, layout):
    x, dy = _eager_input(shape, layout, 1.0, torch.float64, seed=1)
    v = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours, theirs = _pair(shape[1], len(shape))
    results = []
    for layer in (ours, theirs):
        xg = x.clone().requires_grad_()
        params = (xg, layer.weight, layer.bias)
        y = layer(xg)
        first = torch.autograd.grad(y, params, dy, create_graph=True)
        # A gradient penalty: d/d(x, gamma, beta) of <dx, v> + |dgamma|^2.
        penalty = (first[0] * v).sum() + (first[1] ** 2).sum()
        second = torch.autograd.grad(penalty, params[:2], allow_unused=True)
        results.append((first, second))
    assert type(ours(x.clone().requires_grad_()).grad_fn).__name__ == \
        "_BatchNormCoreEagerBackward"
    for name, a, b in zip(("dx", "dgamma", "dbeta"), results[0][0], results[1][0],
                          strict=True):
        _assert_same(f"first derivative {name}", a, b)
    for name, a, b in zip(("d2/dx", "d2/dgamma"), results[0][1], results[1][1], strict=True):
        _assert_same(f"second derivative {name}", a, b, tol=1e-9)


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 2, 3)])
def test_eager_function_passes_gradcheck_and_gradgradcheck(shape):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) + 2.0).requires_grad_()
    w = (torch.rand(shape[1], generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(shape[1], generator=gen, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        y, _, _ = BatchNormFunction.apply(x, w, b, 1e-3)
        assert type(y.grad_fn).__name__ == "_BatchNormCoreEagerBackward", y.grad_fn
        return y

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("shape,layout", EAGER_LAYOUTS)
@pytest.mark.parametrize("offset", [3.0, 1e4])
def test_first_order_float32_gradients_are_as_accurate_as_torchs(shape, layout, offset):
    """float32 against float64 on the same values, for ours and for torch's layer.

    With |mean| >> std, sum(dy * x_hat) taken as inv_std * (sum(dy * x) - mean * sum(dy))
    would lose about log2(|mean| / std) bits to cancellation; the layer centres first there.
    """
    x, dy = _eager_input(shape, layout, offset, torch.float32, seed=4)
    c, ndim = shape[1], len(shape)
    errors = {}
    for name, make in (("ours", lambda dt: _affine_layer(c, dt)),
                       ("torch", lambda dt: TORCH_CLASSES[ndim](c, dtype=dt))):
        grads = {}
        for dt in (torch.float32, torch.float64):
            layer = make(dt)
            if name == "torch":
                with torch.no_grad():
                    layer.weight.copy_(torch.linspace(-1.5, 2.0, c))
                    layer.bias.copy_(torch.linspace(0.5, -0.5, c))
            xg = x.to(dt).requires_grad_()
            grads[dt] = torch.autograd.grad(layer(xg), (xg, layer.weight, layer.bias),
                                            dy.to(dt))
        errors[name] = [
            ((a.double() - b).abs().max() / b.abs().max()).item()
            for a, b in zip(grads[torch.float32], grads[torch.float64], strict=True)
        ]
    eps32 = torch.finfo(torch.float32).eps
    for what, ours, theirs in zip(("dx", "dgamma", "dbeta"), errors["ours"], errors["torch"],
                                  strict=True):
        assert ours <= max(8 * theirs, 64 * eps32), (
            f"{what}: relative error {ours:.2e} in float32, torch's {theirs:.2e}")

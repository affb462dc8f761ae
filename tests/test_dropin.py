"""bncourse.BatchNorm as a drop-in, beyond first-order float32/float64 training.

Each test runs torch's own layer on the same input and asserts that ours does what it does:
second derivatives, reduced precision and mixed dtypes, autocast, empty batches, the
``bias=False`` keyword, buffers set to None, old checkpoints, activation checkpointing,
``torch.func``, and torch's tools that look for batch-norm layers. float64 comparisons are
tight; float16/bfloat16 ones allow a few units of the dtype's rounding.
"""

from __future__ import annotations

import copy
import inspect
import io
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, jacrev, jvp, stack_module_state, vmap

import bncourse
from bncourse import layer as L

from .strategies import shapes

TORCH_CLASSES = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
F64 = torch.float64


def _pair(c: int, ndim: int, dtype=F64, **kwargs):
    """Our layer and torch's, same settings, same (non-trivial) parameters."""
    ours = bncourse.BatchNorm(c, dtype=dtype, **kwargs)
    theirs = TORCH_CLASSES[ndim](c, dtype=dtype, **kwargs)
    gen = torch.Generator().manual_seed(c + 10 * ndim)
    with torch.no_grad():
        for name in ("weight", "bias"):
            p = getattr(theirs, name)
            if p is not None:
                p.copy_(torch.rand(c, generator=gen, dtype=F64) * 2 - 0.5)
                getattr(ours, name).copy_(p)
    return ours, theirs


def _diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    if a is None or b is None:
        assert a is None and b is None, "one side has a tensor where the other has None"
        return 0.0
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    assert a.dtype == b.dtype, f"dtypes differ: {a.dtype} vs {b.dtype}"
    if a.numel() == 0:
        return 0.0
    a, b = a.detach().double(), b.detach().double()
    # Equal entries (infinities included) differ by 0; NaN against anything is NaN.
    return float(torch.where(a == b, 0.0, (a - b).abs()).max())


def _same(name: str, a, b, tol: float = 1e-10) -> None:
    d = _diff(a, b)
    assert d <= tol, f"{name}: max abs difference {d:.3e} exceeds {tol:.0e}"


def _close_in_dtype(name: str, a: torch.Tensor, b: torch.Tensor, ulps: float = 4.0,
                    scale: float | None = None, dtype: torch.dtype | None = None) -> None:
    """Within a few roundings of ``dtype`` (default: b's), relative to ``scale`` (default:
    the largest finite value)."""
    d = _diff(a, b)
    if scale is None:
        finite = b.detach().double().abs()
        finite = finite[torch.isfinite(finite)]
        scale = max(float(finite.max()), 1e-30) if finite.numel() else 1.0
    tol = ulps * torch.finfo(dtype or b.dtype).eps * scale
    assert d <= tol, f"{name}: max abs difference {d:.3e} exceeds {tol:.2e} ({b.dtype})"


# ---------------------------------------------------------------------------------------
# Second derivatives in training mode
# ---------------------------------------------------------------------------------------

FLAGS = [
    {"affine": True},
    {"affine": False},
    {"affine": True, "bias": False},
    {"affine": True, "track_running_stats": False},
    {"affine": False, "track_running_stats": False},
]
SMALL_SHAPES = [(5, 3), (3, 2, 4), (2, 3, 2, 2), (2, 2, 2, 1, 2)]


@pytest.mark.parametrize("shape", SMALL_SHAPES)
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_gradgradcheck_in_training_mode(shape, flags):
    layer = bncourse.BatchNorm(shape[1], eps=1e-3, dtype=F64, **flags)
    gen = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=gen, dtype=F64, requires_grad=True)
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    with torch.no_grad():
        for p in params:
            p.copy_(torch.rand(shape[1], generator=gen, dtype=F64) + 0.5)

    def f(x, *ps):
        return functional_call(layer, dict(zip([n for n, _ in layer.named_parameters()], ps,
                                               strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params))
    assert torch.autograd.gradgradcheck(f, (x, *params))


@pytest.mark.parametrize("shape", [(6, 3), (3, 2, 2, 2)])
def test_hessian_equals_torchs(shape):
    ours, theirs = _pair(shape[1], len(shape))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=F64) * 2 + 1
    w = torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=F64)

    def loss(layer):
        return lambda t: (torch.tanh(layer(t)) * w).sum()

    h_ours = torch.autograd.functional.hessian(loss(ours), x)
    h_theirs = torch.autograd.functional.hessian(loss(theirs), x)
    assert float(h_theirs.abs().max()) > 1e-3, "the Hessian should not vanish here"
    _same("Hessian", h_ours, h_theirs, 1e-10)


def _conv_net(bn: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), bn, nn.ReLU(inplace=True),
                         nn.Conv2d(4, 1, 3), nn.Flatten(), nn.Tanh())


@given(seed=st.integers(0, 2**31 - 1), momentum=st.sampled_from([0.1, None]),
       bias=st.booleans())
@settings(max_examples=10)
def test_gradient_penalty_step_in_a_conv_net_matches_torch(seed, momentum, bias):
    torch.manual_seed(seed)
    theirs = _conv_net(nn.BatchNorm2d(4, momentum=momentum, bias=bias)).double()
    ours = _conv_net(bncourse.BatchNorm(4, momentum=momentum, bias=bias)).double()
    ours.load_state_dict(theirs.state_dict())
    nets = {"ours": ours, "torch": theirs}
    opts = {k: torch.optim.SGD(n.parameters(), lr=0.1) for k, n in nets.items()}
    x = torch.randn(3, 2, 5, 5, dtype=F64)
    grads = {}
    for step in range(2):
        for key, net in nets.items():
            xi = x.clone().requires_grad_()
            out = net(xi).sum()
            (g,) = torch.autograd.grad(out, xi, create_graph=True)
            loss = out + 0.5 * (g * g).sum()
            opts[key].zero_grad()
            loss.backward()
            grads[key] = [p.grad.clone() for p in net.parameters()]
            opts[key].step()
        for i, (a, b) in enumerate(zip(grads["ours"], grads["torch"], strict=True)):
            _same(f"gradient of parameter {i} at step {step}", a, b, 1e-9)
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(),
                                 strict=True):
        _same(f"{name} after two penalized steps", a, b, 1e-9)


def test_first_order_path_still_saves_one_activation():
    # The eager layer saves its input and three per-channel vectors (mean, inv_std, gamma),
    # whether or not the backward will be differentiated again: a second derivative
    # recomputes x_hat from x.
    from bncourse.memory import saved_tensors

    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    saved = saved_tensors(lambda: bncourse.BatchNorm(3)(x))
    assert saved.activation_sized(x.numel()) == 1, saved.shapes
    assert saved.nbytes == 4 * (x.numel() + 3 * 3), saved.shapes


# ---------------------------------------------------------------------------------------
# Reduced precision, mixed dtypes, autocast
# ---------------------------------------------------------------------------------------

LOW = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("param_dtype", ["same", torch.float32])
@given(shape=shapes(min_dims=2, max_dims=4, max_side=4), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=8)
def test_reduced_precision_matches_torch(dtype, param_dtype, shape, seed):
    """float16/bfloat16 input, parameters in the same dtype or float32 (mixed precision).

    The reference is torch's layer in float64 on the same (rounded) values. Torch's own
    float16/bfloat16 layer agrees with it only when its parameters are float32: with
    low-precision parameters its CPU kernel folds gamma / sigma and beta - mean * gamma / sigma
    in the low dtype and loses every digit when |mean| >> sigma, as here (errors of order 1);
    ours must then be at least as close to the reference as torch's.
    """
    pdtype = dtype if param_dtype == "same" else param_dtype
    c, dims = shape[1], [0, *range(2, len(shape))]
    ours, theirs = _pair(c, len(shape), dtype=pdtype)
    reference = TORCH_CLASSES[len(shape)](c, dtype=F64)
    reference.load_state_dict({k: v.double() if v.is_floating_point() else v
                               for k, v in ours.state_dict().items()})
    gen = torch.Generator().manual_seed(seed)
    # Deviations from the mean of several hundred: their squares overflow float16.
    x = (torch.randn(shape, generator=gen, dtype=F64) * 400 + 1000).to(dtype)
    dy = torch.randn(shape, generator=gen, dtype=F64).to(dtype)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    ya, yb = ours(xs[0]), theirs(xs[1])
    assert ya.dtype == yb.dtype == dtype
    assert torch.isfinite(ya).all(), "the statistics overflowed"
    ya.backward(dy)
    yb.backward(dy)
    x64 = x.double().requires_grad_()
    yr = reference(x64)
    yr.backward(dy.double())
    # Gradients are compared on the size of the terms that make them up (they can cancel
    # to ~0, as dx does with m = 2): gamma * dy / sigma for dx, sums of |dy * x_hat| and
    # |dy| for the others. x_hat is saved in the input's dtype (torch saves the input).
    dy64 = dy.double()
    var = x64.detach().var(dim=dims, correction=0, keepdim=True) + ours.eps
    x_hat = (x64.detach() - x64.detach().mean(dim=dims, keepdim=True)) / var.sqrt()
    w_max = float(ours.weight.detach().double().abs().max())
    checks = [
        ("output", ya, yb, yr, 2, float(yr.detach().abs().max())),
        ("input gradient", xs[0].grad, xs[1].grad, x64.grad, 16,
         float(dy64.abs().max() * w_max / var.sqrt().min())),
        ("weight gradient", ours.weight.grad, theirs.weight.grad, reference.weight.grad, 16,
         float((dy64 * x_hat).abs().sum(dim=dims).max())),
        ("bias gradient", ours.bias.grad, theirs.bias.grad, reference.bias.grad, 4,
         float(dy64.abs().sum(dim=dims).max())),
        ("running_mean", ours.running_mean, theirs.running_mean, reference.running_mean, 4,
         None),
        ("running_var", ours.running_var, theirs.running_var, reference.running_var, 4, None),
    ]
    for name, a, b, r, ulps, scale in checks:
        _close_in_dtype(f"{name} vs float64", a, r.to(a.dtype), ulps, scale, dtype)
        if pdtype == torch.float32:
            _close_in_dtype(f"{name} vs torch", a, b, ulps, scale, dtype)
        else:
            err_ours = _diff(a.double(), r.detach())
            err_torch = _diff(b.double(), r.detach())
            tol = 4 * torch.finfo(dtype).eps * (scale or float(r.detach().abs().max()))
            assert err_ours <= err_torch + tol, (
                f"{name}: ours is {err_ours:.3e} from float64, torch's {err_torch:.3e}")
    # Eval mode normalizes with the stored buffers (a float16 buffer may hold inf where the
    # variance exceeds 65504): the reference gets them too.
    ours.eval()
    reference.eval()
    reference.load_state_dict({k: v.double() if v.is_floating_point() else v
                               for k, v in ours.state_dict().items()})
    _close_in_dtype("eval output", ours(x), reference(x.double()).to(dtype), 4, dtype=dtype)


def test_float16_statistics_do_not_overflow():
    x = torch.tensor([[-300.0], [300.0], [0.0], [10.0]], dtype=torch.float16)
    layer = bncourse.BatchNorm(1, dtype=torch.float16)
    y = layer(x)
    assert torch.isfinite(layer.running_var).all(), layer.running_var
    assert float(y.detach().float().std()) > 0.5, f"the output collapsed to beta: {y.flatten()}"


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("param_dtype", DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_combinations_raise_where_torch_raises(dtype, param_dtype, training):
    ours = bncourse.BatchNorm(3, dtype=param_dtype).train(training)
    theirs = nn.BatchNorm2d(3, dtype=param_dtype).train(training)
    x = torch.randn(4, 3, 2, 2).to(dtype)
    try:
        expected = theirs(x)
    except RuntimeError:
        with pytest.raises(RuntimeError, match="parameters and buffers must have the input"):
            ours(x)
        with pytest.raises(TypeError):
            ours(x)
        return
    got = ours(x)
    assert got.dtype == expected.dtype == dtype
    _close_in_dtype("output", got, expected, 4)


@pytest.mark.parametrize("autocast_dtype", LOW)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("training", [True, False])
def test_autocast_output_dtype_is_torchs(autocast_dtype, dtype, training):
    ours, theirs = bncourse.BatchNorm(3).train(training), nn.BatchNorm2d(3).train(training)
    x = torch.randn(4, 3, 2, 2).to(dtype)
    with torch.autocast("cpu", dtype=autocast_dtype):
        got, expected = ours(x), theirs(x)
    assert got.dtype == expected.dtype
    _close_in_dtype("output under autocast", got, expected, 4)


# ---------------------------------------------------------------------------------------
# Constructor, repr, buffers, state dicts
# ---------------------------------------------------------------------------------------


def test_constructor_signature_is_torchs():
    def described(cls):
        return [(p.name, p.kind, p.default)
                for p in inspect.signature(cls).parameters.values()]

    assert described(bncourse.BatchNorm) == described(nn.BatchNorm1d)


@pytest.mark.parametrize("kwargs", [{}, {"bias": False}, {"affine": False},
                                    {"track_running_stats": False, "momentum": None}])
def test_repr_and_state_dict_are_torchs(kwargs):
    ours, theirs = bncourse.BatchNorm(3, **kwargs), nn.BatchNorm1d(3, **kwargs)
    assert ours.extra_repr() == theirs.extra_repr()
    assert repr(ours) == repr(theirs).replace("BatchNorm1d", "BatchNorm")
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert ours.bias is None if kwargs.get("bias") is False else True


@given(shape=shapes(max_dims=5, max_side=3), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=15)
def test_bias_false_matches_torch(shape, seed):
    ours, theirs = _pair(shape[1], len(shape), bias=False)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    ya.sum().backward()
    yb.sum().backward()
    _same("output", ya, yb)
    _same("input gradient", xa.grad, xb.grad)
    _same("weight gradient", ours.weight.grad, theirs.weight.grad)
    _same("running_var", ours.running_var, theirs.running_var)


def _both(ours, theirs, fn):
    """fn on both layers: the same result, or the same exception class."""
    results = []
    for layer in (ours, theirs):
        try:
            results.append(fn(layer))
        except (RuntimeError, ValueError) as e:
            results.append(e)
    return results


@pytest.mark.parametrize("training", [True, False])
def test_running_buffers_set_to_none_by_hand(training):
    ours, theirs = _pair(3, 2)
    for layer in (ours, theirs):
        layer.running_mean = None
        layer.running_var = None
        layer.train(training)
    x = torch.randn(5, 3, dtype=F64)
    a, b = ours(x), theirs(x)
    _same("output with both buffers None", a, b)
    _same("num_batches_tracked", ours.num_batches_tracked, theirs.num_batches_tracked, 0)


def test_one_running_buffer_none_is_refused_like_torch():
    x = torch.randn(5, 3, dtype=F64)
    for training in (True, False):
        ours, theirs = _pair(3, 2)
        for layer in (ours, theirs):
            layer.running_mean = None
            layer.train(training)
        a, b = _both(ours, theirs, lambda m: m(x))
        assert isinstance(a, Exception) and isinstance(b, Exception), (a, b)
        # torch raises ValueError in training and RuntimeError in eval; ours ValueError.
        assert isinstance(a, ValueError) and "running_mean" in str(a), a


@pytest.mark.parametrize("momentum", [0.1, None])
def test_counter_set_to_none_by_hand(momentum):
    ours, theirs = _pair(3, 2, momentum=momentum)
    for layer in (ours, theirs):
        layer.num_batches_tracked = None
    x = torch.randn(5, 3, dtype=F64)
    _same("output", ours(x), theirs(x))
    _same("running_mean", ours.running_mean, theirs.running_mean)
    _same("running_var", ours.running_var, theirs.running_var)


def test_old_checkpoint_without_counter_keeps_the_modules_value_like_torch():
    ours, theirs = _pair(3, 2)
    for layer in (ours, theirs):
        layer.num_batches_tracked.fill_(7)
    old = nn.BatchNorm1d(3).double().state_dict()
    del old["num_batches_tracked"]
    old._metadata = {"": {"version": 1}}
    ours.load_state_dict(copy.copy(old))
    theirs.load_state_dict(copy.copy(old))
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 7
    # Without the version-1 mark a missing counter is a missing key, for both.
    new = nn.BatchNorm1d(3).double().state_dict()
    del new["num_batches_tracked"]
    for layer in (ours, theirs):
        with pytest.raises(RuntimeError, match="num_batches_tracked"):
            layer.load_state_dict(new)


# ---------------------------------------------------------------------------------------
# Empty batches, activation checkpointing
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4, 4), (5, 3, 0), (0, 3, 2, 0, 2)])
def test_zero_size_batches_match_torch(shape):
    ours, theirs = _pair(3, len(shape))
    for layer in (ours, theirs):
        layer.running_mean.fill_(0.5)
    xa = torch.randn(shape, dtype=F64, requires_grad=True)
    xb = xa.detach().clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    ya.sum().backward()
    yb.sum().backward()
    assert ya.shape == yb.shape == shape
    _same("input gradient", xa.grad, xb.grad)
    for name in ("weight", "bias"):
        _same(f"{name} gradient", getattr(ours, name).grad, getattr(theirs, name).grad, 0)
    for buf in ("running_mean", "running_var", "num_batches_tracked"):
        _same(buf, getattr(ours, buf), getattr(theirs, buf), 0)
    ours.eval()
    theirs.eval()
    assert ours(xa).shape == theirs(xb).shape == shape


def test_non_reentrant_checkpointing_updates_running_stats_twice_like_torch():
    from torch.utils.checkpoint import checkpoint

    ours, theirs = _pair(3, 4)
    lin = nn.Conv2d(3, 3, 1).double()
    x = torch.randn(4, 3, 2, 2, dtype=F64, requires_grad=True)
    for layer in (ours, theirs):
        # The layer ends the checkpointed block: recomputation stops once its saved tensors
        # are back, so the update must come before them (as in torch's kernel).
        y = checkpoint(lambda t, layer=layer: layer(lin(t)), x, use_reentrant=False)
        y.square().sum().backward()
    assert int(ours.num_batches_tracked) == 2
    for buf in ("running_mean", "running_var", "num_batches_tracked"):
        _same(buf, getattr(ours, buf), getattr(theirs, buf))


# ---------------------------------------------------------------------------------------
# torch.func
# ---------------------------------------------------------------------------------------


def _ensemble(bn_factory, n=3):
    torch.manual_seed(0)
    return [nn.Sequential(nn.Linear(3, 3), bn_factory(3)).double() for _ in range(n)]


@pytest.mark.parametrize("x_batched", [False, True])
def test_vmap_over_an_ensemble_matches_torch(x_batched):
    results = {}
    for key, cls in (("ours", bncourse.BatchNorm), ("torch", nn.BatchNorm1d)):
        models = _ensemble(cls)
        params, buffers = stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")
        x = torch.randn(3, 8, 3, generator=torch.Generator().manual_seed(1), dtype=F64)

        def f(p, b, x, base=base):
            return functional_call(base, (p, b), (x,))

        out = vmap(f, in_dims=(0, 0, 0 if x_batched else None))(params, buffers,
                                                                 x if x_batched else x[0])
        results[key] = (out, buffers)
    _same("ensemble output", results["ours"][0], results["torch"][0])
    for name in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        _same(name, results["ours"][1][name], results["torch"][1][name])


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)])
def test_jacrev_and_jvp_in_training_mode_match_torch(shape):
    ours, theirs = _pair(shape[1], len(shape), track_running_stats=False)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=gen, dtype=F64)
    t = torch.randn(shape, generator=gen, dtype=F64)
    _same("jacrev", jacrev(ours)(x), jacrev(theirs)(x))
    _same("jvp", jvp(ours, (x,), (t,))[1], jvp(theirs, (x,), (t,))[1])
    params = dict(ours.named_parameters())
    tangents = {k: torch.randn(v.shape, generator=gen, dtype=F64) for k, v in params.items()}

    def of_params(layer):
        return lambda p: functional_call(layer, p, (x,))

    _same("jvp in the parameters", jvp(of_params(ours), (params,), (tangents,))[1],
          jvp(of_params(theirs), (dict(theirs.named_parameters()),), (tangents,))[1])
    _same("hessian", torch.func.hessian(lambda v: ours(v).pow(3).sum())(x),
          torch.func.hessian(lambda v: theirs(v).pow(3).sum())(x))


def test_forward_mode_ad_and_batched_gradients_pass_gradcheck():
    x = torch.randn(4, 3, 2, dtype=F64, requires_grad=True)
    w = torch.rand(3, dtype=F64).add(0.5).requires_grad_()
    b = torch.randn(3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: bncourse.BatchNormFunction.apply(x, w, b, 1e-3)[0], (x, w, b),
        check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True)


def test_grad_transforms_refuse_tracked_running_stats_like_torch():
    # The running statistics are mutated in place, which torch.func forbids for both layers;
    # replace_all_batch_norm_modules_ (below) is torch's remedy, and works on ours.
    x = torch.randn(4, 3, dtype=F64)
    for layer in _pair(3, 2):
        with pytest.raises(RuntimeError, match="in-place operation"):
            jacrev(layer)(x)


# ---------------------------------------------------------------------------------------
# Torch's tools that look for batch-norm layers
# ---------------------------------------------------------------------------------------


def test_swa_update_bn_recomputes_our_statistics_like_torchs():
    from torch.optim.swa_utils import update_bn

    ours, theirs = _pair(3, 4)
    loader = [torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(k), dtype=F64)
              + k for k in range(3)]
    for net in (ours, theirs):
        with torch.no_grad():
            net.running_mean.fill_(9.0)
        update_bn(loader, nn.Sequential(net))
    assert float(ours.running_mean.abs().max()) < 9.0, "update_bn left stale statistics"
    for buf in ("running_mean", "running_var", "num_batches_tracked"):
        _same(buf, getattr(ours, buf), getattr(theirs, buf))
    assert ours.momentum == 0.1, "update_bn should restore the momentum"


def test_replace_all_batch_norm_modules_then_vmap_works():
    from torch.func import replace_all_batch_norm_modules_

    ours, theirs = _pair(3, 2)
    for layer in (ours, theirs):
        replace_all_batch_norm_modules_(nn.Sequential(layer))
    assert ours.running_mean is None and not ours.track_running_stats
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    _same("vmap after replace_all_batch_norm_modules_", vmap(ours)(x), vmap(theirs)(x))


def test_convert_sync_batchnorm_hands_our_state_to_torchs_sync_layer():
    ours, _ = _pair(3, 4)
    ours(torch.randn(4, 3, 2, 2, dtype=F64))
    net = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(ours))
    sync = net[0]
    assert type(sync) is nn.SyncBatchNorm
    assert sync.weight is ours.weight and sync.running_mean is ours.running_mean
    sync.eval()
    ours.eval()
    x = torch.randn(4, 3, 2, 2, dtype=F64)
    _same("eval output after conversion", sync(x), ours(x))


@pytest.mark.parametrize("training", [False, True])
def test_fuse_modules_fuses_conv_and_our_layer(training):
    from torch.ao.quantization import fuse_modules, fuse_modules_qat

    torch.manual_seed(0)
    theirs = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU())
    ours = nn.Sequential(nn.Conv2d(2, 3, 3), bncourse.BatchNorm(3), nn.ReLU())
    ours.load_state_dict(theirs.state_dict())
    with torch.no_grad():
        for net in (ours, theirs):
            net[1].running_mean.uniform_(-1, 1)
            net[1].running_var.uniform_(0.5, 2)
            net[1].weight.uniform_(0.5, 2)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 2, 5, 5)
    if training:
        bn = ours[1]
        fused_ours = fuse_modules_qat(ours.train(), [["0", "1", "2"]], inplace=True)
        fused_theirs = fuse_modules_qat(theirs.train(), [["0", "1", "2"]])
        assert type(fused_ours[0]) is type(fused_theirs[0])
        assert fused_ours[0][1].weight is bn.weight, "the fused module shares our tensors"
        _same("fused output (training)", fused_ours(x), fused_theirs(x), 1e-5)
        return
    ours.eval()
    theirs.eval()
    expected = theirs(x)
    fused_ours = fuse_modules(ours, [["0", "1", "2"]])
    fused_theirs = fuse_modules(theirs, [["0", "1", "2"]])
    assert type(fused_ours[0]) is type(fused_theirs[0])
    assert isinstance(fused_ours[1], nn.Identity)
    _same("fused output", fused_ours(x), fused_theirs(x), 1e-5)
    _same("fused vs unfused", fused_ours(x), expected, 1e-5)


def test_fuse_modules_refuses_bn_relu_and_says_what_to_do():
    from torch.ao.quantization import fuse_modules

    net = nn.Sequential(bncourse.BatchNorm(3), nn.ReLU()).eval()
    with pytest.raises(TypeError, match=r"to_torch\(layer, spatial_dims\)"):
        fuse_modules(net, [["0", "1"]])
    net[0] = L.to_torch(net[0], 2)
    fused = fuse_modules(net, [["0", "1"]])
    x = torch.randn(2, 3, 2, 2)
    _same("fused BN + ReLU after to_torch", fused(x), net(x), 1e-6)


def test_to_torch_shares_tensors_and_matches():
    ours, _ = _pair(3, 4)
    theirs = L.to_torch(ours, 2)
    assert type(theirs) is nn.BatchNorm2d and theirs.weight is ours.weight
    x = torch.randn(4, 3, 2, 2, dtype=F64)
    _same("output", theirs(x), ours(x))
    _same("running_mean after one step each", theirs.running_mean, ours.running_mean, 0)
    with pytest.raises(ValueError, match="spatial_dims"):
        L.to_torch(ours, 4)


# ---------------------------------------------------------------------------------------
# TorchScript: refused loudly where unsupported
# ---------------------------------------------------------------------------------------


def test_jit_script_is_refused_with_a_clear_message():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(TypeError, match="torch.jit.script.*to_torch"):
            torch.jit.script(nn.Sequential(nn.Linear(3, 3), bncourse.BatchNorm(3)))
        scripted = torch.jit.script(L.to_torch(bncourse.BatchNorm(3), 1))
    x = torch.randn(4, 3)
    assert scripted(x).shape == (4, 3)


def test_jit_trace_refuses_training_mode_and_saves_eval_mode():
    layer = bncourse.BatchNorm(3)
    x = torch.randn(4, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TypeError, match="cannot be traced"):
            torch.jit.trace(layer, x)
        layer.eval()
        with torch.no_grad():
            layer.running_mean.fill_(0.3)
        traced = torch.jit.trace(layer, x)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
        buf.seek(0)
        loaded = torch.jit.load(buf)
    _same("traced eval output", loaded(x), layer(x), 0)


# ---------------------------------------------------------------------------------------
# The compiled path keeps compiling
# ---------------------------------------------------------------------------------------


def test_torch_compile_of_a_model_with_our_layer_trains_like_torch():
    torch.manual_seed(0)
    theirs = _conv_net(nn.BatchNorm2d(4)).double()
    ours = _conv_net(bncourse.BatchNorm(4)).double()
    ours.load_state_dict(theirs.state_dict())
    compiled = torch.compile(ours, backend="aot_eager")
    for step in range(2):
        x = torch.randn(3, 2, 5, 5, dtype=F64)
        ya, yb = compiled(x), theirs(x)
        ya.sum().backward()
        yb.sum().backward()
        _same(f"compiled output at step {step}", ya, yb)
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(),
                                 strict=True):
        _same(f"{name} after two compiled steps", a, b)
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters(),
                                 strict=True):
        _same(f"gradient of {name}", a.grad, b.grad)


class _CountingBackend:
    """A torch.compile backend that runs Dynamo's graph eagerly and counts its runs."""

    def __init__(self):
        self.compiles = 0
        self.runs = 0

    def __call__(self, gm, example_inputs):
        self.compiles += 1

        def run(*args):
            self.runs += 1
            return gm.forward(*args)

        return run


@pytest.fixture
def counting_compile(monkeypatch):
    import torch._dynamo

    torch._dynamo.reset()
    backend = _CountingBackend()
    monkeypatch.setattr(L, "_COMPILED", {
        "static": torch.compile(L._compiled_target, backend=backend, dynamic=False),
        "dynamic": torch.compile(L._compiled_target_dynamic, backend=backend, dynamic=True),
    })
    monkeypatch.setattr(L, "_COMPILED_KEYS", {})
    yield backend
    torch._dynamo.reset()


def test_compiled_batch_norm_still_compiles_the_tenth_shape(counting_compile):
    # The first COMPILE_STATIC_SHAPES (8) shapes are compiled static, the rest dynamic.
    assert L.COMPILE_STATIC_SHAPES < 10
    shapes_ = [(4 + k, 3) for k in range(6)] + [(2, 3, 2 + k, 2) for k in range(6)]
    gen = torch.Generator().manual_seed(0)
    w = torch.rand(3, generator=gen, dtype=F64, requires_grad=True)
    b = torch.randn(3, generator=gen, dtype=F64, requires_grad=True)
    for k, shape in enumerate(shapes_):
        runs = counting_compile.runs
        x = torch.randn(shape, generator=gen, dtype=F64, requires_grad=True)
        y = L.compiled_batch_norm(x, w, b)
        assert counting_compile.runs == runs + 1, f"shape {k + 1} {shape} ran eagerly"
        expected = nn.functional.batch_norm(x, None, None, w, b, training=True)
        _same(f"compiled output for shape {shape}", y, expected)
        (dx,) = torch.autograd.grad(y.sum() + (y * y).sum(), x)
        (dx_ref,) = torch.autograd.grad(expected.sum() + (expected * expected).sum(), x)
        _same(f"compiled input gradient for shape {shape}", dx, dx_ref)
    assert counting_compile.compiles < len(shapes_), "every shape was compiled on its own"


def test_compiled_batch_norm_says_when_it_stops(counting_compile, monkeypatch):
    from torch._dynamo.exc import FailOnRecompileLimitHit

    monkeypatch.setattr(L, "COMPILE_RECOMPILE_LIMIT", 1)
    w, b = torch.ones(3), torch.zeros(3)
    L.compiled_batch_norm(torch.randn(4, 3), w, b)
    with pytest.raises(FailOnRecompileLimitHit):
        L.compiled_batch_norm(torch.randn(4, 3, 2), w, b)
    # The dynamic graphs have the same limit.
    monkeypatch.setattr(L, "COMPILE_STATIC_SHAPES", 0)
    L.compiled_batch_norm(torch.randn(5, 3), w, b)
    with pytest.raises(FailOnRecompileLimitHit):
        L.compiled_batch_norm(torch.randn(5, 3, 2), w, b)


# ---------------------------------------------------------------------------------------
# Small things a drop-in must take: meta device, exception classes, eps = 0, NumPy
# integers, memory layouts
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_meta_device_then_to_empty_and_reset_parameters_like_torch(training):
    x = torch.randn(4, 3, 2, 2, dtype=F64)
    layers = []
    for cls in (bncourse.BatchNorm, nn.BatchNorm2d):
        layer = cls(3, dtype=F64, device="meta").train(training)
        meta_out = layer(torch.empty(4, 3, 2, 2, dtype=F64, device="meta"))
        assert meta_out.device.type == "meta" and meta_out.shape == x.shape, cls
        layer.to_empty(device="cpu")
        layer.reset_parameters()
        layers.append(layer)
    ours, theirs = layers
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(),
                                 strict=True):
        assert a.device.type == "cpu", name
        _same(f"{name} after reset_parameters", a, b, 0.0)
    _same("output after to_empty and reset_parameters", ours(x), theirs(x))
    _same("running_var after a step", ours.running_var, theirs.running_var)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(
    ("case", "make_layer", "make_input"),
    [
        ("channel mismatch", lambda: nn.BatchNorm2d(3), lambda: torch.randn(2, 4, 3, 3)),
        ("integer input", lambda: nn.BatchNorm1d(3), lambda: torch.ones(4, 3, dtype=torch.long)),
        ("eps = 0", lambda: nn.BatchNorm2d(3, eps=0.0), lambda: torch.randn(2, 3, 3, 3)),
    ],
)
def test_bad_input_raises_a_subclass_of_what_torch_raises(case, make_layer, make_input,
                                                         training):
    theirs = make_layer().train(training)
    kwargs = {"eps": theirs.eps} if theirs.eps != 1e-5 else {}
    ours = bncourse.BatchNorm(theirs.num_features, **kwargs).train(training)
    x = make_input()
    raised = []
    for layer in (theirs, ours):
        try:
            layer(x)
            raised.append(None)
        except Exception as e:  # noqa: BLE001 - the class is what is compared
            raised.append(e)
    torch_error, our_error = raised
    if torch_error is None:
        # eps = 0 with running statistics in eval mode: torch normalizes, and so do we.
        assert our_error is None, f"{case}: torch accepts it, ours raised {our_error!r}"
        _same(f"{case}: output", ours(x), theirs(x), 1e-6)
        return
    assert our_error is not None, f"{case}: torch raises {torch_error!r}, ours does not"
    assert isinstance(our_error, type(torch_error)), (
        f"{case}: torch raises {type(torch_error).__name__}, ours "
        f"{type(our_error).__mro__} is not a subclass of it: `except "
        f"{type(torch_error).__name__}` written for torch would miss it"
    )
    assert isinstance(our_error, ValueError), our_error  # and the course's own class
    assert str(our_error) != str(torch_error) and len(str(our_error)) > 40, our_error


def test_eps_zero_in_eval_without_running_stats_raises_like_torch():
    x = torch.randn(4, 3)
    for cls in (nn.BatchNorm1d, bncourse.BatchNorm):
        layer = cls(3, eps=0.0, track_running_stats=False).eval()
        with pytest.raises(ValueError, match="eps"):
            layer(x)


def test_functional_eval_without_running_stats_raises_a_runtime_error_like_torch():
    x = torch.randn(4, 3)
    with pytest.raises(RuntimeError):
        nn.functional.batch_norm(x, None, None, training=False)
    with pytest.raises(RuntimeError, match="running_mean and running_var"):
        L.batch_norm(x, None, None, training=False)


@pytest.mark.parametrize("num_features", [np.int64(3), np.int32(3), torch.tensor(3).item()])
def test_num_features_of_any_integer_type_like_torch(num_features):
    ours, theirs = bncourse.BatchNorm(num_features), nn.BatchNorm1d(num_features)
    assert ours.num_features == theirs.num_features == 3
    assert ours.weight.shape == theirs.weight.shape == (3,)
    x = torch.randn(5, 3)
    _same("output", ours(x), theirs(x), 1e-6)
    assert repr(ours).split("(", 1)[1] == repr(theirs).split("(", 1)[1]


def test_num_features_that_is_not_an_integer_is_refused():
    for bad in (3.0, "3", np.float64(3.0)):
        with pytest.raises(ValueError, match="num_features"):
            bncourse.BatchNorm(bad)


def _every_layout(shape: tuple[int, ...]):
    """x in every permutation of its axes' memory order, then a sliced and an expanded x."""
    base = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    n = len(shape)
    for perm in itertools.permutations(range(n)):
        inverse = [perm.index(i) for i in range(n)]
        yield f"memory order {perm}", base.permute(perm).contiguous().permute(inverse)
    wide = torch.randn(*shape[:-1], 2 * shape[-1], dtype=F64)
    yield "sliced", wide[..., ::2]
    yield "expanded", base[..., :1].expand(shape)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3, 4), (2, 3, 2, 3, 4)])
def test_output_and_gradient_layout_follow_torchs_for_every_permutation(shape, training):
    checked = 0
    for name, x0 in _every_layout(shape):
        ours, theirs = _pair(shape[1], len(shape))
        results = []
        for layer in (ours, theirs):
            layer.train(training)
            x = x0.detach().requires_grad_()
            y = layer(x)
            # An upstream gradient in the output's own layout, and a contiguous one.
            for dy in (torch.ones_like(y), torch.ones(shape, dtype=F64)):
                (dx,) = torch.autograd.grad(y, x, dy, retain_graph=True)
                results.append((y, dx))
        for k, ((ya, dxa), (yb, dxb)) in enumerate(zip(results[:2], results[2:], strict=True)):
            where = f"{name} (strides {x0.stride()}), training={training}, upstream {k}"
            assert ya.stride() == yb.stride(), f"{where}: output {ya.stride()} vs {yb.stride()}"
            assert dxa.stride() == dxb.stride(), (
                f"{where}: input gradient {dxa.stride()} vs torch's {dxb.stride()}")
            _same(f"{where}: output", ya, yb)
            _same(f"{where}: input gradient", dxa, dxb)
        checked += 1
    assert checked == math.factorial(len(shape)) + 2

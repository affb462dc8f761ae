"""The NumPy reference agrees with PyTorch in float64 and with finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bncourse import functional as F
from bncourse.gradcheck import check_gradient, numerical_gradient, rel_error

from .strategies import BNInput, bn_inputs

TIGHT = 1e-10


def _torch_train(inp: BNInput):
    x = torch.tensor(inp.x, requires_grad=True)
    g = torch.tensor(inp.gamma, requires_grad=True)
    b = torch.tensor(inp.beta, requires_grad=True)
    y = torch.nn.functional.batch_norm(x, None, None, g, b, training=True, eps=inp.eps)
    y.backward(torch.tensor(inp.dy))
    return y.detach().numpy(), x.grad.numpy(), g.grad.numpy(), b.grad.numpy()


def _assert_close(name: str, ours: np.ndarray, ref: np.ndarray, tol: float = TIGHT) -> None:
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != reference {ref.shape}"
    scale = max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
    err = float(np.max(np.abs(ours - ref))) / scale if ref.size else 0.0
    assert err < tol, f"{name}: max abs difference {err:.3e} (relative to scale) exceeds {tol:.0e}"


@given(bn_inputs())
def test_forward_matches_torch_float64(inp: BNInput) -> None:
    y, _ = F.batch_norm_forward(inp.x, inp.gamma, inp.beta, inp.eps)
    y_ref, *_ = _torch_train(inp)
    _assert_close("y", y, y_ref)


@given(bn_inputs())
def test_compact_backward_matches_torch_autograd(inp: BNInput) -> None:
    _, cache = F.batch_norm_forward(inp.x, inp.gamma, inp.beta, inp.eps)
    dx, dgamma, dbeta = F.batch_norm_backward(inp.dy, cache)
    _, dx_ref, dg_ref, db_ref = _torch_train(inp)
    _assert_close("dx", dx, dx_ref)
    _assert_close("dgamma", dgamma, dg_ref)
    _assert_close("dbeta", dbeta, db_ref)


@given(bn_inputs())
def test_staged_backward_equals_compact_backward(inp: BNInput) -> None:
    _, cache = F.batch_norm_forward(inp.x, inp.gamma, inp.beta, inp.eps)
    compact = F.batch_norm_backward(inp.dy, cache)
    staged = F.batch_norm_backward_staged(inp.dy, inp.x, inp.gamma, inp.eps)
    for name, a, b in zip(("dx", "dgamma", "dbeta"), staged, compact, strict=True):
        _assert_close(name, a, b)


@given(bn_inputs(max_dims=3))
def test_backward_matches_central_differences(inp: BNInput) -> None:
    def loss_of_x(x):
        return float(np.sum(F.batch_norm_forward(x, inp.gamma, inp.beta, inp.eps)[0] * inp.dy))

    def loss_of_gamma(g):
        return float(np.sum(F.batch_norm_forward(inp.x, g, inp.beta, inp.eps)[0] * inp.dy))

    _, cache = F.batch_norm_forward(inp.x, inp.gamma, inp.beta, inp.eps)
    dx, dgamma, _ = F.batch_norm_backward(inp.dy, cache)
    # Central differences carry a round-off of about eps_mach * |L| / h per entry. Entries of
    # dx can be far below that (with two values per channel dx is O(eps)), so relative errors
    # are taken against that floor instead of against zero.
    tol = 1e-5
    roundoff = np.finfo(np.float64).eps * max(1.0, abs(loss_of_x(inp.x))) / 1e-5
    floor = 100 * roundoff / tol
    check_gradient(loss_of_x, dx, inp.x, tol=tol, name="dx", floor=floor)
    check_gradient(loss_of_gamma, dgamma, inp.gamma, tol=1e-6, name="dgamma", floor=floor)


def test_backward_matches_central_differences_on_a_two_value_channel():
    # The case that shows why the floor above is needed: dx is O(eps) but still correct.
    x = np.array([[-0.37364556, -5.7736013], [-4.38984862, -6.95572658]])
    gamma, beta = np.array([1.45271569, -0.80115244]), np.array([-0.12853466, -0.66519467])
    dy = np.array([[0.90347018, -0.74349925], [-0.45772583, -1.00961818]])
    _, cache = F.batch_norm_forward(x, gamma, beta, 1e-5)
    dx, _, _ = F.batch_norm_backward(dy, cache)
    numeric = numerical_gradient(
        lambda v: float(np.sum(F.batch_norm_forward(v, gamma, beta, 1e-5)[0] * dy)), x
    )
    assert np.max(np.abs(dx)) < 1e-5, "with m = 2, dx should vanish up to eps"
    assert np.max(np.abs(dx - numeric)) < 1e-9, f"abs error {np.max(np.abs(dx - numeric)):.2e}"


@given(bn_inputs(), st.data())
def test_inference_matches_torch_eval(inp: BNInput, data) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    mean = rng.normal(size=inp.channels)
    var = rng.uniform(0.1, 4.0, inp.channels)
    y = F.batch_norm_inference(inp.x, mean, var, inp.gamma, inp.beta, inp.eps)
    y_ref = torch.nn.functional.batch_norm(
        torch.tensor(inp.x), torch.tensor(mean), torch.tensor(var), torch.tensor(inp.gamma),
        torch.tensor(inp.beta), training=False, eps=inp.eps,
    ).numpy()
    _assert_close("y (eval)", y, y_ref)


@given(bn_inputs(), st.sampled_from([0.1, 0.01, 0.5, 1.0]))
def test_running_stats_update_matches_torch_buffers(inp: BNInput, momentum: float) -> None:
    rm, rv = np.linspace(-1, 1, inp.channels), np.linspace(0.5, 2, inp.channels)
    new_mean, new_var = F.update_running_stats(rm, rv, inp.x, momentum)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    torch.nn.functional.batch_norm(
        torch.tensor(inp.x), trm, trv, training=True, momentum=momentum, eps=inp.eps
    )
    _assert_close("running_mean", new_mean, trm.numpy())
    _assert_close("running_var", new_var, trv.numpy())
    assert np.array_equal(rm, np.linspace(-1, 1, inp.channels)), "the input was modified"


@given(bn_inputs())
def test_output_has_mean_beta_and_std_gamma_up_to_eps(inp: BNInput) -> None:
    y, cache = F.batch_norm_forward(inp.x, inp.gamma, inp.beta, inp.eps)
    axes = F.reduction_axes(y.ndim)
    shrink = np.sqrt(cache.var / (cache.var + inp.eps))
    _assert_close("mean of y", y.mean(axis=axes), inp.beta)
    _assert_close("std of y", y.std(axis=axes), np.abs(inp.gamma) * shrink)


def test_momentum_conventions_convert_both_ways() -> None:
    assert F.torch_to_keras_momentum(0.1) == pytest.approx(0.9)
    assert F.keras_to_torch_momentum(0.99) == pytest.approx(0.01)
    for m in (0.0, 0.1, 0.37, 1.0):
        assert F.keras_to_torch_momentum(F.torch_to_keras_momentum(m)) == pytest.approx(m)
    with pytest.raises(ValueError, match="momentum"):
        F.torch_to_keras_momentum(1.5)


def test_keras_update_with_converted_momentum_equals_torch_update() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, (10, 3))
    rm, rv = np.zeros(3), np.ones(3)
    torch_mean, torch_var = F.update_running_stats(rm, rv, x, momentum=0.1)
    keras_m = F.torch_to_keras_momentum(0.1)
    keras_mean = keras_m * rm + (1 - keras_m) * x.mean(axis=0)
    keras_var = keras_m * rv + (1 - keras_m) * x.var(axis=0, ddof=1)
    _assert_close("mean", torch_mean, keras_mean)
    _assert_close("var", torch_var, keras_var)


def test_variance_is_stable_for_float32_with_mean_1e4() -> None:
    rng = np.random.default_rng(0)
    x64 = 1e4 + rng.normal(0.0, 1.0, (512, 4))
    x32 = x64.astype(np.float32)
    _, cache = F.batch_norm_forward(x32, np.ones(4, np.float32), np.zeros(4, np.float32), 0.0)
    exact = x32.astype(np.float64).var(axis=0)
    err = rel_error(cache.var, exact)
    naive = (x32 * x32).mean(axis=0) - x32.mean(axis=0) ** 2
    naive_err = rel_error(naive, exact)
    assert err < 1e-4, f"two-pass variance in float32 has relative error {err:.2e}"
    assert naive_err > 100 * err, (
        f"the E[x^2] - E[x]^2 formula should be far worse here (got {naive_err:.2e} vs "
        f"{err:.2e}); otherwise this test does not test stability"
    )


def test_float32_in_float32_out() -> None:
    x = np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32)
    y, _ = F.batch_norm_forward(x, np.ones(2, np.float32), np.zeros(2, np.float32))
    assert y.dtype == np.float32


def test_nan_in_gives_nan_out_in_its_channel_only() -> None:
    x = np.random.default_rng(2).normal(size=(5, 3))
    x[2, 1] = np.nan
    y, _ = F.batch_norm_forward(x, np.ones(3), np.zeros(3))
    assert np.all(np.isnan(y[:, 1])), "NaN must propagate to its whole channel"
    assert np.all(np.isfinite(y[:, [0, 2]])), "other channels must be unaffected"


def test_eval_mode_handles_a_batch_of_one() -> None:
    y = F.batch_norm_inference(np.array([[1.0, 2.0]]), np.zeros(2), np.ones(2), np.ones(2),
                               np.zeros(2), eps=0.0)
    np.testing.assert_allclose(y, [[1.0, 2.0]])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: F.batch_norm_forward(np.ones(3), np.ones(3), np.zeros(3)), "at least 2 dim"),
        (lambda: F.batch_norm_forward(np.ones((4, 3), dtype=int), np.ones(3), np.zeros(3)),
         "floating dtype"),
        (lambda: F.batch_norm_forward(np.ones((4, 3)), np.ones(2), np.zeros(3)), "gamma"),
        (lambda: F.batch_norm_forward(np.ones((4, 3)), np.ones(3), np.zeros((3, 1))), "beta"),
        (lambda: F.batch_norm_forward(np.ones((1, 3)), np.ones(3), np.zeros(3)),
         "more than 1 value per channel"),
        (lambda: F.batch_norm_forward(np.ones((1, 3, 1, 1)), np.ones(3), np.zeros(3)),
         "more than 1 value per channel"),
        (lambda: F.batch_norm_forward(np.ones((4, 3)), np.ones(3), np.zeros(3), eps=-1.0),
         "eps"),
        (lambda: F.batch_norm_inference(np.ones((4, 3)), np.zeros(2), np.ones(3), np.ones(3),
                                        np.zeros(3)), "running_mean"),
        (lambda: F.batch_norm_inference(np.ones((4, 3)), np.zeros(3), -np.ones(3), np.ones(3),
                                        np.zeros(3)), "non-negative"),
        (lambda: F.update_running_stats(np.zeros(3), np.ones(3), np.ones((4, 3)), 1.5),
         "momentum"),
        (lambda: F.update_running_stats(np.zeros(3), np.ones(4), np.ones((4, 3))),
         "running_var"),
        (lambda: F.update_running_stats(np.zeros(3), np.ones(3), np.ones((1, 3))),
         "more than 1 value per channel"),
        (lambda: F.batch_norm_backward(np.ones((3, 3)), F.batch_norm_forward(
            np.eye(4, 3), np.ones(3), np.zeros(3))[1]), "dy must have the shape"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_batch_of_one_is_refused_like_torch() -> None:
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        torch.nn.functional.batch_norm(torch.ones(1, 3), None, None, training=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm_forward(np.ones((1, 3)), np.ones(3), np.zeros(3))


# ---------------------------------------------------------------------------------------
# Bad input that used to raise the wrong thing, or nothing
# ---------------------------------------------------------------------------------------


def _cache():
    return F.batch_norm_forward(np.eye(4, 3) + 0.5, np.ones(3), np.zeros(3))[1]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: F.batch_norm_forward(np.ones((4, 3)), None, np.zeros(3)), "gamma.*None"),
        (lambda: F.batch_norm_forward(np.ones((4, 3)), np.ones(3), None), "beta.*None"),
        (lambda: F.batch_norm_backward_staged(np.ones((4, 3)), np.eye(4, 3), None),
         "gamma.*None"),
        (lambda: F.batch_norm_forward(np.ones((4, 3), np.float16), np.ones(3), np.zeros(3)),
         "float32 or float64; got float16"),
        (lambda: F.batch_norm_backward_staged(np.ones((1, 3)), np.eye(4, 3), np.ones(3)),
         r"dy must have the shape of the forward output \(4, 3\); got \(1, 3\)"),
        (lambda: F.batch_norm_backward_staged(np.ones((4, 1)), np.eye(4, 3), np.ones(3)),
         r"dy must have the shape .* got \(4, 1\)"),
        (lambda: F.batch_norm_backward(np.ones((4, 1)), _cache()), "dy must have the shape"),
        (lambda: F.update_running_stats(np.zeros(3), np.ones(3), np.eye(4, 3), None),
         "num_batches_tracked"),
        (lambda: F.update_running_stats(np.zeros(3), np.ones(3), np.eye(4, 3), None, 0),
         "num_batches_tracked"),
        (lambda: F.update_running_stats(np.zeros(3), np.ones(3), np.eye(4, 3), -0.1),
         r"\[0, 1\]"),
        (lambda: F.update_running_stats(np.zeros(3), np.ones(3), np.eye(4, 3), "0.1"),
         "momentum must be a number"),
        (lambda: numerical_gradient(lambda v: float(v.sum()), np.ones(2), h=float("nan")),
         "positive, finite"),
        (lambda: numerical_gradient(lambda v: float(v.sum()), np.ones(2), h=float("inf")),
         "positive, finite"),
        (lambda: numerical_gradient(lambda v: float(v.sum()), np.ones(2), h=0.0),
         "positive, finite"),
        (lambda: rel_error(np.zeros(2), np.zeros(2), floor=0.0), "floor"),
        (lambda: rel_error(np.zeros(2), np.zeros(2), floor=-1.0), "floor"),
        (lambda: rel_error(np.zeros(2), np.zeros(2), floor=float("nan")), "floor"),
    ],
)
def test_more_bad_input_raises_value_error_naming_the_problem(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_staged_backward_accepts_a_list_dy_of_the_right_shape() -> None:
    x = np.random.default_rng(4).normal(size=(4, 3))
    dy = np.random.default_rng(5).normal(size=(4, 3))
    from_list = F.batch_norm_backward_staged(dy.tolist(), x, np.ones(3))
    from_array = F.batch_norm_backward_staged(dy, x, np.ones(3))
    for a, b in zip(from_list, from_array, strict=True):
        np.testing.assert_array_equal(a, b)


@given(bn_inputs(max_dims=3))
def test_momentum_none_is_the_layers_cumulative_average(inp: BNInput) -> None:
    # Three batches through bncourse.BatchNorm(momentum=None) and through the reference with
    # the layer's counter: the same running statistics, and the mean of the batch means.
    import bncourse

    layer = bncourse.BatchNorm(inp.channels, momentum=None).double()
    rm, rv = np.zeros(inp.channels), np.ones(inp.channels)
    batches = [inp.x, inp.x * 2.0 + 1.0, inp.x[::-1] - 3.0]
    for k, batch in enumerate(batches, start=1):
        layer(torch.tensor(batch))
        rm, rv = F.update_running_stats(rm, rv, batch, None, num_batches_tracked=k)
    assert int(layer.num_batches_tracked) == len(batches)
    _assert_close("running_mean", rm, layer.running_mean.numpy())
    _assert_close("running_var", rv, layer.running_var.numpy())
    axes = F.reduction_axes(inp.x.ndim)
    _assert_close("mean of batch means", rm, np.mean([b.mean(axis=axes) for b in batches], 0))


def test_momentum_zero_keeps_the_statistics_like_the_layer_and_torch() -> None:
    x = np.random.default_rng(6).normal(2.0, 3.0, (6, 2))
    rm, rv = np.array([0.3, -0.2]), np.array([1.5, 0.7])
    new_mean, new_var = F.update_running_stats(rm, rv, x, 0.0)
    layer = torch.nn.BatchNorm1d(2, momentum=0.0).double()
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor(rm))
        layer.running_var.copy_(torch.tensor(rv))
    layer(torch.tensor(x))
    np.testing.assert_array_equal(new_mean, rm)
    np.testing.assert_array_equal(new_var, rv)
    _assert_close("torch running_mean", new_mean, layer.running_mean.numpy())

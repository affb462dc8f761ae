"""Chapter 4: scale invariance, gradient scaling, BN Jacobians and deep networks at init."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bncourse import invariance as inv
from bncourse.gradcheck import check_gradient, rel_error
from bncourse.jacobian import batch_norm_jacobian


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny; several threads only add contention. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SEEDS = st.integers(min_value=0, max_value=2**16)
SCALES = st.floats(min_value=1e-2, max_value=1e2)


def _data(seed: int, n: int = 12, d: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    return r.normal(size=(n, d)), r.normal(size=d), r.normal(size=n)


# --------------------------------------------------------------------------------------
# Scale invariance of the forward pass
# --------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, a=SCALES)
def test_bn_of_scaled_weights_is_unchanged_when_eps_is_zero(seed: int, a: float) -> None:
    x, w, _ = _data(seed)
    dev = inv.scale_deviation(x, w, np.array([a]), eps=0.0)[0]
    assert dev < 1e-12, f"BN(X a w) differs from BN(X w) by {dev:.3e} for a = {a}, eps = 0"


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, a=SCALES)
def test_negative_scale_flips_the_sign_of_x_hat(seed: int, a: float) -> None:
    x, w, _ = _data(seed)
    err = np.max(np.abs(inv.projection_bn(x, -a * w, 0.0) + inv.projection_bn(x, w, 0.0)))
    assert err < 1e-12, f"BN(-a X w) + BN(X w) is {err:.3e}, not 0, for a = {a}"


def test_scale_deviation_matches_its_closed_form() -> None:
    x, w, _ = _data(3, n=32, d=6)
    scales = np.logspace(-4, 3, 29)
    measured = inv.scale_deviation(x, w, scales, eps=1e-5)
    theory = inv.scale_deviation_theory(x, w, scales, eps=1e-5)
    err = np.max(np.abs(measured - theory))
    assert err < 1e-12, f"measured and closed-form deviation differ by up to {err:.3e}"


def test_scale_deviation_vanishes_for_large_scales_and_saturates_for_small_ones() -> None:
    x, w, _ = _data(4, n=32, d=6)
    w = w / np.linalg.norm(x @ w - (x @ w).mean()) * np.sqrt(32)  # sigma = 1
    dev = inv.scale_deviation(x, w, np.array([1e-5, 1e3]), eps=1e-5)
    base = np.max(np.abs(inv.projection_bn(x, w, 1e-5)))
    # For a^2 sigma^2 >> eps the deviation tends to max|x_hat| * (sqrt(1 + eps) - 1) ~ eps / 2.
    bound = base * 0.5e-5 * 1.001
    assert dev[1] < bound, f"at a = 1e3 the deviation is {dev[1]:.3e}, above {bound:.3e}"
    assert dev[0] > 0.9 * base, (
        f"at a = 1e-5 (a^2 sigma^2 << eps) the output should collapse towards 0, so the "
        f"deviation should be close to max|BN(Xw)| = {base:.3f}; got {dev[0]:.3f}"
    )


# --------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, a=SCALES)
def test_input_gradient_is_unchanged_and_weight_gradient_scales_as_one_over_a(
    seed: int, a: float
) -> None:
    x, w, u = _data(seed)
    gx1, gw1 = inv.projection_gradients(x, w, u, eps=0.0)
    gxa, gwa = inv.projection_gradients(x, a * w, u, eps=0.0)
    ex = rel_error(gxa, gx1)
    ew = rel_error(gwa, gw1 / a)
    assert ex < 1e-9, f"grad_x changed with the scale a = {a}: relative error {ex:.3e}"
    assert ew < 1e-9, f"grad_w(a w) != grad_w(w) / a for a = {a}: relative error {ew:.3e}"


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS)
def test_weight_gradient_is_orthogonal_to_the_weight(seed: int) -> None:
    x, w, u = _data(seed)
    _, gw = inv.projection_gradients(x, w, u, eps=0.0)
    cos = abs(gw @ w) / (np.linalg.norm(gw) * np.linalg.norm(w))
    assert cos < 1e-10, f"cos(w, grad_w) = {cos:.3e}, expected 0 for eps = 0"


def test_projection_gradients_agree_with_central_differences() -> None:
    x, w, u = _data(7)

    def loss_of_w(wv: np.ndarray) -> float:
        return float(u @ inv.projection_bn(x, wv, 1e-5))

    def loss_of_x(xv: np.ndarray) -> float:
        return float(u @ inv.projection_bn(xv, w, 1e-5))

    gx, gw = inv.projection_gradients(x, w, u, eps=1e-5)
    check_gradient(loss_of_w, gw, w, name="grad_w")
    check_gradient(loss_of_x, gx, x, name="grad_x")


# --------------------------------------------------------------------------------------
# The Jacobian of BN for one channel
# --------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(seed=SEEDS, m=st.integers(min_value=2, max_value=9),
       eps=st.sampled_from([1e-5, 0.1, 1.0]), gamma=st.floats(min_value=0.2, max_value=3.0))
def test_bn_jacobian_agrees_with_torch_autograd(seed: int, m: int, eps: float,
                                                gamma: float) -> None:
    x = np.random.default_rng(seed).normal(1.0, 2.0, size=(m, 1))
    ours = batch_norm_jacobian(x, np.array([gamma]), eps)[0]

    def f(xt: torch.Tensor) -> torch.Tensor:
        w = torch.tensor([gamma], dtype=torch.float64)
        return F.batch_norm(xt[:, None], None, None, w, None, training=True, eps=eps)[:, 0]

    theirs = torch.autograd.functional.jacobian(f, torch.tensor(x[:, 0])).numpy()
    err = rel_error(ours, theirs)
    assert err < 1e-9, f"bncourse.jacobian and torch autograd differ: relative error {err:.3e}"


@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.3])
def test_bn_jacobian_is_a_scaled_projection(eps: float) -> None:
    m, gamma = 10, 1.7
    x = np.random.default_rng(11).normal(0.5, 1.3, size=(m, 1))
    var = x.var()
    sv = np.sort(np.linalg.svd(batch_norm_jacobian(x, np.array([gamma]), eps)[0],
                               compute_uv=False))
    top = gamma / np.sqrt(var + eps)
    small = gamma * eps / (var + eps) ** 1.5
    err_top = np.max(np.abs(sv[2:] - top)) / top
    assert err_top < 1e-12, f"m - 2 singular values should equal gamma/sigma; off by {err_top:.3e}"
    assert sv[0] < 1e-12 * top, f"the shift direction should give 0; got {sv[0]:.3e}"
    assert abs(sv[1] - small) < 1e-12 * top, (
        f"the rescaling direction should give gamma eps / (sigma^2+eps)^1.5 = {small:.3e}; "
        f"got {sv[1]:.3e}"
    )


# --------------------------------------------------------------------------------------
# The training run
# --------------------------------------------------------------------------------------


def test_sgd_without_decay_adds_lr_squared_grad_squared_to_the_squared_norm() -> None:
    rec = inv.train_scale_invariant(steps=20, lr=0.5, weight_decay=0.0)
    n2 = rec.weight_norm**2
    predicted = rec.lr**2 * rec.grad_sq
    err = np.max(np.abs((n2[1:] - n2[:-1]) - predicted) / predicted)
    assert err < 1e-3, (
        f"||W_t+1||^2 - ||W_t||^2 differs from lr^2 ||G_t||^2 by {err:.3e} (relative)"
    )
    assert np.all(np.diff(rec.weight_norm) > 0), "the norm of the BN'd weight should only grow"
    assert rec.cosine.max() < 1e-3, f"largest |cos(w_k, g_k)| is {rec.cosine.max():.3e}"


def test_scaling_the_weight_by_a_and_the_lr_by_a_squared_gives_the_same_run() -> None:
    a = 3.0
    base = inv.train_scale_invariant(steps=15, lr=0.5, eps=0.0)
    scaled = inv.train_scale_invariant(steps=15, lr=0.5 * a**2, init_scale=a, eps=0.0)
    err_loss = np.max(np.abs(base.loss - scaled.loss))
    err_norm = rel_error(a * base.row_norms, scaled.row_norms)
    assert err_loss < 1e-10, f"losses differ by up to {err_loss:.3e}"
    assert err_norm < 1e-10, f"row norms are not scaled by a: relative error {err_norm:.3e}"


def test_weight_decay_drives_the_angle_per_step_to_its_equilibrium() -> None:
    lr, wd = 0.5, 0.02
    rec = inv.train_scale_invariant(steps=250, lr=lr, weight_decay=wd)
    measured = rec.angular_update[-100:].mean()
    predicted = inv.equilibrium_angular_update(lr, wd)
    assert abs(measured - predicted) / predicted < 0.1, (
        f"mean angle per step {measured:.4f} is not within 10% of sqrt(2 lr wd) = {predicted:.4f}"
    )


def test_equilibrium_angular_update_formula() -> None:
    assert inv.equilibrium_angular_update(0.1, 0.0) == 0.0
    got = inv.equilibrium_angular_update(0.5, 0.02)
    assert abs(got - np.sqrt(0.02 - 1e-4)) < 1e-15, f"got {got}"


# --------------------------------------------------------------------------------------
# One BN'd layer under whitened inputs
# --------------------------------------------------------------------------------------


def test_whitened_inputs_have_identity_covariance() -> None:
    x = np.random.default_rng(5).normal(size=(200, 8)) @ np.random.default_rng(6).normal(
        size=(8, 8))
    xw = inv.whiten(x)
    cov = xw.T @ xw / xw.shape[0]
    err = np.max(np.abs(cov - np.eye(8)))
    assert err < 1e-10, f"covariance of whitened data differs from I by {err:.3e}"
    assert np.max(np.abs(xw.mean(axis=0))) < 1e-12


def test_layer_jacobian_times_its_transpose_is_the_output_correlation() -> None:
    r = np.random.default_rng(8)
    x = inv.whiten(r.normal(size=(300, 16)))
    w = r.normal(size=(10, 16))
    jac = inv.bn_layer_jacobian(x, w)
    y = inv.whiten(x) @ w.T
    y = (y - y.mean(0)) / y.std(0)
    corr = y.T @ y / y.shape[0]
    err = np.max(np.abs(jac @ jac.T - corr))
    assert err < 1e-10, f"J J^T and the correlation matrix of BN(Wx) differ by {err:.3e}"
    assert np.max(np.abs(np.diag(jac @ jac.T) - 1)) < 1e-12, "diag(J J^T) should be 1"


def test_layer_jacobian_is_an_isometry_for_orthogonal_rows() -> None:
    r = np.random.default_rng(9)
    x = inv.whiten(r.normal(size=(300, 16)))
    q, _ = np.linalg.qr(r.normal(size=(16, 16)))
    w = q[:6] * r.uniform(0.5, 3.0, size=(6, 1))
    sv = np.linalg.svd(inv.bn_layer_jacobian(x, w), compute_uv=False)
    err = np.max(np.abs(sv - 1))
    assert err < 1e-12, f"singular values differ from 1 by {err:.3e}"


def test_bn_layer_jacobian_agrees_with_autograd_when_statistics_are_frozen() -> None:
    r = np.random.default_rng(10)
    x = r.normal(size=(40, 5))
    w = r.normal(size=(3, 5))
    z = x @ w.T
    std = torch.tensor(np.sqrt(z.var(0)))
    wt = torch.tensor(w)

    def f(xi: torch.Tensor) -> torch.Tensor:
        return (wt @ xi) / std

    theirs = torch.autograd.functional.jacobian(f, torch.tensor(x[0])).numpy()
    err = rel_error(inv.bn_layer_jacobian(x, w), theirs)
    assert err < 1e-12, f"relative error {err:.3e}"


# --------------------------------------------------------------------------------------
# Deep networks at initialization
# --------------------------------------------------------------------------------------


def test_gradient_grows_towards_the_input_with_bn_and_not_without() -> None:
    with_bn = inv.gradient_norms_by_depth(30, 64, 32, use_bn=True, seed=0)
    without = inv.gradient_norms_by_depth(30, 64, 32, use_bn=False, seed=0)
    ratio_bn = with_bn[0] / with_bn[-1]
    ratio_plain = without[0] / without[-1]
    assert ratio_bn > 100, f"with BN the input gradient is only {ratio_bn:.1f}x the top one"
    assert 0.1 < ratio_plain < 10, f"without BN the ratio is {ratio_plain:.2f}, expected O(1)"


def test_input_output_jacobian_agrees_with_a_backward_pass() -> None:
    depth, width, batch = 4, 6, 5
    jac = inv.input_output_jacobian(depth, width, batch, use_bn=True, seed=2)
    x = inv._input_batch(width, batch, 2).requires_grad_()
    out = inv.deep_mlp_forward(x, inv.deep_mlp_weights(depth, width, 2), use_bn=True)[-1]
    v = torch.randn(batch, width, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    (grad,) = torch.autograd.grad((v * out).sum(), x)
    err = rel_error(jac.T @ v.reshape(-1).numpy(), grad.reshape(-1).numpy())
    assert err < 1e-10, f"J^T v and the backward pass differ: relative error {err:.3e}"


def test_bn_network_ignores_a_common_shift_of_every_example() -> None:
    depth, width, batch = 3, 6, 5
    jac = inv.input_output_jacobian(depth, width, batch, use_bn=True, seed=4)
    v = np.random.default_rng(0).normal(size=width)
    shift = np.tile(v, batch)  # vec of the batch with every row equal to v
    out = np.abs(jac @ shift).max()
    assert out < 1e-10 * np.abs(jac).max(), f"J applied to a common shift gives {out:.3e}"


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def _check_figure(fig) -> None:
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel(), "every axis needs both labels"
        assert ax.get_title(), "every panel needs a title"


def test_figures_have_labels_and_titles() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from bncourse.plotting import invariance as plots

    x, w, _ = _data(1, n=16, d=4)
    scales = np.logspace(-3, 2, 6)
    _check_figure(plots.plot_scale_deviation(
        scales, inv.scale_deviation(x, w, scales), inv.scale_deviation_theory(x, w, scales),
        1e-2, 1e-5))
    recs = {"no decay": inv.train_scale_invariant(steps=5),
            "decay": inv.train_scale_invariant(steps=5, weight_decay=0.02)}
    _check_figure(plots.plot_training_runs(recs))
    _check_figure(plots.plot_layer_spectra({"k = d": np.array([2.0, 1.0, 0.1])}))
    g = np.array([3.0, 2.0, 1.0])
    _check_figure(plots.plot_depth(g, g, np.array([3.0, 1.0]), np.array([2.0, 1.0]), n_show=2))
    matplotlib.pyplot.close("all")

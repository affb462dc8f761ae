"""The analysis helpers: the Jacobian, the gradient check and the memory probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given

from bncourse.gradcheck import GradientMismatch, check_gradient, numerical_gradient, rel_error
from bncourse.jacobian import batch_norm_jacobian
from bncourse.memory import saved_tensors

from .strategies import BNInput, bn_inputs


@given(bn_inputs(max_dims=2))
def test_jacobian_matches_torch_autograd(inp: BNInput):
    jac = batch_norm_jacobian(inp.x, inp.gamma, inp.eps)
    full = torch.autograd.functional.jacobian(
        lambda z: torch.nn.functional.batch_norm(
            z, None, None, torch.tensor(inp.gamma), None, training=True, eps=inp.eps),
        torch.tensor(inp.x),
    ).numpy()  # (N, C, N, C)
    n, c = inp.x.shape
    for ch in range(c):
        err = np.max(np.abs(jac[ch] - full[:, ch, :, ch]))
        assert err < 1e-10, f"channel {ch}: max abs difference {err:.2e}"
    other = full.copy()
    for ch in range(c):
        other[:, ch, :, ch] = 0.0
    assert np.max(np.abs(other)) < 1e-12, "channels must not interact"


@given(bn_inputs(max_dims=2))
def test_jacobian_singular_values(inp: BNInput):
    jac = batch_norm_jacobian(inp.x, inp.gamma, inp.eps)
    n = inp.x.shape[0]
    var = inp.x.var(axis=0)
    for ch in range(inp.channels):
        s = np.sort(np.linalg.svd(jac[ch], compute_uv=False))
        big = abs(inp.gamma[ch]) / np.sqrt(var[ch] + inp.eps)
        small = abs(inp.gamma[ch]) * inp.eps / (var[ch] + inp.eps) ** 1.5
        expected = np.sort(np.r_[0.0, small, np.full(n - 2, big)])
        scale = max(big, 1e-300)
        err = np.max(np.abs(s - expected)) / scale
        assert err < 1e-9, f"channel {ch}: singular values {s} vs expected {expected}"


def test_jacobian_rejects_conv_input_with_advice():
    with pytest.raises(ValueError, match="reshape"):
        batch_norm_jacobian(np.ones((2, 3, 4, 4)), np.ones(3))


def test_rel_error_is_symmetric_and_zero_for_equal_arrays():
    a = np.array([1.0, -2.0, 0.0])
    b = np.array([1.1, -2.0, 0.0])
    assert rel_error(a, a) == 0.0
    assert rel_error(a, b) == rel_error(b, a) == pytest.approx(0.1 / 2.1)
    with pytest.raises(ValueError, match="shapes"):
        rel_error(np.ones(2), np.ones(3))


def test_numerical_gradient_of_a_quadratic_is_exact_to_rounding():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    x = rng.normal(size=4)
    grad = numerical_gradient(lambda v: float(v @ a @ v), x)
    assert rel_error(grad, (a + a.T) @ x) < 1e-9


def test_check_gradient_names_the_worst_entry_when_wrong():
    x = np.array([1.0, 2.0, 3.0])
    with pytest.raises(GradientMismatch, match=r"worst entry \(2,\)"):
        check_gradient(lambda v: float(np.sum(v**2)), np.array([2.0, 4.0, 7.0]), x)
    assert check_gradient(lambda v: float(np.sum(v**2)), 2 * x, x) < 1e-9


def test_saved_tensors_counts_shared_storage_once():
    x = torch.randn(10, requires_grad=True)
    report = saved_tensors(lambda: (x * x).sum())
    assert report.count == 1 and report.nbytes == 40, report.shapes


def test_import_bncourse_is_light():
    import subprocess
    import sys

    code = (
        "import sys, bncourse; "
        "heavy = [m for m in ('torch', 'matplotlib', 'sklearn') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import bncourse pulled in {out.stdout.strip()}"


def test_lazy_attributes_resolve():
    import bncourse

    assert bncourse.BatchNorm.__name__ == "BatchNorm"
    assert bncourse.jacobian.batch_norm_jacobian is batch_norm_jacobian

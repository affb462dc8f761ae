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


# --------------------------------------------------------------------------------------
# Bytes moved: the traffic counter of the cost section
# --------------------------------------------------------------------------------------


def test_traffic_counter_counts_in_place_writes_and_skips_views():
    from bncourse.analysis import _TrafficCounter

    x, y = torch.ones(1000), torch.ones(1000)  # 4000 bytes each
    with _TrafficCounter() as counter:
        x.addcmul_(y, y)  # reads x, y, y and writes x: four passes of 4000 bytes
    assert (counter.nbytes, counter.kernels) == (16000, 1), (counter.nbytes, counter.kernels)
    with _TrafficCounter() as counter:
        z = x + y  # reads two, writes one
        z.mul_(y)  # in place: reads z and y, writes z
    assert (counter.nbytes, counter.kernels) == (24000, 2), (counter.nbytes, counter.kernels)
    with _TrafficCounter() as counter:
        x.view(10, 100).t().detach().expand(3, 100, 10)
    assert (counter.nbytes, counter.kernels) == (0, 0), "views move no data"


def test_torchs_layer_runs_two_kernels_on_the_activations_and_one_on_its_counter():
    from bncourse.analysis import traffic_by_kernel, traffic_per_element

    kernels = traffic_by_kernel("torch", (64, 32))
    names = [name for name, _ in kernels]
    assert names == ["aten::add_.Tensor", "aten::native_batch_norm",
                     "aten::native_batch_norm_backward"], names
    per_element = dict(kernels)
    # num_batches_tracked += 1: one int64 read twice and written, nothing of the activations.
    assert per_element["aten::add_.Tensor"] < 0.01, per_element
    assert sum(b >= 1 for b in per_element.values()) == 2, per_element
    total, count = traffic_per_element("torch", (64, 32))
    assert count == len(kernels) and abs(total - sum(per_element.values())) < 1e-12


def _has_compiler() -> bool:
    import shutil

    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def _activation_passes(kernel_source: str) -> int:
    """Loads and stores in Inductor's C++ whose index involves two or more loop variables
    (``x0 + 32L*x1``): the accesses of a tensor of the input's size, one per pass over it."""
    import re

    accesses = re.findall(r"(?:loadu|load|store)\(\s*\w+\s*\+\s*static_cast<int64_t>\(([^;]*?)\)"
                          r"\s*[,)]", kernel_source)
    return sum(len(set(re.findall(r"\bx\d+\b", index))) >= 2 for index in accesses)


@pytest.mark.skipif(not _has_compiler(), reason="torch.compile needs a C++ compiler")
@pytest.mark.parametrize("shape", [(48, 32), (3, 32, 4, 4)])
def test_compiled_form_saves_x_and_makes_the_passes_of_torchs_kernels(shape):
    """What analysis.COMPILED_PASSES states, read from the code torch.compile generates."""
    import re

    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    from bncourse import analysis, layer

    x = torch.randn(shape, requires_grad=True)
    gamma = torch.rand(shape[1]).add(0.5).requires_grad_()
    beta = torch.randn(shape[1], requires_grad=True)
    dy = torch.randn(shape)
    compiled = torch.compile(layer._compiled_target, dynamic=False)
    with config.patch(fx_graph_cache=False):
        saved = []

        def step():
            with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t,
                                                          lambda t: t):
                y = compiled(x, gamma, beta, 1e-5)
            y.backward(dy)

        _, sources = run_and_get_code(step)
    # AOTAutograd saves x itself (and per-channel vectors), not x_hat.
    big = [t for t in saved if t.numel() == x.numel()]
    assert [t.data_ptr() for t in big] == [x.data_ptr()], [tuple(t.shape) for t in saved]
    kernels = [k for src in sources for k in re.findall(r"r'''(.*?)'''", src, re.S)]
    passes = [_activation_passes(k) for k in kernels]
    # forward: x three times (mean, centred squares, output) and y; backward: dy and x for
    # the two sums, dy and x again and dx.
    assert passes == [4, 5], passes
    assert sum(passes) == analysis.COMPILED_PASSES == analysis.NATIVE_CPU_PASSES
    y_eager = torch.nn.functional.batch_norm(x, None, None, gamma, beta, training=True)
    assert torch.allclose(compiled(x, gamma, beta, 1e-5), y_eager, atol=1e-5)


# --------------------------------------------------------------------------------------
# What a block of layers keeps for backward
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", ["linear-bn-relu", "conv-bn-relu"])
@pytest.mark.parametrize("bn", ["torch", "bncourse"])
def test_linear_and_conv_before_bn_keep_their_input_so_bn_input_costs_a_tensor(block, bn):
    from bncourse.memory import block_saved_tensors

    report = block_saved_tensors(block, bn)
    kept = {layer.name: layer.kept for layer in report.layers}
    assert kept[block.split("-")[0]] == ["its input"], kept
    # Both layers save the input itself (ours recomputes x_hat from it in the backward).
    assert kept["bn"] == ["its input"], kept
    assert kept["relu"] == ["its output"], kept
    assert report.activation_sized == 2, report.total.shapes


def test_a_relu_before_bn_makes_the_saved_input_free_for_both_layers():
    from bncourse.memory import block_saved_tensors

    torch_report = block_saved_tensors("linear-relu-bn", "torch")
    ours = block_saved_tensors("linear-relu-bn", "bncourse")
    # ReLU keeps its output, which is BN's input: neither layer adds an activation-sized tensor.
    assert torch_report.activation_sized == 1, torch_report.total.shapes
    assert ours.activation_sized == 1, ours.total.shapes
    # Ours keeps mean, inv_std and gamma per channel; torch's also keeps its running buffers.
    assert ours.total.nbytes <= torch_report.total.nbytes


def test_block_saved_tensors_rejects_unknown_blocks_and_layers():
    from bncourse.memory import block_saved_tensors

    with pytest.raises(ValueError, match="linear-bn-relu"):
        block_saved_tensors("bn-conv", "torch")
    with pytest.raises(ValueError, match="bncourse"):
        block_saved_tensors("linear-bn-relu", "keras")

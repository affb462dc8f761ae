"""The normalization family in float64 parity with torch.nn.functional, forward and
backward; ghost BN against BN on each sub-batch; which members depend on the batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as tF
from hypothesis import assume, given
from hypothesis import strategies as st

import bncourse
from bncourse import normalization as N

TOL = 1e-12


def _inputs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 2).requires_grad_(True)
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    return x, dy, g


def _grads(fn, x, params, dy):
    out = fn(x, *params)
    grads = torch.autograd.grad(out, [x, *params], dy)
    return out.detach(), grads


def _assert_same(ours, theirs, what):
    out_a, grads_a = ours
    out_b, grads_b = theirs
    gap = float((out_a - out_b).abs().max())
    assert gap <= TOL, f"{what}: outputs differ by {gap:.3g}"
    for i, (a, b) in enumerate(zip(grads_a, grads_b, strict=True)):
        gap = float((a - b).abs().max())
        assert gap <= TOL, f"{what}: gradient {i} differs by {gap:.3g}"


@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 7), (2, 6, 3, 4)])
def test_layer_norm_matches_torch(shape):
    x, dy, g = _inputs(shape)
    ns = shape[1:]
    w = (torch.rand(ns, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    b = torch.randn(ns, generator=g, dtype=torch.float64).requires_grad_(True)
    _assert_same(_grads(lambda x, w, b: N.layer_norm(x, ns, w, b), x, (w, b), dy),
                 _grads(lambda x, w, b: tF.layer_norm(x, ns, w, b), x, (w, b), dy), "layer_norm")
    # Over the last axis only, as in a transformer.
    _assert_same(_grads(lambda x: N.layer_norm(x, shape[-1]), x, (), dy),
                 _grads(lambda x: tF.layer_norm(x, (shape[-1],)), x, (), dy), "layer_norm last")


@pytest.mark.parametrize("shape", [(3, 4, 7), (2, 6, 3, 4)])
def test_instance_norm_matches_torch(shape):
    x, dy, g = _inputs(shape, 1)
    c = shape[1]
    w = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    b = torch.randn(c, generator=g, dtype=torch.float64).requires_grad_(True)
    _assert_same(_grads(lambda x, w, b: N.instance_norm(x, w, b), x, (w, b), dy),
                 _grads(lambda x, w, b: tF.instance_norm(x, weight=w, bias=b), x, (w, b), dy),
                 "instance_norm")


@given(groups=st.sampled_from([1, 2, 3, 6]), spatial=st.sampled_from([(), (4,), (2, 3)]),
       n=st.integers(1, 4), seed=st.integers(0, 1000))
def test_group_norm_matches_torch(groups, spatial, n, seed):
    shape = (n, 6, *spatial)
    x, dy, g = _inputs(shape, seed)
    w = (torch.rand(6, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    b = torch.randn(6, generator=g, dtype=torch.float64).requires_grad_(True)
    assume(groups < 6 or spatial)  # one value per group has no spread to normalize
    _assert_same(_grads(lambda x, w, b: N.group_norm(x, groups, w, b), x, (w, b), dy),
                 _grads(lambda x, w, b: tF.group_norm(x, groups, w, b), x, (w, b), dy),
                 f"group_norm with {groups} groups")


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (2, 3, 2, 4)])
def test_batch_norm_train_matches_torch_and_bncourse(shape):
    x, dy, g = _inputs(shape, 2)
    c = shape[1]
    w = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    b = torch.randn(c, generator=g, dtype=torch.float64).requires_grad_(True)
    ours = _grads(lambda x, w, b: N.batch_norm_train(x, w, b), x, (w, b), dy)
    _assert_same(ours, _grads(lambda x, w, b: tF.batch_norm(x, None, None, w, b, True),
                              x, (w, b), dy), "batch_norm_train")
    _assert_same(ours, _grads(lambda x, w, b: bncourse.layer.batch_norm(
        x, None, None, w, b, training=True), x, (w, b), dy), "batch_norm_train vs bncourse")


def test_group_norm_with_one_group_is_layer_norm_and_with_c_groups_instance_norm():
    x, _, _ = _inputs((3, 6, 4, 2), 3)
    x = x.detach()
    assert float((N.group_norm(x, 1) - N.layer_norm(x, x.shape[1:])).abs().max()) <= TOL
    assert float((N.group_norm(x, 6) - N.instance_norm(x)).abs().max()) <= TOL


@pytest.mark.parametrize("name", ["batch", "ghost batch", "layer", "instance", "group"])
def test_depends_on_batch_says_whether_another_example_changes_an_output(name):
    x, _, _ = _inputs((8, 4, 3), 4)
    x = x.detach()
    fn = {"batch": N.batch_norm_train, "ghost batch": lambda x: N.ghost_batch_norm(x, 4),
          "layer": lambda x: N.layer_norm(x, x.shape[1:]), "instance": N.instance_norm,
          "group": lambda x: N.group_norm(x, 2)}[name]
    moved = x.clone()
    moved[1] += 5.0  # change another example of the same (ghost) batch
    changed = float((fn(moved)[0] - fn(x)[0]).abs().max()) > 1e-9
    assert changed == N.depends_on_batch(name)


def test_ghost_batch_norm_is_batch_norm_on_each_sub_batch():
    from bncourse.distributed import ghost_vs_sub_batches

    gaps = ghost_vs_sub_batches(n=32, virtual=8)
    for key in ("y", "dx", "dgamma", "dbeta"):
        assert gaps[key] <= TOL, f"{key} differs by {gaps[key]:.3g}"
    assert gaps["full_batch_y"] > 1e-3, "ghost BN should differ from BN on the whole batch"


def test_ghost_batch_norm_layer_running_statistics_average_the_chunks():
    torch.manual_seed(0)
    x = torch.randn(12, 3, dtype=torch.float64) * 2 + 1
    layer = N.GhostBatchNorm(3, virtual_batch_size=4, momentum=1.0).double()
    layer(x)
    chunks = x.split(4)
    mean = torch.stack([c.mean(0) for c in chunks]).mean(0)
    var = torch.stack([c.var(0) for c in chunks]).mean(0)
    assert float((layer.running_mean - mean).abs().max()) <= TOL
    assert float((layer.running_var - var).abs().max()) <= TOL
    layer.eval()
    want = (x - mean) / torch.sqrt(var + 1e-5)
    assert float((layer(x) - want).detach().abs().max()) <= 1e-10


def test_bad_input_is_a_clear_error():
    x = torch.randn(4, 6, 3)
    with pytest.raises(ValueError, match="divides"):
        N.group_norm(x, 4)
    with pytest.raises(ValueError, match="trailing"):
        N.layer_norm(x, (6,))
    with pytest.raises(ValueError, match="at least one axis"):
        N.normalize(x, [])
    with pytest.raises(ValueError, match="out of range"):
        N.normalize(x, [3])
    with pytest.raises(ValueError, match="twice"):
        N.normalize(x, [1, -2])
    with pytest.raises(ValueError, match="2 values per channel"):
        N.batch_norm_train(torch.randn(1, 3))
    with pytest.raises(ValueError, match="virtual_batch_size"):
        N.ghost_batch_norm(x, 0)
    with pytest.raises(ValueError, match="floating"):
        N.instance_norm(torch.ones(2, 3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        N.layer_norm([1.0, 2.0], 2)
    with pytest.raises(ValueError, match="unknown normalization"):
        N.depends_on_batch("weight")


def test_gradient_accumulation_changes_bn_gradients_but_not_layer_norm_ones():
    from bncourse.distributed import accumulation_gap

    layer = accumulation_gap("layer")
    batch = accumulation_gap("batch")
    assert layer["grad_rel_diff"] < 1e-12, layer
    assert batch["grad_rel_diff"] > 1e-2, batch
    assert batch["running_mean_diff"] > 1e-3, batch

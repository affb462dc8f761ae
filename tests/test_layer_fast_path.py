"""The layer's fast forms compute exactly what the plain forms they replace compute.

The eager path skips the view of a per-channel vector against an (N, C) input, reads cached
axis tuples and checks dtypes and shapes with a shortcut for the usual case: checked here
against the plain forms, bit for bit, and for the same errors. The running statistics it
updates are checked against the formula, to the last bit.
"""

from __future__ import annotations

import pytest
import torch

import bncourse
from bncourse.layer import (
    DtypeMismatchError,
    ShapeMismatchError,
    _dims,
    _per_channel,
    _update_running,
    batch_norm,
)


def test_the_layer_moves_its_buffers_as_the_formula_says():
    g = torch.Generator().manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(64, 5, generator=g)
    layer = bncourse.BatchNorm(5, momentum=0.25)
    layer(x)
    mean = x.mean(0)
    var = (x - mean).square().mean(0)
    want_mean, want_var = torch.zeros(5), torch.ones(5)
    _update_running(want_mean, mean, 0.25)
    _update_running(want_var, var * (64 / 63), 0.25)
    # The same ops in the same order as the layer's forward: equal to the last bit.
    assert torch.equal(layer.running_mean, want_mean)
    assert torch.equal(layer.running_var, want_var)
    assert int(layer.num_batches_tracked) == 1


@pytest.mark.parametrize("ndim", [2, 3, 4, 5, 9, 10])
def test_reduced_axes_and_per_channel_shapes_for_every_rank(ndim):
    x = torch.zeros((2, 3) + (1,) * (ndim - 2))
    assert _dims(x) == (0, *range(2, ndim))
    v = torch.arange(3.0)
    pc = _per_channel(v, x)
    if ndim == 2:
        assert pc is v  # broadcasts along the last axis as it is
    else:
        assert pc.shape == (1, 3) + (1,) * (ndim - 2)
    # Either way it broadcasts the channel values along axis 1.
    want = v.view((1, 3) + (1,) * (ndim - 2)).expand(x.shape)
    assert torch.equal(x + pc, want)


def test_a_per_channel_vector_against_an_nc_input_gives_what_the_view_gives():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 4, generator=g)
    v, w = torch.randn(4, generator=g), torch.randn(4, generator=g)
    fast = torch.addcmul(_per_channel(v, x), x, _per_channel(w, x))
    plain = torch.addcmul(v.view(1, -1), x, w.view(1, -1))
    assert torch.equal(fast, plain) and fast.stride() == plain.stride()


@pytest.mark.parametrize("name", ["weight", "bias", "running_mean", "running_var"])
def test_a_dtype_mismatch_names_the_tensor_in_the_layer_and_the_function(name):
    x = torch.randn(6, 3)
    tensors = {"weight": torch.ones(3), "bias": torch.zeros(3), "running_mean": torch.zeros(3),
               "running_var": torch.ones(3)}
    tensors[name] = tensors[name].double()
    with pytest.raises(DtypeMismatchError, match=f"^{name} is torch.float64 but the input is"):
        batch_norm(x, tensors["running_mean"], tensors["running_var"], tensors["weight"],
                   tensors["bias"], training=True)
    layer = bncourse.BatchNorm(3)
    if name in ("weight", "bias"):
        setattr(layer, name, torch.nn.Parameter(tensors[name]))
    else:
        setattr(layer, name, tensors[name])
    with pytest.raises(DtypeMismatchError, match=f"^{name} is torch.float64"):
        layer(x)


@pytest.mark.parametrize("name", ["weight", "bias", "running_mean", "running_var"])
def test_a_per_channel_tensor_of_the_wrong_shape_is_named(name):
    x = torch.randn(6, 3)
    tensors = {"weight": torch.ones(3), "bias": torch.zeros(3), "running_mean": torch.zeros(3),
               "running_var": torch.ones(3)}
    tensors[name] = torch.zeros(1, 3)  # three values, but not of shape (3,)
    with pytest.raises(ShapeMismatchError,
                       match=rf"^{name} must have shape \(C,\) = \(3,\), one value per "
                             rf"channel; got \(1, 3\)"):
        batch_norm(x, tensors["running_mean"], tensors["running_var"], tensors["weight"],
                   tensors["bias"], training=True)

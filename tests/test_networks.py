"""The small networks and measurements of chapter 1 (bncourse.networks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bncourse import BatchNorm
from bncourse.networks import (
    PLACEMENTS,
    batch_dependence,
    bn_activations,
    compare_with_torch,
    make_mlp,
    output_std,
    per_channel_moments,
    preactivations,
)


def _layer_types(model: nn.Sequential) -> list[str]:
    return [type(m).__name__ for m in model]


def test_mlp_places_bn_before_or_after_the_relu_or_nowhere():
    assert _layer_types(make_mlp(3, 4, 2, 1, placement="before")) == [
        "Linear", "BatchNorm", "ReLU", "Linear", "BatchNorm", "ReLU", "Linear"]
    assert _layer_types(make_mlp(3, 4, 2, 1, placement="after")) == [
        "Linear", "ReLU", "BatchNorm", "Linear", "ReLU", "BatchNorm", "Linear"]
    assert _layer_types(make_mlp(3, 4, 2, 1, placement="none")) == [
        "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    with pytest.raises(ValueError, match="placement"):
        make_mlp(3, 4, 2, 1, placement="middle")


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_mlp_with_the_same_seed_has_the_same_weights(placement):
    a = make_mlp(5, 8, 3, 2, placement=placement, weight_std=0.5, seed=7)
    b = make_mlp(5, 8, 3, 2, placement=placement, weight_std=0.5, seed=7)
    c = make_mlp(5, 8, 3, 2, placement=placement, weight_std=0.5, seed=8)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), f"{name} differs between two builds with seed 7"
    assert any(not torch.equal(pa, pc) for pa, pc in
               zip(a.parameters(), c.parameters(), strict=True)), "seeds 7 and 8 agree"


def test_mlp_weight_std_sets_the_spread_of_the_weights():
    model = make_mlp(200, 200, 1, 1, placement="none", weight_std=0.5, seed=0)
    std = float(model[0].weight.detach().std())
    assert abs(std - 0.5) < 0.01, f"weight std {std:.4f}, expected 0.5 within 0.01"


def test_mlp_without_bias_has_no_bias_in_hidden_layers():
    model = make_mlp(3, 4, 2, 1, placement="before", bias=False)
    assert model[0].bias is None and model[3].bias is None


def test_bn_activations_returns_each_bn_layer_input_and_normalized_output():
    x = torch.randn(64, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 3
    model = make_mlp(6, 10, 3, 2, placement="before", weight_std=0.5, seed=1)
    records = bn_activations(model, x)
    assert len(records) == 3
    first_linear = model[0](x).detach().numpy()
    np.testing.assert_allclose(records[0][0], first_linear, rtol=1e-12, atol=1e-12)
    for i, (_, out) in enumerate(records):
        mean, std = per_channel_moments(out)
        assert np.max(np.abs(mean)) < 1e-12, f"layer {i}: BN output mean {mean}"
        assert np.max(np.abs(std - 1.0)) < 1e-4, f"layer {i}: BN output std {std}"
    assert not any(m._forward_hooks for m in model.modules()), "a hook was left behind"


def test_preactivations_are_the_hidden_linear_outputs():
    x = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = make_mlp(4, 5, 2, 3, placement="none", seed=2)
    zs = preactivations(model, x)
    assert [z.shape for z in zs] == [(16, 5), (16, 5)]
    expected = model[2](torch.relu(model[0](x))).detach().numpy()
    np.testing.assert_allclose(zs[1], expected, rtol=1e-12, atol=1e-12)


def test_batch_dependence_spread_shrinks_with_batch_size_and_eval_is_fixed():
    result = batch_dependence(batch_sizes=(4, 64), n_batches=400, example=1.0, seed=3)
    s4, s64 = np.std(result.train[4]), np.std(result.train[64])
    assert s64 < 0.5 * s4, f"std over batches: {s4:.3f} at b=4, {s64:.3f} at b=64"
    assert abs(result.eval - 1.0 / np.sqrt(1.0 + 1e-5)) < 1e-12, f"eval output {result.eval}"
    assert abs(np.mean(result.train[64]) - result.eval) < 0.05


def test_batch_dependence_rejects_a_batch_of_one():
    with pytest.raises(ValueError, match="at least 2"):
        batch_dependence(batch_sizes=(1, 4))


@settings(max_examples=20, deadline=None)
@given(eps=st.sampled_from([1e-5, 1e-3, 1e-1]), seed=st.integers(0, 100))
def test_output_std_equals_sample_std_over_sqrt_of_var_plus_eps(eps, seed):
    sigma = np.geomspace(1e-4, 10.0, 7)
    got = output_std(sigma, eps, m=64, seed=seed)
    rng = np.random.default_rng(seed)
    x = 5.0 + rng.standard_normal((64, sigma.size)) * sigma
    var = x.var(axis=0)
    want = np.sqrt(var / (var + eps))
    assert np.max(np.abs(got - want)) < 1e-9, f"largest gap {np.max(np.abs(got - want)):.2e}"


@pytest.mark.parametrize("shape", [(16, 3), (8, 2, 5), (4, 3, 5, 5), (2, 2, 3, 3, 3)])
def test_bncourse_agrees_with_torch_batchnorm_in_float64(shape):
    gaps = compare_with_torch(shape, seed=1)
    assert len(gaps) == 5
    for name, gap in gaps.items():
        assert gap < 1e-12, f"{name}: max abs difference {gap:.2e} for shape {shape}"


def test_compare_with_torch_uses_bncourse_layer():
    assert BatchNorm.__module__ == "bncourse.layer"
    with pytest.raises(ValueError, match="2 to 5"):
        compare_with_torch((3,))

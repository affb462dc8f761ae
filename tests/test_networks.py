"""The small networks and measurements of chapter 1 (bncourse.networks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bncourse import BatchNorm
from bncourse.functional import batch_norm_forward
from bncourse.networks import (
    PLACEMENTS,
    PlacementResult,
    batch_dependence,
    bn_activations,
    compare_with_torch,
    layer_drift,
    make_mlp,
    output_std,
    per_channel_moments,
    placement_experiment,
    preactivations,
    unit_input_over_training,
)
from bncourse.training import load_digits_data


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


@pytest.mark.verifies("eq-formula-eps-std")
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


@pytest.mark.verifies("eq-formula-eval")
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


@pytest.mark.verifies("prop-formula-bound")
@settings(max_examples=200, deadline=None)
@given(m=st.integers(2, 40), seed=st.integers(0, 10_000), scale=st.sampled_from([1e-3, 1.0, 1e3]),
       eps=st.sampled_from([0.0, 1e-5]))
def test_normalized_values_never_exceed_sqrt_m_minus_one(m, seed, scale, eps):
    rng = np.random.default_rng(seed)
    x = rng.standard_t(df=2, size=(m, 3)) * scale  # heavy tails: outliers are common
    x_hat = batch_norm_forward(x, np.ones(3), np.zeros(3), eps)[0]
    bound = np.sqrt(m - 1)
    assert np.abs(x_hat).max() <= bound * (1 + 1e-12), (
        f"m = {m}: |x_hat| reached {np.abs(x_hat).max():.6f} > sqrt(m - 1) = {bound:.6f}")


@pytest.mark.verifies("prop-formula-bound")
@pytest.mark.parametrize("m", [2, 3, 4, 16])
def test_the_bound_is_reached_when_the_other_values_are_equal(m):
    x = np.full((m, 1), -2.0)
    x[0, 0] = 5.0
    x_hat = batch_norm_forward(x, np.ones(1), np.zeros(1), 0.0)[0]
    assert abs(x_hat[0, 0] - np.sqrt(m - 1)) < 1e-12, f"{x_hat[0, 0]} against {np.sqrt(m - 1)}"
    with_eps = batch_norm_forward(x, np.ones(1), np.zeros(1), 1e-5)[0]
    assert with_eps[0, 0] < np.sqrt(m - 1), "with eps > 0 the bound is strict"


@pytest.fixture(scope="module")
def digits():
    return load_digits_data()


def test_placement_experiment_pairs_seeds_and_reports_standard_errors(digits):
    result = placement_experiment(digits, placements=("before", "after"), seeds=(0, 1),
                                  epochs=1, width=16)
    assert result.seeds == (0, 1)
    for placement in ("before", "after"):
        acc = result.accuracy[placement]
        assert acc.shape == (2,) and np.all((acc >= 0) & (acc <= 100))
        assert result.stderr(placement) == pytest.approx(np.std(acc, ddof=1) / np.sqrt(2))
    estimate = result.difference("before", "after")
    d = result.accuracy["before"] - result.accuracy["after"]
    assert estimate.n == 2
    assert estimate.mean == pytest.approx(d.mean())
    assert estimate.se == pytest.approx(np.std(d, ddof=1) / np.sqrt(2))
    assert estimate.low <= estimate.mean <= estimate.high
    again = placement_experiment(digits, placements=("before",), seeds=(0, 1), epochs=1, width=16)
    np.testing.assert_array_equal(again.accuracy["before"], result.accuracy["before"])


def test_placement_experiment_learns_and_rejects_bad_input(digits):
    result = placement_experiment(digits, placements=("before",), seeds=(0, 1), epochs=3)
    assert result.mean("before") > 80.0, f"accuracy {result.mean('before'):.1f}% after 3 epochs"
    with pytest.raises(ValueError, match="placement"):
        placement_experiment(digits, placements=("middle",))
    with pytest.raises(ValueError, match="two seeds"):
        placement_experiment(digits, seeds=(0,))
    with pytest.raises(ValueError, match="two values"):
        PlacementResult((0,), {"before": np.array([90.0])}).stderr("before")


def test_unit_trace_records_percentiles_of_the_last_relu_input(digits):
    trace = unit_input_over_training(digits, placement="before", epochs=1, every=4, unit=3)
    steps_per_epoch = len(list(range(0, digits.x_train.shape[0], 64)))
    assert trace.steps[0] == 0 and np.all(np.diff(trace.steps) == 4)
    assert trace.steps[-1] <= steps_per_epoch
    assert trace.percentiles.shape == (trace.steps.size, 3)
    assert np.all(np.diff(trace.percentiles, axis=1) >= 0), "percentiles out of order"
    # At step 0 the BN output of a fresh layer (gamma 1, beta 0) is standardized on the probe.
    model = make_mlp(64, 64, 3, 10, placement="before", seed=0, dtype=digits.x_train.dtype)
    records = bn_activations(model.train(), digits.x_test[:500])
    want = np.percentile(records[-1][1][:, 3], [15, 50, 85])
    np.testing.assert_allclose(trace.percentiles[0], want, rtol=1e-5, atol=1e-6)


def test_without_bn_a_unit_input_drifts_far_more_than_with_bn(digits):
    plain = unit_input_over_training(digits, placement="none", epochs=2).drift
    with_bn = unit_input_over_training(digits, placement="before", epochs=2).drift
    # On every scale, the fair one (the final spread) included.
    assert plain.median_shift > 3 * with_bn.median_shift, (plain, with_bn)
    assert plain.shift_in_final_ranges > 2 * with_bn.shift_in_final_ranges, (plain, with_bn)
    assert plain.shift_in_initial_ranges > 20 * with_bn.shift_in_initial_ranges, (plain, with_bn)
    with pytest.raises(ValueError, match="placement"):
        unit_input_over_training(digits, placement="after")
    with pytest.raises(ValueError, match="unit"):
        unit_input_over_training(digits, unit=64)


def test_layer_drift_measures_median_shift_absolute_and_in_15_85_ranges():
    first = np.random.default_rng(0).normal(size=(1000, 4)) * np.array([1.0, 2.0, 0.5, 3.0])
    first -= np.median(first, axis=0)                     # every median at 0
    spread = np.percentile(first, 85, axis=0) - np.percentile(first, 15, axis=0)
    still = layer_drift(first, first)
    assert still.median_shift == 0.0 and still.shift_in_initial_ranges == 0.0
    assert still.initial_range == still.final_range == pytest.approx(spread.mean())
    moved = layer_drift(first, first + 2.0 * spread)       # each median moves by 2 ranges
    assert moved.median_shift == pytest.approx(2.0 * spread.mean())
    assert moved.shift_in_initial_ranges == pytest.approx(2.0)
    assert moved.shift_in_final_ranges == pytest.approx(2.0)
    widened = layer_drift(first, 5.0 * first + spread)     # moved by 1 initial range, 5x wider
    assert widened.shift_in_initial_ranges == pytest.approx(1.0)
    assert widened.shift_in_final_ranges == pytest.approx(0.2)
    assert widened.final_range == pytest.approx(5.0 * widened.initial_range)
    with pytest.raises(ValueError, match="units"):
        layer_drift(first, first[:, :3])

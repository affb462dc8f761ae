"""bncourse.inference: folding eval-mode BN into its neighbours, and population statistics."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from bncourse import BatchNorm
from bncourse.inference import (
    eval_affine,
    fold_batch_norm,
    fold_batch_norm_before,
    fold_model,
    population_statistics,
    reestimate_running_stats,
)

D = torch.float64


_TORCH_BN = {"linear": nn.BatchNorm1d, "conv1d": nn.BatchNorm1d, "conv2d": nn.BatchNorm2d,
             "conv3d": nn.BatchNorm3d}


def _trained_bn(channels: int, seed: int, kind: str = "torch", spread: float = 1.0,
                affine: bool = True, layer: str = "linear") -> nn.Module:
    """An eval-mode BN with random running statistics and parameters."""
    g = torch.Generator().manual_seed(seed)
    bn = (_TORCH_BN[layer](channels, affine=affine, dtype=D) if kind == "torch"
          else BatchNorm(channels, affine=affine, dtype=D))
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=g, dtype=D) * 3)
        bn.running_var.copy_(torch.rand(channels, generator=g, dtype=D) * spread + 0.05)
        if affine:
            bn.weight.copy_(torch.randn(channels, generator=g, dtype=D))
            bn.bias.copy_(torch.randn(channels, generator=g, dtype=D))
    return bn.eval()


def _layer(kind: str, c_in: int, c_out: int, groups: int, bias: bool, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "linear":
        return nn.Linear(c_in, c_out, bias=bias, dtype=D)
    conv = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}[kind]
    return conv(c_in, c_out, kernel_size=3, padding=1, groups=groups, bias=bias, dtype=D)


def _input(kind: str, c_in: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    spatial = {"linear": (), "conv1d": (7,), "conv2d": (5, 4), "conv3d": (3, 4, 3)}[kind]
    return torch.randn(4, c_in, *spatial, generator=g, dtype=D)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


layer_cases = st.tuples(
    st.sampled_from(["linear", "conv1d", "conv2d", "conv3d"]),
    st.sampled_from([1, 2, 3]),  # groups (a multiplier of both channel counts)
    st.integers(1, 3),  # input channels per group
    st.integers(1, 3),  # output channels per group
    st.booleans(),  # bias
    st.sampled_from(["torch", "bncourse"]),
    st.integers(0, 10_000),
)


@pytest.mark.verifies("eq-inference-fold")
@given(layer_cases)
def test_folding_after_a_layer_equals_the_eval_mode_pair_in_float64(case):
    kind, groups, per_in, per_out, bias, bn_kind, seed = case
    if kind == "linear":
        groups = 1
    c_in, c_out = groups * per_in, groups * per_out
    layer = _layer(kind, c_in, c_out, groups, bias, seed)
    bn = _trained_bn(c_out, seed, bn_kind, layer=kind)
    x = _input(kind, c_in, seed)
    before = [p.clone() for p in (*layer.parameters(), *bn.buffers())]
    with torch.no_grad():
        want = bn(layer(x))
        got = fold_batch_norm(layer, bn)(x)
    assert _relative(got, want) <= 1e-12
    after = [p.clone() for p in (*layer.parameters(), *bn.buffers())]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True)), "inputs changed"


@given(layer_cases)
def test_folding_agrees_with_torchs_fusion_utilities(case):
    kind, groups, per_in, per_out, bias, _, seed = case
    if kind == "linear":
        groups = 1
    c_in, c_out = groups * per_in, groups * per_out
    layer = _layer(kind, c_in, c_out, groups, bias, seed).eval()
    bn = _trained_bn(c_out, seed, "torch", layer=kind)
    fuse = fuse_linear_bn_eval if kind == "linear" else fuse_conv_bn_eval
    theirs, ours = fuse(layer, bn), fold_batch_norm(layer, bn)
    assert torch.allclose(ours.weight, theirs.weight, rtol=1e-13, atol=0)
    assert torch.allclose(ours.bias, theirs.bias, rtol=1e-13, atol=1e-15)


@pytest.mark.verifies("eq-inference-fold-before")
@given(st.sampled_from(["linear", "conv1d", "conv2d"]), st.sampled_from([1, 2]),
       st.booleans(), st.integers(0, 10_000))
def test_folding_a_bn_before_a_layer_is_exact_without_padding(kind, groups, bias, seed):
    if kind == "linear":
        groups = 1
    c_in, c_out = 2 * groups, 3 * groups
    layer = _layer(kind, c_in, c_out, groups, bias, seed)
    if kind != "linear":
        layer.padding = (0,) * (layer.weight.dim() - 2)
    bn = _trained_bn(c_in, seed, layer=kind)
    x = _input(kind, c_in, seed)
    with torch.no_grad():
        assert _relative(fold_batch_norm_before(bn, layer)(x), layer(bn(x))) <= 1e-12


def test_eval_affine_is_the_eval_mode_layer():
    bn = _trained_bn(3, 0, "bncourse")
    a, b = eval_affine(bn)
    x = torch.randn(5, 3, dtype=D)
    with torch.no_grad():
        assert torch.allclose(bn(x), a * x + b, rtol=1e-14, atol=1e-14)
    plain = _trained_bn(3, 1, affine=False)
    a, b = eval_affine(plain)
    assert torch.allclose(a, 1 / torch.sqrt(plain.running_var + plain.eps))


def test_fold_model_folds_every_pair_and_refuses_a_bn_after_a_nonlinearity():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False, dtype=D), BatchNorm(4, dtype=D), nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 3, groups=4, dtype=D), nn.BatchNorm2d(4, dtype=D)),
        nn.Flatten(), nn.LazyLinear(5, dtype=D), nn.BatchNorm1d(5, dtype=D),
    )
    x = torch.randn(6, 3, 6, 6, dtype=D)
    with torch.no_grad():
        for _ in range(3):
            model.train()(x)
        want = model.eval()(x)
        folded = fold_model(model)
        assert not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, BatchNorm))
                       for m in folded.modules())
        assert _relative(folded(x), want) <= 1e-12
    with pytest.raises(ValueError, match="do not directly follow"):
        fold_model(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.BatchNorm1d(3)).eval())
    kept = fold_model(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), strict=False)
    assert isinstance(kept[1], nn.BatchNorm1d)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: (nn.Linear(3, 4), nn.BatchNorm1d(5).eval()), "5 channels"),
        (lambda: (nn.Linear(3, 4), nn.BatchNorm1d(4)), "training mode"),
        (lambda: (nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False).eval()),
         "no running statistics"),
        (lambda: (nn.ConvTranspose2d(3, 4, 3), nn.BatchNorm2d(4).eval()), "not supported"),
        (lambda: (nn.ReLU(), nn.BatchNorm1d(4).eval()), "only Linear"),
        (lambda: (nn.Linear(3, 4), nn.ReLU()), "expected a BatchNorm"),
    ],
)
def test_bad_folds_are_refused_with_a_message_that_names_the_problem(make, message):
    layer, bn = make()
    with pytest.raises(ValueError, match=message):
        fold_batch_norm(layer, bn)


def test_a_bn_before_a_padded_convolution_is_refused():
    with pytest.raises(ValueError, match="padded"):
        fold_batch_norm_before(nn.BatchNorm2d(3).eval(), nn.Conv2d(3, 4, 3, padding=1))
    with pytest.raises(ValueError, match="zero-padded"):
        fold_batch_norm_before(nn.BatchNorm2d(3).eval(), nn.Conv2d(3, 4, 3, padding="same"))


@pytest.mark.verifies("eq-inference-algorithm2")
def test_reestimating_equals_algorithm_2_for_equal_batches():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6, dtype=D), BatchNorm(6, dtype=D), nn.ReLU(),
                          nn.Linear(6, 3, dtype=D), nn.BatchNorm1d(3, dtype=D))
    batches = [torch.randn(8, 4, dtype=D) * 2 + 1 for _ in range(5)]
    stats = population_statistics(model, batches)
    reestimate_running_stats(model, batches)
    for name in ("1", "4"):
        layer = model.get_submodule(name)
        assert torch.allclose(layer.running_mean, stats[name][0], rtol=1e-12, atol=1e-14)
        assert torch.allclose(layer.running_var, stats[name][1], rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="at least one batch"):
        population_statistics(model, [])


def test_a_float32_fold_with_a_large_offset_in_the_bias_is_as_accurate_as_torchs_fusion():
    from bncourse.inference import float32_fold_error

    errors = float32_fold_error(1e4, where="bias")
    assert errors["offset"] > 1e4
    assert errors["folded"] < 1e-6, f"a(c - mean) + beta in float32: {errors['folded']:.2g}"
    assert errors["folded"] <= 1.5 * errors["torch"], (
        f"bncourse's float32 fold ({errors['folded']:.2g}) should be as accurate as torch's "
        f"fuse_conv_bn_eval ({errors['torch']:.2g})")
    assert errors["unfolded"] > 100 * errors["folded"], "rounding z to float32 loses digits"
    assert errors["scaled first"] > 100 * errors["folded"], (
        "a c + (beta - a mean) rounds the two large products separately")


def test_c_minus_mean_is_exact_in_float32_when_the_offset_is_in_the_bias():
    """Sterbenz's lemma: c and the running mean are within a factor 2, so c - mean is exact."""
    from bncourse.inference import conv_bn_with_offset

    for offset in (1.0, 1e2, 1e4):
        conv, bn, _ = conv_bn_with_offset(offset)
        c, mean = conv.bias.float(), bn.running_mean.float()
        assert bool(((mean / 2 <= c) & (c <= 2 * mean)).all())
        exact = c.double() - mean.double()
        assert torch.equal((c - mean).double(), exact), f"offset {offset}: c - mean rounded"


@given(st.floats(2.0**-100, 2.0**100, width=32), st.floats(0.5, 2.0, width=32), st.booleans())
def test_sterbenz_a_float32_difference_within_a_factor_two_is_exact(y, ratio, negative):
    y32 = torch.tensor(-y if negative else y, dtype=torch.float32)
    x32 = (y32 * ratio).float()
    if not (y32.abs() / 2 <= x32.abs() <= 2 * y32.abs()):
        return  # the product's rounding left the factor-two window
    assert (x32 - y32).double() == x32.double() - y32.double()


def test_an_offset_from_the_input_costs_folded_and_unfolded_alike_and_the_spread_of_a_nothing():
    from bncourse.inference import float32_fold_error

    through_input = float32_fold_error(1e4, where="input")
    assert through_input["unfolded"] > 1e-4, "an offset in the input cancels inside the layer"
    assert 0.5 < through_input["folded"] / through_input["unfolded"] < 2
    flat = [float32_fold_error(log10_spread=s) for s in (0.0, 2.0, 4.0)]
    assert all(e[name] < 1e-6 for e in flat for name in ("unfolded", "folded", "torch"))
    with pytest.raises(ValueError, match="where"):
        float32_fold_error(where="weights")


def test_folding_keeps_the_layers_dtype_and_matches_torch_in_float32():
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 5, 3, dtype=torch.float32).eval()
    bn64 = _trained_bn(5, 2, layer="conv2d")          # float64 statistics
    folded = fold_batch_norm(conv, bn64)
    assert folded.weight.dtype == folded.bias.dtype == torch.float32
    bn32 = copy.deepcopy(bn64).float()
    theirs = fuse_conv_bn_eval(conv, bn32)
    ours = fold_batch_norm(conv, bn32)
    assert torch.allclose(ours.weight, theirs.weight, rtol=1e-6, atol=0)
    assert torch.allclose(ours.bias, theirs.bias, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["replicate", "reflect", "circular"])
def test_a_bn_before_a_convolution_padded_by_copies_folds_exactly(mode):
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode, dtype=D)
    bn = _trained_bn(3, 5, layer="conv2d")
    x = torch.randn(2, 3, 5, 5, dtype=D)
    with torch.no_grad():
        assert _relative(fold_batch_norm_before(bn, conv)(x), conv(bn(x))) <= 1e-12


def test_removing_the_warm_up_leaves_the_weighted_average_of_the_batch_statistics():
    from bncourse.inference import remove_warm_up

    bn = nn.BatchNorm1d(2, momentum=0.2, dtype=D)
    batches = [torch.randn(6, 2, dtype=D) * (k + 1) + k for k in range(3)]
    for b in batches:
        bn(b)
    weights = torch.tensor([0.2 * 0.8**2, 0.2 * 0.8, 0.2], dtype=D)
    means = torch.stack([b.mean(0) for b in batches])
    variances = torch.stack([b.var(0) for b in batches])
    remove_warm_up(bn)
    total = weights.sum()
    assert torch.allclose(bn.running_mean, (weights[:, None] * means).sum(0) / total)
    assert torch.allclose(bn.running_var, (weights[:, None] * variances).sum(0) / total)
    with pytest.raises(ValueError, match="cumulative"):
        remove_warm_up(nn.BatchNorm1d(2, momentum=None))
    with pytest.raises(ValueError, match="no batch"):
        remove_warm_up(nn.BatchNorm1d(2))


def test_replaying_the_moving_average_with_the_final_weights_averages_their_batch_statistics():
    from bncourse.inference import replay_running_stats
    from bncourse.training import minibatches

    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 2, bias=False, dtype=D), nn.BatchNorm1d(2, momentum=0.3,
                                                                                dtype=D))
    x = torch.randn(20, 3, dtype=D) * 2 + 1
    data = SimpleNamespace(x_train=x, y_train=torch.zeros(20, dtype=torch.int64))
    with torch.no_grad():
        for _ in range(7):                     # training: seven updates of the running statistics
            model(x[:8])
    before = model[1].running_mean.clone()
    replayed = replay_running_stats(model, data, batch_size=8, seed=3)
    assert torch.equal(model[1].running_mean, before), "the model itself is left unchanged"
    assert int(replayed[1].num_batches_tracked) == 7
    # by hand: the same shuffled batches, through the same (final) weights, EMA from 0, divided out
    generator = torch.Generator().manual_seed(3)
    means = []
    while len(means) < 7:
        for xb, _ in minibatches(x, data.y_train, 8, generator):
            if len(means) < 7:
                means.append((xb @ model[0].weight.T).mean(0))
    weights = torch.tensor([0.3 * 0.7 ** (6 - k) for k in range(7)], dtype=D)
    want = (weights[:, None] * torch.stack(means)).sum(0) / weights.sum()
    assert torch.allclose(replayed[1].running_mean, want, rtol=1e-12, atol=1e-14)
    assert model.training, "the model's mode is left as it was"


def test_the_fold_benchmark_records_its_command_machine_load_and_the_ratios_interval():
    from bncourse.inference import fold_benchmark

    result = fold_benchmark(repeats=6, batch=2)
    assert result["command"] == "python -m bncourse.inference bench --repeats 6"
    assert result["repeats"] == 6 and "date" in result["machine"]
    assert len(result["load_average"]["before"]) == len(result["load_average"]["after"]) == 3
    ratio = result["ratio_folded_to_unfolded"]
    assert ratio["low"] <= ratio["median"] <= ratio["high"] and ratio["confidence"] == 0.95
    assert ratio["q1"] <= ratio["median"] <= ratio["q3"]
    assert result["max_abs_output_difference"] < 1e-4


def test_scaling_the_reestimated_variance_reproduces_both_columns_and_changes_nothing_else():
    from bncourse.freezing import batch_norm_layers
    from bncourse.inference import train_digits_model, train_eval_gap, variance_scale_accuracy
    from bncourse.training import load_digits_data

    data = load_digits_data()
    model = train_digits_model(0.01, 0.5, 1, seed=3, data=data)
    before = [layer.running_var.clone() for layer in batch_norm_layers(model)]
    gap = train_eval_gap(model, data)
    unit, biased, small = variance_scale_accuracy(model, (1.0, 31 / 32, 1e-6), data)
    assert unit == gap.precise and biased == gap.precise_biased, (unit, biased, gap)
    assert small != unit, "a variance a million times smaller changes the predictions"
    after = [layer.running_var for layer in batch_norm_layers(model)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True)), (
        "the model is left unchanged")

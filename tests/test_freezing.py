"""Parameters versus buffers, freezing BN, and re-estimating the running statistics."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from bncourse.exercises.parameters import _reference_cumulative
from bncourse.freezing import (
    batch_norm_layers,
    count_values,
    freeze_batch_norm,
    is_frozen,
    reestimate_running_stats,
    running_mean_trajectories,
    running_stat_trajectories,
    simulated_wander,
    steady_spread,
    unfreeze_batch_norm,
)
from bncourse.functional import update_running_stats
from bncourse.layer import BatchNorm

BN_CLASSES = [nn.BatchNorm1d, BatchNorm]


def _net(bn_class, seed: int = 0, dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 5), bn_class(5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, 4), bn_class(4),
    ).to(dtype)


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


def _x(n: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 2.0 + 3.0 * torch.randn(n, 6, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("bn_class", BN_CLASSES)
def test_count_values_splits_like_keras(bn_class):
    model = _net(bn_class)
    trainable, non_trainable = count_values(model)
    want_trainable = (6 * 5 + 5) + 2 * 5 + (5 * 4 + 4) + 2 * 4
    want_non_trainable = 2 * 5 + 2 * 4  # running mean and variance; the counter is not a value
    assert (trainable, non_trainable) == (want_trainable, want_non_trainable), (
        f"got (trainable, non-trainable) = {(trainable, non_trainable)}, "
        f"want {(want_trainable, want_non_trainable)}"
    )
    for p in model[0].parameters():
        p.requires_grad_(False)
    assert count_values(model) == (want_trainable - 35, want_non_trainable + 35), (
        "frozen parameters must move from the trainable to the non-trainable count"
    )


@pytest.mark.parametrize("bn_class", BN_CLASSES)
def test_requires_grad_false_does_not_stop_running_statistics(bn_class):
    model = _net(bn_class)
    for p in model.parameters():
        p.requires_grad_(False)
    before = _buffers(model)
    model.train()
    model(_x())
    after = _buffers(model)
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert "1.running_mean" in moved and "1.running_var" in moved, (
        f"the running statistics should drift although requires_grad=False; moved: {moved}"
    )


@pytest.mark.parametrize("bn_class", BN_CLASSES)
def test_freeze_batch_norm_survives_model_train(bn_class):
    model = _net(bn_class)
    model.train()
    model(_x(seed=2))  # give the running statistics non-default values
    freeze_batch_norm(model)
    model.train()
    for layer in batch_norm_layers(model):
        assert not layer.training, "a frozen BN layer must stay in eval mode after model.train()"
        assert is_frozen(layer)
        assert not layer.weight.requires_grad and not layer.bias.requires_grad
    assert model[3].training, "freezing BN must leave the other layers' modes alone"
    before = _buffers(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    gamma_before = model[1].weight.clone()
    loss = model(_x(seed=3)).square().sum()
    loss.backward()
    optimizer.step()
    for k, v in _buffers(model).items():
        assert torch.equal(v, before[k]), f"buffer {k} changed while BN was frozen"
    assert torch.equal(model[1].weight, gamma_before), "gamma moved while BN was frozen"


@pytest.mark.parametrize("bn_class", BN_CLASSES)
def test_frozen_layer_normalizes_with_running_statistics(bn_class):
    model = _net(bn_class)
    model.train()
    model(_x(seed=4))
    x = _x(seed=5)
    model.eval()
    with torch.no_grad():
        want = model[:2](x)
    freeze_batch_norm(model)
    model.train()
    with torch.no_grad():
        got = model[:2](x)
    err = float((got - want).abs().max())
    assert err == 0.0, f"frozen BN in a train()-mode model differs from eval mode by {err:.3g}"


def test_freezing_survives_deepcopy_and_unfreeze_restores():
    model = freeze_batch_norm(_net(nn.BatchNorm1d))
    clone = copy.deepcopy(model)
    clone.train()
    assert all(not m.training for m in batch_norm_layers(clone)), "deepcopy lost the freezing"
    assert all(m.layer is m_layer for m_layer in batch_norm_layers(clone)
               for m in [m_layer.__dict__["train"]]), "the copy's train() points to another layer"
    unfreeze_batch_norm(model, mode=True)
    model.eval()
    model.train()
    for layer in batch_norm_layers(model):
        assert layer.training and not is_frozen(layer)
        assert layer.weight.requires_grad and layer.bias.requires_grad


@pytest.mark.parametrize("bn_class", BN_CLASSES)
def test_reestimate_matches_torch_update_bn(bn_class):
    # torch's update_bn puts the whole model in train mode (dropout on) and knows only
    # torch's BN classes, so the reference is the same network without dropout, in torch BN.
    def net(cls):
        torch.manual_seed(7)
        return nn.Sequential(nn.Linear(6, 5), cls(5), nn.ReLU(), nn.Linear(5, 4), cls(4)).double()

    model, reference = net(bn_class), net(nn.BatchNorm1d)
    reference.load_state_dict(model.state_dict())
    batches = [_x(n, seed=10 + n) for n in (8, 5, 12)]
    momenta_before = [m.momentum for m in batch_norm_layers(model)]
    model.eval()
    reestimate_running_stats(model, batches)
    torch.optim.swa_utils.update_bn([(b,) for b in batches], reference)
    for (name, got), want in zip(model.named_buffers(), reference.buffers(), strict=True):
        if got.is_floating_point():
            err = float((got - want).abs().max())
            assert err < 1e-12, f"{name} differs from torch's update_bn by {err:.3g}"
    assert all(not m.training for m in model.modules()), "re-estimating must restore eval mode"
    assert [m.momentum for m in batch_norm_layers(model)] == momenta_before


def test_reestimate_on_one_batch_gives_population_mean_and_unbiased_variance():
    model = _net(nn.BatchNorm1d)
    x = _x(40, seed=11)
    freeze_batch_norm(model)
    model.train()
    reestimate_running_stats(model, [x])
    with torch.no_grad():
        z = model[0](x)
    bn = model[1]
    err_mean = float((bn.running_mean - z.mean(0)).abs().max())
    err_var = float((bn.running_var - z.var(0, unbiased=True)).abs().max())
    assert err_mean < 1e-12 and err_var < 1e-12, (
        f"running mean off by {err_mean:.3g}, running var (unbiased) off by {err_var:.3g}"
    )
    assert is_frozen(bn) and not bn.training, "a frozen layer must stay frozen"
    assert model[3].training, "the dropout layer's train mode must be restored"


def test_reestimate_without_batches_is_an_error():
    with pytest.raises(ValueError, match="at least one batch"):
        reestimate_running_stats(_net(nn.BatchNorm1d), [])


@given(
    seed=st.integers(0, 2**16),
    sizes=st.lists(st.integers(2, 7), min_size=1, max_size=5),
)
def test_reestimate_is_the_cumulative_average_of_the_reference_update(seed, sizes):
    rng = np.random.default_rng(seed)
    batches = [rng.normal(rng.uniform(-2, 2), rng.uniform(0.5, 2), (n, 3)) for n in sizes]
    layer = BatchNorm(3, dtype=torch.float64)
    reestimate_running_stats(layer, [torch.from_numpy(b) for b in batches])
    x = np.concatenate(batches)
    # The exercise's reference, fed the same batches (consecutive splits need equal sizes,
    # so fall back to the update rule itself when the sizes differ).
    mean, var = np.zeros(3), np.ones(3)
    for k, b in enumerate(batches, start=1):
        mean, var = update_running_stats(mean, var, b, momentum=1.0 / k)
    if len(set(sizes)) == 1:
        ref_mean, ref_var = _reference_cumulative(x, sizes[0])
        assert np.allclose(ref_mean, mean, rtol=1e-12, atol=1e-12)
        assert np.allclose(ref_var, var, rtol=1e-12, atol=1e-12)
    err = max(np.max(np.abs(layer.running_mean.numpy() - mean)),
              np.max(np.abs(layer.running_var.numpy() - var)))
    assert err < 1e-10, f"re-estimated statistics differ from the cumulative average by {err:.3g}"


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_running_mean_trajectories_follow_the_update_rule(momentum):
    traj = running_mean_trajectories([momentum], batch_size=4, n_batches=20, seed=3)
    gen = torch.Generator().manual_seed(3)
    data = 3.0 + 2.0 * torch.randn(20, 4, 1, generator=gen, dtype=torch.float64)
    mean, var = np.zeros(1), np.ones(1)
    for k in range(20):
        factor = 1.0 / (k + 1) if momentum is None else momentum
        mean, var = update_running_stats(mean, var, data[k].numpy(), factor)
        assert abs(traj[0, k] - mean[0]) < 1e-12, (
            f"after {k + 1} batches the running mean is {traj[0, k]}, the rule gives {mean[0]}"
        )


@pytest.mark.parametrize("momentum", [0.3, 0.1])
def test_steady_spread_is_the_spread_of_torchs_running_statistics(momentum):
    # One long run of the real layer: from batch 100 on, the running mean's and the running
    # variance's standard deviations over time are the predicted steady-state spreads.
    means, variances = running_stat_trajectories([momentum], batch_size=32, n_batches=3000,
                                                 seed=4)
    mean_spread, var_spread = steady_spread(momentum, true_std=2.0, batch_size=32)
    for name, got, want in (("mean", means[0, 100:].std(), mean_spread),
                            ("variance", variances[0, 100:].std(), var_spread)):
        assert abs(got / want - 1) < 0.15, (
            f"momentum {momentum}: the running {name} wanders by {got:.4f}, "
            f"the prediction is {want:.4f}")


def test_simulated_wander_is_centred_near_one_and_follows_the_prediction():
    # Long runs: the ratio's average is 1 up to the short-window bias of a standard deviation
    # and the scatter of 500 runs; shorter windows scatter more.
    long_mean, long_var = simulated_wander(0.3, n_batches=1000, start=50, trajectories=500,
                                           seed=1)
    for name, ratios in (("mean", long_mean), ("variance", long_var)):
        assert abs(ratios.mean() - 1) < 0.02, f"{name}: average ratio {ratios.mean():.3f}"
    short_mean, _ = simulated_wander(0.3, n_batches=150, start=50, trajectories=500, seed=1)
    assert short_mean.std() > long_mean.std()
    assert np.array_equal(simulated_wander(0.3, trajectories=50, seed=7)[0],
                          simulated_wander(0.3, trajectories=50, seed=7)[0]), "seeded"
    with pytest.raises(ValueError, match="start"):
        simulated_wander(0.3, n_batches=10, start=10)
    with pytest.raises(ValueError, match="momentum"):
        steady_spread(0.0)


def test_torch_momentum_none_is_the_exercise_reference():
    rng = np.random.default_rng(5)
    x = rng.normal(1.0, 2.0, (17, 4))
    layer = nn.BatchNorm1d(4, momentum=None, dtype=torch.float64)
    for i in range(0, 17, 5):
        layer(torch.from_numpy(x[i:i + 5]))
    mean, var = _reference_cumulative(x, 5)
    err = max(np.max(np.abs(layer.running_mean.detach().numpy() - mean)),
              np.max(np.abs(layer.running_var.detach().numpy() - var)))
    assert err < 1e-12, f"torch's momentum=None and the exercise's reference differ by {err:.3g}"


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_running_stat_trajectories_follow_the_update_rule_for_the_variance_too(momentum):
    means, variances = running_stat_trajectories([momentum], batch_size=4, n_batches=20, seed=3)
    assert np.array_equal(means, running_mean_trajectories([momentum], batch_size=4,
                                                           n_batches=20, seed=3))
    gen = torch.Generator().manual_seed(3)
    data = 3.0 + 2.0 * torch.randn(20, 4, 1, generator=gen, dtype=torch.float64)
    mean, var = np.zeros(1), np.ones(1)
    for k in range(20):
        factor = 1.0 / (k + 1) if momentum is None else momentum
        mean, var = update_running_stats(mean, var, data[k].numpy(), factor)
        assert abs(variances[0, k] - var[0]) < 1e-12, (
            f"after {k + 1} batches the running variance is {variances[0, k]}, the rule "
            f"gives {var[0]}"
        )


def test_reestimate_differs_from_update_bn_in_modes_and_frozen_layers():
    # What chapter 3 says about torch.optim.swa_utils.update_bn: it runs the pass with every
    # module in train mode (dropout on) and restores only the model's top-level flag, so a
    # submodule's own mode is lost; reestimate_running_stats keeps dropout off and gives every
    # module its own mode back. A BN layer frozen by freeze_batch_norm refuses train mode:
    # update_bn resets its statistics and then never updates them.
    def net():
        torch.manual_seed(3)
        return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Dropout(0.5),
                             nn.Linear(5, 4), nn.BatchNorm1d(4)).double()

    x = _x(32, seed=4)
    ours, theirs = net(), net()
    for model in (ours, theirs):
        model.train()
        model[2].eval()                                  # dropout off, in a training model
    reestimate_running_stats(ours, [x])
    torch.optim.swa_utils.update_bn([x], theirs)
    assert [m.training for m in ours] == [True, True, False, True, True]
    assert [m.training for m in theirs] == [True] * 5, "update_bn restores one flag for all"
    # Dropout was on during update_bn's pass, so the statistics after it differ from ours.
    assert not torch.allclose(ours[4].running_var, theirs[4].running_var)

    frozen_ours, frozen_theirs = freeze_batch_norm(net()), freeze_batch_norm(net())
    reestimate_running_stats(frozen_ours, [x])
    torch.optim.swa_utils.update_bn([x], frozen_theirs)
    for layer in batch_norm_layers(frozen_theirs):
        assert torch.equal(layer.running_mean, torch.zeros_like(layer.running_mean))
        assert torch.equal(layer.running_var, torch.ones_like(layer.running_var))
    with torch.no_grad():
        z = frozen_ours[0](x)
    assert torch.allclose(frozen_ours[1].running_mean, z.mean(0), rtol=1e-12, atol=1e-12)
    assert all(is_frozen(layer) for layer in batch_norm_layers(frozen_ours))

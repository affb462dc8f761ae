"""The measurements of chapter 9 (BN in the wild), each on a case with a known answer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bncourse import wild
from bncourse.claims import assert_close
from bncourse.exercises import EXERCISES
from bncourse.training import DTYPE, load_digits_data, train


@pytest.fixture(scope="module")
def data():
    return load_digits_data()


@pytest.fixture(scope="module")
def trained(data):
    model = wild.make_net("bn", seed=0)
    train(model, data, epochs=3, seed=0, progress=False)
    return model.eval()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------
# The forward with the batch's own statistics
# --------------------------------------------------------------------------------------


def test_batch_stats_forward_is_torchs_training_mode_and_leaves_the_buffers(trained, data):
    x = data.x_test[:32]
    before = _state(trained)
    ours = wild.batch_stats_forward(trained, x)
    assert _same_state(before, _state(trained)), "the running statistics moved"
    reference = copy.deepcopy(trained).train()
    with torch.no_grad():
        theirs = reference(x)
    assert_close(ours, theirs, rtol=1e-12, atol=1e-12, what="batch statistics against torch")


def test_batch_stats_forward_runs_many_batches_at_once(trained, data):
    xb = data.x_test[:24].reshape(3, 8, 64)
    together = wild.batch_stats_forward(trained, xb)
    for d in range(3):
        alone = wild.batch_stats_forward(trained, xb[d])
        assert_close(together[d], alone, rtol=1e-12, atol=1e-12, what=f"draw {d}")


def test_a_batch_of_one_gives_the_same_output_for_every_input(trained, data):
    outs = wild.batch_stats_forward(trained, data.x_test[:10, None, :])[:, 0]
    assert torch.equal(outs, outs[:1].expand_as(outs))
    # x_hat = 0: the first BN layer outputs beta
    first = trained[:2]
    assert torch.equal(wild.batch_stats_forward(first, data.x_test[:1]),
                       first[1].bias.detach()[None])


def test_batch_stats_forward_rejects_what_it_cannot_run(trained):
    with pytest.raises(TypeError, match="nn.Sequential"):
        wild.batch_stats_forward(nn.ModuleList(list(trained)), torch.zeros(2, 64, dtype=DTYPE))
    with pytest.raises(ValueError, match="shape"):
        wild.batch_stats_forward(trained, torch.zeros(64, dtype=DTYPE))


# --------------------------------------------------------------------------------------
# What the batch leaks
# --------------------------------------------------------------------------------------


def test_the_leak_is_zero_in_eval_mode_and_not_in_training_mode(trained, data):
    for b in (2, 8):
        in_eval = wild.batch_leak(trained, data.x_test, data.y_test, b, mode="eval",
                                  examples=10, draws=10)
        assert in_eval.flip_rate == 0 and in_eval.logit_spread == 0
    in_train = wild.batch_leak(trained, data.x_test, data.y_test, 2, examples=10, draws=10)
    assert in_train.logit_spread > 0


def test_the_leak_of_a_groupnorm_network_is_zero_in_training_mode(data):
    model = wild.make_net("gn", seed=0)
    leak = wild.batch_leak(model, data.x_test, data.y_test, 4, examples=10, draws=10)
    assert leak.flip_rate == 0
    assert leak.logit_spread < 1e-12, f"GroupNorm output moved by {leak.logit_spread:.3g}"


def test_batch_leak_rejects_bad_settings(trained, data):
    with pytest.raises(ValueError, match="batch_size"):
        wild.batch_leak(trained, data.x_test, data.y_test, 1)
    with pytest.raises(ValueError, match="mode"):
        wild.batch_leak(trained, data.x_test, data.y_test, 4, mode="test")
    with pytest.raises(ValueError, match="batch-mates"):
        wild.batch_leak(trained, data.x_test, data.y_test, 200, same_class=True)


# --------------------------------------------------------------------------------------
# Class-sorted batches
# --------------------------------------------------------------------------------------


def test_sorted_steps_hold_one_class_per_sub_batch_and_shuffle_bn_mixes_them(data):
    y = data.y_train
    for regime in ("sorted", "shuffle_bn"):
        steps = wild.step_batches(y, regime, generator=torch.Generator().manual_seed(0))
        assert len(steps) == y.numel() // (16 * 8)
        for subs in steps:
            assert len(subs) == 8 and all(s.numel() == 16 for s in subs)
            flat = torch.cat(subs)
            assert flat.unique().numel() == flat.numel()
            counts = torch.bincount(y[flat], minlength=10)
            # the step holds 8 classes, 16 examples each, in both regimes
            assert sorted(counts.tolist()) == [0, 0] + [16] * 8
            classes = [y[s].unique().numel() for s in subs]
            if regime == "sorted":
                assert classes == [1] * 8
            else:
                assert max(classes) > 1


def test_shuffled_steps_are_a_permutation(data):
    steps = wild.step_batches(data.y_train, "shuffled", generator=torch.Generator().manual_seed(1))
    flat = torch.cat([torch.cat(s) for s in steps])
    assert flat.unique().numel() == flat.numel() == len(steps) * 128


def test_step_batches_rejects_unknown_regimes_and_too_few_classes(data):
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="regime"):
        wild.step_batches(data.y_train, "random", generator=gen)
    with pytest.raises(ValueError, match="classes"):
        wild.step_batches(data.y_train, "sorted", groups=11, generator=gen)


def test_sorted_batch_accuracy_of_groupnorm_is_its_eval_accuracy(data):
    model = wild.make_net("gn", seed=0).eval()
    with torch.no_grad():
        eval_acc = float((model(data.x_test).argmax(1) == data.y_test).double().mean())
    assert wild.sorted_batch_accuracy(model, data.x_test, data.y_test) == eval_acc


def test_make_net_rejects_an_unknown_norm():
    with pytest.raises(ValueError, match="norm"):
        wild.make_net("ln")


# --------------------------------------------------------------------------------------
# Test-time shift
# --------------------------------------------------------------------------------------


def test_shift_images_settings(data):
    raw = wild.raw_pixels(data, data.x_test)
    assert raw.min() == 0 and raw.max() == 16
    assert np.array_equal(wild.shift_images(raw, "blur", 0), raw)
    assert np.array_equal(wild.shift_images(raw, "inversion", 3), 16.0 - raw)
    contrast = wild.shift_images(raw, "contrast", 2)
    assert_close(contrast.mean(axis=1), raw.mean(axis=1), rtol=1e-12, what="image means")
    noisy = wild.shift_images(raw, "noise", 3, seed=0)
    assert noisy.min() >= 0 and noisy.max() <= 16
    assert np.array_equal(noisy, wild.shift_images(raw, "noise", 3, seed=0))
    with pytest.raises(ValueError, match="kind"):
        wild.shift_images(raw, "rotation", 1)
    with pytest.raises(ValueError, match="severity"):
        wild.shift_images(raw, "blur", 4)
    with pytest.raises(ValueError, match="pixels"):
        wild.shift_images(raw[:, :10], "blur", 1)


def test_raw_pixels_standardize_back_to_the_inputs(data):
    raw = wild.raw_pixels(data, data.x_test)
    assert_close(data.standardize(raw), data.x_test, rtol=1e-12, atol=1e-12, what="inputs")


def test_adabn_on_the_statistics_it_was_trained_with_is_the_running_statistics(trained, data):
    """Running statistics re-estimated on the training set in one pass are, by construction,
    what AdaBN computes on the training set: the accuracies are equal."""
    model = copy.deepcopy(trained)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(data.x_train)
    model.eval()
    running = wild.shifted_accuracy(model, data.x_train, data.y_train, "running")
    adabn = wild.shifted_accuracy(model, data.x_train, data.y_train, "adabn")
    assert running == adabn


def test_adabn_on_unshifted_test_data_is_close_to_the_training_statistics(trained, data):
    """The test set's statistics differ from the training set's only by sampling: within
    2 points of accuracy (11 of the 540 test examples)."""
    running = wild.shifted_accuracy(trained, data.x_test, data.y_test, "running")
    adabn = wild.shifted_accuracy(trained, data.x_test, data.y_test, "adabn")
    assert abs(running - adabn) <= 0.02, f"{running} against {adabn}"


def test_tent_with_zero_steps_is_the_test_batch_statistics(trained, data):
    x = wild.shifted_inputs(data, wild.raw_pixels(data, data.x_test), "contrast", 2)
    for b in (1, 7, 64):
        tent = wild.shifted_accuracy(trained, x, data.y_test, "tent", tent_steps=0,
                                     batch_size=b)
        batch = wild.shifted_accuracy(trained, x, data.y_test, "batch", batch_size=b)
        assert tent == batch


def test_tent_predicts_each_batch_before_its_own_update(trained, data):
    # one step: the first batch's prediction is the unadapted test-batch statistics', and each
    # later batch is predicted with gamma and beta adapted on the batches before it only
    x = wild.shifted_inputs(data, wild.raw_pixels(data, data.x_test), "contrast", 2)[:64]
    y = data.y_test[:64]
    one_batch = wild.shifted_accuracy(trained, x, y, "tent", batch_size=64, tent_lr=1.0)
    assert one_batch == wild.shifted_accuracy(trained, x, y, "batch", batch_size=64)
    assert one_batch != wild.shifted_accuracy(trained, x, y, "tent", batch_size=64, tent_lr=1.0,
                                              tent_steps=3)


def test_every_method_leaves_the_model_as_it_found_it(trained, data):
    before = _state(trained)
    x = data.x_test[:100]
    for method in wild.METHODS:
        wild.shifted_accuracy(trained, x, data.y_test[:100], method, tent_steps=2)
        assert _same_state(before, _state(trained)), method
        assert not trained.training
        assert all(p.requires_grad for p in trained.parameters())


def test_tent_moves_only_gamma_and_beta():
    torch.manual_seed(0)
    model = wild.make_net("bn", seed=0)
    x = torch.randn(32, 64, dtype=DTYPE)
    # the update rule of shifted_accuracy, run on a copy to see what moved
    work = copy.deepcopy(model)
    before = _state(work)
    for p in work.parameters():
        p.requires_grad_(False)
    bns = [m for m in work.modules() if isinstance(m, nn.BatchNorm1d)]
    params = [p for m in bns for p in (m.weight, m.bias)]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-2)
    loss = wild.entropy(wild.batch_stats_forward(work, x))
    loss.backward()
    opt.step()
    after = _state(work)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"1.weight", "1.bias", "4.weight", "4.bias"}


def test_entropy_of_uniform_and_certain_predictions():
    uniform = torch.zeros(3, 10, dtype=DTYPE)
    assert_close(wild.entropy(uniform), np.log(10), rtol=1e-12, what="entropy of uniform")
    certain = torch.full((2, 10), -1e3, dtype=DTYPE)
    certain[:, 3] = 0
    assert float(wild.entropy(certain)) < 1e-12


def test_shifted_accuracy_rejects_unknown_methods_and_batch_sizes(trained, data):
    with pytest.raises(ValueError, match="method"):
        wild.shifted_accuracy(trained, data.x_test, data.y_test, "precise")
    with pytest.raises(ValueError, match="batch_size"):
        wild.shifted_accuracy(trained, data.x_test, data.y_test, "batch", batch_size=0)


def _first_bn_output(model, x):
    return wild.batch_stats_forward(model[:2], x)


@pytest.mark.parametrize("weight", [0.25, 0.4])
def test_the_first_bn_layer_with_the_datas_statistics_undoes_the_blend(trained, data, weight):
    """A blend with the negative maps every pixel by a x + 16 w, a = 1 - 2w: after a linear
    layer without bias, a common factor a and a per-channel offset, which BN with the shifted
    data's statistics removes. Exactly: a d / sqrt(a^2 v + eps) = d / sqrt(v + eps / a^2), so
    the blend's output equals the clean data's with eps divided by a^2."""
    raw = wild.raw_pixels(data, data.x_test)
    blended = data.standardize((1 - weight) * raw + weight * (16 - raw))
    a = 1 - 2 * weight
    clean = copy.deepcopy(trained)
    clean[1].eps = trained[1].eps / a**2
    assert_close(_first_bn_output(trained, blended), _first_bn_output(clean, data.x_test),
                 rtol=1e-9, atol=1e-9, what=f"first BN output, blend weight {weight}")


def test_the_first_bn_layer_turns_the_full_inversion_into_its_negative(trained, data):
    raw = wild.raw_pixels(data, data.x_test)
    inverted = data.standardize(16 - raw)
    bn = trained[1]
    gamma, beta = bn.weight.detach(), bn.bias.detach()
    x_hat_inverted = (_first_bn_output(trained, inverted) - beta) / gamma
    x_hat = (_first_bn_output(trained, data.x_test) - beta) / gamma
    assert_close(x_hat_inverted, -x_hat, rtol=1e-9, atol=1e-9, what="x_hat of the inversion")


def test_passes_per_example():
    assert wild.passes_per_example("running") == {"forward": 1, "backward": 0}
    assert wild.passes_per_example("tent", tent_steps=3) == {"forward": 3, "backward": 3}
    assert wild.passes_per_example("tent") == {"forward": 1, "backward": 1}
    assert wild.passes_per_example("tent", tent_steps=0) == {"forward": 1, "backward": 0}
    with pytest.raises(ValueError, match="method"):
        wild.passes_per_example("sgd")


# --------------------------------------------------------------------------------------
# Batches of one, and the exercises' values against torch
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,b,drop_last", [(1257, 8, False), (1257, 8, True), (1000, 37, False),
                                           (64, 32, False), (5, 8, False), (5, 8, True)])
def test_last_batch_size_is_the_data_loaders(n, b, drop_last):
    loader = DataLoader(TensorDataset(torch.arange(n)), batch_size=b, drop_last=drop_last)
    sizes = [len(x) for (x,) in loader]
    assert wild.last_batch_size(n, b, drop_last) == (sizes[-1] if sizes else 0)


def test_last_batch_size_rejects_bad_input():
    with pytest.raises(ValueError, match="batch_size"):
        wild.last_batch_size(10, 0)


def test_torch_refuses_one_value_per_channel_in_training_mode():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm1d(3)(torch.ones(1, 3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm2d(3)(torch.ones(1, 3, 1, 1))
    nn.BatchNorm2d(3)(torch.randn(1, 3, 2, 2))


def test_exercise_values_against_torch():
    bn = nn.BatchNorm1d(5, eps=1e-30, dtype=DTYPE)   # torch refuses eps = 0 in training
    out = bn(torch.randn(2, 5, dtype=DTYPE))
    assert_close(out.abs(), torch.full_like(out, EXERCISES["wild.pair_xhat"].value),
                 rtol=1e-12, what="|x_hat| in a batch of two")
    loader = DataLoader(TensorDataset(torch.arange(1000)), batch_size=37)
    assert len(list(loader)[-1][0]) == EXERCISES["wild.last_batch"].value
    n = int(EXERCISES["wild.tiny_m"].value)
    for batch, enough in ((n, True), (n - 1, False)):
        x = torch.randn(batch, 3, 2, 2)
        m = x.numel() // x.shape[1]          # values per channel that BatchNorm2d averages
        assert (m >= 16) == enough


# --------------------------------------------------------------------------------------
# Dropout before BN, running statistics in half precision
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("p,mu", [(0.5, 1.0), (0.2, 0.0), (0.3, -2.0)])
def test_dropout_before_bn_running_variance_follows_the_variance_shift(p, mu):
    # torch's Dropout then BatchNorm1d: the running variance learned in training over the
    # variance of the same input in eval is 1/q + (1 - q) mu^2 / (q s^2), q = 1 - p
    q, s2, channels = 1 - p, 1.0, 32
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(1)
    net = nn.Sequential(nn.Dropout(p), nn.BatchNorm1d(channels, momentum=None, dtype=DTYPE))
    with torch.no_grad():
        for _ in range(100):
            net(mu + torch.randn(512, channels, generator=gen, dtype=DTYPE))
    ratio = float(net[1].running_var.mean()) / s2
    predicted = 1 / q + (1 - q) * mu ** 2 / (q * s2)
    assert abs(ratio - predicted) < 0.02 * predicted, (ratio, predicted)
    # in eval mode dropout does nothing and the output's spread is 1 / sqrt(ratio)
    h = mu + torch.randn(20000, channels, generator=gen, dtype=DTYPE)
    with torch.no_grad():
        out = net.eval()(h)
    assert abs(float(out.std(0).mean()) - predicted ** -0.5) < 0.02


def test_float16_running_variance_stalls_and_float32_does_not():
    batch = torch.tensor([[-22.375], [22.375]])  # exact in float16; unbiased variance 1001.28125
    result = {}
    for dtype in (torch.float16, torch.float32):
        bn = nn.BatchNorm1d(1, momentum=0.1).to(dtype)
        bn.running_var.fill_(1000.0)
        with torch.no_grad():
            for _ in range(50):
                bn(batch.to(dtype))
        assert bn.running_var.dtype == dtype
        result[dtype] = float(bn.running_var)
    assert result[torch.float16] == 1000.0
    assert abs(result[torch.float32] - 1001.28125) < 0.01


def test_autocast_keeps_bn_buffers_in_float32_and_half_does_not():
    model = nn.Sequential(nn.Linear(8, 4, bias=False), nn.BatchNorm1d(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model[0](torch.randn(16, 8)).dtype == torch.bfloat16
        model(torch.randn(16, 8))
    assert int(model[1].num_batches_tracked) == 1
    assert {model[1].running_var.dtype, model[1].running_mean.dtype} == {torch.float32}
    model.half()
    assert {model[1].running_var.dtype, model[1].running_mean.dtype} == {torch.float16}

"""Chapter 8, first part: the verdict table, the networks, and each measurement on a known case.

* The verdict table refuses a row its estimate does not support.
* Santurkar et al.'s covariate-shift measure is zero when nothing before the layer moves, and
  equals a hand-derived gradient on a two-layer linear network.
* The loss range, gradient predictiveness and beta-smoothness are exact on a quadratic.
* The stored sweeps follow their rules (chosen rate, largest rate that trains, provenance), and
  the rates the chapter trains with are the ones chosen on the validation split.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bncourse.claims import mean_se, paired_difference
from bncourse.training import load_digits_data, split_validation
from bncourse.why import covariate, landscape, models, rates, table


@pytest.fixture(autouse=True)
def _fresh_table():
    table.clear()
    yield
    table.clear()


# --------------------------------------------------------------------------------------
# The verdict table
# --------------------------------------------------------------------------------------

def _row(estimate, expect="greater", verdict="holds"):
    table.record(2, claim="BN allows higher learning rates", verdict=verdict,
                 effect="log10 largest rate, BN minus plain", estimate=estimate,
                 expect=expect, experiment="rate sweep", reference="bjorck2018understanding")


def test_a_row_is_stored_only_when_its_estimate_supports_it():
    up = paired_difference([3.0, 3.1, 2.9, 3.2, 3.0], [1.0, 1.0, 1.1, 0.9, 1.0])
    _row(up)
    assert [r.number for r in table.rows()] == [2]
    with pytest.raises(AssertionError, match="claim 2"):
        _row(up, expect="indistinguishable")
    with pytest.raises(AssertionError, match="claim 2"):
        _row(up, expect="less")
    noise = mean_se([0.1, -0.2, 0.15, -0.05, 0.0])
    _row(noise, expect="indistinguishable", verdict="does not hold")
    assert table.rows()[0].verdict == "does not hold", "a second record replaces the row"
    with pytest.raises(AssertionError, match="claim 2"):
        _row(noise, expect="greater")


def test_a_malformed_row_is_refused_with_its_reason():
    est = mean_se([1.0, 1.1, 0.9])
    with pytest.raises(ValueError, match="verdict must start"):
        _row(est, verdict="probably")
    with pytest.raises(ValueError, match="no uncertainty"):
        _row(0.5)
    with pytest.raises(ValueError, match="expect must be"):
        _row(est, expect="bigger")
    with pytest.raises(ValueError, match="claim number"):
        table.record(9, claim="c", verdict="holds", effect="e", estimate=est, expect="greater",
                     experiment="x", reference="k")
    with pytest.raises(ValueError, match=r"'\|'"):
        table.record(1, claim="a | b", verdict="holds", effect="e", estimate=est,
                     expect="greater", experiment="x", reference="k")


def test_the_rendered_table_has_one_line_per_claim_and_cites_its_keys():
    table.record(3, claim="c3", verdict="holds only when small", effect="e3",
                 estimate=mean_se([1.0, 1.2, 0.8]), expect="greater", experiment="x",
                 reference="a2018, b2019")
    _row(mean_se([1.0, 1.1, 0.9]))
    lines = table.markdown().splitlines()
    assert len(lines) == 4 and lines[2].startswith("| 2 |") and lines[3].startswith("| 3 |")
    assert "{cite:t}`a2018`, {cite:t}`b2019`" in lines[3]
    with pytest.raises(AssertionError, match=r"\[1, 4, 5, 6, 7, 8\]"):
        table.require()
    table.require((2, 3))


# --------------------------------------------------------------------------------------
# The networks
# --------------------------------------------------------------------------------------

def test_noisy_bn_is_bn_in_eval_mode_and_shifts_each_step_within_its_bounds():
    torch.manual_seed(0)
    x = torch.randn(64, 5, dtype=torch.float64) * 3 + 1
    noisy = models.NoisyBatchNorm(5, shift=0.5, scale=1.5, seed=3)
    plain = nn.BatchNorm1d(5, dtype=torch.float64)
    y1, y2, ref = noisy(x), noisy(x), plain(x)
    plain(x)  # the same two updates of the running statistics as the noisy layer's
    means, stds = y1.mean(0), y1.std(0, unbiased=False) / ref.std(0, unbiased=False)
    assert torch.all(means.abs() <= 0.5) and torch.all((stds >= 1) & (stds <= 1.5))
    assert not torch.equal(y1, y2), "the noise must change at every step"
    noisy.eval()
    plain.eval()
    torch.testing.assert_close(noisy(x), plain(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="scale"):
        models.NoisyBatchNorm(5, scale=0.5)


def test_make_net_scales_the_weights_and_the_last_layer_only_when_asked():
    base = models.linear_layers(models.make_net("bn", seed=4))
    scaled = models.linear_layers(models.make_net("bn", seed=4, init_scale=10.0))
    hidden = models.linear_layers(models.make_net("bn", seed=4, init_scale=10.0,
                                                  scale_last=False))
    for a, b in zip(base, scaled, strict=True):
        torch.testing.assert_close(b.weight, 10 * a.weight, rtol=1e-15, atol=0)
    torch.testing.assert_close(hidden[-1].weight, base[-1].weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match="norm must be"):
        models.make_net("layer")
    with pytest.raises(ValueError, match="init_scale"):
        models.make_net("bn", init_scale=0.0)


@pytest.fixture(scope="module")
def digits():
    return load_digits_data()


def test_train_sgd_reports_a_diverged_run_and_trains_a_sane_one(digits):
    bad = models.train_sgd(models.make_net("none", seed=1), digits, lr=30.0, epochs=2, seed=1)
    assert bad.diverged and bad.accuracy == 0.1 and bad.losses.size < 2 * 20
    good = models.train_sgd(models.make_net("bn", seed=1), digits, lr=0.1, epochs=2, seed=1)
    assert not good.diverged and good.accuracy > 0.8
    with pytest.raises(ValueError, match="lr"):
        models.train_sgd(models.make_net("bn"), digits, lr=-1.0)


# --------------------------------------------------------------------------------------
# The covariate-shift measure
# --------------------------------------------------------------------------------------

def test_the_shift_measure_is_zero_when_nothing_before_the_layer_moves(digits):
    net = models.make_net("bn", seed=2)
    x, y = digits.x_train[:64], digits.y_train[:64]
    first = covariate.ics_measure(net, x, y, 0, lr=0.5)
    assert first.l2 == 0 and first.cosine == pytest.approx(1, abs=1e-12)
    still = covariate.ics_measure(net, x, y, 3, lr=0.0)
    assert still.l2 == 0 and still.relative == 0
    moved = covariate.ics_measure(net, x, y, 3, lr=0.5)
    assert moved.l2 > 0 and moved.cosine < 1
    with pytest.raises(ValueError, match="layer must be"):
        covariate.ics_measure(net, x, y, 5, lr=0.1)


def test_the_shift_measure_equals_the_hand_derived_gradient_of_a_linear_network():
    # f(x) = W2 W1 x, L = mean over examples of |f(x) - t|^2 / 2:
    # dL/dW2 = R (W1 X)^T / n and dL/dW1 = W2^T R X^T / n, with R = W2 W1 X - T.
    r = np.random.default_rng(5)
    n, d, h, k, lr = 16, 4, 3, 2, 0.2
    X, T = r.normal(size=(d, n)), r.normal(size=(k, n))
    W1, W2 = r.normal(size=(h, d)), r.normal(size=(k, h))

    def grads(w1, w2):
        res = w2 @ w1 @ X - T
        return res @ (w1 @ X).T / n, w2.T @ res @ X.T / n

    g, g1 = grads(W1, W2)
    g_after, _ = grads(W1 - lr * g1, W2)
    net = nn.Sequential(nn.Linear(d, h, bias=False, dtype=torch.float64),
                        nn.Linear(h, k, bias=False, dtype=torch.float64))
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(W1))
        net[1].weight.copy_(torch.from_numpy(W2))
    got = covariate.ics_measure(
        net, torch.from_numpy(X.T), torch.from_numpy(T.T), 1, lr,
        loss_fn=lambda out, t: 0.5 * ((out - t) ** 2).sum(1).mean())
    want = np.linalg.norm(g - g_after)
    assert got.l2 == pytest.approx(want, rel=1e-12)
    assert got.relative == pytest.approx(want / np.linalg.norm(g), rel=1e-12)
    cos = float((g * g_after).sum() / (np.linalg.norm(g) * np.linalg.norm(g_after)))
    assert got.cosine == pytest.approx(cos, rel=1e-12)
    torch.testing.assert_close(net[0].weight, torch.from_numpy(W1), rtol=0, atol=0)


# --------------------------------------------------------------------------------------
# The landscape measurements
# --------------------------------------------------------------------------------------

class _Quadratic(nn.Module):
    def __init__(self, a: np.ndarray, theta: np.ndarray):
        super().__init__()
        self.a = torch.from_numpy(a)
        self.theta = nn.Parameter(torch.from_numpy(theta.copy()))

    def forward(self):
        return 0.5 * self.theta @ self.a @ self.theta


def test_the_three_measurements_are_exact_on_a_quadratic():
    r = np.random.default_rng(7)
    q = np.linalg.qr(r.normal(size=(5, 5)))[0]
    lam = np.array([0.5, 1.0, 2.0, 3.0, 6.0])
    a = q @ np.diag(lam) @ q.T
    theta = r.normal(size=5)
    etas = [0.01, 0.05, 0.1, 0.2]
    p = landscape.probe(_Quadratic(a, theta), lambda m: m(), etas)
    g = a @ theta
    loss0 = 0.5 * theta @ a @ theta
    want_losses = [loss0 - e * g @ g + 0.5 * e**2 * g @ a @ g for e in etas]
    np.testing.assert_allclose(p.losses, want_losses, rtol=1e-12)
    np.testing.assert_allclose(p.grad_changes, [e * np.linalg.norm(a @ g) for e in etas],
                               rtol=1e-12)
    assert p.loss_range == pytest.approx(max(want_losses) - min(want_losses), rel=1e-10)
    assert p.beta == pytest.approx(np.linalg.norm(a @ g) / np.linalg.norm(g), rel=1e-12)
    assert p.beta <= lam.max() * (1 + 1e-12)
    # Along the top eigenvector the effective beta-smoothness is the largest eigenvalue.
    top = _Quadratic(a, q[:, -1] * 3.0)
    assert landscape.probe(top, lambda m: m(), etas).beta == pytest.approx(6.0, rel=1e-12)
    with pytest.raises(ValueError, match="step_sizes"):
        landscape.probe(top, lambda m: m(), [0.1])


# --------------------------------------------------------------------------------------
# The stored sweeps and measurements
# --------------------------------------------------------------------------------------

def test_rate_rules_on_a_small_case():
    lrs = (0.1, 1.0, 10.0)
    acc = [[0.95, 0.93], [0.96, 0.96], [0.5, 0.97]]
    div = [[False, False], [False, False], [True, False]]
    assert rates.chosen_rate(lrs, acc) == 1.0
    assert rates.largest_trained_rate(lrs, acc, div) == 1.0
    assert rates.largest_trained_rate(lrs, [[0.5]] * 3, [[False]] * 3) is None


def test_the_stored_sweeps_follow_their_rules():
    s = rates.load_sweeps()
    assert s["lrs"] == list(rates.LR_GRID) and s["seeds"] == list(rates.SEEDS)
    assert s["init_scales"] == list(rates.INIT_SCALES)
    for norm, r in s["lr_sweep"].items():
        assert np.shape(r["accuracy"]) == (len(rates.LR_GRID), len(rates.SEEDS))
        assert s["chosen"][norm] == rates.chosen_rate(s["lrs"], r["accuracy"])
        assert s["largest_trained"][norm] == rates.largest_trained_rate(
            s["lrs"], r["accuracy"], r["diverged"])
        for accs, divs in zip(r["accuracy"], r["diverged"], strict=True):
            assert all(a == 0.1 for a, d in zip(accs, divs, strict=True) if d)
    assert set(s["init_sweep"]) == {name for name, _, _ in rates.INIT_ARMS}
    # The rates the other measurements train with are the ones chosen on the validation split.
    assert covariate.CHOSEN == s["chosen"]
    assert landscape.LR == covariate.LR == s["chosen"]["none"]
    prov = s["provenance"]
    assert prov["command"] == "python -m bncourse.why.rates"
    assert {"runs", "machine", "load_average", "seconds"} <= set(prov)
    assert "date" in prov["machine"]


def test_the_stored_trajectories_match_their_settings():
    import json

    with open(covariate.ICS_FILE) as f:
        ics = json.load(f)
    with open(landscape.LANDSCAPE_FILE) as f:
        land = json.load(f)
    assert ics["provenance"]["command"] == "python -m bncourse.why.covariate"
    assert land["provenance"]["command"] == "python -m bncourse.why.landscape"
    probes = covariate.STEPS // covariate.PROBE_EVERY
    for norm in ("bn", "none"):
        assert np.shape(ics["ics"][norm]["relative"]) == (len(covariate.SEEDS), probes, 5)
        assert np.all(np.asarray(ics["ics"][norm]["relative"])[:, :, 0] == 0), \
            "the first layer has nothing before it"
        assert np.shape(land["trajectories"][norm]["beta"]) == (
            len(landscape.SEEDS), landscape.STEPS // landscape.PROBE_EVERY)
    assert ics["chosen"] == covariate.CHOSEN and land["lr"] == landscape.LR
    assert {k: len(v) for k, v in ics["accuracy"].items()} == {
        k: len(covariate.ACCURACY_SEEDS) for k in ("bn", "noisy", "none", "none@0.1")}


def test_a_reduced_rerun_reproduces_the_stored_sweep():
    s = rates.load_sweeps()
    val = split_validation(load_digits_data())
    i = s["lrs"].index(3.0)
    got = rates.lr_sweep(val, ("none",), [3.0], s["seeds"][:1])["none"]
    assert got["diverged"][0][0] == s["lr_sweep"]["none"]["diverged"][i][0]
    assert got["accuracy"][0][0] == pytest.approx(s["lr_sweep"]["none"]["accuracy"][i][0],
                                                  abs=1 / val.y_test.numel())


def test_the_predictions_answers_are_what_the_stored_measurements_show():
    import json

    from bncourse.exercises.why import FIRST_TO_DIVERGE, NOISY_SCORE

    s = rates.load_sweeps()
    lrs = np.asarray(s["lrs"])
    first = {k: lrs[np.asarray(v["diverged"]).any(axis=1)].min()
             for k, v in s["lr_sweep"].items()}
    letter = {"none": "a", "bn": "b", "noisy": "c"}
    assert sorted(first.values())[0] < sorted(first.values())[1], "one network fails first"
    assert letter[min(first, key=first.get)] == FIRST_TO_DIVERGE.answer
    with open(covariate.ICS_FILE) as f:
        acc = {k: np.asarray(v) for k, v in json.load(f)["accuracy"].items()}
    # (b): below BN, far above the plain network at the same rate
    assert NOISY_SCORE.answer == "b"
    assert paired_difference(acc["noisy"], acc["bn"]).high < 0
    assert paired_difference(acc["noisy"], acc["none@0.1"]).low > 0.05


def test_the_networks_of_a_seed_share_their_linear_weights():
    nets = [models.linear_layers(models.make_net(norm, seed=3)) for norm in models.NORMS]
    for layers in nets[1:]:
        for a, b in zip(nets[0], layers, strict=True):
            torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)


def test_the_input_shift_is_zero_when_nothing_trains_and_the_noise_alone_moves_it(digits):
    probe = digits.x_test[:64]
    for norm in ("bn", "none"):
        still = covariate.input_shift(models.make_net(norm, seed=0), 2, probe, digits, lr=0.0,
                                      steps=5, seed=0)
        assert still == 0, norm
    noisy = covariate.input_shift(models.make_net("noisy", seed=0), 2, probe, digits, lr=0.0,
                                  steps=5, seed=0)
    assert noisy > 0.01


def test_ten_times_larger_invariant_weights_at_a_hundred_times_the_rate_follow_the_default(digits):
    # Chapter 4's corollary under SGD: starting from a*w with the rate a^2*eta for the weights
    # BN follows is the run from w with eta (exact for eps = 0; BN's eps = 1e-5 leaves a
    # relative difference of the order of eps over the pre-activations' variance).
    a = 10.0
    base = models.train_sgd(models.make_net("bn", seed=6), digits, lr=0.1, epochs=1, seed=6)
    same = models.train_sgd(models.make_net("bn", seed=6, init_scale=a, scale_last=False),
                            digits, lr=0.1, invariant_lr=0.1 * a**2, epochs=1, seed=6)
    slow = models.train_sgd(models.make_net("bn", seed=6, init_scale=a, scale_last=False),
                            digits, lr=0.1, epochs=1, seed=6)
    np.testing.assert_allclose(same.losses[:5], base.losses[:5], rtol=1e-4)
    assert not np.allclose(slow.losses[1:5], base.losses[1:5], rtol=1e-3)
    with pytest.raises(ValueError, match="invariant_lr"):
        models.train_sgd(models.make_net("bn"), digits, lr=0.1, invariant_lr=0.0)

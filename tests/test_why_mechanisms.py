"""Claims 5 to 8 of the chapter on why BN helps: each measurement on a case whose answer is
known, and the stored sweeps against their rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from bncourse.exercises import why_mechanisms as ex
from bncourse.exercises.core import PASSED
from bncourse.training import load_digits_data
from bncourse.why import alternatives, regularizer
from bncourse.why.alternatives import ResidualMLP, WSLinear, adaptive_gradient_clip_
from bncourse.why.gradients import DeepNet, gradient_ratio, gradient_trace
from bncourse.why.rank import stable_rank, stable_rank_by_depth
from bncourse.why.regularizer import GhostBatchNorm1d, make_model

# --- stable rank ------------------------------------------------------------------------

def test_stable_rank_of_rank_one_and_orthogonal_matrices():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(12, 1, generator=g, dtype=torch.float64), torch.randn(1, 7, generator=g,
                                                                             dtype=torch.float64)
    assert stable_rank(u @ v) == pytest.approx(1.0, rel=1e-12)
    q, _ = torch.linalg.qr(torch.randn(9, 9, generator=g, dtype=torch.float64))
    assert stable_rank(q) == pytest.approx(9.0, rel=1e-12)
    assert stable_rank(3.0 * q.numpy()) == pytest.approx(9.0, rel=1e-12)   # scale free


def test_stable_rank_exercise_matches_the_function():
    rng = np.random.default_rng(1)
    a, _ = np.linalg.qr(rng.normal(size=(5, 3)))
    b, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    m = a @ np.diag([2.0, 1.0, 1.0]) @ b.T
    assert ex.STABLE_RANK.value == pytest.approx(stable_rank(m), rel=1e-12)
    assert ex.STABLE_RANK.check(stable_rank(m)).status == PASSED
    assert ex.STABLE_RANK.check(3.0).mistake == "rank"


def test_stable_rank_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        stable_rank(np.ones(4))
    with pytest.raises(ValueError, match="zero matrix"):
        stable_rank(np.zeros((3, 3)))


def test_stable_rank_by_depth_starts_at_the_input_and_collapses_without_bn():
    with_bn = stable_rank_by_depth(30, use_bn=True, seeds=range(3))
    without = stable_rank_by_depth(30, use_bn=False, seeds=range(3))
    np.testing.assert_array_equal(with_bn[:, 0], without[:, 0])      # the same input batch
    assert np.all(without[:, -1] < without[:, 0] / 3)


# --- gradients at initialization and after a few steps ---------------------------------

def test_gradient_ratio_of_one_block_is_one_and_needs_gradients():
    model = DeepNet(1, 8, seed=0)
    with pytest.raises(ValueError, match="backward"):
        gradient_ratio(model)
    x = torch.randn(16, 64, dtype=torch.float64)
    model(x).sum().backward()
    assert gradient_ratio(model) == 1.0


def test_scaled_weight_before_bn_gets_a_scaled_down_gradient():
    """A weight followed by BN is scale invariant: doubling it halves its gradient (exactly
    when BN's epsilon is negligible; torch's 1e-5 changes the gradient by about eps / var)."""
    x = torch.randn(32, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    grads = []
    for scale in (1.0, 2.0):
        model = DeepNet(4, 16, seed=5)
        for norm in model.norms:
            norm.eps = 1e-30
        with torch.no_grad():
            model.linears[0].weight.mul_(scale)
        model(x).square().sum().backward()
        grads.append(model.linears[0].weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0] / 2, rtol=1e-9, atol=1e-12)


def test_gradient_ratio_at_initialization_grows_by_chapter_4s_gain_per_layer():
    """Plain BN network at initialization: |grad W_1| / |grad W_L| ~ G^(L-1), with
    G = sqrt(pi / (pi - 1)); the residual network's ratio is far smaller."""
    from bncourse.invariance import layer_gain

    data = load_digits_data()
    depth = 24
    trace = gradient_trace(data, depth=depth, width=64, seeds=range(3), steps=(0,))
    per_layer = np.exp(np.log(trace.ratio[:, 0]).mean() / (depth - 1))
    assert per_layer == pytest.approx(layer_gain("relu"), rel=0.03)
    residual = gradient_trace(data, depth=depth, width=64, architecture="residual",
                              seeds=range(3), steps=(0,))
    assert np.all(residual.ratio[:, 0] < trace.ratio[:, 0] / 10)


def test_gradient_trace_records_the_steps_and_rejects_bad_input():
    data = load_digits_data()
    trace = gradient_trace(data, depth=4, width=16, seeds=(0, 1), steps=(0, 2))
    assert trace.ratio.shape == trace.loss.shape == (2, 2)
    np.testing.assert_array_equal(trace.first_norm_growth[:, 0], 1.0)
    assert trace.first_grad.shape == (2, 2) and not trace.pinned
    with pytest.raises(ValueError, match="architecture"):
        DeepNet(3, architecture="dense")
    with pytest.raises(ValueError, match="depth"):
        DeepNet(0)


def test_pinned_norms_stay_at_their_initial_values_with_the_same_start():
    """Pinning rescales every hidden weight after each step: the first layer's norm stays at
    its initial value (it grows without pinning), and step 0, measured before any update, is
    the same with and without pinning."""
    data = load_digits_data()
    plain = gradient_trace(data, depth=6, width=16, seeds=(0, 1), steps=(0, 1, 3))
    pinned = gradient_trace(data, depth=6, width=16, seeds=(0, 1), steps=(0, 1, 3),
                            pin_norms=True)
    assert pinned.pinned
    np.testing.assert_allclose(pinned.first_norm_growth, 1.0, rtol=1e-12)
    assert np.all(plain.first_norm_growth[:, 1:] > 1.0)
    np.testing.assert_array_equal(pinned.ratio[:, 0], plain.ratio[:, 0])
    np.testing.assert_array_equal(pinned.first_grad[:, 0], plain.first_grad[:, 0])
    assert not np.array_equal(pinned.ratio[:, 2], plain.ratio[:, 2])


def test_first_steps_exercise_answer_and_mistakes():
    assert ex.FIRST_STEPS.check("c").status == PASSED
    for wrong, name in (("a", "norm_only"), ("b", "norm_factor"), ("d", "compounding")):
        assert ex.FIRST_STEPS.check(wrong).mistake == name


# --- ghost batches, full-set and frozen statistics --------------------------------------

def test_ghost_bn_is_torch_bn_on_each_ghost_batch():
    x = torch.randn(12, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ghost = GhostBatchNorm1d(5, 4, dtype=torch.float64)
    whole = GhostBatchNorm1d(5, 12, dtype=torch.float64)
    torch_bn = nn.BatchNorm1d(5, dtype=torch.float64)
    with torch.no_grad():
        for layer in (ghost, whole, torch_bn):
            layer.weight.copy_(torch.linspace(0.5, 2.0, 5))
            layer.bias.copy_(torch.linspace(-1.0, 1.0, 5))
    out = ghost(x)
    for k in range(3):
        part = nn.BatchNorm1d(5, dtype=torch.float64)
        part.load_state_dict(torch_bn.state_dict())
        torch.testing.assert_close(out[4 * k:4 * k + 4], part(x[4 * k:4 * k + 4]))
    torch.testing.assert_close(whole(x), torch_bn(x))
    torch.testing.assert_close(ghost.running_var, torch_bn.running_var)   # whole-batch update
    with pytest.raises(ValueError, match="ghost"):
        GhostBatchNorm1d(5, 1)


def test_regularizer_variants_share_their_weights():
    a, b = make_model("bn", seed=4), make_model("dropout", seed=4)
    lin_a = [m.weight for m in a if isinstance(m, nn.Linear)]
    lin_b = [m.weight for m in b if isinstance(m, nn.Linear)]
    for wa, wb in zip(lin_a, lin_b, strict=True):
        torch.testing.assert_close(wa, wb, rtol=0, atol=0)
    with pytest.raises(ValueError, match="variant"):
        make_model("layernorm")


def test_frozen_statistics_stay_frozen_after_warmup():
    data = regularizer.small_training_set(load_digits_data(), n=100)
    model = regularizer.train_variant("bn_frozen", data, lr=0.01, seed=0,
                                      epochs=regularizer.WARMUP + 2)
    bn = [m for m in model if isinstance(m, nn.BatchNorm1d)][0]
    before = bn.running_mean.clone()
    model.train()
    assert not bn.training
    model(data.x_train[:16])
    torch.testing.assert_close(bn.running_mean, before, rtol=0, atol=0)


def test_full_set_bn_is_bn_when_the_batch_is_the_whole_set():
    """With the mini-batch equal to the whole training set, full-set BN's statistics and loss
    are BN's: the same model after training, up to round-off (the rows are summed in another
    order). The Linear biases in front of BN have a gradient that is zero but for round-off,
    which Adam divides by its own size plus eps = 1e-8: they, and the running means that
    include them, agree to 1e-9 instead. With smaller batches the two variants differ."""
    data = regularizer.small_training_set(load_digits_data(), n=100)
    n = data.x_train.shape[0]
    full = regularizer.train_variant("bn_full", data, lr=0.01, seed=1, epochs=3, batch=n)
    bn = regularizer.train_variant("bn", data, lr=0.01, seed=1, epochs=3, batch=n)
    before_bn = {"0.bias", "3.bias", "1.running_mean", "4.running_mean"}
    for (name, a), b in zip(full.state_dict().items(), bn.state_dict().values(), strict=True):
        atol = 1e-9 if name in before_bn else 1e-12
        torch.testing.assert_close(a, b, rtol=1e-9, atol=atol, msg=name)
    assert isinstance(full[0], nn.Linear) and isinstance(full[1], nn.BatchNorm1d)
    assert isinstance(full[3], nn.Linear) and isinstance(full[4], nn.BatchNorm1d)
    small_full = regularizer.train_variant("bn_full", data, lr=0.01, seed=1, epochs=1, batch=16)
    small_bn = regularizer.train_variant("bn", data, lr=0.01, seed=1, epochs=1, batch=16)
    assert not torch.equal(small_full[0].weight, small_bn[0].weight)
    with pytest.raises(ValueError, match="batch"):
        regularizer.train_variant("bn_full", data, lr=0.01, seed=1, epochs=1, batch=1)


def test_full_set_bn_normalizes_with_the_whole_set_statistics():
    """After one step of full-set BN the first BN layer's running mean moved from 0 by
    momentum times the whole set's batch mean (of the pre-activation at the initial weights),
    not by that of the mini-batch."""
    data = regularizer.small_training_set(load_digits_data(), n=100)
    start = make_model("bn_full", seed=2)
    with torch.no_grad():
        whole = start[0](data.x_train).mean(dim=0)
    model = regularizer.train_variant("bn_full", data, lr=0.01, seed=2, epochs=1, batch=99)
    bn = model[1]
    # batch=99 of 100 rows: one step (the last batch of one row is dropped).
    assert int(bn.num_batches_tracked) == 1
    torch.testing.assert_close(bn.running_mean, bn.momentum * whole, rtol=1e-12, atol=1e-15)


# --- SkipInit, weight standardization, adaptive gradient clipping -----------------------

def test_skipinit_blocks_are_the_identity_at_initialization():
    model = ResidualMLP("skipinit", depth=5, seed=1)
    h = torch.randn(8, 64, dtype=torch.float64)
    for i in range(5):
        torch.testing.assert_close(model.block(i, h), h, rtol=0, atol=0)
    x = torch.randn(8, 64, dtype=torch.float64)
    torch.testing.assert_close(model(x), model.head(model.stem(x)), rtol=0, atol=0)


def test_standardized_weight_rows_have_mean_zero_and_norm_gain():
    layer = WSLinear(10, 4, gain=1.7, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.mul_(5.0).add_(3.0)
    w = layer.standardized_weight()
    torch.testing.assert_close(w.mean(dim=1), torch.zeros(4, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(w.norm(dim=1), torch.full((4,), 1.7, dtype=torch.float64),
                               rtol=1e-7, atol=0)


def _param(w, g):
    p = nn.Parameter(torch.tensor(w, dtype=torch.float64))
    p.grad = torch.tensor(g, dtype=torch.float64)
    return p


def test_agc_clips_exactly_at_its_threshold():
    # Rows of weight norm 5; gradients of norm 0.25 (below 0.1 * 5), 0.5 (at it), 1.0 (above).
    p = _param([[3.0, 4.0], [3.0, 4.0], [3.0, 4.0]], [[0.15, 0.2], [0.3, 0.4], [0.6, 0.8]])
    adaptive_gradient_clip_([p], 0.1)
    torch.testing.assert_close(p.grad, torch.tensor([[0.15, 0.2], [0.3, 0.4], [0.3, 0.4]],
                                                    dtype=torch.float64), rtol=1e-15, atol=0)
    # Just below the threshold the gradient is untouched; just above it, scaled onto it.
    below = _param([[4.0, 0.0]], [[2.0 * (1 - 1e-12), 0.0]])
    above = _param([[4.0, 0.0]], [[2.0 * (1 + 1e-12), 0.0]])
    adaptive_gradient_clip_([below, above], 0.5)
    assert float(below.grad[0, 0]) == 2.0 * (1 - 1e-12)
    assert float(above.grad[0, 0]) == pytest.approx(2.0, rel=1e-15)
    # A zero weight is treated as having norm eps.
    z = _param([[0.0, 0.0]], [[3.0, 4.0]])
    adaptive_gradient_clip_([z], 0.5, eps=1e-3)
    assert float(z.grad.norm()) == pytest.approx(0.5e-3, rel=1e-12)
    with pytest.raises(ValueError, match="clipping"):
        adaptive_gradient_clip_([p], 0.0)


def test_residual_variants_reject_unknown_names():
    with pytest.raises(ValueError, match="variant"):
        ResidualMLP("fixup")


# --- the stored sweeps ------------------------------------------------------------------

@pytest.mark.parametrize("module", [regularizer, alternatives])
def test_stored_sweep_follows_its_rule(module):
    stored = json.loads(module.DATA_FILE.read_text())
    assert stored["provenance"]["command"] == f"python -m {module.__name__}"
    assert {"runs", "date", "torch", "seconds"} <= set(stored["provenance"])
    lrs = stored["lrs"]
    for variant, chosen in stored["chosen"].items():
        val = np.asarray(stored["validation"][variant], dtype=float)
        means = val if val.ndim == 1 else val.mean(axis=1)
        assert chosen == lrs[int(np.argmax(means))], variant
        assert len(stored["test"][variant]) == len(stored["final_seeds"])
    assert set(stored["chosen"]) == set(module.VARIANTS)
